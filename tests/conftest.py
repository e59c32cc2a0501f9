"""Shared fixtures: the real all-MiniLM-L6-v2, real sentences, tiny models, a CLI runner."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _has_nvidia_gpu() -> bool:
    if shutil.which("nvidia-smi") is None and not Path("/dev/nvidia0").exists():
        return False
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return True


def pytest_collection_modifyitems(config, items):
    if _has_nvidia_gpu():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (marked gpu); none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    from tiny_models import minilm_path

    return minilm_path()


@pytest.fixture(scope="session")
def sentences() -> list[str]:
    from edgeport.data import stdlib_sentences

    return stdlib_sentences(120)


@pytest.fixture(scope="session")
def minilm_onnx(tmp_path_factory, minilm_dir):
    """all-MiniLM-L6-v2 exported once per session (about 10 s)."""
    from edgeport.export.onnx import export_onnx

    return export_onnx(minilm_dir, tmp_path_factory.mktemp("minilm") / "onnx")


@pytest.fixture(scope="session")
def minilm_int8(tmp_path_factory, minilm_onnx):
    """The default INT8 recipe on MiniLM, once per session."""
    from edgeport.quantize import QuantizeOptions, quantize

    return quantize(minilm_onnx.path, tmp_path_factory.mktemp("minilm-int8") / "int8", QuantizeOptions(mode="int8-dynamic"))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Build (and cache) tiny models: tiny_models(model_type, task) -> folder."""
    from tiny_models import build_tiny

    root = tmp_path_factory.mktemp("tiny")
    cache: dict[tuple[str, str], Path] = {}

    def get(model_type: str, task: str) -> Path:
        key = (model_type, task)
        if key not in cache:
            cache[key] = build_tiny(root / f"{model_type}-{task}", model_type, task)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def onnx_artifacts(tmp_path_factory):
    """Torch-free artifacts built with onnx.helper (see onnx_models.py), once per session."""
    import onnx_models

    root = tmp_path_factory.mktemp("onnx-models")
    return {"encoder": onnx_models.text_encoder_artifact(root / "encoder"),
            "classifier": onnx_models.classifier_artifact(root / "classifier")}


@pytest.fixture(scope="session")
def digits_setup(tmp_path_factory):
    import numpy as np

    from edgeport.data import digits_images
    from edgeport.export.onnx import ExportOptions, export_onnx
    from factories.digits import TRAIN

    root = tmp_path_factory.mktemp("digits")
    fp32 = export_onnx("factories.digits:trained_digits_cnn", root / "fp32",
                       ExportOptions(inputs=["images:1x1x8x8:float32"], output_names=["logits"]))
    images, labels = digits_images()
    np.savez(root / "calib.npz", images=images[:200])
    np.savez(root / "heldout.npz", images=images[TRAIN:])
    return root, fp32, images[TRAIN:], labels[TRAIN:]


@pytest.fixture(scope="session")
def overflow_fp32(tmp_path_factory):
    from edgeport.export.onnx import ExportOptions, export_onnx

    return export_onnx("factories.digits:overflowing", tmp_path_factory.mktemp("ovf") / "fp32",
                       ExportOptions(inputs=["features:8x16:float32"]))


@pytest.fixture(scope="session")
def lms(tmp_path_factory):
    """Tiny trained causal LMs per family, with a trained LoRA merged and exported (GenAI)."""
    from edgeport.export.lora import MergeOptions, merge
    from edgeport.export.onnx import export_onnx
    from llm_models import build_lm, train_lora

    root = tmp_path_factory.mktemp("lms")
    cache = {}

    def get(family: str) -> dict:
        if family not in cache:
            base = build_lm(root / family / "base", family)
            adapter = train_lora(base, root / family / "lora")
            merged = merge(base, root / family / "merged", MergeOptions([str(adapter)]))
            cache[family] = {"base": base, "lora": adapter, "merged": merged,
                             "onnx": export_onnx(merged, root / family / "onnx")}
        return cache[family]

    return get


@pytest.fixture()
def cli():
    """Invoke the real click command in-process; returns click's Result."""
    from click.testing import CliRunner

    from edgeport.cli import main

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke
