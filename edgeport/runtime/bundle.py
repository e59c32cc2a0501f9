"""Reading bundles (``edgeport package --format bundle``) on the device: safe extraction and
checksum verification before anything is loaded.  The writer is ``edgeport.package.bundle``;
both share the layout defined here.

A bundle is a gzip-compressed tar archive:

    <name>/bundle.json         what it is: format, manifest sha256, target, runtime requirements
    <name>/SHA256SUMS          sha256sum-style list of every other member
    <name>/requirements.txt    the runtime's pip requirements, pinned as built
    <name>/artifact/...        the artifact folder, edgeport.json included

Extraction refuses absolute names, ``..``, links of any kind, device files and FIFOs, and
members or totals over the size limits; nothing is written outside the target folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..artifact import Artifact
from ..errors import ArtifactError, InvalidOptionError, UnsafeFileError
from ..manifest import MANIFEST_NAME
from ..vocabulary import BUNDLE_FORMAT, BUNDLE_SUFFIXES
from ..workdirs import staging_folder

BUNDLE_VERSION = 1
BUNDLE_META = "bundle.json"
CHECKSUMS = "SHA256SUMS"
REQUIREMENTS = "requirements.txt"
ARTIFACT_DIR = "artifact"
SIGNATURE = "signature.sig"            # model-signing's signature over the other members (package --sign)
SMALL_MEMBER_BYTES = 1 << 20           # bundle.json, SHA256SUMS, requirements.txt, the manifest, the signature


@dataclass(frozen=True)
class ExtractionLimits:
    max_member_bytes: int = 8 << 30        # one file: 8 GiB (a 7B model in fp8)
    max_total_bytes: int = 32 << 30
    max_members: int = 10_000


def cache_root() -> Path:
    """Where bundles are extracted, once per content: ``$XDG_CACHE_HOME/edgeport/bundles``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    root = Path(base) / "edgeport" / "bundles"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidOptionError(f"the bundle cache '{root}' cannot be made ({exc.strerror or exc}): "
                                 f"XDG_CACHE_HOME ('{base}') must name a folder you can write") from exc
    return root


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def open_bundle(path: str | os.PathLike, into: Path | None = None, limits: ExtractionLimits = ExtractionLimits(),
                trusted_key: str | os.PathLike | None = None) -> Artifact:
    """Extract ``path`` (once per bundle content, into a cache keyed by its sha256), verify
    every checksum and the manifest's digest (and, with ``trusted_key``, the signature), and
    return the artifact inside.

    Safe when several processes open one bundle at once: each extracts into a folder of its
    own and renames it into place; the first rename wins and the others use it.  A cached
    copy that fails its checks is moved aside (never deleted under a reader) and extracted
    again from the bundle, which is the truth.  A signature that fails is the bundle's fault
    only when a fresh extraction fails it too: the cached copy, which a server may be
    reading, is then left alone."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"no bundle at '{path}'")
    target = into or cache_root() / sha256_of(path)
    artifact = _extracted(path, target, limits)
    if trusted_key is None:
        return artifact
    from .signing import verify_folder

    try:
        verify_folder(target, trusted_key)
        return artifact
    except ArtifactError:
        with tempfile.TemporaryDirectory(prefix=f".{target.name}.", suffix=".check", dir=target.parent) as fresh:
            extract_bundle(path, Path(fresh) / "bundle", limits)
            verify_folder(Path(fresh) / "bundle", trusted_key)      # raises: the bundle's own signature fails
    _move_aside(target)                 # the bundle is signed, the cached copy was altered since
    artifact = _extracted(path, target, limits)
    verify_folder(target, trusted_key)
    return artifact


def _extracted(path: Path, target: Path, limits: ExtractionLimits) -> Artifact:
    """The checked artifact in ``target``, extracted from ``path`` unless a sound copy is there."""
    cached = (target / BUNDLE_META).is_file()
    if not cached:
        if (target.exists() or target.is_symlink()) and not (target / BUNDLE_META).is_file():
            _move_aside(target)       # no extraction (one cut short, a file); re-checked: another may just have made it
        extract_bundle(path, target, limits)
    try:
        return verify_extracted(target)
    except ArtifactError:
        _move_aside(target)
        if not cached:
            raise
    extract_bundle(path, target, limits)            # the cache was damaged: once more from the bundle
    try:
        return verify_extracted(target)
    except ArtifactError:
        _move_aside(target)
        raise


def _move_aside(folder: Path) -> None:
    """Take a bad extraction out of the cache: renamed first (atomic; processes reading it keep
    their open files), then removed."""
    aside = folder.with_name(f".{folder.name}.discarded-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(folder, aside)
    except OSError:
        return                                        # gone already, or another process moved it
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)


def extract_bundle(path: Path, target: Path, limits: ExtractionLimits = ExtractionLimits()) -> None:
    """Safely extract the bundle's members into ``target``.  Every member is checked before
    anything is written: names, types, sizes against the limits, the list against SHA256SUMS
    and the sizes against the manifest; the free space is checked too.  Extraction goes into
    a staging folder of this process that is renamed into place."""
    try:
        archive = tarfile.open(path, "r:gz")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArtifactError(f"'{path}' is not an edgeport bundle (not a gzip tar archive: {exc})") from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = None
    try:
        with archive:
            members = _checked_members(archive, path, limits)
            root = _single_root(members, path)
            _check_declared(archive, members, root, path, target.parent)
            # one prefix for every bundle's staging: a killed extraction's goes with the next of any bundle
            staging = staging_folder(".extracting.", ".tmp", target.parent)
            for member in members:
                relative = PurePosixPath(member.name).relative_to(root)
                destination = staging.joinpath(*relative.parts) if relative.parts else staging
                if member.isdir():
                    destination.mkdir(parents=True, exist_ok=True)
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
                source = archive.extractfile(member)
                with source, open(destination, "xb") as handle:
                    shutil.copyfileobj(source, handle, 1 << 20)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / BUNDLE_META).is_file():
                raise
            shutil.rmtree(staging, ignore_errors=True)     # another process extracted it first: use theirs
    except (tarfile.TarError, EOFError, OSError) as exc:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        raise ArtifactError(f"'{path}' is damaged and cannot be extracted: {exc}") from exc
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        raise


def _checked_members(archive: tarfile.TarFile, path: Path, limits: ExtractionLimits) -> list[tarfile.TarInfo]:
    members, total = [], 0
    for member in archive:
        name = PurePosixPath(member.name)
        if not name.parts or member.name.strip() in ("", ".", "./"):
            raise UnsafeFileError(f"bundle '{path}' holds a member with an empty name ({member.name!r}); refusing it")
        if member.name.startswith(("/", "\\")) or name.is_absolute() or ":" in name.parts[0]:
            raise UnsafeFileError(f"bundle '{path}' holds '{member.name}', an absolute path; refusing to extract it")
        if ".." in name.parts:
            raise UnsafeFileError(f"bundle '{path}' holds '{member.name}', which climbs out of the folder with '..'")
        if member.issym() or member.islnk():
            raise UnsafeFileError(f"bundle '{path}' holds a link '{member.name}' -> '{member.linkname}'; "
                                  "bundles hold plain files only")
        if not (member.isfile() or member.isdir()):
            raise UnsafeFileError(f"bundle '{path}' holds '{member.name}', a device file or FIFO; refusing it")
        if member.size > limits.max_member_bytes:
            raise UnsafeFileError(f"bundle '{path}': '{member.name}' is {member.size} bytes, over the "
                                  f"{limits.max_member_bytes} byte limit for one member")
        total += member.size
        if total > limits.max_total_bytes:
            raise UnsafeFileError(f"bundle '{path}' unpacks to more than {limits.max_total_bytes} bytes; refusing it")
        members.append(member)
        if len(members) > limits.max_members:
            raise UnsafeFileError(f"bundle '{path}' has more than {limits.max_members} members; refusing it")
    return members


def _single_root(members: list[tarfile.TarInfo], path: Path) -> str:
    roots = {PurePosixPath(m.name).parts[0] for m in members if PurePosixPath(m.name).parts}
    if len(roots) != 1 or roots == {"."}:
        raise ArtifactError(f"'{path}' is not an edgeport bundle: it should hold one top folder, holds {len(roots)}")
    return roots.pop()


def _read_small(archive: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> bytes:
    if member.size > SMALL_MEMBER_BYTES:
        raise UnsafeFileError(f"bundle '{path}': '{member.name}' is {member.size} bytes, far more than such a file "
                              f"holds (at most {SMALL_MEMBER_BYTES}); refusing it")
    return archive.extractfile(member).read()


def _check_declared(archive: tarfile.TarFile, members: list[tarfile.TarInfo], root: str, path: Path,
                    where: Path) -> None:
    """Before anything is written: every file member must be listed in SHA256SUMS (or be
    SHA256SUMS or the signature), the artifact's files must have the sizes its manifest
    declares, the bundle's own small files must be small, and the disk must have room."""
    files = {PurePosixPath(m.name).relative_to(root).as_posix(): m for m in members if m.isfile()}
    if CHECKSUMS not in files:
        raise ArtifactError(f"'{path}' has no {CHECKSUMS}: it is not an edgeport bundle")
    listed = parse_checksums(_read_small(archive, files[CHECKSUMS], path).decode("utf-8", "replace"))
    unlisted = sorted(set(files) - set(listed) - {CHECKSUMS, SIGNATURE})
    if unlisted:
        raise ArtifactError(f"bundle '{path}' holds files its {CHECKSUMS} does not list: {', '.join(unlisted[:5])}; "
                            "refusing it before extracting anything")
    manifest_name = f"{ARTIFACT_DIR}/{MANIFEST_NAME}"
    declared: dict[str, int] = {}
    if manifest_name in files:
        try:
            entries = json.loads(_read_small(archive, files[manifest_name], path)).get("files", {})
            declared = {f"{ARTIFACT_DIR}/{name}": int(entry["size"]) for name, entry in entries.items()}
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
            declared = {}                      # a broken manifest is reported, with its reason, after extraction
    if BUNDLE_META in files:                   # what the bundle adds beside the artifact (mobile/model.ort)
        try:
            sizes = json.loads(_read_small(archive, files[BUNDLE_META], path)).get("member_sizes", {})
            declared.update({name: int(size) for name, size in sizes.items()
                             if not name.startswith(f"{ARTIFACT_DIR}/")})
        except (ValueError, TypeError, AttributeError, RecursionError):
            pass                               # a broken bundle.json is reported, with its reason, after extraction
    for name, member in files.items():
        if name in declared and member.size != declared[name]:
            raise ArtifactError(f"bundle '{path}': '{name}' is {member.size} bytes in the archive but its manifest "
                                f"declares {declared[name]}; refusing it before extracting anything")
        if name not in declared and member.size > SMALL_MEMBER_BYTES:
            _read_small(archive, member, path)            # raises: a file no manifest sizes must be small
    needed = sum(m.size for m in files.values())
    free = shutil.disk_usage(where).free
    if needed > free:
        raise ArtifactError(f"bundle '{path}' unpacks to {needed} bytes and '{where}' has {free} free; "
                            "free some space or point XDG_CACHE_HOME elsewhere")


