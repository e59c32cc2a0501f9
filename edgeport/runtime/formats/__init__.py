"""Graph formats: everything that depends on what kind of model file an artifact holds, said
once per format.

A format is one small module here that registers a ``GraphFormat``: how its runner is made
(and, for causal LMs, its generator), what ``inspect`` shows about the graph, which files
make up the graph, its Triton platform and file name (or why Triton cannot serve it), its
bench kind, what a bundle of it needs at run time, and whether ONNX Runtime's mobile
converter takes it.  ``make_runner``, ``inspect``, ``package``, ``bench``, ``quantize`` and
the bench report ask this registry and name no format themselves.

Adding a target: a builder (a stage, or ``engines/`` when it quantizes first), a runner,
one module here, a word in ``vocabulary.GRAPH_FORMATS``, and one CLI command.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ...errors import ArtifactError, DeviceError
from ...vocabulary import GRAPH_FORMATS

if TYPE_CHECKING:
    from ...artifact import Artifact
    from ..onnxrt import SessionSettings
    from ..runner import Runner


# Both causal-LM formats: Triton's plain ONNX Runtime backend has no generation loop.
CAUSAL_LM_TRITON_REFUSAL = ("causal LMs are served by edgeport serve (OpenAI endpoints) or Triton's TensorRT-LLM / "
                            "vLLM backends; a plain onnxruntime_onnx repository would lose the KV cache loop")


@dataclass(frozen=True)
class TritonModel:
    """How Triton Inference Server loads a format: its ``platform`` (or ``backend``) and the
    file name it expects in the version folder."""

    platform: str
    file: str


@dataclass(frozen=True)
class GraphFormat:
    name: str                                    # graph.format in the manifest
    description: str
    runner: Callable[["Artifact", "SessionSettings"], "Runner"]
    generative: bool = False                     # a causal LM: load() gives a generator, not a Model
    generator: Callable[..., Any] | None = None  # (artifact, settings, adapters) -> generation.GenerativeModel
    details: Callable[["Artifact"], dict[str, Any]] = lambda artifact: {}   # what inspect shows beyond the manifest
    triton: TritonModel | None = None
    triton_refusal: str = ""                     # why Triton cannot serve it, when ``triton`` is None
    bench_kind: str = ""                         # the variant kind in bench reports (default: the name)
    runtime_requirements: tuple[str, ...] = ()   # pip packages a bundle needs beyond the light runtime
    mobile_convertible: bool = False             # ONNX Runtime's .ort converter takes it
    emulation_refusal: str = ""                  # why verify --platform cannot run it emulated, if it cannot
    devices: tuple[str, ...] = ("cpu", "cuda", "tensorrt")   # what an explicit --device may name for it

    @property
    def kind(self) -> str:
        return self.bench_kind or self.name

    @property
    def a_description(self) -> str:
        """"an ONNX graph (ONNX Runtime)", "a TensorRT engine (...)": the description in a sentence."""
        return ("an " if self.description[0] in "AEIOU" else "a ") + self.description

    def check_device(self, device: str) -> None:
        """An explicit device this format cannot run on is an error, never a silent fallback."""
        if device != "auto" and device not in self.devices:
            raise DeviceError(f"{self.a_description} runs on {' or '.join(self.devices)} only, not on '{device}'; "
                              f"give --device {self.devices[0]} (or auto)")

    def graph_files(self, artifact: "Artifact") -> list[str]:
        """The artifact's files that make up the graph: the model file and its external data;
        everything else (tokenizer, golden data, configs) is processing."""
        graph_file = artifact.manifest.graph["file"]
        return sorted(name for name in artifact.manifest.files
                      if name == graph_file or name.startswith(graph_file + "."))


_FORMATS: dict[str, GraphFormat] = {}


def register(graph_format: GraphFormat) -> GraphFormat:
    if graph_format.name not in GRAPH_FORMATS:
        raise ValueError(f"format '{graph_format.name}' is not one of the known graph formats: "
                         f"{', '.join(GRAPH_FORMATS)}")
    _FORMATS[graph_format.name] = graph_format
    return graph_format


def _registered() -> dict[str, GraphFormat]:
    if not _FORMATS:
        from . import decoder, executorch, genai, onnx, tensorrt  # noqa: F401  (each registers its format)
    return _FORMATS


def get(name: str) -> GraphFormat:
    formats = _registered()
    if name not in formats:
        raise ArtifactError(f"graph format '{name}' is not one this edgeport runs ({', '.join(sorted(formats))})")
    return formats[name]


def format_of(artifact: "Artifact") -> GraphFormat:
    return get(artifact.manifest.graph["format"])


def all_formats() -> list[GraphFormat]:
    return list(_registered().values())


def bench_kinds() -> list[str]:
    """Every variant kind a bench report may name: the formats', and the PyTorch baseline's."""
    return sorted({f.kind for f in all_formats()} | {"torch"})


def make_runner(artifact: "Artifact", settings: "SessionSettings") -> "Runner":
    """The runner for the artifact's graph format."""
    return format_of(artifact).runner(artifact, settings)


def make_generator(artifact: "Artifact", settings: "SessionSettings", adapters: dict[str, str] | None = None):
    """The generator (``runtime.generation.GenerativeModel``) of a causal-LM artifact."""
    graph_format = format_of(artifact)
    if not graph_format.generative:
        raise ArtifactError(f"'{artifact.path}' holds {graph_format.a_description}, which does not generate text")
    return graph_format.generator(artifact, settings, adapters)


__all__ = ["GraphFormat", "TritonModel", "all_formats", "bench_kinds", "format_of", "get", "make_generator",
           "make_runner", "register"]
