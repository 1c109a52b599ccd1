"""The runtime: onnxruntime + tokenizers + numpy. Never imports torch or transformers."""

from .embedder import Embedder
from .reranker import Reranker

__all__ = ["Embedder", "Reranker"]
