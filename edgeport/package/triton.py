"""``edgeport package --format triton``: a model repository Triton Inference Server (and
KServe) loads as it is.

    <repo>/<name>/config.pbtxt
    <repo>/<name>/1/model.onnx            (model.plan for a TensorRT engine)
    <repo>/<name>_text/...                with --with-tokenizer: a Python-backend tokenizer and an
                                          ensemble taking raw text (TYPE_STRING) for text models

Inputs and outputs take Triton's data types and dims from the manifest; a symbolic first
axis becomes ``max_batch_size`` with dynamic batching; the rest of the dims are -1 where
symbolic.  config.pbtxt is written as protobuf text format and tested against Triton's own
schema (tritonclient's model_config_pb2).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..artifact import Artifact
from ..errors import InvalidOptionError
from ..manifest import TensorSpec
from ..outputs import TRITON_REPOSITORY, staged_output
from ..runtime.formats import TritonModel, format_of
from ..runtime.model import rows_depend_on_batch
from ..vocabulary import DEFAULT_MAX_BATCH, DEFAULT_TRITON_DELAY_US, ENCODER_TEXT_TASKS

TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64", "int64": "TYPE_INT64",
                "int32": "TYPE_INT32", "int16": "TYPE_INT16", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8",
                "bool": "TYPE_BOOL"}
MARKER = ".edgeport-triton.json"


@dataclass(frozen=True)
class TritonOptions:
    name: str | None = None           # default: the artifact folder's name
    max_batch_size: int = DEFAULT_MAX_BATCH
    max_queue_delay_us: int = DEFAULT_TRITON_DELAY_US
    instances: int = 1
    kind: str = "KIND_CPU"            # KIND_CPU | KIND_GPU
    with_tokenizer: bool = False

    def check(self) -> None:
        if self.name is not None and (not self.name or not self.name.replace("-", "").replace("_", "").isalnum()):
            raise InvalidOptionError(f"--name '{self.name}' must be letters, digits, '-' and '_'")
        if not isinstance(self.max_batch_size, int) or self.max_batch_size < 1:
            raise InvalidOptionError("--max-batch must be a whole number >= 1")
        if not isinstance(self.max_queue_delay_us, int) or self.max_queue_delay_us < 0:
            raise InvalidOptionError("--max-delay-us must be a whole number >= 0")
        if not isinstance(self.instances, int) or self.instances < 1:
            raise InvalidOptionError("--instances must be a whole number >= 1")
        if self.kind not in ("KIND_CPU", "KIND_GPU"):
            raise InvalidOptionError("--instance-kind must be KIND_CPU or KIND_GPU")


def _dims(spec: TensorSpec, batched: bool) -> list[int]:
    dims = [d if isinstance(d, int) else -1 for d in spec.shape]
    return dims[1:] if batched else dims


def _tensor(spec: TensorSpec, batched: bool) -> str:
    if spec.dtype.name not in TRITON_TYPES:
        raise InvalidOptionError(f"'{spec.name}' is {spec.dtype.name}, which Triton has no type for")
    dims = ", ".join(str(d) for d in _dims(spec, batched)) or "1"
    return f'  {{\n    name: "{spec.name}"\n    data_type: {TRITON_TYPES[spec.dtype.name]}\n    dims: [ {dims} ]\n  }}'


def model_config(artifact: Artifact, name: str, options: TritonOptions) -> str:
    """config.pbtxt for the artifact's graph."""
    inputs, outputs = artifact.manifest.inputs, artifact.manifest.outputs
    batched = all(spec.shape and not isinstance(spec.shape[0], int) for spec in inputs + outputs)
    platform = triton_model(artifact).platform
    lines = [f'name: "{name}"', f'platform: "{platform}"', f"max_batch_size: {options.max_batch_size if batched else 0}",
             "input [", ",\n".join(_tensor(s, batched) for s in inputs), "]",
             "output [", ",\n".join(_tensor(s, batched) for s in outputs), "]"]
    dynamic = f"dynamic_batching {{\n  max_queue_delay_microseconds: {options.max_queue_delay_us}\n}}"
    if batched and rows_depend_on_batch(artifact):
        # As edgeport serve does by default: a result depends on its own request only.
        lines.append("# edgeport: no dynamic batching; this model quantizes its activations per call (dynamic "
                     "INT8),\n# so requests joined in one batch would change each other's results. For "
                     "throughput, at that\n# cost, add:\n" + "\n".join(f"# {line}" for line in dynamic.splitlines()))
    elif batched:
        lines.append(dynamic)
    lines.append(f"instance_group [\n  {{\n    count: {options.instances}\n    kind: {options.kind}\n  }}\n]")
    lines.append(f'parameters {{\n  key: "edgeport_manifest_sha256"\n  value: {{ string_value: "{artifact.manifest_sha256}" }}\n}}')
    return "\n".join(lines) + "\n"


