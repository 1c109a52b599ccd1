"""The runtime install on CPU vs GPU wheels (issue 30): size, import time, first query,
throughput.

For each install (`qexport[cpu]`: onnxruntime; `qexport[gpu]`: onnxruntime-gpu) a fresh
virtualenv is built from this checkout (setuptools removed, as Python 3.12+ venvs have none),
then measured in fresh processes:

* site-packages size (pip included) and the package count;
* import time: `from qexport.runtime import Embedder` (median of --repeats processes);
* first query: load the artifact + embed one query, from process start (median);
* CPU throughput: texts/s embedding --docs SciFact documents after one warm-up pass (median of
  --repeats passes, one process per wheel, the same artifact and thread count).

    python bench/bench_install.py --artifact /tmp/minilm --docs 256 --repeats 5 \
        --out docs/install-2026-12-04.json [--ort-version 1.31.1]

Run it on a quiet machine (`flock /tmp/qexport-heavy.lock ...`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import DATA, REPO

WORKER = r"""
import json, sys, time
t0 = time.perf_counter()
from qexport.runtime import Embedder
t_import = time.perf_counter() - t0
mode, artifact = sys.argv[1], sys.argv[2]
if mode == "import":
    print(json.dumps({"import_s": t_import}))
    sys.exit()
emb = Embedder(artifact, device="auto", threads=int(sys.argv[3]))
emb.embed(["What is the capital of China?"])
t_first = time.perf_counter() - t0
if mode == "first":
    print(json.dumps({"first_query_s": t_first, "providers": emb.providers}))
    sys.exit()
docs = json.load(open(sys.argv[4]))
emb.embed(docs)  # warm-up
rates = []
for _ in range(int(sys.argv[5])):
    t = time.perf_counter()
    emb.embed(docs)
    rates.append(len(docs) / (time.perf_counter() - t))
import onnxruntime
print(json.dumps({"rates": rates, "onnxruntime": onnxruntime.__version__}))
"""


def _site_mb(venv: Path) -> float:
    site = next((venv / "lib").glob("python3*/site-packages"))
    total = 0
    for root, _, files in os.walk(site):
        total += sum(os.lstat(os.path.join(root, f)).st_size for f in files)
    return total / 2**20


WHEEL = {"cpu": "onnxruntime", "gpu": "onnxruntime-gpu"}


def build(venv: Path, extra: str, src: Path, ort_version: str | None) -> dict:
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    subprocess.run([py, "-m", "pip", "uninstall", "-q", "-y", "setuptools"], check=False)
    pin = [f"{WHEEL[extra]}=={ort_version}"] if ort_version else []
    subprocess.run([py, "-m", "pip", "install", "-q", f"{src}[{extra}]", *pin], check=True)
    out = subprocess.run(
        [py, "-m", "pip", "list", "--format", "json"], capture_output=True, text=True, check=True
    )
    names = sorted(p["name"] for p in json.loads(out.stdout))
    return {"site_packages_mb": round(_site_mb(venv), 1), "packages": names}


def run(py: str, *args: str) -> dict:
    out = subprocess.run(
        [py, "-c", WORKER, *args], capture_output=True, text=True, check=True, cwd="/"
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(py: str, artifact: str, docs_file: str, args: argparse.Namespace) -> dict:
    threads = str(args.threads)
    imports = [run(py, "import", artifact)["import_s"] for _ in range(args.repeats)]
    firsts = [run(py, "first", artifact, threads) for _ in range(args.repeats)]
    tput = run(py, "throughput", artifact, threads, docs_file, str(args.repeats))
    return {
        "import_s_median": round(statistics.median(imports), 3),
        "first_query_s_median": round(statistics.median(f["first_query_s"] for f in firsts), 3),
        "providers": firsts[0]["providers"],
        "texts_per_s_median": round(statistics.median(tput["rates"]), 1),
        "texts_per_s_all": [round(r, 1) for r in tput["rates"]],
        "onnxruntime": tput["onnxruntime"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--artifact", required=True)
    p.add_argument("--docs", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--extras", nargs="+", default=["cpu", "gpu"])
    p.add_argument("--ort-version", default=None, help="pin both wheels to this release")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    corpus = DATA / "scifact" / "corpus.jsonl"
    docs = []
    with open(corpus, encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            docs.append(f"{rec.get('title', '')} {rec['text']}".strip())
            if len(docs) == args.docs:
                break
    results: dict = {"machine": os.uname().machine, "cpus": os.cpu_count(), "installs": {}}
    with tempfile.TemporaryDirectory(prefix="qexport-install-") as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(
            REPO, src, ignore=shutil.ignore_patterns(".git", "*.egg-info", "build", "out")
        )
        docs_file = Path(tmp) / "docs.json"
        docs_file.write_text(json.dumps(docs), encoding="utf-8")
        for extra in args.extras:
            venv = Path(tmp) / f"venv-{extra}"
            start = time.perf_counter()
            info = build(venv, extra, src, args.ort_version)
            info["install_s"] = round(time.perf_counter() - start, 1)
            info |= measure(str(venv / "bin" / "python"), args.artifact, str(docs_file), args)
            results["installs"][extra] = info
            print(extra, json.dumps({k: v for k, v in info.items() if k != "packages"}))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
