"""Work and staging folders named after the process that made them, so that the next run
removes what a killed one left behind.  kill -9 or the OOM killer skips every cleanup: a
staged copy of a model stayed beside the user's output, and an export's intermediate graphs
stayed in the system's temporary folder, for good.

A name holds the process id and a short digest of the host name.  A folder is removed only when
the name says this host and no process with that id is alive.  Other hosts or containers that
share the folder have other host names, and their folders are left alone."""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_RANDOM = r"[a-z0-9_]{8}"                  # what tempfile adds


def owned_prefix(prefix: str) -> str:
    """``prefix`` followed by this process's mark (tempfile adds its random part after it)."""
    return f"{prefix}{os.getpid()}-{_HOST}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:                        # EPERM: another user's process, alive
        return True
    return True


def remove_dead(folder: Path, prefix: str, suffix: str = "") -> None:
    """Remove what processes of this host that are gone left in ``folder`` under ``prefix``."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)-" + _HOST + r"\." + _RANDOM + re.escape(suffix) + "$")
    try:
        entries = list(Path(folder).glob(f"{glob.escape(prefix)}*{glob.escape(suffix)}"))
    except OSError:
        return
    for entry in entries:
        found = pattern.match(entry.name)
        if not found or int(found.group(1)) == os.getpid() or _alive(int(found.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def work_folder(prefix: str, dir: str | os.PathLike | None = None) -> tempfile.TemporaryDirectory:
    """A TemporaryDirectory named for this process, made after removing those of dead ones."""
    remove_dead(Path(dir or tempfile.gettempdir()), prefix)
    return tempfile.TemporaryDirectory(prefix=owned_prefix(prefix), dir=dir)


def staging_folder(prefix: str, suffix: str, dir: str | os.PathLike) -> Path:
    """mkdtemp named for this process, after removing those of dead ones."""
    remove_dead(Path(dir), prefix, suffix)
    return Path(tempfile.mkdtemp(prefix=owned_prefix(prefix), suffix=suffix, dir=dir))


def staging_file(prefix: str, suffix: str, dir: str | os.PathLike) -> Path:
    """An empty mkstemp file named for this process, after removing those of dead ones."""
    remove_dead(Path(dir), prefix, suffix)
    handle, name = tempfile.mkstemp(prefix=owned_prefix(prefix), suffix=suffix, dir=dir)
    os.close(handle)
    return Path(name)
