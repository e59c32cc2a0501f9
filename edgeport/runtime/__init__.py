"""The lightweight runtime: numpy, onnxruntime and tokenizers only, never torch.

    from edgeport.runtime import load
    model = load("out/minilm-int8")            # an artifact folder or a bundle
    vectors = model.predict(["a sentence", "another one"])
"""

from .model import Model, load
from .onnxrt import OnnxRuntimeRunner, SessionSettings
from .runner import Runner

__all__ = ["Model", "OnnxRuntimeRunner", "Runner", "SessionSettings", "load"]