TOKENIZER_MODEL = '''"""Triton Python backend written by edgeport: raw text in (TYPE_STRING), the feeds of the
model out, tokenized with the artifact's own tokenizer.json."""

import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

SETTINGS = json.loads((Path(__file__).parent / "tokenizer_settings.json").read_text())


def encode(tokenizer, texts):
    """Feeds for ``texts`` (the same padding as edgeport's runtime)."""
    encodings = tokenizer.encode_batch(texts)
    width = max(1, max(len(e.ids) for e in encodings))
    ids = np.full((len(texts), width), SETTINGS["pad_id"], dtype=np.int64)
    mask = np.zeros((len(texts), width), dtype=np.int64)
    types = np.zeros((len(texts), width), dtype=np.int64)
    for row, encoding in enumerate(encodings):
        ids[row, :len(encoding.ids)] = encoding.ids
        mask[row, :len(encoding.ids)] = 1
        types[row, :len(encoding.ids)] = encoding.type_ids
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return {name: feeds[name] for name in SETTINGS["inputs"]}


def load_tokenizer():
    tokenizer = Tokenizer.from_file(str(Path(__file__).parent / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=SETTINGS["max_length"])
    return tokenizer


class TritonPythonModel:
    def initialize(self, args):
        self.tokenizer = load_tokenizer()

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            raw = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
            texts = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in raw]
            feeds = encode(self.tokenizer, texts)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(k, v) for k, v in feeds.items()]))
        return responses
'''


def _tokenizer_models(repo: Path, artifact: Artifact, name: str, options: TritonOptions) -> None:
    """A Python-backend tokenizer and an ensemble: raw text in, the model's outputs out."""
    processing = artifact.manifest.processing
    inputs = artifact.manifest.inputs
    tokenizer_name, text_name = f"{name}_tokenizer", f"{name}_text"
    folder = repo / tokenizer_name / "1"
    folder.mkdir(parents=True)
    shutil.copyfile(artifact.member(processing["tokenizer"]), folder / "tokenizer.json")
    (folder / "tokenizer_settings.json").write_text(json.dumps(
        {"inputs": [s.name for s in inputs], "max_length": processing.get("max_length", 512),
         "pad_id": processing.get("pad_id", 0)}, indent=2))
    (folder / "model.py").write_text(TOKENIZER_MODEL)
    outputs = ",\n".join(f'  {{\n    name: "{s.name}"\n    data_type: TYPE_INT64\n    dims: [ -1 ]\n  }}' for s in inputs)
    (repo / tokenizer_name / "config.pbtxt").write_text(
        f'name: "{tokenizer_name}"\nbackend: "python"\nmax_batch_size: {options.max_batch_size}\n'
        'input [\n  {\n    name: "TEXT"\n    data_type: TYPE_STRING\n    dims: [ 1 ]\n  }\n]\n'
        f"output [\n{outputs}\n]\n"
        f"instance_group [\n  {{\n    count: {options.instances}\n    kind: KIND_CPU\n  }}\n]\n")
    model_outputs = artifact.manifest.outputs
    steps = (f'  step [\n    {{\n      model_name: "{tokenizer_name}"\n      model_version: -1\n'
             '      input_map {\n        key: "TEXT"\n        value: "TEXT"\n      }\n'
             + "".join(f'      output_map {{\n        key: "{s.name}"\n        value: "{s.name}"\n      }}\n' for s in inputs)
             + f'    }},\n    {{\n      model_name: "{name}"\n      model_version: -1\n'
             + "".join(f'      input_map {{\n        key: "{s.name}"\n        value: "{s.name}"\n      }}\n' for s in inputs)
             + "".join(f'      output_map {{\n        key: "{s.name}"\n        value: "{s.name}"\n      }}\n'
                       for s in model_outputs) + "    }\n  ]\n")
    ensemble_outputs = ",\n".join(_tensor(s, True) for s in model_outputs)
    folder = repo / text_name / "1"
    folder.mkdir(parents=True)
    (repo / text_name / "config.pbtxt").write_text(
        f'name: "{text_name}"\nplatform: "ensemble"\nmax_batch_size: {options.max_batch_size}\n'
        'input [\n  {\n    name: "TEXT"\n    data_type: TYPE_STRING\n    dims: [ 1 ]\n  }\n]\n'
        f"output [\n{ensemble_outputs}\n]\nensemble_scheduling {{\n{steps}}}\n")


