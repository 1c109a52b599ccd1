"""Time of GPTQ per Qwen3-Embedding-4B layer (numpy, this machine), by input group:
q/k/v share an input, gate/up share one, down has its own. Random H from 2048 rows.

    python bench/bench_gptq_speed.py
    python bench/bench_gptq_speed.py --module /path/to/older/gptq.py   # an older version

(An older gptq.py without `hessian_factor` is timed as it ran then: gptq(w, h) per matrix.)
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import time

import numpy as np

# (K, [N of each projection sharing the input]) for the 4B: hidden 2560, 32/8 heads of 128,
# FFN 9728
GROUPS = {
    "q/k/v": (2560, [4096, 1024, 1024]),
    "gate/up": (2560, [9728, 9728]),
    "down": (9728, [2560]),
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--module", default=None, help="a gptq.py file to time instead")
    args = p.parse_args()
    if args.module:
        spec = importlib.util.spec_from_file_location("gptq_under_test", args.module)
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # dataclasses look their module up
        spec.loader.exec_module(mod)
    else:
        mod = importlib.import_module("qexport.export.quantize.gptq")
    rng = np.random.default_rng(0)
    total = 0.0
    for name, (k, ns) in GROUPS.items():
        x = rng.standard_normal((2048, k)).astype(np.float32)
        h = x.T @ x
        ws = [(rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32) for n in ns]
        start = time.perf_counter()
        if hasattr(mod, "hessian_factor"):
            f = mod.hessian_factor(h, 1.0)
            for w in ws:
                mod.gptq(w, f, 4, 32, False)
        else:
            for w in ws:
                mod.gptq(w, h, 4, 32, False, 1.0)
        took = time.perf_counter() - start
        total += took
        print(f"{name}: K {k}, N {'+'.join(map(str, ns))}: {took:.1f} s", flush=True)
    print(f"one 4B layer: {total:.1f} s")


if __name__ == "__main__":
    main()
