"""`qexport embed` on one 15M-character record (under the 16M-character record limit): peak
memory is bounded by the artifact's max_length, not by the record (issue 27, item 3: before,
the record was tokenised whole: 4.2 GB peak RSS here; now ~0.5 GB), and the vector equals the
Embedder's on the text cut to the kept tokens."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from qexport.runtime import Embedder

LIMIT_MB = 1200


def test_a_15m_character_record_is_embedded_in_bounded_memory(tiny_artifact, tmp_path):
    words = "the quick brown fox jumps over a lazy dog while 東京 and Zürich café naïve".split()
    rng = np.random.default_rng(0)
    text = " ".join(words[i] for i in rng.integers(0, len(words), 100_000))
    text = (text * (15_000_000 // len(text) + 1))[:15_000_000]
    assert len(text) == 15_000_000
    src = tmp_path / "big.jsonl"
    src.write_text(json.dumps({"id": "a", "text": text}, ensure_ascii=False) + "\n", "utf-8")
    out = tmp_path / "out.npy"
    # VmHWM (qexport.memory.peak_rss_mb), not ru_maxrss: Linux keeps ru_maxrss across fork +
    # exec, so a child of a large pytest process would report the parent's peak
    code = (
        "import sys; from qexport.cli import main; from qexport.memory import peak_rss_mb; "
        "rc = main(sys.argv[1:]); print('PEAK_MB', peak_rss_mb()); sys.exit(rc)"
    )
    argv = [sys.executable, "-c", code, "-q", "embed", str(tiny_artifact), str(src)]
    argv += ["-o", str(out), "--device", "cpu", "--no-verify"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    peak_mb = float(r.stdout.split("PEAK_MB")[1].split()[0])
    assert peak_mb < LIMIT_MB, f"peak RSS {peak_mb:.0f} MB"
    emb = Embedder(tiny_artifact, device="cpu")
    kept = emb.encoder.encode([text], warn=False).ids[0]
    assert len(kept) == emb.manifest.max_length
    np.testing.assert_allclose(np.load(out)[0], emb.core.run([kept])[0], atol=1e-5)
