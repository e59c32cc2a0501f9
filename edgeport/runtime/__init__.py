"""The lightweight runtime: numpy, onnxruntime and tokenizers only, never torch.

    from edgeport.runtime import load
    model = load("out/minilm-int8")
    vectors = model.predict(["a sentence", "another one"])
"""

from .session import Model, load

__all__ = ["Model", "load"]
