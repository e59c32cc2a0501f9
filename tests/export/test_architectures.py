"""Any architecture transformers' Auto classes load is tried: tiny random models of the
families edgeport used to list, of families it never listed, and convolutional vision
models with dynamic height and width.  Each export is checked in ONNX Runtime against
PyTorch at batch sizes, lengths and image sizes the export never saw."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from edgeport.errors import ModelInputError
from edgeport.export.onnx import export_onnx
from edgeport.export.registry import registered
from edgeport.runtime import load
from tiny_models import DIRECT_CLASSES, TASK_CLASSES

OLD_TEXT = ("bert", "distilbert", "roberta", "gpt2", "electra", "albert", "xlm-roberta", "mpnet", "deberta-v2",
            "camembert", "deberta")
OLD_VISION = ("vit", "deit", "resnet", "convnext", "swin", "mobilenet_v2", "dinov2", "beit")
NEW_TEXT = ("modernbert", "roformer", "mobilebert", "convbert", "squeezebert", "ernie", "megatron-bert", "rembert")
NEW_VISION = ("regnet", "convnextv2", "poolformer", "focalnet", "mobilenet_v1", "bit", "levit", "swinv2")
# Convolutional networks take any image size; patch-grid transformers keep the exported one.
DYNAMIC_SIZE = ("resnet", "convnext", "mobilenet_v2", "regnet", "convnextv2", "poolformer", "focalnet",
                "mobilenet_v1", "bit")
FIXED_SIZE = ("vit", "deit", "levit")   # DINOv2 and BEiT interpolate their positions: any size


def _torch_reference(folder, model_type, task, feeds, output):
    import transformers

    name = DIRECT_CLASSES.get((model_type, task), TASK_CLASSES[task])
    model = getattr(transformers, name).from_pretrained(folder).eval()
    kwargs = {k: torch.from_numpy(v) for k, v in feeds.items()}
    if model_type == "gpt2":
        kwargs["use_cache"] = False
    with torch.no_grad():
        return model(**kwargs)[output].numpy()


def _check_unseen_shapes(artifact, folder, model_type, task):
    manifest = artifact.manifest
    assert manifest.task == task and manifest.parity["export"]["passed"]
    names = [i["name"] for i in manifest.graph["inputs"]]
    output = manifest.graph["outputs"][0]["name"]
    assert manifest.graph["inputs"][0]["shape"][0] == "batch"
    rng = np.random.default_rng(1)
    if "pixel_values" in names:
        height, width = manifest.processing["image"]["size"]
        if manifest.graph["inputs"][0]["shape"][2] == "height":
            height, width = height + 24, width + 40           # an image size the export never saw
        feeds = {"pixel_values": rng.standard_normal((5, 3, height, width)).astype(np.float32)}
    else:
        assert manifest.graph["inputs"][0]["shape"][1] == "sequence"
        ids = rng.integers(5, 900, size=(4, 19)).astype(np.int64)
        mask = np.ones_like(ids)
        mask[1, 12:] = 0
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        feeds = {k: v for k, v in feeds.items() if k in names}
    session = ort.InferenceSession(str(artifact.model_path), providers=["CPUExecutionProvider"])
    got = session.run([output], feeds)[0]
    expected = _torch_reference(folder, model_type, task, feeds, output)
    assert got.shape == expected.shape
    if "attention_mask" in feeds and got.ndim == 3:
        keep = feeds["attention_mask"].astype(bool)
        got, expected = got[keep], expected[keep]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-3)


CASES = ([(m, t) for m in OLD_TEXT + NEW_TEXT for t in ("feature-extraction", "text-classification",
                                                        "token-classification")] +
         [(m, t) for m in OLD_VISION + NEW_VISION for t in ("feature-extraction", "image-classification")])


@pytest.mark.slow
@pytest.mark.parametrize("model_type,task", CASES)
def test_architectures_export_with_working_dynamic_axes(tmp_path, tiny_models, model_type, task):
    folder = tiny_models(model_type, task)
    artifact = export_onnx(folder, tmp_path / "out")     # task detected from config.json
    _check_unseen_shapes(artifact, folder, model_type, task)


@pytest.mark.parametrize("model_type,task", [("modernbert", "text-classification"),
                                             ("regnet", "image-classification")])
def test_families_outside_the_old_list_export(tmp_path, tiny_models, model_type, task):
    """The quick loop's share of the sweep above: one new text family, one new vision family."""
    folder = tiny_models(model_type, task)
    artifact = export_onnx(folder, tmp_path / "out")
    assert model_type not in registered()            # exported by the generic path, not an entry
    _check_unseen_shapes(artifact, folder, model_type, task)


