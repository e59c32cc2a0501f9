"""Export stages: merge adapters, export to ONNX (encoders, vision, causal LMs, Keras), build
TensorRT engines, and the PyTorch baseline runner.  May import torch; the runtime never does."""
