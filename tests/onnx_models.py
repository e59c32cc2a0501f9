"""Small models built with onnx.helper, and artifacts around them, for the tests where torch
is not the point (runtime, parity, bench, packaging, serving).  Weights are seeded random;
the text encoder has a real word-level tokenizer trained on standard-library sentences.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

HIDDEN = 16
LABELS = ["cat", "dog", "bird"]


def _word_tokenizer(path: Path) -> int:
    """A word-level tokenizer over the docstring sentences, with BERT's special tokens."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    from edgeport.data import stdlib_sentences

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(vocab_size=600, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    tokenizer.train_from_iterator(stdlib_sentences(600) + stdlib_sentences(600, split="calib"), trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer.save(str(path))
    return tokenizer.get_vocab_size()


def text_encoder_model(vocab: int, seed: int = 0):
    """input_ids, attention_mask [batch, sequence] -> last_hidden_state [batch, sequence, 16]:
    embedding lookup, two MatMul layers with a LayerNorm, masked."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = {
        "embeddings": rng.standard_normal((vocab, HIDDEN)).astype(np.float32),
        "w1": (rng.standard_normal((HIDDEN, 4 * HIDDEN)) / 4).astype(np.float32),
        "b1": rng.standard_normal(4 * HIDDEN).astype(np.float32) * 0.1,
        "w2": (rng.standard_normal((4 * HIDDEN, HIDDEN)) / 8).astype(np.float32),
        "gamma": np.ones(HIDDEN, np.float32), "beta": np.zeros(HIDDEN, np.float32),
        "axes": np.array([-1], np.int64),
    }
    nodes = [
        helper.make_node("Gather", ["embeddings", "input_ids"], ["embedded"], name="embed"),
        helper.make_node("LayerNormalization", ["embedded", "gamma", "beta"], ["normed"], name="norm", axis=-1),
        helper.make_node("MatMul", ["normed", "w1"], ["up"], name="up"),
        helper.make_node("Add", ["up", "b1"], ["up_biased"], name="up_bias"),
        helper.make_node("Relu", ["up_biased"], ["act"], name="act"),
        helper.make_node("MatMul", ["act", "w2"], ["down"], name="down"),
        helper.make_node("Add", ["down", "embedded"], ["residual"], name="residual"),
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], name="mask_cast", to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_f", "axes"], ["mask_3d"], name="mask_unsqueeze"),
        helper.make_node("Mul", ["residual", "mask_3d"], ["last_hidden_state"], name="apply_mask"),
    ]
    graph = helper.make_graph(
        nodes, "text_encoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", HIDDEN])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def classifier_model(features: int = 8, seed: int = 0):
    """features [batch, 8] float32 -> logits [batch, 3]: Gemm, Relu, Gemm."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = {"w1": rng.standard_normal((features, 32)).astype(np.float32),
               "b1": rng.standard_normal(32).astype(np.float32),
               "w2": rng.standard_normal((32, len(LABELS))).astype(np.float32),
               "b2": rng.standard_normal(len(LABELS)).astype(np.float32)}
    nodes = [helper.make_node("Gemm", ["features", "w1", "b1"], ["hidden"], name="fc1"),
             helper.make_node("Relu", ["hidden"], ["act"], name="relu"),
             helper.make_node("Gemm", ["act", "w2", "b2"], ["logits"], name="fc2")]
    graph = helper.make_graph(
        nodes, "classifier",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(LABELS)])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _write(folder: Path, model, task: str, processing: dict, inputs: list, outputs: list,
           golden_inputs: dict[str, np.ndarray], files: dict[str, Path] | None = None):
    import onnx
    import onnxruntime as ort

    from edgeport.artifact import Artifact, finalize_manifest
    from edgeport.golden import save_golden
    from edgeport.manifest import Manifest, tool_versions
    from edgeport.outputs import staged_output

    with staged_output(folder, force=False) as staging:
        for name, source in (files or {}).items():
            shutil.copyfile(source, staging / name)
        onnx.save_model(model, str(staging / "model.onnx"))
        session = ort.InferenceSession(str(staging / "model.onnx"), providers=["CPUExecutionProvider"])
        names = [o["name"] for o in outputs]
        save_golden(staging / "golden.npz", golden_inputs, dict(zip(names, session.run(names, golden_inputs))))
        manifest = Manifest(task=task, processing=processing,
                            graph={"format": "onnx", "file": "model.onnx", "opset": 17, "inputs": inputs,
                                   "outputs": outputs, "static_shapes": False, "external_data": False},
                            precision={"mode": "fp32", "kept_fp32_nodes": [], "calibration": None})
        manifest.add_lineage("export", {"source": "tests/onnx_models.py", "task": task, "model_type": "test"},
                             tool_versions("onnx"))
        finalize_manifest(staging, manifest)
    return Artifact.load(folder)


def text_encoder_artifact(folder: Path):
    """A feature-extraction artifact that takes text: the encoder above plus its tokenizer."""
    from edgeport.runtime.processing import TextProcessor

    work = Path(tempfile.mkdtemp(prefix="test-tokenizer-"))
    tokenizer_file = work / "tokenizer.json"
    vocab = _word_tokenizer(tokenizer_file)
    processing = {"tokenizer": "tokenizer.json", "max_length": 64, "pad_token": "[PAD]", "pad_id": 0,
                  "pooling": "mean", "normalize": True}
    text = TextProcessor(tokenizer_file, 64, ["input_ids", "attention_mask"], "[PAD]", 0)
    from edgeport.data import stdlib_sentences

    golden = text.encode(stdlib_sentences(12))
    inputs = [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"], "range": [0, vocab - 1],
               "max_shape": [None, 64]},
              {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "sequence"], "range": [0, 1],
               "max_shape": [None, 64]}]
    outputs = [{"name": "last_hidden_state", "dtype": "float32", "shape": ["batch", "sequence", HIDDEN]}]
    try:
        return _write(folder, text_encoder_model(vocab), "feature-extraction", processing, inputs, outputs, golden,
                      {"tokenizer.json": tokenizer_file})
    finally:
        shutil.rmtree(work)


def classifier_artifact(folder: Path):
    """A custom-task classifier over 8 float features, with golden inputs."""
    rng = np.random.default_rng(1)
    golden = {"features": rng.standard_normal((16, 8)).astype(np.float32)}
    inputs = [{"name": "features", "dtype": "float32", "shape": ["batch", 8]}]
    outputs = [{"name": "logits", "dtype": "float32", "shape": ["batch", len(LABELS)]}]
    return _write(folder, classifier_model(), "custom", {"labels": LABELS}, inputs, outputs, golden)
