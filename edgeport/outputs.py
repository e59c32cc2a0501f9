"""Where results are written: every writer checks its output before the work starts, writes
into a temporary sibling, and renames it into place, so nothing is lost or half-written.

The rules, the same for every command that writes:

- an output that equals, contains or lies inside one of the command's inputs is refused
  (``-o`` onto the source folder with ``--force`` would otherwise delete the source);
- an existing output is replaced only with ``--force``, and only when it is edgeport's own
  kind of output (an artifact folder, a merged model, a bundle, a report): ``--force``
  never deletes a folder or file edgeport did not make;
- the place must be writable, and the name legal, before any work is done; parent folders
  created for the output are removed again if the stage fails;
- the result gets the permissions a new file or folder gets under the umask (a temporary
  folder is private, 0700, which a service running as another user could not read).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Iterator

from .errors import InvalidOptionError, OutputExistsError
from .manifest import MANIFEST_NAME, sha256_file
from .workdirs import staging_file, staging_folder


@dataclass(frozen=True)
class OutputKind:
    """What a command writes, and how to recognise an earlier output of the same kind."""

    noun: str
    is_folder: bool
    recognise: Callable[[Path], bool]
    # Files in a recognised folder that edgeport did not write there (a user's own, or a
    # look-alike marker file): --force refuses to delete them.
    strangers: Callable[[Path], list[str]] = lambda path: []


def _has(name: str) -> Callable[[Path], bool]:
    return lambda path: path.is_dir() and (path / name).is_file()


def _json_with(*keys: str) -> Callable[[Path], bool]:
    def recognise(path: Path) -> bool:
        import json

        try:
            data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        except (OSError, ValueError):
            return False
        return isinstance(data, dict) and all(key in data for key in keys)
    return recognise


def _bundle(path: Path) -> bool:
    """A tarball whose one top folder holds a bundle.json of edgeport's bundle format (a user's
    archive that merely holds some ``*bundle.json`` is not one)."""
    import json
    import tarfile

    from .vocabulary import BUNDLE_FORMAT

    try:
        with tarfile.open(path, "r:*") as archive:
            for _ in range(4):            # its head only: a bundle cut short is still recognised, and replaced
                member = archive.next()
                if member is None:
                    break
                parts = PurePosixPath(member.name).parts
                if len(parts) == 2 and parts[1] == "bundle.json" and member.isfile() and member.size < 2**20:
                    meta = json.loads(archive.extractfile(member).read().decode("utf-8"))
                    return isinstance(meta, dict) and meta.get("format") == BUNDLE_FORMAT
    except (OSError, EOFError, tarfile.TarError, ValueError, RecursionError):
        return False
    return False


def _html_report(path: Path) -> bool:
    """The page ``bench --html`` writes: it opens with its own title (a user's notes that
    merely mention the phrase do not)."""
    try:
        with open(path, encoding="utf-8") as handle:
            head = handle.read(4096)
    except (OSError, UnicodeDecodeError):
        return False
    return head.lower().startswith("<!doctype html>") and "<title>edgeport bench report</title>" in head


# A single-file report carries the sha256 of its own text (taken with the digest's place
# blanked): --force replaces it only while the digest still holds, so a report a user
# annotated is kept.  Reports written before the seal existed carry none and are replaced.
SEAL_KEY = "edgeport-content-sha256"
_UNSEALED = "0" * 64
_SEAL = re.compile(SEAL_KEY + r'"(?:: "| content=")([0-9a-f]{64})"')


def seal_placeholder() -> str:
    """What a report writes where its digest goes; ``seal`` fills it in."""
    return _UNSEALED


def seal(text: str) -> str:
    """``text`` with its placeholder replaced by the sha256 of ``text`` as it stands."""
    import hashlib

    found = list(_SEAL.finditer(text))
    if len(found) != 1 or found[0].group(1) != _UNSEALED:
        raise ValueError("a sealed report needs exactly one blank seal")
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    start, end = found[0].span(1)
    return text[:start] + digest + text[end:]


def edited_since_written(path: Path) -> bool:
    """Whether a sealed report no longer matches its seal (a report older than the seal: no)."""
    return bool(_broken_seal(Path(path)))


def has_seal(path: Path) -> bool:
    """Whether a report carries a seal at all (older reports do not; nor one whose seal was cut out)."""
    try:
        return bool(_SEAL.search(Path(path).read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError):
        return False


def _broken_seal(path: Path) -> list[str]:
    """[] when ``path`` is as edgeport wrote it (or predates the seal), else why not."""
    import hashlib

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return [f"{path.name} (unreadable)"]
    found = list(_SEAL.finditer(text))
    if not found:
        return []
    start, end = found[0].span(1)
    blank = text[:start] + _UNSEALED + text[end:]
    if len(found) > 1 or hashlib.sha256(blank.encode("utf-8")).hexdigest() != found[0].group(1):
        return [f"{path.name} (edited)"]
    return []


# Folder outputs other than artifacts list what edgeport wrote into them here, with each
# file's sha256 (an artifact's manifest is its list): --force replaces such a folder only
# while it holds nothing else and nothing listed was edited (a hand-tuned config.pbtxt).
WRITTEN_LIST = ".edgeport-written.json"


def _read_json(path: Path):
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def _artifact_manifest(path: Path) -> dict | None:
    """The folder's manifest, when it is one edgeport wrote (a schema version, files by name)."""
    manifest = _read_json(path / MANIFEST_NAME) if path.is_dir() else None
    if isinstance(manifest, dict) and "schema_version" in manifest and isinstance(manifest.get("files"), dict):
        return manifest
    return None


