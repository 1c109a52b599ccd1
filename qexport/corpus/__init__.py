"""Corpus embedding: read a corpus file, embed every record once, write vectors.

`io` reads .txt / .jsonl / .parquet inputs and writes .npy / .parquet outputs; `local` is the
in-process, resumable engine behind `qexport embed`.
"""
