"""Score one pair of N tokens with a rerank artifact in a fresh process; print the log-odds
and the peak RSS (MB) as JSON. Used by the long-pair test so that memory is measured alone."""

import json
import sys
import time

from qexport.memory import peak_rss_mb
from qexport.runtime import Reranker

artifact, n_tokens = sys.argv[1], int(sys.argv[2])
rr = Reranker(artifact, device="cpu", threads=2)
enc = rr.encoder
base = peak_rss_mb()
words = " ".join(f"w{i % 997}" for i in range(n_tokens))  # several tokens per word
body = enc.tokenizer.encode(enc.bodies("query", [words], None)[0], add_special_tokens=False).ids
need = n_tokens - len(enc.prefix) - len(enc.suffix)
assert len(body) >= need, (len(body), need)
row = enc.prefix + body[:need] + enc.suffix
start = time.perf_counter()
logit = rr.logits_for_ids([row])
print(
    json.dumps(
        {
            "tokens": len(row),
            "logit": float(logit[0]),
            "rss_after_load_mb": base,
            "peak_rss_mb": peak_rss_mb(),
            "seconds": time.perf_counter() - start,
        }
    )
)