def _written_list(path: Path) -> dict[str, str | None] | None:
    """File name -> sha256 as written (None: a list written before digests were kept)."""
    listed = _read_json(path / WRITTEN_LIST) if path.is_dir() else None
    if isinstance(listed, list) and all(isinstance(n, str) for n in listed):
        return dict.fromkeys(listed)
    if isinstance(listed, dict) and all(isinstance(n, str) and (d is None or isinstance(d, str))
                                        for n, d in listed.items()):
        return listed
    return None


def _sha256(path: Path) -> str | None:
    """The file's sha256, or None when it cannot be read (then it counts as edited)."""
    try:
        return sha256_file(path)
    except OSError:
        return None


def _strangers(path: Path, allowed: set[str]) -> list[str]:
    """Entries under ``path`` edgeport did not write: links (it writes none), files not in
    ``allowed``, folders holding none of them."""
    folders = {"/".join(parts[:depth]) for parts in (PurePosixPath(name).parts for name in allowed)
               for depth in range(1, len(parts))}
    found = []
    for root, dirs, files in os.walk(path):        # links to folders are listed, not followed
        for name in sorted(dirs) + sorted(files):
            entry = Path(root) / name
            relative = entry.relative_to(path).as_posix()
            if entry.is_symlink() or (name in files and relative not in allowed) or \
                    (name in dirs and relative not in folders):
                found.append(relative + ("/" if name in dirs and not entry.is_symlink() else ""))
    return found


def _artifact_strangers(path: Path) -> list[str]:
    manifest = _artifact_manifest(path)
    if not manifest:
        return [MANIFEST_NAME]
    digests = {name: entry.get("sha256") if isinstance(entry, dict) else None
               for name, entry in manifest["files"].items()}
    return _strangers(path, set(digests) | {MANIFEST_NAME}) + _edited(path, digests)


def _edited(path: Path, digests: dict[str, str | None]) -> list[str]:
    """Listed files whose bytes are no longer the ones edgeport wrote (a hand-edited config)."""
    return [f"{name} (edited)" for name, digest in sorted(digests.items())
            if isinstance(digest, str) and (path / name).is_file() and not (path / name).is_symlink()
            and _sha256(path / name) != digest]


def _listed_strangers(path: Path) -> list[str]:
    listed = _written_list(path)
    if listed is None:
        return [WRITTEN_LIST]
    return _strangers(path, set(listed) | {WRITTEN_LIST}) + _edited(path, listed)


def _listed(marker: str) -> Callable[[Path], bool]:
    return lambda path: _has(marker)(path) and _written_list(path) is not None


ARTIFACT = OutputKind("edgeport artifact", True, lambda p: _artifact_manifest(p) is not None, _artifact_strangers)
MERGED_MODEL = OutputKind("merged model folder (edgeport merge)", True, _listed("edgeport-merge.json"),
                          _listed_strangers)
TRITON_REPOSITORY = OutputKind("Triton model repository (edgeport package)", True, _listed(".edgeport-triton.json"),
                               _listed_strangers)
KSERVE_FOLDER = OutputKind("KServe deployment folder (edgeport package)", True, _listed(".edgeport-kserve.json"),
                           _listed_strangers)
SHIP_FOLDER = OutputKind("ship output folder", True,
                         lambda p: _has("ship-summary.json")(p) or (p / ".ship-cache").is_dir())
