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
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..artifact import Artifact
from ..errors import ArtifactError, UnsafeFileError

BUNDLE_FORMAT = "edgeport-bundle"
BUNDLE_VERSION = 1
BUNDLE_META = "bundle.json"
CHECKSUMS = "SHA256SUMS"
REQUIREMENTS = "requirements.txt"
ARTIFACT_DIR = "artifact"


@dataclass(frozen=True)
class ExtractionLimits:
    max_member_bytes: int = 8 << 30        # one file: 8 GiB (a 7B model in fp8)
    max_total_bytes: int = 32 << 30
    max_members: int = 10_000


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgeport" / "bundles"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def open_bundle(path: str | os.PathLike, into: Path | None = None,
                limits: ExtractionLimits = ExtractionLimits()) -> Artifact:
    """Extract ``path`` (once per bundle content, into a cache keyed by its sha256), verify
    every checksum and the manifest's digest, and return the artifact inside."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"no bundle at '{path}'")
    target = into or cache_root() / sha256_of(path)
    if not (target / BUNDLE_META).is_file():
        extract_bundle(path, target, limits)
    try:
        return verify_extracted(target)
    except ArtifactError:
        shutil.rmtree(target, ignore_errors=True)     # a damaged bundle leaves nothing in the cache
        raise


def extract_bundle(path: Path, target: Path, limits: ExtractionLimits = ExtractionLimits()) -> None:
    """Safely extract the bundle's members into ``target`` (staged, then renamed)."""
    try:
        archive = tarfile.open(path, "r:gz")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArtifactError(f"'{path}' is not an edgeport bundle (not a gzip tar archive: {exc})") from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        with archive:
            members = _checked_members(archive, path, limits)
            root = _single_root(members, path)
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
        if not (staging / BUNDLE_META).is_file():
            raise ArtifactError(f"'{path}' has no {BUNDLE_META}: it is not an edgeport bundle")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except (tarfile.TarError, EOFError, OSError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise ArtifactError(f"'{path}' is damaged and cannot be extracted: {exc}") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _checked_members(archive: tarfile.TarFile, path: Path, limits: ExtractionLimits) -> list[tarfile.TarInfo]:
    members, total = [], 0
    for member in archive:
        name = PurePosixPath(member.name)
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
    if len(roots) != 1:
        raise ArtifactError(f"'{path}' is not an edgeport bundle: it should hold one top folder, holds {len(roots)}")
    return roots.pop()


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


def verify_extracted(folder: Path) -> Artifact:
    """Check every member against SHA256SUMS, then load the artifact with its manifest's
    digest checked against bundle.json (edits to edgeport.json are caught here)."""
    meta = read_meta(folder)
    listed = read_checksums(folder / CHECKSUMS)
    present = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    unlisted = [name for name in present if name not in listed and name != CHECKSUMS]
    if unlisted:
        raise ArtifactError(f"bundle holds files its {CHECKSUMS} does not list: {', '.join(unlisted[:5])}")
    for name, digest in listed.items():
        file = folder / name
        if not file.is_file():
            raise ArtifactError(f"bundle is missing '{name}', which its {CHECKSUMS} lists")
        if sha256_of(file) != digest:
            raise ArtifactError(f"bundle member '{name}' does not match its sha256: the bundle was tampered "
                                "with or damaged; package the artifact again")
    return Artifact.load(folder / ARTIFACT_DIR, check_files=True, expected_manifest_sha256=meta["manifest_sha256"])


def read_checksums(path: Path) -> dict[str, str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"cannot read the bundle's {CHECKSUMS}: {exc}") from exc
    listed = {}
    for line in lines:
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name or ".." in PurePosixPath(name).parts or name.startswith("/"):
            raise ArtifactError(f"the bundle's {CHECKSUMS} has a malformed line: {line[:80]!r}")
        listed[name] = digest
    return listed


def format_checksums(entries: dict[str, str]) -> str:
    return "".join(f"{digest}  {name}\n" for name, digest in sorted(entries.items()))