def triton_model(artifact: Artifact) -> TritonModel:
    """How Triton loads the artifact's graph format, or why it cannot."""
    graph_format = format_of(artifact)
    if graph_format.triton is None:
        raise InvalidOptionError(f"Triton cannot serve '{artifact.path}' ({graph_format.description}): "
                                 f"{graph_format.triton_refusal}")
    return graph_format.triton


def write_model(repo: Path, artifact: Artifact, name: str, options: TritonOptions) -> None:
    """Add ``artifact`` to the repository folder ``repo`` as model ``name`` (version 1): its
    graph files, the model file under the name Triton expects."""
    triton = triton_model(artifact)
    if options.with_tokenizer and (artifact.task not in ENCODER_TEXT_TASKS or
                                   not artifact.manifest.processing.get("tokenizer")):
        raise InvalidOptionError("--with-tokenizer needs a text model with a tokenizer")
    version = repo / name / "1"
    version.mkdir(parents=True)
    graph_file = artifact.manifest.graph["file"]
    for member in format_of(artifact).graph_files(artifact):
        destination = version / (triton.file if member == graph_file else member)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(artifact.member(member), destination)
    (repo / name / "config.pbtxt").write_text(model_config(artifact, name, options))
    if options.with_tokenizer:
        _tokenizer_models(repo, artifact, name, options)


def package_triton(artifact_path, out, options: TritonOptions = TritonOptions(), force: bool = False) -> Path:
    name = options.name or Path(artifact_path).resolve().name.replace(".", "_")      # '.' names its folder
    return package_triton_models({name: artifact_path}, out, options, force)


def package_triton_models(models: dict[str, str], out, options: TritonOptions = TritonOptions(),
                          force: bool = False) -> Path:
    """One repository holding several artifacts (name -> artifact path)."""
    options.check()
    artifacts = {name: Artifact.load(path) for name, path in models.items()}
    for name in artifacts:
        if not name.replace("-", "").replace("_", "").isalnum():
            raise InvalidOptionError(f"model name '{name}' (the artifact folder's name) must be letters, digits, "
                                     "'-' and '_'; give one with --name")
    with staged_output(out, force, tuple(models.values()), TRITON_REPOSITORY) as repo:
        for name, artifact in artifacts.items():
            write_model(repo, artifact, name, options)
        (repo / MARKER).write_text(json.dumps({"models": {name: a.manifest_sha256 for name, a in artifacts.items()}},
                                              indent=2) + "\n")
    return Path(out)