BUNDLE = OutputKind("edgeport bundle", False, _bundle)
ADAPTER_FILE = OutputKind("ONNX Runtime adapter file (.onnx_adapter)", False, lambda p: p.suffix == ".onnx_adapter")
JSON_REPORT = OutputKind("edgeport bench report (JSON)", False,
                         _json_with("schema_version", "created", "machine", "variants", "results", "parity"),
                         _broken_seal)
HTML_REPORT = OutputKind("edgeport HTML report", False, _html_report, _broken_seal)


# What to do instead of replacing an output that is not edgeport's as written: "choose another
# -o" for a command; ship, whose stages write where it says, sets its own (see instead_say).
_INSTEAD: contextvars.ContextVar[str | None] = contextvars.ContextVar("instead", default=None)


@contextlib.contextmanager
def instead_say(hint: str) -> Iterator[None]:
    """Within the block, a refused replacement ends with ``hint`` instead of naming the
    stage's own option (which the user of ``ship`` never typed)."""
    token = _INSTEAD.set(hint)
    try:
        yield
    finally:
        _INSTEAD.reset(token)


def _inside_an_artifact(target: Path) -> Path | None:
    """The artifact folder ``target`` would lie in: a folder written there is a file the
    artifact does not list, and every later --force onto it is refused."""
    return next((parent for parent in target.parents if (parent / MANIFEST_NAME).is_file()), None)


def check_output(out: str | os.PathLike, force: bool, inputs: Iterable[str | os.PathLike] = (),
                 kind: OutputKind = ARTIFACT, option: str = "-o") -> Path:
    """Refuse an output that would lose data or cannot be written; return it as a Path."""
    out = Path(out)
    if not str(out) or out.name in ("", ".", ".."):
        raise InvalidOptionError(f"{option} '{out}' does not name a {'folder' if kind.is_folder else 'file'}")
    _check_name_lengths(out, option)
    target = out.resolve()
    for source in inputs:
        if source is None:
            continue
        source_path = Path(source).resolve()
        if target == source_path or target in source_path.parents or source_path in target.parents:
            relation = ("is" if target == source_path else "contains" if target in source_path.parents
                        else "lies inside")
            raise InvalidOptionError(f"{option} '{out}' {relation} the input '{source}'; write the result "
                                     "somewhere outside the input, it would be overwritten or deleted")
    host = _inside_an_artifact(target) if kind.is_folder else None
    if host is not None:
        raise InvalidOptionError(f"{option} '{out}' lies inside the artifact '{host}'; write it beside the "
                                 "artifact, not in it (the artifact would hold a folder its manifest does not list)")
    if out.exists() and kind.is_folder != out.is_dir():
        # said first: "pass --force" would only lead to this
        raise InvalidOptionError(f"'{out}' exists and is a {'folder' if out.is_dir() else 'file'}; "
                                 f"{option} must name a {'folder' if kind.is_folder else 'file'}")
    instead = _INSTEAD.get() or f"choose another {option}"
    if out.is_symlink() or out.exists():
        if not force:
            raise OutputExistsError(f"'{out}' already exists; choose another {option} or pass --force to replace it")
        if out.is_symlink() and not out.exists():
            pass  # a dangling link: replacing it loses nothing
        elif (strangers := _foreign(out, kind)) is None:
            raise OutputExistsError(f"'{out}' exists and is not {_a(kind.noun)}; --force only replaces edgeport's own "
                                    f"outputs. Remove it yourself or {instead}")
        elif strangers and not kind.is_folder:
            raise OutputExistsError(f"'{out}' was edited since edgeport wrote it; --force only replaces edgeport's "
                                    f"own outputs as written. Move it or {instead}")
        elif strangers:
            raise OutputExistsError(f"'{out}' holds files edgeport did not write there or that changed since it "
                                    f"did ({', '.join(strangers[:5])}"
                                    f"{', ...' if len(strangers) > 5 else ''}); --force only replaces edgeport's own "
                                    f"outputs. Move them out or {instead}")
    _check_writable(out, option)
    return out


def _a(noun: str) -> str:
    return ("an " if noun[0].lower() in "aeio" else "a ") + noun


def _foreign(out: Path, kind: OutputKind) -> list[str] | None:
    """What replacing the existing folder ``out`` would delete that edgeport did not write
    there ([] for an empty folder); None when it is not an output of ``kind`` at all."""
    if kind.recognise(out):
        return kind.strangers(out)
    return [] if _empty_folder(out) else None


