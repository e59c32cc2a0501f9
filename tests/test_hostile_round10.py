"""The tenth pass: what a new user met on an AVX2 host, mended."""

from __future__ import annotations

from helpers import assert_fails


def test_a_missing_choice_option_lists_its_choices_on_one_readable_line(cli, tmp_path):
    """click lists a missing choice's values a line each; the one-line escape printed them as
    'Choose from:\\n\\tint8-dynamic,\\n\\tint8-static...'."""
    result = cli("quantize", tmp_path / "fp32", "-o", tmp_path / "int8")
    assert_fails(result, 2, "Missing option '--mode'. Choose from: int8-dynamic, int8-static, fp16",
                 absent=tmp_path / "int8")
    assert "\\n" not in result.output and "\\t" not in result.output and result.output.count("\n") == 1
