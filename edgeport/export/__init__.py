"""Export stages: merge adapters, export to ONNX (encoders, vision, causal LMs, Keras), and
the PyTorch baseline runner.  TensorRT engines are built a layer up, in ``edgeport.engines``.
May import torch; the runtime never does."""