@pytest.mark.slow
@pytest.mark.parametrize("model_type", DYNAMIC_SIZE)
def test_convolutional_models_take_any_image_size(tmp_path, tiny_models, model_type):
    artifact = export_onnx(tiny_models(model_type, "image-classification"), tmp_path / "out")
    graph = artifact.manifest.graph
    assert graph["inputs"][0]["shape"] == ["batch", 3, "height", "width"]
    assert artifact.manifest.processing["image"]["dynamic_size"] is True and "fixed_size_reason" not in graph
    model = load(artifact.path)
    for size in (32, 48):                     # e.g. a 32x32 image on a network exported at its config size
        logits = model.run({"pixel_values": np.zeros((2, 3, size, size), np.float32)})["logits"]
        assert logits.shape == (2, 3) and np.isfinite(logits).all()


@pytest.mark.slow
@pytest.mark.parametrize("model_type", FIXED_SIZE)
def test_patch_grid_transformers_keep_their_size_and_say_why(tmp_path, tiny_models, model_type):
    artifact = export_onnx(tiny_models(model_type, "image-classification"), tmp_path / "out")
    graph = artifact.manifest.graph
    size = artifact.manifest.processing["image"]["size"]
    assert graph["inputs"][0]["shape"] == ["batch", 3, *size]
    assert artifact.manifest.processing["image"]["dynamic_size"] is False
    assert graph["fixed_size_reason"].startswith("PyTorch refuses")
    with pytest.raises(ModelInputError, match="expected pixel_values"):
        load(artifact.path).run({"pixel_values": np.zeros((1, 3, size[0] + 8, size[1]), np.float32)})


def test_resnet_exported_at_its_size_takes_a_32x32_image(tmp_path, tiny_models):
    """The issue's example: a ResNet exported at its configured size refused 32x32 images."""
    artifact = export_onnx(tiny_models("resnet", "image-classification"), tmp_path / "out")
    assert artifact.manifest.processing["image"]["size"] == [224, 224]
    logits = load(artifact.path).run({"pixel_values": np.zeros((1, 3, 32, 32), np.float32)})["logits"]
    assert logits.shape == (1, 3)


def _classifier(folder, model_type: str):
    """A tiny random classifier of one of the sweep's former misses, saved with a tokenizer
    for the text ones."""
    import transformers
    from causal_families import FAMILIES, config
    from llm_models import tokenizer

    if model_type in FAMILIES:                     # mixture of experts: the causal-LM table's config
        built, auto = config(model_type), transformers.AutoModelForSequenceClassification
        built.pad_token_id = 1
    elif model_type == "longformer":
        built = transformers.LongformerConfig(vocab_size=512, hidden_size=64, num_hidden_layers=2,
                                              num_attention_heads=4, intermediate_size=128, attention_window=[8, 8],
                                              max_position_embeddings=130, pad_token_id=1)
        auto = transformers.AutoModelForSequenceClassification
    else:
        sizes = dict(hidden_sizes=[16, 32, 40, 64], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 1, 1],
                     image_size=64) if model_type == "pvt" else {}
        built, auto = transformers.AutoConfig.for_model(model_type, **sizes), transformers.AutoModelForImageClassification
    built.num_labels = 3
    torch.manual_seed(0)
    auto.from_config(built).eval().save_pretrained(folder)
    if auto is transformers.AutoModelForSequenceClassification:
        tokenizer(folder)
    return folder


@pytest.mark.parametrize("model_type,how", [("mixtral", "dynamic"), ("qwen2_moe", "dynamic"),
                                            ("longformer", "static"), ("pvt", "fixed-size"),
                                            ("pp_lcnet", "dynamic")])
def test_the_sweeps_former_misses_export(tmp_path, model_type, how):
    """Mixture-of-experts classifiers (dense experts), Longformer (its chunked attention
    freezes the traced length: the dynamic graphs fail on other lengths and the static one is
    kept, with the reasons), PVT (its patch grid keeps the image size) and PP-LCNet (which
    returns its class scores as last_hidden_state)."""
    folder = _classifier(tmp_path / model_type, model_type)
    artifact = export_onnx(folder, tmp_path / "out")
    export = artifact.manifest.lineage[-1]
    assert artifact.manifest.parity["export"]["passed"]
    assert export["parameters"]["shape_variant"] == how
    assert artifact.manifest.graph["outputs"][0]["name"] == "logits"
    if model_type == "longformer":
        reasons = {r["route"]: r for r in export["routes"] if not r.get("ok")}
        assert "does not run on the check inputs" in reasons["torchscript"]["reason"]
    if model_type in ("mixtral", "qwen2_moe"):
        # a batch and length the export never saw, against transformers' own (grouped) experts
        import transformers

        ids = np.random.default_rng(3).integers(5, 500, size=(3, 11)).astype(np.int64)
        mask = np.ones_like(ids)
        mask[0, 8:] = 0
        got = load(artifact.path).run({"input_ids": ids, "attention_mask": mask})["logits"]
        reference = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
        with torch.no_grad():
            expected = reference(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
        np.testing.assert_allclose(got, expected.numpy(), atol=1e-4, rtol=1e-3)
