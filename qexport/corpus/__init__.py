"""Corpus embedding: read a corpus file, embed every record once, write vectors.

`io` is the record layer (every texts file qexport reads: formats, limits, numbering);
`output` the output contract of both engines (the `(id, embedding)` table, the writers, the
summary); `local` (+ `parts`) the in-process, resumable engine behind `qexport embed`;
`ray_engine` the Ray Data adapter behind `--engine ray` (+ `ray_job`, `ray_input`,
`ray_checkpoint`, `ray_actor`).
"""
