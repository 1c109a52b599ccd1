"""Export every artifact kind the tests and benches use with two code trees (e.g. main's and a
branch's) and compare the graph and the weights byte for byte (sha256 of model.onnx and
model.onnx_data). The manifests may differ where the schema changed; the graphs and weights
must not.

    python bench/compare_exports.py --base /work/wt-base --new . --out /tmp/compare

Each tree is put first on PYTHONPATH for its own `python -m qexport.cli onnx` subprocess.
Prints a markdown table; exits 1 when any graph or weight file differs.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
from pathlib import Path

# (label, model, extra CLI args; "--layers N" is passed to ExportOptions.layers instead, as the
# CLI has no such option: the 0.6B widths with 2 layers, whose weights go to model.onnx_data)
KINDS: list[tuple[str, str, list[str]]] = [
    ("qwen3-tiny fp32", "random:qwen3-tiny", ["--precision", "fp32"]),
    ("qwen3-tiny fp16", "random:qwen3-tiny", ["--precision", "fp16"]),
    ("qwen3-tiny int8", "random:qwen3-tiny", ["--precision", "int8"]),
    ("qwen3-tiny int4", "random:qwen3-tiny", ["--precision", "int4"]),
    ("qwen3-tiny int8-dynamic", "random:qwen3-tiny", ["--precision", "int8-dynamic"]),
    ("qwen3-tiny fp32 token-emb", "random:qwen3-tiny", ["--token-embeddings"]),
    ("xlm-roberta-tiny fp32", "random:xlm-roberta-tiny", ["--precision", "fp32"]),
    ("xlm-roberta-tiny int8", "random:xlm-roberta-tiny", ["--precision", "int8"]),
    ("embeddinggemma-tiny fp32", "random:embeddinggemma-tiny", ["--precision", "fp32"]),
    ("qwen3-reranker-tiny fp32", "random:qwen3-reranker-tiny", ["--precision", "fp32"]),
    ("qwen3-reranker-tiny fp16", "random:qwen3-reranker-tiny", ["--precision", "fp16"]),
    ("qwen3-reranker-tiny int8", "random:qwen3-reranker-tiny", ["--precision", "int8"]),
    ("qwen3-embedding-0.6b fp16 2 layers", "random:qwen3-embedding-0.6b",
     ["--precision", "fp16", "--layers", "2"]),
    ("qwen3-embedding-0.6b int8 2 layers", "random:qwen3-embedding-0.6b",
     ["--precision", "int8", "--layers", "2"]),
    ("qwen3-reranker-0.6b fp16 2 layers", "random:qwen3-reranker-0.6b",
     ["--precision", "fp16", "--layers", "2"]),
]  # fmt: skip
# the layer-truncated exports through the API (both trees have ExportOptions(layers=...))
API_EXPORT = """
import sys
from qexport.export.api import ExportOptions, export_onnx
model, out, precision, layers = sys.argv[1:]
export_onnx(model, out, ExportOptions(precision=precision, layers=int(layers), overwrite=True,
                                      progress=False))
"""
FILES = ("model.onnx", "model.onnx_data")


def sha256(path: Path) -> str:
    if not path.is_file():
        return "-"
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export(tree: Path, model: str, args: list[str], out: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(tree.resolve()))
    if "--layers" in args:
        opts = dict(zip(args[::2], args[1::2], strict=True))
        cmd = [sys.executable, "-c", API_EXPORT, model, str(out), opts["--precision"],
               opts["--layers"]]  # fmt: skip
    else:
        cmd = [sys.executable, "-m", "qexport.cli", "-q", "onnx", model, "-o", str(out),
               "--overwrite", *args]  # fmt: skip
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", type=Path, required=True, help="the reference tree (main)")
    p.add_argument("--new", type=Path, required=True, help="the tree under test")
    p.add_argument("--out", type=Path, required=True, help="scratch folder for the exports")
    p.add_argument("--only", default=None, help="substring: run the matching kinds only")
    p.add_argument("--reuse-base", action="store_true", help="keep base exports already there")
    p.add_argument("--base-only", action="store_true", help="export with the base tree only")
    a = p.parse_args()
    rows, same_all = [], True
    for label, model, args in KINDS:
        if a.only and a.only not in label:
            continue
        slug = label.replace(" ", "_")
        digests = {}
        sides = [("base", a.base)] if a.base_only else [("base", a.base), ("new", a.new)]
        for side, tree in sides:
            out = a.out / side / slug
            if not (side == "base" and a.reuse_base and (out / "model.onnx").is_file()):
                export(tree, model, args, out)
            digests[side] = [sha256(out / f) for f in FILES]
        if a.base_only:
            continue
        same = digests["base"] == digests["new"]
        same_all &= same
        onnx, data = digests["new"]
        rows.append(
            f"| {label} | {onnx[:16]} | {data[:16]} | {'identical' if same else 'DIFFERENT'} |"
        )
    print("| artifact | model.onnx sha256 | model.onnx_data sha256 | base vs new |")
    print("|---|---|---|---|")
    print("\n".join(rows))
    return 0 if same_all else 1


if __name__ == "__main__":
    raise SystemExit(main())
