"""onnxruntime session: execution providers, CPU fallback, session options; `open_artifact`
loads an artifact's manifest and graph for the Embedder and the Reranker."""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import io
import logging
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from ..manifest import Manifest, ManifestError, load_manifest
from ..tasks import Task, wrong_task
from .graph_scan import GraphScan, scan_graph

if TYPE_CHECKING:
    import onnxruntime as ort

log = logging.getLogger("qexport")
_warned_fallback = False
_preloaded = False

DEVICES = ("auto", "cpu", "cuda")


class DeviceError(RuntimeError):
    """The requested device cannot run this artifact."""


class MissingRuntime(ImportError):
    """No onnxruntime wheel is installed (the runtime install chooses one: qexport[cpu] or
    qexport[gpu])."""


INSTALL_HINT = (
    "onnxruntime is not installed: pip install 'qexport[cpu]' (CPU), or 'qexport[gpu]' on a "
    "machine with an NVIDIA GPU (never both)"
)


def load_onnxruntime() -> ModuleType:
    """The onnxruntime module, whichever wheel provides it; MissingRuntime (one line naming the
    extras) when neither is installed. The one place the runtime imports it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingRuntime(INSTALL_HINT) from exc
    return onnxruntime


def threads_from_env() -> int:
    """QEXPORT_THREADS as a thread count (0 or unset: onnxruntime's default); ValueError naming
    the variable otherwise."""
    raw = os.environ.get("QEXPORT_THREADS", "").strip()
    if not raw:
        return 0
    if not raw.isdigit() or int(raw) > 4096:
        raise ValueError(f"QEXPORT_THREADS must be a thread count from 0 to 4096, got {raw[:40]!r}")
    return int(raw)


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """Options for every session qexport opens (docs/design.md, "Memory at run time").

    * ``enable_mem_reuse = False``: onnxruntime's planner otherwise binds each activation to a
      buffer planned for reuse by a later value of the same shape, so a buffer allocated in
      layer 0 (say the [T, ffn] MLP ones) stays alive through every later attention block.
      Off, each tensor is freed after its last consumer and the CPU arena hands the bytes to
      whatever comes next (4 layers of the 0.6B width, one sequence: peak RSS -18% at 4k,
      -25% at 8k; short-text throughput unchanged).
    * ``enable_mem_pattern = False``: with a pattern, a repeated input shape gets one block
      sized for the whole plan (+290 MB on the second 4k run), and embedding batches rarely
      repeat shapes anyway.
    * the CPU arena stays on: without it glibc keeps freed 16-32 MB tensors in its heaps (a
      higher peak at 4k) and every batch pays fresh page faults (short texts ~15% slower).
    """
    ort = load_onnxruntime()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.enable_mem_reuse = False
    opts.enable_mem_pattern = False
    if threads is None:
        threads = threads_from_env()
    opts.intra_op_num_threads = threads  # 0 = onnxruntime's default (physical cores)
    opts.log_severity_level = 3
    return opts


def preload_cuda_libraries() -> None:
    """Make NVIDIA's pip-installed CUDA 13 / cuDNN libraries (`qexport[cuda]`, or torch's)
    loadable by the CUDA provider, which otherwise looks only on the system's library path.
    Done once, and only where the `nvidia` packages are installed (elsewhere onnxruntime's
    preload prints a failure per library)."""
    global _preloaded
    if _preloaded:
        return
    _preloaded = True
    ort = load_onnxruntime()
    if hasattr(ort, "preload_dlls") and importlib.util.find_spec("nvidia") is not None:
        with contextlib.redirect_stdout(io.StringIO()):
            ort.preload_dlls()


_cuda_devices: int | None = None


def cuda_device_count() -> int:
    """GPUs the NVIDIA driver reports (cuInit + cuDeviceGetCount through the driver library;
    0 where there is no driver). `device="auto"` asks the CUDA provider only when this is
    positive, so a machine without a GPU runs on CPU silently instead of printing the provider's
    load failures."""
    global _cuda_devices
    if _cuda_devices is None:
        _cuda_devices = _count_cuda_devices()
    return _cuda_devices


def _count_cuda_devices() -> int:
    names = {"linux": ("libcuda.so.1", "libcuda.so"), "win32": ("nvcuda.dll",)}
    for name in names.get(sys.platform, ()):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return int(count.value)
    return 0


def create_session(
    graph: Path,
    device: str,
    precision: str,
    threads: int | None = None,
    options: ort.SessionOptions | None = None,
) -> ort.InferenceSession:
    """Open the graph on `device`; "auto" takes CUDA only when the session really got it.

    `options` replaces qexport's session_options() (e.g. one with profiling enabled)."""
    global _warned_fallback
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    ort = load_onnxruntime()
    available = ort.get_available_providers()
    want_cuda = "CUDAExecutionProvider" in available and (
        device == "cuda" or (device == "auto" and cuda_device_count() > 0)
    )
    if want_cuda:
        preload_cuda_libraries()
    if device == "cuda" and not want_cuda:
        raise DeviceError(
            f"device='cuda' but this onnxruntime has no CUDA provider (available: {available}); "
            "install the GPU build: pip install 'qexport[gpu]'"
        )
    providers: list[str] = (
        ["CUDAExecutionProvider", "CPUExecutionProvider"] if want_cuda else ["CPUExecutionProvider"]
    )
    bf16_msg = (
        "this artifact is bf16, which onnxruntime's CPU provider cannot run "
        "(no bf16 MatMul / GroupQueryAttention kernels); use a GPU, or export fp16 or fp32"
    )
    if precision == "bf16" and not want_cuda:
        raise DeviceError(bf16_msg)
    opts = session_options(threads) if options is None else options
    if want_cuda and options is None:
        # the CUDA provider logs an error when it cannot load (no GPU / no CUDA libraries)
        opts.log_severity_level = 4
    try:
        sess = ort.InferenceSession(str(graph), sess_options=opts, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/NotImplemented types
        if precision == "bf16":
            raise DeviceError(bf16_msg) from exc
        raise
    got_cuda = sess.get_providers()[0] == "CUDAExecutionProvider"
    if device == "cuda" and not got_cuda:
        raise DeviceError(
            "device='cuda' but onnxruntime could not create the CUDA provider (no GPU or CUDA 13 libraries)"
        )
    if device == "auto" and want_cuda and not got_cuda and not _warned_fallback:
        _warned_fallback = True
        warnings.warn(
            "CUDA provider unavailable (no GPU or CUDA libraries); running on CPU", stacklevel=3
        )
    if precision == "bf16" and not got_cuda:
        raise DeviceError(bf16_msg)
    return sess


@dataclass
class Opened:
    path: Path
    manifest: Manifest
    session: ort.InferenceSession
    graph: GraphScan


def open_artifact(
    artifact: str | Path,
    task: str,
    device: str,
    threads: int | None,
    verify: bool,
    options: ort.SessionOptions | None,
) -> Opened:
    """The artifact folder, its checked manifest (a `task` one), what qexport checked in its
    graph file (external data confined to the folder, the vocabulary rows; `graph_scan`)
    before onnxruntime opened it, and its session.

    ValueError for another task's artifact; ManifestError for a graph that onnxruntime cannot
    load (its first line of reason kept)."""
    path = Path(artifact)
    m = load_manifest(path, verify=verify)
    if m.task != task:
        raise ValueError(wrong_task(str(path), m.task, task))
    scan = scan_graph(path / m.graph_file, path.resolve())
    try:
        session = create_session(path / m.graph_file, device, m.precision, threads, options)
    except (ValueError, RuntimeError, ImportError):
        raise
    except Exception as exc:  # onnxruntime's own Fail / InvalidProtobuf / InvalidGraph
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if len(first) > 400:  # onnxruntime puts its reason after a long C++ signature
            first = f"{first[:120]} ... {first[-260:]}"
        raise ManifestError(f"graph {m.graph_file!r} cannot be loaded: {first}") from exc
    return Opened(path, m, session, scan)


def check_graph(session: ort.InferenceSession, m: Manifest, task: Task) -> None:
    """The manifest must describe the graph that was loaded: the same inputs, every output the
    task declares, and (for a task whose rows are embeddings) an output `embedding_dim` wide.
    Cheap: the session knows its shapes."""
    got = sorted(i.name for i in session.get_inputs())
    if got != sorted(m.input_names):
        raise ManifestError(
            f"manifest inputs {sorted(m.input_names)} do not match the graph's {got}"
        )
    outputs = {o.name: o.shape for o in session.get_outputs()}
    for name in task.outputs:
        if name not in outputs:
            raise ManifestError(f"the graph has no {name!r} output")
    shape = outputs[task.output]
    if task.row_shape == "dim":
        width = shape[-1] if shape else None
        if isinstance(width, int) and width != m.embedding_dim:
            raise ManifestError(
                f"manifest embedding_dim {m.embedding_dim} does not match the graph's "
                f"{task.output} width {width}"
            )
    elif shape is not None and len(shape) != 1 + len(task.row_shape):
        raise ManifestError(
            f"the graph's {task.output!r} output has shape {shape}; a {task.name} artifact "
            f"gives {1 + len(task.row_shape)} dimension(s)"
        )
