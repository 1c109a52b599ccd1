"""qexport's imports, read with `ast` (function-local and TYPE_CHECKING ones included, relative
ones resolved): no module imports itself through others (no cycle), and the bottom layer
(runtime, manifest*, tasks, util, texts) imports nothing above it, nor torch / onnx."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "qexport"
BOTTOM = ("qexport.runtime", "qexport.manifest", "qexport.manifest_checks", "qexport.tasks",
          "qexport.util", "qexport.texts")  # fmt: skip
ABOVE = ("qexport.export", "qexport.validate", "qexport.server", "qexport.corpus",
         "qexport.commands", "qexport.cli")  # fmt: skip
HEAVY = ("torch", "onnx", "onnx_ir", "transformers", "sentence_transformers")


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every module `name` imports, anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module, or a module importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in edges:
                continue  # outside qexport
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges[v]:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_walker_sees_local_and_relative_imports() -> None:
    edges = graph()
    # export/api.py imports .rerank at module level; quantize/calibration.py imports
    # corpus.io inside load_texts; runtime/reranker.py imports ..manifest
    assert "qexport.export.rerank" in edges["qexport.export.api"]
    assert "qexport.corpus.io" in edges["qexport.export.quantize.calibration"]
    assert "qexport.manifest" in edges["qexport.runtime.reranker"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle() -> None:
    assert cycles(graph()) == []


def test_bottom_layer_imports_nothing_above_it() -> None:
    bad = [
        f"{name} imports {target}"
        for name, targets in graph().items()
        if name.startswith(BOTTOM)
        for target in targets
        if target.startswith(ABOVE) or target.split(".")[0] in HEAVY
    ]
    assert bad == []
