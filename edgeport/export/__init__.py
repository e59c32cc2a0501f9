"""Export: Hugging Face folders and torch modules to verified ONNX artifacts."""
