"""``edgeport verify BUNDLE --platform linux/arm64``: the bundle's own golden check run by
the edgeport runtime in an emulated ARM64 userland (emulator.py), before anyone flashes a
board.  The guest's outputs are compared, on this host, with the bundle's golden outputs
(against the bundle's own thresholds) and with this host's outputs for the same inputs.

Emulation is 150-400x slower than the hardware: it proves that the bundle loads and gives
the same numbers on the platform, never how fast it runs there.  The result is recorded
beside the bundle, in ``<bundle>.platforms.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError, InvalidOptionError, ParityError, UnsupportedModelError
from ..manifest import now_iso
from .emulator import (check_cpu, get_platform, guest_requirements, guest_site, host_tools, run_guest,
                       userland)
from ..workdirs import work_folder

GUEST_TIMEOUT_S = 1800
SPEED_NOTE = "emulated: proves the bundle loads and matches on this platform, never its speed there"


@dataclass
class PlatformReport:
    platform: str
    cpu: str
    bundle: str
    guest: dict[str, Any] = field(default_factory=dict)        # what the guest reported it ran on
    golden: dict[str, Any] = field(default_factory=dict)       # guest vs golden.npz, with the thresholds
    vs_host: dict[str, Any] = field(default_factory=dict)      # guest vs this host, same inputs
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    checked: str = field(default_factory=now_iso)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {"platform": self.platform, "cpu": self.cpu, "bundle": self.bundle, "passed": self.passed,
                "guest": self.guest, "golden": self.golden, "vs_host": self.vs_host, "failures": self.failures,
                "seconds": self.seconds, "checked": self.checked, "note": SPEED_NOTE}

    def summary(self) -> str:
        from ..parity import thresholds_text

        guest = self.guest
        lines = [f"{self.bundle} on {self.platform} ({self.cpu}, emulated by qemu)",
                 f"guest      machine {guest.get('machine', '?')}, Python {guest.get('python', '?')}, onnxruntime "
                 f"{guest.get('onnxruntime', '?')}, numpy {guest.get('numpy', '?')}, {guest.get('provider', '?')}"]
        for name, figures in self.golden.get("outputs", {}).items():
            lines.append(f"golden     {name}: {_figures(figures)}")
        if self.golden.get("sentence_embedding"):
            lines.append(f"golden     sentence embedding: {_figures(self.golden['sentence_embedding'])}")
        lines.append(f"thresholds {thresholds_text(self.golden.get('thresholds', {}))}")
        for name, figures in self.vs_host.items():
            lines.append(f"vs host    {name}: {_figures(figures)}")
        lines.append(f"note       {SPEED_NOTE} ({self.seconds:.0f} s)")
        lines.append("PASSED" if self.passed else "FAILED: " + "; ".join(self.failures))
        return "\n".join(lines)

    def raise_for_failure(self) -> "PlatformReport":
        if self.failures:
            raise ParityError(f"'{self.bundle}' on {self.platform}: " + "; ".join(self.failures))
        return self


def _figures(figures: dict) -> str:
    parts = [f"max abs {figures['max_abs_err']:.3g}"] if figures.get("max_abs_err") is not None else []
    if figures.get("min_cosine") is not None:
        parts.append(f"cosine min {figures['min_cosine']:.6f}")
    if figures.get("top1_agreement") is not None:
        parts.append(f"top-1 {figures['top1_agreement']:.4f}")
    return ", ".join(parts) or "-"


def verify_on_platform(bundle, platform: str, cpu: str | None = None, budget=None, progress=None,
                       trusted_key: str | None = None) -> PlatformReport:
    """Run ``bundle``'s golden check on ``platform`` (emulated) and compare on this host."""
    from ..parity import compare_outputs, recorded_thresholds
    from ..runtime.bundle import open_bundle, read_meta
    from ..runtime.formats import make_runner
    from ..runtime.onnxrt import QUIET_CPU

    say = progress or (lambda message: None)
    spec = get_platform(platform)
    cpu = check_cpu(cpu or spec.default_cpu)
    bundle = Path(bundle)
    if bundle.is_dir():
        raise InvalidOptionError(f"'{bundle}' is a folder; --platform checks a bundle (edgeport package --format "
                                 "bundle)")
    artifact = open_bundle(bundle, trusted_key=trusted_key)     # integrity (and who made it) first, on the host
    from ..runtime.formats import format_of

    refusal = format_of(artifact).emulation_refusal
    if refusal:
        raise UnsupportedModelError(f"'{bundle}' cannot be checked on {platform}: {refusal}")
    if artifact.task == "text-generation":
        raise UnsupportedModelError(f"'{bundle}' is a causal LM: the emulated check runs an encoder's golden inputs "
                                    f"on {platform}, and has no generation check yet")
    golden = artifact.golden()
    if golden is None:
        raise ArtifactError(f"'{bundle}' carries no golden.npz to check on {platform}")
    tools = host_tools(spec)
    requirements = guest_requirements(read_meta(artifact.path.parent)["runtime_requirements"])
    rootfs = userland(spec, tools, say)
    site = guest_site(spec, requirements, say)
    inputs, expected = golden
    report = PlatformReport(platform, cpu, str(bundle))
    start = time.perf_counter()
    with work_folder("edgeport-platform-") as work_dir:
        work = Path(work_dir)
        (work / "out").mkdir()
        say(f"running the golden check on {platform} ({cpu}, emulated; minutes, not seconds)...")
        try:
            proc = run_guest(spec, tools, rootfs, site, cpu, Path(__file__).with_name("guest.py"),
                             [str(bundle.resolve()), str(work / "out")], work, GUEST_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            report.failures.append(f"the guest did not finish within {GUEST_TIMEOUT_S} s")
            return _recorded(report, bundle, start)
        if proc.returncode != 0:
            reason = _guest_failure(proc)
            report.failures.append(f"the bundle does not run on {platform}: {reason}")
            return _recorded(report, bundle, start)
        report.guest = json.loads((work / "out" / "info.json").read_text())
        with np.load(work / "out" / "outputs.npz") as data:
            got = {k: data[k] for k in data.files}
    if report.guest.get("machine") != spec.machine:
        report.failures.append(f"the guest ran on '{report.guest.get('machine')}', not {spec.machine}")
    thresholds = budget.thresholds() if budget is not None and budget.given else recorded_thresholds(artifact)
    check = compare_outputs(expected, got, task=artifact.task, token_mask=inputs.get("attention_mask"),
                            data="golden inputs", reference_name="golden.npz", thresholds=thresholds)
    report.golden = check.to_dict()
    report.failures += [f"against golden.npz: {failure}" for failure in check.failures]
    with make_runner(artifact, QUIET_CPU) as host:
        here = host.run(inputs)
    host_check = compare_outputs(here, got, task=artifact.task, token_mask=inputs.get("attention_mask"))
    report.vs_host = host_check.to_dict().get("outputs", {})
    return _recorded(report, bundle, start)


def _guest_failure(proc: subprocess.CompletedProcess) -> str:
    if proc.returncode < 0:
        return f"the guest process was killed by signal {-proc.returncode} (crashed under emulation)"
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"exit code {proc.returncode}"


def _recorded(report: PlatformReport, bundle: Path, start: float) -> PlatformReport:
    """Write the result into ``<bundle>.platforms.json`` (one entry per platform, replaced
    atomically), so the verified platforms travel with the bundle."""
    report.seconds = round(time.perf_counter() - start, 1)
    record = bundle.with_name(bundle.name + ".platforms.json")
    try:
        entries = json.loads(record.read_text()) if record.is_file() else {}
    except (OSError, ValueError):
        entries = {}
    entries[report.platform] = report.to_dict()
    temporary = record.with_name(record.name + f".{os.getpid()}.tmp")
    try:
        temporary.write_text(json.dumps(entries, indent=1))
        os.replace(temporary, record)
    except OSError:
        temporary.unlink(missing_ok=True)         # a read-only folder: the report still returns
    return report
