"""What qexport checks in an artifact's graph file before onnxruntime opens it.

* Every tensor stored as external data (initializers, sparse initializers, tensors held by node
  attributes, in subgraphs too) names a location inside the artifact folder: relative, no
  `..`, no absolute or Windows path, no symlink out, an existing file, and offset + length
  within it. onnxruntime 1.31 refuses some of these itself; older versions (`pyproject` allows
  >= 1.22) did not, so qexport checks whatever the installed version does.
* The token embedding table's rows (the initializer that a Gather indexes with `input_ids`),
  so that a tokenizer whose ids pass the table is refused at load (`check_token_ids`) instead
  of failing inside a forward pass.

The graph is parsed with the `protobuf` runtime that onnxruntime itself depends on, through a
message schema declaring only the ONNX fields read here (field numbers from onnx.proto; every
other field is skipped by the parser), so the runtime needs no `onnx` package.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..manifest_checks import ManifestError, inside

EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
GRAPH_BYTES_LIMIT = 2 << 30  # protobuf's own limit for one message

# protobuf's FieldDescriptorProto types and labels
_STR, _I64, _I32, _MSG = 9, 3, 5, 11
# message -> [(field name, number, type, label (1 optional, 3 repeated), message type)]
_SCHEMA: dict[str, list[tuple[str, int, int, int, str]]] = {
    "Entry": [("key", 1, _STR, 1, ""), ("value", 2, _STR, 1, "")],
    "Tensor": [
        ("dims", 1, _I64, 3, ""),
        ("name", 8, _STR, 1, ""),
        ("external_data", 13, _MSG, 3, "Entry"),
        ("data_location", 14, _I32, 1, ""),
    ],
    "Sparse": [
        ("values", 1, _MSG, 1, "Tensor"),
        ("indices", 2, _MSG, 1, "Tensor"),
    ],
    "Attribute": [
        ("t", 5, _MSG, 1, "Tensor"),
        ("g", 6, _MSG, 1, "Graph"),
        ("tensors", 10, _MSG, 3, "Tensor"),
        ("graphs", 11, _MSG, 3, "Graph"),
        ("sparse_tensor", 22, _MSG, 1, "Sparse"),
        ("sparse_tensors", 23, _MSG, 3, "Sparse"),
    ],
    "Node": [
        ("input", 1, _STR, 3, ""),
        ("op_type", 4, _STR, 1, ""),
        ("attribute", 5, _MSG, 3, "Attribute"),
    ],
    "Graph": [
        ("node", 1, _MSG, 3, "Node"),
        ("initializer", 5, _MSG, 3, "Tensor"),
        ("sparse_initializer", 15, _MSG, 3, "Sparse"),
    ],
    "Model": [("graph", 7, _MSG, 1, "Graph")],
}


def _model_class() -> Any:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory  # onnxruntime's

    proto = descriptor_pb2.FileDescriptorProto(
        name="qexport_onnx_subset.proto", package="qexport_onnx_subset", syntax="proto2"
    )
    for name, fields in _SCHEMA.items():
        msg = proto.message_type.add(name=name)
        for fname, number, ftype, label, ref in fields:
            field = msg.field.add(name=fname, number=number, type=ftype, label=label)
            if ref:
                field.type_name = f".qexport_onnx_subset.{ref}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("qexport_onnx_subset.Model"))


_MODEL: Any = None


@dataclass
class GraphScan:
    external_files: set[str]
    vocab_rows: int | None  # rows of the table Gather indexes with input_ids (None: not found)


def _tensors(graph: Any) -> Iterator[Any]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sparse in (*attr.sparse_tensors, attr.sparse_tensor):
                yield from (sparse.values, sparse.indices)
            for sub in (*attr.graphs, *([attr.g] if attr.HasField("g") else [])):
                yield from _tensors(sub)


def _check_external(root: Path, tensor: Any) -> str:
    info = {e.key: e.value for e in tensor.external_data}
    what = f"external data of tensor {tensor.name[:100]!r}"
    location = info.get("location")
    if not location:
        raise ManifestError(f"{what} names no location")
    path = inside(root, location, what)
    if not path.is_file():
        raise ManifestError(f"{what}: file {location[:200]!r} is missing")
    try:
        offset, length = int(info.get("offset", 0)), int(info.get("length", 0))
    except ValueError:
        raise ManifestError(f"{what}: offset/length are not integers") from None
    if offset < 0 or length < 0 or offset + length > path.stat().st_size:
        raise ManifestError(f"{what}: bytes {offset}..{offset + length} lie past {location!r}")
    return location


def _vocab_rows(graph: Any) -> int | None:
    dims = {t.name: list(t.dims) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Gather" and list(node.input[1:2]) == ["input_ids"]:
            table = dims.get(node.input[0])
            if table:
                return int(table[0])
    return None


def scan_graph(graph_file: Path, root: Path) -> GraphScan:
    """Check the graph's external-data locations (ManifestError) and find its vocabulary rows.
    `root` is the artifact folder, resolved."""
    global _MODEL
    if graph_file.stat().st_size > GRAPH_BYTES_LIMIT:
        raise ManifestError(f"graph {graph_file.name!r} is larger than 2 GiB")
    if _MODEL is None:
        _MODEL = _model_class()
    model = _MODEL()
    try:
        model.ParseFromString(graph_file.read_bytes())
    except Exception as exc:  # protobuf's DecodeError, or a recursion limit
        raise ManifestError(f"graph {graph_file.name!r} is not a valid ONNX file ({exc})") from None
    files = {_check_external(root, t) for t in _tensors(model.graph) if t.data_location == EXTERNAL}
    return GraphScan(files, _vocab_rows(model.graph))


def check_token_ids(scan: GraphScan, max_id: int, what: str) -> None:
    """Refuse token ids the graph's embedding table has no row for (one line, at load)."""
    if scan.vocab_rows is not None and max_id >= scan.vocab_rows:
        raise ManifestError(
            f"{what} holds token id {max_id}, but the graph's embedding table has "
            f"{scan.vocab_rows} rows: the tokenizer does not belong to this graph"
        )


def tokenizer_max_id(tokenizer: Any) -> int:
    """The largest id a `tokenizers.Tokenizer` can emit (its vocabulary and added tokens)."""
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    return max(vocab.values(), default=0)
