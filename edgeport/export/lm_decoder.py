"""Causal LMs through torch.onnx: the second export route, for any family transformers loads
(ONNX Runtime GenAI's builder knows a dozen).  The decoder is wrapped so that its past
key/values are graph inputs and its present key/values graph outputs; one graph serves the
prompt (a zero-length past) and every decode step; runtime/decoder.py runs it.

Measured here (transformers 5.24, torch 2.13, tiny random models of 44 attention families):
token-exact against ``generate`` for all of them, ragged left-padded batches included.
Two exporters, fastest graph first:

1. ``dynamo`` (torch.export, opset 23, SDPA attention): ONNX's own Attention (taking
   grouped key/value heads as they are), RMSNormalization and RotaryEmbedding ops, ~160
   nodes for a small Llama once its projections are packed (packing.py); decodes at 0.94x
   ONNX Runtime GenAI's tokens/s with spinning off, 0.76x with it on (a 5M Llama, 2
   threads, benchmarks/results/generation_llm*.txt).  7-25 s to export.
2. ``torchscript`` (tracing, opset 18, eager attention): ~1,000 nodes, ~1.3x GenAI's time
   per token, but exports in about a second and has covered every family tried.

What they need: the cache rebuilt from flat tensors as plain DynamicCache layers (a
config-built sliding-window layer keeps Python integers that tracing would freeze; the
window is then applied by the mask, exactly); mixture-of-experts layers computed densely
(every expert on every token, weighted by the router: the default grouped_mm has no ONNX
export, and tracing would freeze the loop over the experts hit); and two exact rewrites
while tracing (``repeat_interleave`` by an int, Falcon's ALiBi product in bfloat16).
State-space layers (Mamba, Jamba, RecurrentGemma) keep a state, not key/values: refused.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import time
from pathlib import Path

from ..errors import ExportError, UnsupportedModelError
from .experts import DENSE_EXPERTS, register_dense_experts
from .packing import pack_sibling_matmuls
from .quiet import quiet_torch_onnx, quiet_transformers

EXPORTERS = ("dynamo", "torchscript")
FORCE_GQA = "TRANSFORMERS_SDPA_FORCE_GQA"      # transformers' own switch (integrations/sdpa_attention.py)


def load_for_export(folder: Path, attention: str):
    """The causal LM in FP32 with ``attention`` ("sdpa" or "eager") and dense experts."""
    import torch
    import transformers

    options = {"dtype": torch.float32, "attn_implementation": attention}
    if register_dense_experts():
        options["experts_implementation"] = DENSE_EXPERTS
    with quiet_transformers():
        for attempt in (options, {k: v for k, v in options.items() if k != "attn_implementation"}):
            try:
                return transformers.AutoModelForCausalLM.from_pretrained(folder, **attempt).eval()
            except (ValueError, TypeError, ImportError) as exc:     # a family without this attention
                error = exc
    raise ExportError(f"transformers cannot load '{folder}' for export: {error}")


def with_cache_io(model, layers: int, positions: bool):
    """``model`` as ``forward(input_ids, attention_mask, [position_ids], *flat_past) ->
    (logits, *flat_present)``: the cache as plain tensors in and out."""
    import torch
    from transformers import DynamicCache

    class CacheInOut(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, *rest):
            position_ids, past = (rest[0], rest[1:]) if positions else (None, rest)
            # Plain layers, not the config's: a sliding-window layer keeps Python integers that
            # tracing would freeze into the graph; the mask applies the window.
            cache = DynamicCache([(past[2 * i], past[2 * i + 1]) for i in range(layers)])
            arguments = {"input_ids": input_ids, "attention_mask": attention_mask, "cache": cache, "use_cache": True}
            if position_ids is not None:
                arguments["position_ids"] = position_ids
            out = self.model(**arguments)
            return (out.logits, *[t for layer in out.cache.layers for t in (layer.keys, layer.values)])

    return CacheInOut().eval()


def cache_layout(model, vocab: int) -> list[tuple[int, int, int]]:
    """(heads, key width, value width) of every layer's cache, read from two forward passes;
    refuses caches that are not per-layer key/values along axis -2."""
    import torch

    shapes = []
    with torch.no_grad():
        for length in (3, 4):
            ids = torch.randint(0, vocab, (2, length))
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
            cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None) or \
                getattr(out, "cache_params", None)      # Mamba's state
            layers = getattr(cache, "layers", None)
            if cache is None:          # an encoder (BERT's LM head) given --task text-generation keeps none
                raise UnsupportedModelError(f"this {model.config.model_type} model keeps no key/value cache: it is "
                                            "not a causal LM (an encoder with a language-model head generates "
                                            "nothing token by token); export it without --task text-generation")
            if layers is None or any(type(layer).__name__ not in ("DynamicLayer", "DynamicSlidingWindowLayer")
                                     for layer in layers):
                kinds = sorted({type(layer).__name__ for layer in layers or []}) or [type(cache).__name__]
                raise UnsupportedModelError(f"this model keeps a {', '.join(kinds)} cache, not per-layer keys and "
                                            "values (state-space and recurrent layers: Mamba, Jamba, RecurrentGemma); "
                                            "edgeport exports key/value caches only")
            shapes.append([(tuple(layer.keys.shape), tuple(layer.values.shape)) for layer in layers])
    for (k3, v3), (k4, _) in zip(*shapes):
        if len(k3) != 4 or k4[2] != k3[2] + 1:
            raise UnsupportedModelError(f"the cache's keys are shaped {list(k3)}; edgeport exports caches shaped "
                                        "[batch, heads, sequence, width]")
    return [(k[1], k[3], v[3]) for k, v in shapes[0]]


def _rewritten_repeat_interleave(original):
    def repeat_interleave(x, repeats=None, dim=None, *, output_size=None):
        import torch

        if isinstance(repeats, int) and dim is not None and torch.jit.is_tracing():
            axis = dim % x.dim()           # unsqueeze + expand + flatten: the same values, a rank the exporter keeps
            expanded = x.unsqueeze(axis + 1).expand(*([-1] * (axis + 1) + [repeats] + [-1] * (x.dim() - axis - 1)))
            return expanded.flatten(axis, axis + 1)
        if output_size is not None:
            return original(x, repeats, dim, output_size=output_size)
        return original(x, repeats, dim)
    return repeat_interleave


def _falcon_alibi(attention_mask, num_heads, dtype):
    """Falcon's build_alibi_tensor multiplies bfloat16 slopes by an int64 tensor, which the
    TorchScript exporter mistypes (a complex Cast); the same values: bfloat16-rounded operands,
    an exact float32 product (8-bit significands), rounded to bfloat16."""
    import torch

    batch, length = attention_mask.shape
    power = 2 ** math.floor(math.log2(num_heads))
    base = torch.full((), 2 ** (-(2 ** -(math.log2(power) - 3))), dtype=torch.float32)
    slopes = torch.pow(base, torch.arange(1, 1 + power, dtype=torch.int32))
    if power != num_heads:
        extra = torch.full((), 2 ** (-(2 ** -(math.log2(2 * power) - 3))), dtype=torch.float32)
        remaining = min(power, num_heads - power)
        slopes = torch.cat([slopes, torch.pow(extra, torch.arange(1, 1 + 2 * remaining, 2, dtype=torch.int32))])
    positions = ((attention_mask.cumsum(dim=-1) - 1) * attention_mask)[:, None, :].float().to(torch.bfloat16).float()
    alibi = (slopes[..., None].to(torch.bfloat16).float() * positions).to(torch.bfloat16)
    return alibi.reshape(batch * num_heads, 1, length).to(dtype)


@contextlib.contextmanager
def export_patches():
    """Exact rewrites of what the TorchScript exporter cannot express, only while exporting."""
    import sys

    import torch

    falcon = sys.modules.get("transformers.models.falcon.modeling_falcon")
    saved = (torch.repeat_interleave, torch.Tensor.repeat_interleave, getattr(falcon, "build_alibi_tensor", None))
    torch.repeat_interleave = _rewritten_repeat_interleave(saved[0])
    torch.Tensor.repeat_interleave = _rewritten_repeat_interleave(saved[1])
    if falcon is not None:
        falcon.build_alibi_tensor = _falcon_alibi
    try:
        yield
    finally:
        torch.repeat_interleave, torch.Tensor.repeat_interleave = saved[0], saved[1]
        if falcon is not None:
            falcon.build_alibi_tensor = saved[2]


def export_decoder(folder: Path, dest: Path, exporter: str, context_length: int) -> dict:
    """Export ``folder``'s causal LM to ``dest`` with ``exporter``; returns the graph's contract
    (what runtime/decoder.py reads from decoder.json)."""
    import torch

    model = load_for_export(folder, "sdpa" if exporter == "dynamo" else "eager")
    vocab = int(model.config.get_text_config().vocab_size)
    positions = "position_ids" in inspect.signature(model.forward).parameters
    layout = cache_layout(model, vocab)
    wrapper = with_cache_io(model, len(layout), positions)
    batch, new, past = 2, 3, 5
    flat = []
    for heads, key_width, value_width in layout:
        flat += [torch.randn(batch, heads, past, key_width) * 0.5, torch.randn(batch, heads, past, value_width) * 0.5]
    args = (torch.randint(0, vocab, (batch, new)), torch.ones(batch, past + new, dtype=torch.long))
    if positions:
        args += (torch.arange(past, past + new).unsqueeze(0).expand(batch, -1).contiguous(),)
    args += tuple(flat)
    names = ["input_ids", "attention_mask"] + (["position_ids"] if positions else []) + \
        [f"past_key_values.{i}.{kv}" for i in range(len(layout)) for kv in ("key", "value")]
    outputs = ["logits"] + [f"present.{i}.{kv}" for i in range(len(layout)) for kv in ("key", "value")]
    start = time.perf_counter()
    with torch.no_grad(), quiet_torch_onnx(), quiet_transformers():
        if exporter == "dynamo":
            _dynamo(wrapper, args, dest, names, outputs, positions, len(layout), context_length)
        else:
            with export_patches():
                _torchscript(wrapper, args, dest, names, outputs, positions, len(layout))
    return {"exporter": exporter, "position_ids": positions, "layers": len(layout),
            "cache": {f"past_key_values.{i}.{kv}": [heads, width]
                      for i, (heads, key_width, value_width) in enumerate(layout)
                      for kv, width in (("key", key_width), ("value", value_width))},
            "export_seconds": round(time.perf_counter() - start, 2)}


def _torchscript(wrapper, args, dest: Path, names, outputs, positions: bool, layers: int) -> None:
    import torch

    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total"},
            "logits": {0: "batch", 1: "sequence"}}
    if positions:
        axes["position_ids"] = {0: "batch", 1: "sequence"}
    for i in range(layers):
        for kv in ("key", "value"):
            axes[f"past_key_values.{i}.{kv}"] = {0: "batch", 2: "past"}
            axes[f"present.{i}.{kv}"] = {0: "batch", 2: "total"}
    torch.onnx.export(wrapper, args, str(dest), input_names=names, output_names=outputs, dynamic_axes=axes,
                      opset_version=18, dynamo=False, do_constant_folding=True)
    _finish_graph(dest, name_dims=False)


def _dynamo(wrapper, args, dest: Path, names, outputs, positions: bool, layers: int, context_length: int) -> None:
    import torch
    from torch.export import Dim

    batch = Dim("batch", min=1, max=1024)
    sequence = Dim("sequence", min=1, max=max(2, context_length))
    past = Dim("past", min=0, max=max(2, context_length))
    shapes = [{0: batch, 1: sequence}, {0: batch, 1: Dim.AUTO}] + ([{0: batch, 1: sequence}] if positions else [])
    shapes += [{0: batch, 2: past}] * (2 * layers)
    # forward(input_ids, attention_mask, *rest): torch.export sees three arguments, the third a tuple
    with shared_kv_heads():
        torch.onnx.export(wrapper, args, str(dest), input_names=names, output_names=outputs, opset_version=23,
                          dynamic_shapes=(shapes[0], shapes[1], tuple(shapes[2:])), dynamo=True, external_data=True,
                          report=False, verbose=False)
    _finish_graph(dest, name_dims=True)


@contextlib.contextmanager
def shared_kv_heads():
    """Grouped-query attention exported as such: transformers' SDPA path repeats the key/value
    heads (``repeat_kv``: an Expand and a Reshape per tensor, then attention over copies)
    whenever a mask is given, unless told that SDPA takes the groups itself (``enable_gqa``),
    which ONNX's Attention op does.  Measured on a 5M Llama (8 heads, 4 key/value heads):
    26 fewer nodes (an Expand, a Reshape and more per layer), 5-7% faster decode, the same
    tokens."""
    import os

    saved = os.environ.get(FORCE_GQA)
    os.environ[FORCE_GQA] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(FORCE_GQA, None)
        else:
            os.environ[FORCE_GQA] = saved


def _finish_graph(dest: Path, name_dims: bool) -> None:
    """Sibling projections packed into one MatMul each (edgeport.export.packing: fewer calls
    per decode step), and, for torch.export's graphs, the symbolic dims named as the manifest
    names them (it invents 's0', 's1'...).  The graph is saved again only when it changed, its
    weights to one ``model.onnx.data`` where it is too large for one file; the files the
    exporter wrote them to before (the TorchScript exporter writes one per tensor) go."""
    import onnx

    from ..artifact import save_onnx

    stored = onnx.load(str(dest), load_external_data=False).graph.initializer
    before = {entry.value for tensor in stored for entry in tensor.external_data if entry.key == "location"}
    model = onnx.load(str(dest))
    packed = pack_sibling_matmuls(model)
    for value in list(model.graph.input) + list(model.graph.output) if name_dims else ():
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].dim_param:
            dims[0].dim_param = "batch"
        if value.name == "attention_mask" and len(dims) == 2 and dims[1].dim_param:
            dims[1].dim_param = "past + sequence"
    if not packed and not name_dims:
        return
    save_onnx(model, dest)
    written = dest.with_name(dest.name + ".data")
    for location in before:
        stale = dest.parent / location
        if stale.parent == dest.parent and stale != written and stale.is_file():
            stale.unlink()

