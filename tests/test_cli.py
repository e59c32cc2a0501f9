"""The installed console script: help is instant and imports nothing heavy."""

from __future__ import annotations

import subprocess
import sys


def test_help_imports_nothing_heavy():
    code = ("import sys; from edgeport.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'transformers', 'onnx', 'onnxruntime', 'peft', 'optimum', 'numpy')"
            " if m in sys.modules]\nprint('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    assert "export" in out and "inspect" in out


def test_console_script_reports_errors_with_exit_codes(tmp_path):
    import shutil

    exe = shutil.which("edgeport") or str(__import__("pathlib").Path(sys.executable).parent / "edgeport")
    proc = subprocess.run([exe, "inspect", str(tmp_path / "missing")], capture_output=True, text=True)
    assert proc.returncode == 7
    assert proc.stderr.startswith("error: no artifact at")
    assert "Traceback" not in proc.stderr
