"""The fifth hostile pass: run, serve, causal LMs, ExecuTorch, and the places earlier passes
left alone."""

from __future__ import annotations

import os
import sys

import pytest

from edgeport.errors import InvalidOptionError
from helpers import assert_fails


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_an_output_where_no_file_can_be_created_is_refused_before_any_work(cli, onnx_artifacts):
    # /proc passes every permission-bit check for root and refuses every new file.
    assert os.path.isdir("/proc")
    for option, target in (("-o", "/proc/edgeport-out"), ("-o", "/proc/edgeport/out")):
        assert_fails(cli("quantize", onnx_artifacts["classifier"].path, option, target, "--mode", "fp16"),
                     InvalidOptionError.exit_code, "cannot create files in '/proc'")
    assert_fails(cli("package", onnx_artifacts["classifier"].path, "--format", "bundle", "-o", "/proc/b.tar.gz"),
                 InvalidOptionError.exit_code, "cannot create files in '/proc'")


@pytest.mark.slow
def test_merge_onto_a_full_disk_is_one_line_naming_the_output(cli, tmp_path):
    import subprocess

    import torch
    import transformers

    from adapters import train_adapter

    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    config = transformers.LlamaConfig(vocab_size=200, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    base = tmp_path / "llama"
    transformers.LlamaForCausalLM(config).save_pretrained(base)
    adapter = train_adapter(base, tmp_path / "lora", targets=("q_proj",), model_class="LlamaForCausalLM")
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)]).returncode:
        pytest.skip("running as root without permission to mount a file system")
    try:
        result = cli("merge", base, "--adapter", adapter, "-o", small / "merged")
        assert_fails(result, 1, f"'{small / 'merged'}': no space left on the device")
        assert os.listdir(small) == []         # the staging folder went with the failure
    finally:
        subprocess.run(["umount", str(small)])


def test_export_sequence_length_without_static_shapes_is_refused(cli, tmp_path):
    # A dynamic graph takes any length: the option would have changed nothing.
    assert_fails(cli("export", "onnx", "no-such-model", "-o", tmp_path / "out", "--sequence-length", "64"),
                 InvalidOptionError.exit_code, "--sequence-length", "--static-shapes", absent=tmp_path / "out")
