"""qexport.util against plain definitions (hashlib over the whole file, the cosine formula)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from qexport.util import (
    install_hint,
    library_versions,
    renormalise,
    require,
    row_cosines,
    sha256_file,
)


def test_row_cosines_matches_the_formula_row_by_row() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 7)).astype(np.float32)
    b = rng.standard_normal((5, 7)).astype(np.float32)
    want = [float(x @ y / np.linalg.norm(x) / np.linalg.norm(y)) for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(row_cosines(a, b), want, rtol=1e-6)
    assert row_cosines(np.zeros((1, 3)), np.ones((1, 3)))[0] == 0.0


def test_renormalise_gives_unit_rows_and_keeps_zero_rows() -> None:
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(renormalise(x), [[0.6, 0.8], [0.0, 0.0]])


def test_sha256_file_reads_in_chunks(tmp_path) -> None:
    data = bytes(range(256)) * 1000
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path, chunk=1000) == hashlib.sha256(data).hexdigest()


def test_library_versions_lists_installed_packages_only() -> None:
    got = library_versions(("numpy", "surely-not-a-package-qexport"))
    assert got == {"numpy": np.__version__}


def test_require_names_the_extra() -> None:
    assert require("json", "x", "y").dumps([1]) == "[1]"
    with pytest.raises(ImportError, match=r"qexport\[ray\]"):
        require("surely_not_a_module_qexport", "--engine ray", "ray")
    assert "serve" in install_hint("qexport serve", "serve")
