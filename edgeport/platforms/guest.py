"""Runs inside the emulated guest: the bundle opened and run by the edgeport runtime on its
golden inputs (the runtime only: numpy, onnxruntime, and tokenizers where the bundle needs
them).  Standard library at the top: nothing here may need what the guest lacks.

    python guest.py BUNDLE OUT_DIR

writes OUT_DIR/outputs.npz (the model's outputs) and OUT_DIR/info.json (what ran: machine,
CPU, versions, provider, seconds); any failure is one line on stderr and exit code 3.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path


def _cpu() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown"
    parts = {line.split(":", 1)[1].strip() for line in lines if line.startswith("CPU part")}
    return ", ".join(sorted(parts)) or "unknown"


def main(bundle: str, out: str) -> None:
    start = time.perf_counter()
    import numpy
    import onnxruntime

    from edgeport.runtime import load

    model = load(bundle, device="cpu")
    golden = model.artifact.golden()
    if golden is None:
        raise SystemExit("the bundle has no golden.npz")
    inputs, _ = golden
    # As every golden check runs them (parity.golden_check): the golden rows in the calls they
    # were made with, which a dynamically quantized graph's outputs depend on.
    outputs = model.runner.run_in_rows(inputs)
    numpy.savez(Path(out) / "outputs.npz", **outputs)
    versions = {}
    for name in ("executorch", "torch"):            # present where the bundle's format needs them
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "?")
    (Path(out) / "info.json").write_text(json.dumps({
        "machine": platform.machine(), "cpu_part": _cpu(), "python": platform.python_version(),
        "numpy": numpy.__version__, "onnxruntime": onnxruntime.__version__, "provider": model.provider,
        **versions, "seconds": round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":
    try:
        main(sys.argv[1], sys.argv[2])
    except SystemExit:
        raise
    except BaseException as exc:        # the host reports it; a traceback under qemu helps no one
        print(f"{type(exc).__name__}: {exc}".replace("\n", " ")[:800], file=sys.stderr)
        sys.exit(3)
