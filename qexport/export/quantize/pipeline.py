"""`quantize_model`: the float graph in, the quantized graph (in place) and its record out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx_ir as ir

from ...runtime.tokenize import TextEncoder
from .calibration import CHECK_BATCH, Batches, load_texts, scratch_folder
from .check import CheckTexts, Quantized, initializer_bytes
from .dynamic_search import quantize_dynamic
from .options import QuantOptions, make_plan, nbits_settings
from .weight_only import quantize_weight_only


def quantize_model(
    model: ir.Model,
    precision: str,
    encoder: TextEncoder,
    workdir: Path,
    *,
    device: str = "cpu",
    options: QuantOptions | None = None,
) -> Quantized:
    """Rewrite `model` (the float graph from build_model) in place for `precision`.

    `encoder` (built by the caller: export.api.write_tokenizer) tokenises the calibration /
    check texts (`options.calibration`, or the built-in set). The float graph runs on them
    from a scratch folder in `workdir` (removed afterwards) when a check, GPTQ or SmoothQuant
    needs it. int8-dynamic is measured and refused below its bar here; int8 / int4 are checked
    by `verify_quantized` once the artifact is written."""
    opts = options or QuantOptions()
    plan = make_plan(precision, device, opts)
    lines = load_texts(opts.calibration)
    quant = Quantized(precision, {"base_precision": plan.base, "device": device}, plan.bar)
    with scratch_folder(workdir) as scratch:
        if plan.float_run:
            names = [v.name or "" for v in model.graph.inputs]
            quant.texts = CheckTexts(
                calibration=Batches.build(encoder, lines, names),
                check=Batches.build(encoder, lines, names, batch_size=CHECK_BATCH),
                device=plan.run_device,
                base=plan.base,
            )
            quant.info["check"] = _check_record(len(lines), opts.calibration, plan.base)
        if plan.bits is not None:
            nbits = nbits_settings(plan, opts)
            quant.info.update(quantize_weight_only(model, scratch, quant, plan, nbits))
        else:
            quant.info.update(quantize_dynamic(model, scratch, quant, opts.alphas))
    quant.info["unquantized"] = "embedding table, norms, attention, pooling"
    quant.weight_bytes = initializer_bytes(model)
    return quant


def _check_record(texts: int, calibration: str | Path | None, base: str) -> dict[str, Any]:
    return {
        "texts": texts,
        "source": "builtin" if calibration is None else Path(calibration).name,
        "reference": f"float graph ({base})",
    }