def _check_name_lengths(out: Path, option: str) -> None:
    """Before anything touches the path: a name past the file system's limit fails every
    call with ENAMETOOLONG.  The staging name adds a dot, a random part and '.tmp'."""
    existing = out.absolute().parent
    while not os.path.isdir(existing) and existing != existing.parent:
        existing = existing.parent
    try:
        limit = os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    too_long = [part for part in out.parts if len(part.encode()) + 20 > limit]
    if too_long:
        raise InvalidOptionError(f"{option} '{str(out)[:60]}...': the name '{too_long[0][:40]}...' is too long for "
                                 f"this file system (at most {limit - 20} bytes)")


def _empty_folder(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _check_writable(out: Path, option: str) -> None:
    parent = out.absolute().parent
    existing = parent
    while not existing.exists():
        if existing.is_symlink():
            raise InvalidOptionError(f"{option} '{out}': '{existing}' is a broken link")
        existing = existing.parent
    if not existing.is_dir():
        raise InvalidOptionError(f"{option} '{out}': '{existing}' is a file, not a folder")
    try:
        read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        read_only = False
    if read_only:
        raise InvalidOptionError(f"{option} '{out}': '{existing}' is on a read-only file system")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InvalidOptionError(f"{option} '{out}': cannot write in '{existing}' (permission denied)")
    # Permission bits do not tell everything (/proc, /sys, some FUSE and network mounts refuse
    # new files to root too): create and remove a probe where the staging file will go.
    try:
        handle, probe = tempfile.mkstemp(dir=existing, prefix=".edgeport-probe-")
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise InvalidOptionError(f"{option} '{out}': cannot create files in '{existing}' "
                                 f"({exc.strerror or exc})") from None


def _umask() -> int:
    """The process umask, read without changing it where the system allows (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _give_default_permissions(path: Path) -> None:
    mask = _umask()
    if path.is_dir():
        for folder, dirs, files in os.walk(path):
            os.chmod(folder, 0o777 & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)


def make_folders(parent: Path) -> list[Path]:
    """Make ``parent`` and the folders above it that are missing; returns those it made."""
    created = []
    for folder in reversed([parent, *parent.parents]):
        if not folder.exists():
            folder.mkdir()
            created.append(folder)
    return created


def remove_created_folders(created: list[Path]) -> None:
    """Remove the folders ``make_folders`` made, innermost first, where they are still empty."""
    for folder in reversed(created):
        with contextlib.suppress(OSError):
            folder.rmdir()


@contextlib.contextmanager
def staged_output(out: str | os.PathLike, force: bool, inputs: Iterable[str | os.PathLike] = (),
                  kind: OutputKind = ARTIFACT, option: str = "-o") -> Iterator[Path]:
    """Yield a temporary sibling of ``out`` (a folder, or a file path for file kinds); when
    the block succeeds, rename it to ``out``.  On any exception, remove it and any parent
    folder made for it, leaving ``out`` as it was."""
    out = check_output(out, force, inputs, kind, option)
    parent = out.absolute().parent
    created = make_folders(parent)
    try:
        # named for this process: what a killed one staged beside the output goes with the next run
        staging = (staging_folder if kind.is_folder else staging_file)(f".{out.name}.", ".tmp", parent)
    except BaseException:
        remove_created_folders(created)
        raise
    try:
        yield staging
        if kind.strangers is _listed_strangers:
            _write_list(staging)
        _give_default_permissions(staging)
        _replace(staging, out, force, kind)
    except BaseException:
        if staging.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                staging.unlink()
        remove_created_folders(created)
        raise


def _write_list(folder: Path) -> None:
    import json

    written = {f.relative_to(folder).as_posix(): _sha256(f) for f in sorted(folder.rglob("*")) if f.is_file()}
    (folder / WRITTEN_LIST).write_text(json.dumps(written, indent=1) + "\n", encoding="utf-8")


def _replace(new: Path, out: Path, force: bool, kind: OutputKind) -> None:
    if out.is_symlink():
        if not force:
            raise OutputExistsError(f"'{out}' appeared while writing; pass --force to replace it")
        out.unlink()               # replace the link itself, never what it points to
        os.replace(new, out)
    elif out.exists():
        if not force:  # appeared while we worked
            raise OutputExistsError(f"'{out}' appeared while writing; pass --force to replace it")
        if not kind.is_folder:
            os.replace(new, out)
            return
        strangers = _foreign(out, kind)
        if strangers is None:
            strangers = ["its contents"]
        if strangers:              # files put there while we worked
            raise OutputExistsError(f"'{out}' changed while writing and now holds files edgeport did not write "
                                    f"({', '.join(strangers[:5])}); nothing was replaced")
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(new, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, out)