def lone_bundle(folder: Path) -> Path | None:
    """The one bundle in ``folder`` (an archive, or a folder one unpacked to) when it holds
    nothing else but hidden entries and a volume's lost+found; None when it holds no bundle.
    Several bundles, or a bundle among other files, are refused: which one was meant?"""
    try:
        entries = sorted(e for e in folder.iterdir() if not e.name.startswith(".") and e.name != "lost+found")
    except OSError:
        return None
    bundles = [e for e in entries if (e.is_file() and e.name.endswith(BUNDLE_SUFFIXES))
               or (e / BUNDLE_META).is_file()]
    if not bundles:
        return None
    if len(entries) > 1:
        others = [e.name for e in entries if e not in bundles]
        raise ArtifactError(f"'{folder}' holds {len(bundles)} bundle(s) ({', '.join(b.name for b in bundles[:3])})"
                            + (f" beside other files ({', '.join(others[:3])})" if others else "")
                            + "; give the path of the one to open")
    return bundles[0]


def read_meta(folder: Path) -> dict:
    try:
        meta = json.loads((folder / BUNDLE_META).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{folder / BUNDLE_META} is unreadable: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT or \
            not isinstance(meta.get("manifest_sha256"), str):
        raise ArtifactError(f"{folder / BUNDLE_META} does not describe an edgeport bundle")
    if meta.get("version") != BUNDLE_VERSION:
        raise ArtifactError(f"bundle version {meta.get('version')} is not one this edgeport reads ({BUNDLE_VERSION})")
    return meta


def verify_extracted(folder: Path, trusted_key: str | os.PathLike | None = None) -> Artifact:
    """With ``trusted_key``, the signature first (over every file); then every member against
    SHA256SUMS, then the artifact with its manifest's digest checked against bundle.json
    (edits to edgeport.json are caught here).  Checksums catch damage; only a signature
    proves who made the bundle."""
    if trusted_key is not None:
        from .signing import verify_folder

        verify_folder(folder, trusted_key)
    meta = read_meta(folder)
    try:
        listed = parse_checksums((folder / CHECKSUMS).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"cannot read the bundle's {CHECKSUMS}: {exc}") from exc
    links = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_symlink())
    if links:                          # extraction writes none: an unpacked bundle someone changed
        raise ArtifactError(f"bundle holds links, which no bundle has: {', '.join(links[:5])}")
    present = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    unlisted = [name for name in present if name not in listed and name not in (CHECKSUMS, SIGNATURE)]
    if unlisted:
        raise ArtifactError(f"bundle holds files its {CHECKSUMS} does not list: {', '.join(unlisted[:5])}")
    for name, digest in listed.items():
        file = folder / name
        if not file.is_file():
            raise ArtifactError(f"bundle is missing '{name}', which its {CHECKSUMS} lists")
        if sha256_of(file) != digest:
            raise ArtifactError(f"bundle member '{name}' does not match its sha256 in {CHECKSUMS}: the bundle is "
                                "damaged or was altered; package the artifact again (to prove who made a bundle, "
                                "sign it with --sign and open it with --trusted-key)")
    return Artifact.load(folder / ARTIFACT_DIR, check_files=True, expected_manifest_sha256=meta["manifest_sha256"])


def parse_checksums(text: str) -> dict[str, str]:
    listed = {}
    for line in text.splitlines():
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name or ".." in PurePosixPath(name).parts or name.startswith("/"):
            raise ArtifactError(f"the bundle's {CHECKSUMS} has a malformed line: {line[:80]!r}")
        listed[name] = digest
    return listed


def format_checksums(entries: dict[str, str]) -> str:
    return "".join(f"{digest}  {name}\n" for name, digest in sorted(entries.items()))
