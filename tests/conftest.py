"""Shared fixtures: the real all-MiniLM-L6-v2, real sentences, tiny models, a CLI runner."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tiny_models import build_tiny, minilm_path  # noqa: E402


def pytest_collection_modifyitems(config, items):
    try:
        import onnxruntime
        has_gpu = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    except ImportError:
        has_gpu = False
    if not has_gpu:
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
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
def tiny_models(tmp_path_factory):
    """Build (and cache) tiny models: tiny_models(model_type, task) -> folder."""
    root = tmp_path_factory.mktemp("tiny")
    cache: dict[tuple[str, str], Path] = {}

    def get(model_type: str, task: str) -> Path:
        key = (model_type, task)
        if key not in cache:
            cache[key] = build_tiny(root / f"{model_type}-{task}", model_type, task)
        return cache[key]

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


def folder_names(path: Path) -> set[str]:
    return {p.name for p in path.iterdir()} if path.exists() else set()
