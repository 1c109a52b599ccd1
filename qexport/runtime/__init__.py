"""The runtime: onnxruntime + tokenizers + numpy. Never imports torch or transformers."""

from .embedder import Embedder

__all__ = ["Embedder"]
