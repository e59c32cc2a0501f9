"""Causal LMs exported by edgeport's own route: an ONNX decoder with its KV cache as graph
inputs and outputs (``decoder.json`` says which), run by edgeport's generation loop on ONNX
Runtime (runtime/decoder.py).  For the families ONNX Runtime GenAI's builder does not know."""

from __future__ import annotations

from . import CAUSAL_LM_TRITON_REFUSAL, GraphFormat, register
from .onnx import operator_histogram


def decoder_generator(artifact, settings, adapters=None):
    from ..decoder import DecoderModel

    return DecoderModel(artifact, settings, adapters)


def decoder_runner(artifact, settings):
    return decoder_generator(artifact, settings).runner


DECODER = register(GraphFormat(
    name="onnx-decoder",
    description="causal LM as an ONNX decoder with its KV cache (edgeport's generation loop)",
    runner=decoder_runner,
    generative=True,
    generator=decoder_generator,
    details=operator_histogram,
    triton_refusal=CAUSAL_LM_TRITON_REFUSAL,
    bench_kind="onnx-decoder",
))
