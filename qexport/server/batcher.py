"""The background batcher: requests from concurrent clients share forward passes, and long
requests are cut into token-budget slices scheduled fairly with the others.

It is task-agnostic: it runs token rows through a `runtime.core.RowRunner` (`Embedder.core`,
`Reranker.core`), whose output has one row of the task's row shape per token row ((dim,) for
an embedding, () for a rerank logit), and each Job carries its own completion (Matryoshka
for embeddings; none for rerank logits, which the handler turns into ranked scores).

Handlers tokenise their input, then `submit` a Job (at most `max_queue` requests in flight,
else `queue.Full`, which the app answers with 503). The main worker gathers what arrives
within `max_wait_s`, then repeatedly plans one forward pass of at most `max_batch_tokens`
padded tokens: the jobs that have been served the fewest tokens go first, each giving its
rows shortest first. A request of many rows is thus sliced across passes, and a request that
arrives meanwhile is in the next pass.

One row is one forward pass at most; a 32k-token row runs for seconds. While the main worker
runs a pass wider than `long_row_tokens`, a second worker runs passes made only of short rows,
so small requests are not stuck behind it (the two share the CPU). Jobs whose client went away
or whose deadline passed are dropped before their next pass.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..runtime.core import RowRunner

log = logging.getLogger("qexport")
_seq = itertools.count()


@dataclass(eq=False)
class Job:
    ids: list[list[int]]
    type_ids: list[list[int]] | None  # None: the graph takes none (or all zeros)
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    deadline: float = math.inf  # time.monotonic() after which the job is dropped
    # what the future gets: complete(rows out, in input order); None: the rows themselves
    complete: Callable[[np.ndarray], Any] | None = None
    cancelled: bool = False  # set by the handler when the client disconnected or timed out
    cancel_reason: str = "client_disconnected"  # or "deadline": the handler stopped waiting
    tokens: int = field(init=False)
    # scheduler state (under Batcher._cond)
    order: list[int] = field(init=False)  # row indices, shortest first
    next: int = field(init=False, default=0)  # position in `order` of the next row to plan
    left: int = field(init=False)  # rows not computed yet
    served: int = field(init=False, default=0)  # tokens planned so far
    done: bool = field(init=False, default=False)
    seq: int = field(init=False)
    out: np.ndarray | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.tokens = sum(len(r) for r in self.ids)
        self.order = sorted(range(len(self.ids)), key=lambda i: len(self.ids[i]))
        self.left = len(self.ids)
        self.seq = next(_seq)


Rows = list[tuple[Job, int]]


def _resolve(fut: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if fut.done():  # the client went away or the handler timed out
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(value)


class Batcher:
    def __init__(
        self,
        runner: RowRunner,
        *,
        max_wait_s: float,
        max_queue: int,
        max_batch_tokens: int,
        long_row_tokens: int = 1024,
        on_batch: Callable[[int, int], None] | None = None,
        on_drop: Callable[[str], None] | None = None,
    ) -> None:
        if not (math.isfinite(max_wait_s) and max_wait_s >= 0):
            raise ValueError(f"max_wait_s must be finite and >= 0, got {max_wait_s}")
        if max_queue < 1 or max_batch_tokens < 1 or long_row_tokens < 1:
            raise ValueError("max_queue, max_batch_tokens and long_row_tokens must be >= 1")
        self.runner = runner
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.max_batch_tokens = max_batch_tokens
        self.long_row_tokens = long_row_tokens
        self.on_batch = on_batch or (lambda rows, tokens: None)
        self.on_drop = on_drop or (lambda reason: None)
        self.requests = 0  # requests answered
        self.batches = 0  # forward passes run
        self.error: str | None = None  # why the batcher died
        self._cond = threading.Condition()
        self._incoming: list[Job] = []
        self._active: list[Job] = []
        self._inflight = 0
        self._gather_until: float | None = None
        self._long = False  # the main worker runs a long pass
        self._paused = False
        self._stop = False
        self._threads: list[threading.Thread] = []

    # -- control ------------------------------------------------------------------------------

    def start(self) -> None:
        self._stop = False
        self._threads = [
            threading.Thread(target=self._worker, args=(False,), name="qexport-batcher"),
            threading.Thread(target=self._worker, args=(True,), name="qexport-batcher-short"),
        ]
        for t in self._threads:
            t.daemon = True
            t.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=30)
        self._threads = []
        self._fail_pending("the server is shutting down")

    def pause(self, paused: bool = True) -> None:
        """Hold (or release) every forward pass; requests stay in flight meanwhile."""
        with self._cond:
            self._paused = paused
            self._cond.notify_all()

    @property
    def alive(self) -> bool:
        return (
            self.error is None and bool(self._threads) and all(t.is_alive() for t in self._threads)
        )

    @property
    def inflight(self) -> int:
        return self._inflight

    def submit(self, job: Job) -> None:
        """Queue a job; queue.Full when `max_queue` requests are in flight, RuntimeError when
        the batcher is not running."""
        with self._cond:
            if not self.alive:
                raise RuntimeError(f"the batcher is not running ({self.error or 'stopped'})")
            if self._inflight >= self.max_queue:
                raise queue.Full
            self._inflight += 1
            self._incoming.append(job)
            self._cond.notify_all()

    def cancel(self, job: Job, reason: str = "client_disconnected") -> None:
        """Drop a job before its next forward pass; `reason`: "client_disconnected" (the client
        left) or "deadline" (the handler stopped waiting), the label of the drop."""
        with self._cond:
            job.cancelled, job.cancel_reason = True, reason
            self._cond.notify_all()

    # -- scheduling (under self._cond) --------------------------------------------------------

    def _finish(self, job: Job, value: Any, error: BaseException | None) -> None:
        if job.done:
            return
        job.done = True
        self._inflight -= 1
        self.requests += 1
        try:
            job.loop.call_soon_threadsafe(_resolve, job.future, value, error)
        except RuntimeError:  # the event loop is closed (shutdown)
            log.debug("dropped a result: event loop closed")

    def _admit(self) -> None:
        if self._incoming:
            if not self._active:
                self._gather_until = time.monotonic() + self.max_wait_s
            self._active += self._incoming
            self._incoming = []
        now = time.monotonic()
        keep = []
        for job in self._active:
            if job.done:
                continue
            if job.cancelled or now >= job.deadline:
                reason = job.cancel_reason if job.cancelled else "deadline"
                self.on_drop(reason)
                self._finish(job, None, TimeoutError("request dropped: " + reason))
                continue
            keep.append(job)
        self._active = keep

    def _plan(self, short_only: bool) -> Rows:
        rows: Rows = []
        budget, width = self.max_batch_tokens, 0
        for job in sorted(self._active, key=lambda j: (j.served, j.seq)):
            while job.next < len(job.order):
                r = job.order[job.next]
                n = len(job.ids[r])
                w = max(width, n)
                if (short_only and n > self.long_row_tokens) or (
                    rows and (len(rows) + 1) * w > budget
                ):
                    break
                rows.append((job, r))
                width, job.next, job.served = w, job.next + 1, job.served + n
            if len(rows) * width >= budget:
                break
        return rows

    def _wait_time(self, short_only: bool) -> float | None:
        """Seconds to wait before planning (None: forever), or 0 to plan now."""
        if self._paused or not self._active:
            return None
        if short_only:
            return 0 if self._long else None
        if self._gather_until is not None:
            pending = sum(len(j.ids[r]) for j in self._active for r in j.order[j.next :])
            left = self._gather_until - time.monotonic()
            if pending < self.max_batch_tokens and left > 0:
                return left
            self._gather_until = None
        return 0

    def _next_rows(self, short_only: bool) -> Rows | None:
        with self._cond:
            while not self._stop:
                self._admit()
                wait = self._wait_time(short_only)
                if wait == 0:
                    rows = self._plan(short_only)
                    if rows:
                        if not short_only:
                            self._long = max(len(j.ids[r]) for j, r in rows) > self.long_row_tokens
                            self._cond.notify_all()
                        return rows
                    wait = None
                self._cond.wait(wait)
            return None

    # -- running ------------------------------------------------------------------------------

    def _worker(self, short_only: bool) -> None:
        try:
            while (rows := self._next_rows(short_only)) is not None:
                try:
                    self._run(rows)
                finally:
                    if not short_only:
                        with self._cond:
                            self._long = False
        except BaseException as exc:  # a dead batcher must be visible: /health turns 503
            log.exception("the batcher stopped")
            self.error = f"{type(exc).__name__}: {exc}"
            self._fail_pending(f"the batcher stopped: {self.error}")

    def _fail_pending(self, why: str) -> None:
        with self._cond:
            for job in self._active + self._incoming:
                self._finish(job, None, RuntimeError(why))
            self._active, self._incoming = [], []

    def _run(self, rows: Rows) -> None:
        ids = [j.ids[r] for j, r in rows]
        type_ids = _type_ids(rows)
        try:
            out = self.runner.run_prepared(self.runner.prepare(ids, type_ids, batch_size=len(ids)))
        except Exception as exc:
            jobs = list(dict.fromkeys(j for j, _ in rows))
            if len(jobs) > 1:  # isolate the request that failed (e.g. NaN) from the others
                for job in jobs:
                    self._run([(j, r) for j, r in rows if j is job])
                return
            with self._cond:
                self._finish(jobs[0], None, exc)
            return
        self.batches += 1
        self.on_batch(len(rows), sum(len(r) for r in ids))
        with self._cond:
            for (job, r), vec in zip(rows, out, strict=True):
                if job.out is None:
                    job.out = np.empty((len(job.ids), *out.shape[1:]), dtype=np.float32)
                job.out[r] = vec
                job.left -= 1
                if job.left == 0:
                    self._complete(job)

    def _complete(self, job: Job) -> None:
        assert job.out is not None
        try:
            value = job.out if job.complete is None else job.complete(job.out)
        except Exception as exc:
            self._finish(job, None, exc)
            return
        self._finish(job, value, None)


def _type_ids(rows: Rows) -> list[list[int]] | None:
    """The rows' token type ids; None when no job has any (the runner feeds zeros if the graph
    wants them)."""
    if all(j.type_ids is None for j, _ in rows):
        return None
    return [[0] * len(j.ids[r]) if j.type_ids is None else j.type_ids[r] for j, r in rows]
