"""qexport: ONNX export, quantization and a light runtime for text-embedding models."""

__version__ = "0.1.0"
