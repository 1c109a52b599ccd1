"""The background batcher: requests from concurrent clients share forward passes.

Handlers tokenise their input, then `submit` a Job to a bounded queue (full -> `queue.Full`,
which the app answers with 503). One worker thread takes a job, gathers every job already
waiting plus those arriving within `max_wait_s`, up to `max_batch_tokens` tokens, runs them
through the Embedder's token-budget batches, and hands each request its rows.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..runtime import Embedder

log = logging.getLogger("qexport")
_STOP = object()


@dataclass
class Job:
    ids: list[list[int]]
    type_ids: list[list[int]]
    dim: int | None
    future: asyncio.Future[np.ndarray]
    loop: asyncio.AbstractEventLoop
    tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = sum(len(r) for r in self.ids)


def _resolve(fut: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if fut.done():  # the client went away
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(value)


class Batcher:
    def __init__(
        self, embedder: Embedder, *, max_wait_s: float, max_queue: int, max_batch_tokens: int
    ) -> None:
        self.embedder = embedder
        self.max_wait_s = max_wait_s
        self.max_batch_tokens = max_batch_tokens
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self.requests = 0
        self.batches = 0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="qexport-batcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self.queue.put(_STOP)
            self._thread.join(timeout=30)
            self._thread = None

    def submit(self, job: Job) -> None:
        """Queue a job; raises queue.Full when the queue is at its bound."""
        self.queue.put_nowait(job)

    def _gather(self, first: Job) -> tuple[list[Job], bool]:
        jobs, tokens, stop = [first], first.tokens, False
        deadline = time.monotonic() + self.max_wait_s
        while tokens < self.max_batch_tokens:
            try:  # everything already waiting, then what arrives before the deadline
                nxt = self.queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    nxt = self.queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if nxt is _STOP:
                stop = True
                break
            jobs.append(nxt)
            tokens += nxt.tokens
        return jobs, stop

    def _loop(self) -> None:
        while True:
            first = self.queue.get()
            if first is _STOP:
                return
            jobs, stop = self._gather(first)
            self._run(jobs)
            if stop:
                return

    def _run(self, jobs: list[Job]) -> None:
        emb = self.embedder
        try:
            ids = [r for j in jobs for r in j.ids]
            type_ids = [r for j in jobs for r in j.type_ids]
            out = emb.run_prepared(emb.prepare(ids, type_ids, batch_size=self.max_batch_tokens))
        except Exception as exc:
            if len(jobs) > 1:  # isolate the request that failed (e.g. NaN) from the others
                for job in jobs:
                    self._run([job])
                return
            self._finish(jobs[0], None, exc)
            return
        self.batches += 1
        start = 0
        for job in jobs:
            rows = out[start : start + len(job.ids)]
            start += len(job.ids)
            try:
                self._finish(job, emb.truncate_dim(rows, job.dim), None)
            except Exception as exc:
                self._finish(job, None, exc)

    def _finish(self, job: Job, value: Any, error: BaseException | None) -> None:
        self.requests += 1
        try:
            job.loop.call_soon_threadsafe(_resolve, job.future, value, error)
        except RuntimeError:  # the event loop is closed (shutdown)
            log.debug("dropped a result: event loop closed")
