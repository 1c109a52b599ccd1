"""Small helpers every layer shares: row cosines, renormalising, file digests, library versions,
the install hint for an optional extra.

numpy and the standard library only, so the runtime (the bottom layer) may import it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata
from pathlib import Path
from types import ModuleType

import numpy as np

# every package whose version a manifest or a report records
LIBRARIES = (
    "qexport",
    "onnx",
    "onnx-ir",
    "onnxruntime",
    "onnxruntime-gpu",
    "numpy",
    "tokenizers",
    "torch",
    "transformers",
    "sentence-transformers",
)


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row of `a` with the same row of `b`, in float64 (a zero row gives 0)."""
    a64 = np.asarray(a, dtype=np.float64)
    b64 = np.asarray(b, dtype=np.float64)
    num = np.sum(a64 * b64, axis=1)
    den = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return num / np.maximum(den, 1e-300)


def renormalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row stays zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def sha256_file(path: str | Path, chunk: int = 1 << 24) -> str:
    """Hex sha256 of a file, read in chunks (bounded memory for multi-GB weights)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def library_versions(packages: tuple[str, ...] = LIBRARIES) -> dict[str, str]:
    """Installed versions of `packages`; the ones not installed are left out."""
    out = {}
    for pkg in packages:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[pkg] = importlib.metadata.version(pkg)
    return out


def install_hint(what: str, extra: str) -> str:
    """The one-line message for a missing optional extra."""
    return f'{what} needs the {extra!r} extra: pip install "qexport[{extra}]"'


def require(module: str, what: str, extra: str) -> ModuleType:
    """Import an optional dependency or raise ImportError with the install hint."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(install_hint(what, extra)) from exc
