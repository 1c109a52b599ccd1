"""Write an artifact atomically: everything goes to a temporary sibling folder, which is
renamed to the destination only when complete, so a failure leaves nothing half-written."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx_ir as ir

from ..manifest import EXTERNAL_DATA_NAME, GRAPH_NAME, MANIFEST_NAME, Manifest, sha256_file

# Above this, weights are streamed to one external data file (a tensor at a time) instead of
# being serialised inside the protobuf, which needs the whole model in memory (about 3x) at
# export, and makes onnxruntime hold the weights twice at load (measured, 4 layers of the 0.6B
# width: 1,504 MB peak RSS inline vs 840 MB with external data at 1,024 tokens).
EXTERNAL_THRESHOLD = 256 << 20


class OutputError(ValueError):
    """The output folder cannot be written."""


def library_versions() -> dict[str, str]:
    out = {}
    for pkg in (
        "qexport",
        "onnx",
        "onnx-ir",
        "onnxruntime",
        "onnxruntime-gpu",
        "torch",
        "transformers",
        "tokenizers",
    ):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[pkg] = importlib.metadata.version(pkg)
    return out


def check_output(out: Path, overwrite: bool) -> None:
    """Fail fast, before any heavy work, when `out` cannot be created."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"output {str(out)!r} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputError(
            f"output folder {str(out)!r} is not empty (pass --overwrite to replace it)"
        )
    parent = out.absolute().parent
    for anc in [parent, *parent.parents]:
        if anc.exists():
            if not anc.is_dir():
                raise OutputError(
                    f"output folder {str(out)!r} cannot be created: {str(anc)!r} is not a folder"
                )
            break
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".probe", dir=parent)
        os.rmdir(probe)
    except OSError as exc:
        raise OutputError(
            f"output folder {str(out)!r} cannot be written: {exc.strerror or exc}"
        ) from exc


@contextlib.contextmanager
def staging(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary folder beside `out`; on success move it into place, else delete it."""
    check_output(out, overwrite)
    parent = out.absolute().parent
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=parent))
    try:
        yield tmp
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=parent))
            os.replace(out, old / "x")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_graph(model: ir.Model, folder: Path, weight_bytes: int, progress: bool = True) -> None:
    """Save the graph; large weights go to one external data file beside it, materialised
    one tensor at a time while writing (bounded in-flight bytes), with a progress bar."""
    if weight_bytes <= EXTERNAL_THRESHOLD:
        ir.save(model, folder / GRAPH_NAME)
        return
    from tqdm.auto import tqdm

    with tqdm(desc="writing weights", unit="tensor", disable=None if progress else True) as bar:

        def callback(tensor: ir.TensorProtocol, info: ir.external_data.CallbackInfo) -> None:
            bar.total = info.total
            bar.update(1)

        ir.save(
            model,
            folder / GRAPH_NAME,
            external_data=EXTERNAL_DATA_NAME,
            callback=callback,
            max_workers=1,
            max_in_flight_bytes=256 << 20,
        )


def finish_manifest(manifest: Manifest, folder: Path) -> None:
    """Checksum every file in the folder, then write qexport.json."""
    manifest.files = {
        str(p.relative_to(folder)): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
    }
    (folder / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
