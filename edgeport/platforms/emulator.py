"""An emulated ARM64 Linux userland on this x86-64 machine, for running a bundle's golden check
where it will be deployed: Debian's ``qemu-user-static`` runs an aarch64 Python from a
Debian rootfs that ``mmdebstrap`` extracts (no chroot, no binfmt, no root needed to run),
with aarch64 wheels that the host's pip downloads.

Measured on this machine (qemu 7.2, 2026-11): the rootfs extracts in about 9 s and the
wheels install in about 6 s; both are cached, keyed by platform, Debian suite, Python and
the exact requirements, so a second verify starts at once.  qemu 7.2 shows the guest the
host's x86 ``/proc/cpuinfo``, and onnxruntime's CPU detection then crashes the guest on
import: each run gets a prefix whose ``proc/cpuinfo`` describes the emulated CPU
(``-L`` serves paths from the prefix first).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidOptionError, MissingDependencyError
from ..processes import python_module
from ..workdirs import staging_folder

DEBIAN_SUITE = "bookworm"
GUEST_PYTHON = "3.11"
INSTALL_HINT = ("emulating ARM64 needs Debian's qemu-user-static and mmdebstrap: "
                "sudo apt-get install qemu-user-static mmdebstrap")
_A72_FEATURES = "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"
_A76_FEATURES = _A72_FEATURES + " atomics fphp asimdhp asimdrdm lrcpc dcpop asimddp"
# The emulated CPUs a guest can be given, with what its /proc/cpuinfo says (part numbers from
# Arm's technical reference manuals; features as the kernel lists them for these cores).
CPUS = {"cortex-a53": ("0xd03", _A72_FEATURES), "cortex-a57": ("0xd07", _A72_FEATURES),
        "cortex-a72": ("0xd08", _A72_FEATURES), "cortex-a76": ("0xd0b", _A76_FEATURES),
        "neoverse-n1": ("0xd0c", _A76_FEATURES)}


@dataclass(frozen=True)
class Platform:
    name: str
    debian_arch: str
    machine: str                 # what platform.machine() says in the guest
    qemu: str
    pip_platforms: tuple[str, ...]
    default_cpu: str


PLATFORMS = {
    # manylinux_2_28 first: under manylinux2014 alone pip only finds onnxruntime 1.16.
    "linux/arm64": Platform("linux/arm64", "arm64", "aarch64", "qemu-aarch64-static",
                            ("manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64"),
                            "cortex-a72"),
}


def get_platform(name: str) -> Platform:
    if name not in PLATFORMS:
        raise InvalidOptionError(f"unknown platform '{name}'; edgeport emulates {', '.join(PLATFORMS)}")
    return PLATFORMS[name]


def check_cpu(cpu: str) -> str:
    if cpu not in CPUS:
        raise InvalidOptionError(f"unknown --cpu '{cpu}'; choose one of {', '.join(CPUS)}")
    return cpu


def cpuinfo(cpu: str) -> str:
    part, features = CPUS[cpu]
    return "".join(f"processor\t: {n}\nBogoMIPS\t: 48.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
                   f"CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: {part}\nCPU revision\t: 0\n\n"
                   for n in range(2))


def host_tools(platform: Platform) -> dict[str, str]:
    """The host programs emulation needs, or MissingDependencyError naming their packages."""
    tools = {name: shutil.which(name) for name in (platform.qemu, "mmdebstrap")}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        raise MissingDependencyError(f"{', '.join(missing)} not found on PATH; {INSTALL_HINT}")
    return tools


def cache_root() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edgeport" / "platforms"


def _build_once(dest: Path, build) -> Path:
    """``build(tmp)`` into a fresh folder, then an atomic rename to ``dest``: a failed or
    concurrent build never leaves a half-made cache entry."""
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = staging_folder(f".{dest.name}.", "", dest.parent)      # a killed build's folder goes with the next
    try:
        build(work)
        try:
            os.rename(work, dest)
        except OSError:
            if not dest.is_dir():       # not another build finishing first
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


def userland(platform: Platform, tools: dict[str, str], say) -> Path:
    """The cached Debian rootfs with the guest's Python."""
    dest = cache_root() / f"rootfs-{platform.debian_arch}-{DEBIAN_SUITE}-python{GUEST_PYTHON}"

    def build(work: Path) -> None:
        say(f"extracting a Debian {DEBIAN_SUITE} {platform.debian_arch} userland (once; cached in {dest})...")
        mirror = os.environ.get("EDGEPORT_DEBIAN_MIRROR", "http://deb.debian.org/debian")
        packages = f"python{GUEST_PYTHON}-minimal,libpython{GUEST_PYTHON}-stdlib,libstdc++6"
        proc = subprocess.run([tools["mmdebstrap"], f"--architectures={platform.debian_arch}", "--variant=extract",
                               f"--include={packages}", DEBIAN_SUITE, str(work / "rootfs"), mirror],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise MissingDependencyError(f"mmdebstrap could not extract the {platform.debian_arch} userland from "
                                         f"{mirror}: {_last_line(proc.stderr)}")
        for entry in (work / "rootfs").iterdir():
            entry.rename(work / entry.name)
        (work / "rootfs").rmdir()

    return _build_once(dest, build)


def guest_requirements(requirements: list[str]) -> list[str]:
    """The bundle's runtime requirements the guest installs from PyPI: its compiled
    dependencies.  edgeport itself is pure Python and comes from this host (run_guest);
    click serves only the command line."""
    skipped = ("edgeport", "click")
    # A local version label names a build of this host's index (torch's "+cpu"); the guest's
    # wheels come from PyPI, where the same release has none.
    return sorted(r.split("+")[0] for r in requirements if r.split("==")[0].strip().lower() not in skipped)


def guest_site(platform: Platform, requirements: list[str], say) -> Path:
    """The cached folder of aarch64 wheels for ``requirements``, installed by the host's pip."""
    key = hashlib.sha256("\n".join([platform.name, GUEST_PYTHON, *requirements]).encode()).hexdigest()[:16]
    dest = cache_root() / f"site-{platform.debian_arch}-python{GUEST_PYTHON}-{key}"

    def build(work: Path) -> None:
        say(f"installing {platform.machine} wheels: {', '.join(requirements)} (once; cached)...")
        command = [*python_module("pip"), "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                   "--target", str(work), "--python-version", GUEST_PYTHON, "--implementation", "cp",
                   "--abi", f"cp{GUEST_PYTHON.replace('.', '')}", "--abi", "abi3", "--abi", "none",
                   "--only-binary=:all:"]
        for tag in platform.pip_platforms:
            command += ["--platform", tag]
        proc = subprocess.run(command + requirements, capture_output=True, text=True)
        if proc.returncode != 0:
            problem = ([line for line in proc.stderr.splitlines() if line.startswith("ERROR")]
                       or [_last_line(proc.stderr)])
            raise MissingDependencyError(f"pip could not get {platform.machine} wheels for Python {GUEST_PYTHON} of "
                                         f"{', '.join(requirements)}: {problem[0]}")

    return _build_once(dest, build)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def run_guest(platform: Platform, tools: dict[str, str], rootfs: Path, site: Path, cpu: str, script: Path,
              arguments: list[str], work: Path, timeout: float) -> subprocess.CompletedProcess:
    """Run ``script`` with the guest's Python under qemu, emulating ``cpu``: a per-run prefix
    links the cached rootfs and adds the CPU's /proc/cpuinfo; this host's edgeport source
    goes on the guest's path after the wheels."""
    import edgeport

    prefix = work / "prefix"
    prefix.mkdir()
    for entry in rootfs.iterdir():
        if entry.name != "proc":
            (prefix / entry.name).symlink_to(entry)
    (prefix / "proc").mkdir()
    (prefix / "proc" / "cpuinfo").write_text(cpuinfo(cpu))
    source = work / "edgeport-source"
    shutil.copytree(Path(edgeport.__file__).parent, source / "edgeport",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "XDG_CACHE_HOME": str(work / "cache"),
           "PYTHONPATH": f"{site}:{source}", "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1",
           "QEMU_CPU": cpu, "OMP_NUM_THREADS": "1"}
    python = prefix / "usr" / "bin" / f"python{GUEST_PYTHON}"
    return subprocess.run([tools[platform.qemu], "-L", str(prefix), str(python), str(script), *arguments],
                          capture_output=True, text=True, env=env, timeout=timeout)
