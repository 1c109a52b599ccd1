"""`quantize_model`: the float graph in, the quantized graph (in place) and its record out."""

from __future__ import annotations

from pathlib import Path

import onnx_ir as ir

from ...tasks import EMBED, Task
from .calibration import Rows, scratch_folder
from .check import CheckTexts, Quantized, initializer_bytes
from .dynamic_search import quantize_dynamic
from .options import DEFAULT_PER_TOKEN, QuantOptions, make_plan, nbits_settings
from .weight_only import quantize_weight_only

UNQUANTIZED = {
    "embed": "embedding table, norms, attention, pooling",
    "rerank": "embedding table, norms, attention, score vector (fp32)",
}


def quantize_model(
    model: ir.Model,
    precision: str,
    rows: Rows,
    workdir: Path,
    *,
    task: Task = EMBED,
    source: str = "builtin",
    device: str = "cpu",
    options: QuantOptions | None = None,
) -> Quantized:
    """Rewrite `model` (the float graph from build_model) in place for `precision`.

    `rows` (built by the caller from the task's calibration / check inputs, named by `source`)
    are what the float graph runs on, from a scratch folder in `workdir` (removed afterwards),
    when a check, GPTQ or SmoothQuant needs it; its `task.output` is compared by the task's
    metric. int8-dynamic is measured and refused below its bar here; int8 / int4 are checked
    by `verify_quantized` once the artifact is written."""
    opts = options or QuantOptions()
    plan = make_plan(precision, device, opts, task)
    quant = Quantized(precision, {"base_precision": plan.base, "device": device}, plan.gate)
    with scratch_folder(workdir) as scratch:
        if plan.float_run:
            quant.texts = CheckTexts(rows, task.output, plan.run_device, plan.base)
            quant.info["check"] = plan.gate.head(rows, source, plan.base)
        if plan.bits is not None:
            nbits = nbits_settings(plan, opts)
            quant.info.update(quantize_weight_only(model, scratch, quant, plan, nbits))
        else:
            quant.info.update(
                quantize_dynamic(
                    model,
                    scratch,
                    quant,
                    opts.alphas,
                    plan.method,
                    plan.damp,
                    opts.per_token or DEFAULT_PER_TOKEN,
                )
            )
    quant.info["unquantized"] = UNQUANTIZED[task.name]
    quant.weight_bytes = initializer_bytes(model)
    return quant
