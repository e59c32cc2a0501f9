"""The installed console script and the error bridge: exit codes, no tracebacks, --debug."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from edgeport.cli import main
from edgeport.errors import SourceError


def test_console_script_reports_errors_with_exit_codes(tmp_path):
    exe = shutil.which("edgeport") or str(Path(sys.executable).parent / "edgeport")
    proc = subprocess.run([exe, "inspect", str(tmp_path / "missing")], capture_output=True, text=True)
    assert proc.returncode == 7
    assert proc.stderr.startswith("error: no artifact at")
    assert "Traceback" not in proc.stderr


def test_debug_shows_the_traceback(tmp_path):
    result = CliRunner().invoke(main, ["--debug", "export", "onnx", str(tmp_path / "nope"), "-o", str(tmp_path / "o")])
    assert isinstance(result.exception, SourceError)


def test_debug_reaches_errors_inside_nested_groups(tmp_path):
    result = CliRunner().invoke(main, ["--debug", "bench", "compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert result.exception is not None and not isinstance(result.exception, SystemExit)


def test_programming_errors_are_not_disguised_as_user_errors(monkeypatch, tmp_path):
    """Only EdgeportError is turned into 'error: ...'; a bug surfaces as a bug."""
    import edgeport.inspection

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(edgeport.inspection, "inspect_artifact", broken)
    result = CliRunner().invoke(main, ["inspect", str(tmp_path)])
    assert isinstance(result.exception, ZeroDivisionError)
