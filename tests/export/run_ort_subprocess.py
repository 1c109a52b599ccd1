"""Run an artifact's graph on given ids in a fresh process; print peak RSS (MB) as JSON.

Used by the long-context test so that onnxruntime's memory is measured alone."""

import json
import sys

import numpy as np
import onnxruntime as ort

from qexport.memory import peak_rss_mb

model, ids_path, out_path = sys.argv[1:4]
data = np.load(ids_path)
ids, mask = data["ids"], data["mask"]
opts = ort.SessionOptions()
opts.intra_op_num_threads = 2
sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
(emb,) = sess.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask})
np.save(out_path, emb)
print(json.dumps({"peak_rss_mb": peak_rss_mb()}))
