"""Run an artifact's graph on given ids in a fresh process; print peak RSS (MB) as JSON.

Used by the long-context test so that onnxruntime's memory is measured alone."""

import json
import sys
from pathlib import Path

import numpy as np

from qexport.memory import peak_rss_mb
from qexport.runtime.session import create_session

model, ids_path, out_path = sys.argv[1:4]
data = np.load(ids_path)
ids, mask = data["ids"], data["mask"]
sess = create_session(Path(model), "cpu", "fp32", threads=2)  # the options users get
(emb,) = sess.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask})
np.save(out_path, emb)
print(json.dumps({"peak_rss_mb": peak_rss_mb()}))
