"""Weight sources: tensors by name, loaded one at a time, never the whole model at once.

The graph builders ask a source for one tensor when the writer streams it to the external
data file, so peak memory stays near the largest single tensor (issue: full-size export).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import ml_dtypes
import numpy as np

BF16 = np.dtype(ml_dtypes.bfloat16)


def bf16_to_fp32(arr: np.ndarray) -> np.ndarray:
    """Exact and fast: a bfloat16 is the upper half of a float32."""
    return (arr.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


def fp32_to_bf16(arr: np.ndarray) -> np.ndarray:
    """Round to nearest even, as torch does (no NaN payloads in generated weights)."""
    bits = np.ascontiguousarray(arr, dtype=np.float32).view(np.uint32)
    rounded = (bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(
        16
    )
    return rounded.astype(np.uint16).view(BF16)


def convert(arr: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Convert a weight to the artifact's dtype, fast paths for bfloat16 checkpoints."""
    if arr.dtype == dtype:
        return arr
    if arr.dtype == BF16:
        arr = bf16_to_fp32(np.ascontiguousarray(arr))
        return arr if dtype == np.float32 else arr.astype(dtype)
    if dtype == BF16:
        return fp32_to_bf16(arr.astype(np.float32, copy=False))
    return arr.astype(dtype)


class WeightSource(Protocol):
    def keys(self) -> list[str]: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def load(self, name: str) -> np.ndarray: ...


class SafetensorsSource:
    """All `*.safetensors` files of a checkpoint folder, memory-mapped, read per tensor."""

    def __init__(self, folder: Path, strip_prefixes: tuple[str, ...] = ()) -> None:
        from safetensors import safe_open

        files = sorted(folder.glob("*.safetensors"))
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            files = [folder / n for n in names]
        if not files:
            raise FileNotFoundError(f"no *.safetensors weights in {folder}")
        self._handles = [safe_open(str(f), framework="numpy") for f in files]
        self._where: dict[str, tuple[int, str]] = {}
        for i, handle in enumerate(self._handles):
            for raw in handle.keys():
                name = raw
                for prefix in strip_prefixes:
                    if name.startswith(prefix):
                        name = name[len(prefix) :]
                        break
                self._where[name] = (i, raw)

    def keys(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        i, raw = self._where[name]
        return tuple(self._handles[i].get_slice(raw).get_shape())

    def load(self, name: str) -> np.ndarray:
        i, raw = self._where[name]
        return self._handles[i].get_tensor(raw)


InitFn = Callable[[np.random.Generator, tuple[int, ...]], np.ndarray]


class RandomSource:
    """Deterministic random weights: each tensor from its own generator seeded by
    (seed, crc32(name)), so any tensor can be made alone, in any order, identically."""

    def __init__(self, spec: dict[str, tuple[tuple[int, ...], InitFn]], seed: int) -> None:
        self._spec = spec
        self._seed = seed
        self._overrides: dict[str, Callable[[np.ndarray], np.ndarray]] = {}

    def override(self, name: str, fn: Callable[[np.ndarray], np.ndarray]) -> None:
        """Post-process one tensor after generation (used to plant outliers)."""
        self._overrides[name] = fn

    def keys(self) -> list[str]:
        return list(self._spec)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._spec[name][0]

    def load(self, name: str) -> np.ndarray:
        shape, init = self._spec[name]
        rng = np.random.default_rng([self._seed, zlib.crc32(name.encode())])
        arr = init(rng, shape)
        if name in self._overrides:
            arr = self._overrides[name](arr)
        # Checkpoints ship in BF16: round like one would.
        return fp32_to_bf16(arr)


def normal(std: float, mean: float = 0.0) -> InitFn:
    def init(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        out = rng.standard_normal(size=shape, dtype=np.float32)
        out *= std
        if mean:
            out += mean
        return out

    return init
