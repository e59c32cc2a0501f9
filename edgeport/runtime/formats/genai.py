"""Causal LMs built by ONNX Runtime GenAI's model builder: an ONNX decoder with its KV cache
and ``genai_config.json``, run by ONNX Runtime GenAI's generator."""

from __future__ import annotations

from . import CAUSAL_LM_TRITON_REFUSAL, GraphFormat, register
from .onnx import operator_histogram


def genai_generator(artifact, settings, adapters=None):
    from ..genai import GenAIModel

    return GenAIModel(artifact, settings, adapters)


def genai_runner(artifact, settings):
    return genai_generator(artifact, settings).runner


GENAI = register(GraphFormat(
    name="genai",
    description="causal LM for ONNX Runtime GenAI (KV cache, sampling, runtime LoRA adapters)",
    runner=genai_runner,
    generative=True,
    generator=genai_generator,
    details=operator_histogram,
    triton_refusal=CAUSAL_LM_TRITON_REFUSAL,
    runtime_requirements=("onnxruntime-genai",),
))
