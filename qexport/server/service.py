"""What every task's route shares: one batcher over the served model's row runner, `/health`,
and waiting for a job under the request's deadline while watching for the client leaving.

`Service` is parameterised by the task (`qexport.tasks`) and holds no task logic: a route
(`server/embed.py`, `server/rerank.py`) tokenises its request into rows, hands them to `run`
with its completion, and shapes the answer. Refusals: 503 when `max_queue` requests are in
flight or the batcher is down, 504 past the deadline, a client that left gets nothing (499 in
the log) and its rows are dropped before their next forward pass; NaN/Inf from the model is a
500 naming it, never a silent number.
"""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse

from ..runtime import Embedder, Reranker
from ..tasks import Task
from .batcher import Batcher, Job
from .body import until_disconnect
from .config import ServerConfig
from .errors import ApiError
from .metrics import Metrics

Model = Embedder | Reranker


class Service:
    def __init__(
        self,
        model: Model,
        task: Task,
        cfg: ServerConfig,
        metrics: Metrics,
        details: Callable[[Any], dict[str, Any]] | None = None,
    ) -> None:
        self.model, self.task, self.cfg, self.metrics = model, task, cfg, metrics
        self.name = cfg.model_name or model.path.resolve().name
        self.details = details or (lambda model: {})  # the task's lines in /health
        self.batcher = Batcher(
            model.core,
            max_wait_s=cfg.max_wait_ms / 1000,
            max_queue=cfg.max_queue,
            max_batch_tokens=model.max_batch_tokens,
            long_row_tokens=cfg.long_row_tokens,
            on_batch=metrics.on_batch,
            on_drop=lambda reason: metrics.refuse("dropped_" + reason),
        )
        metrics.bind(lambda: self.batcher.inflight, lambda: float(self.batcher.alive))

    def health(self) -> JSONResponse:
        m, b = self.model, self.batcher
        body = {
            "status": "ok" if b.alive else "unavailable",
            "model": self.name,
            "task": self.task.name,
            **self.details(m),
            "max_length": m.encoder.max_length,
            "providers": m.providers,
            "queue": b.inflight,
            "max_queue": self.cfg.max_queue,
            "requests": b.requests,
            "batches": b.batches,
        }
        if not b.alive:
            body["error"] = f"the batcher is not running ({b.error or 'stopped'})"
        return JSONResponse(body, status_code=200 if b.alive else 503)

    def submit(
        self,
        ids: list[list[int]],
        type_ids: list[list[int]] | None,
        deadline: float,
        complete: Callable[[np.ndarray], Any] | None = None,
    ) -> Job:
        """Queue the rows; 503 when the queue is full or the batcher is not running."""
        loop = asyncio.get_running_loop()
        job = Job(ids, type_ids, loop.create_future(), loop, deadline=deadline, complete=complete)
        try:
            self.batcher.submit(job)
        except queue.Full:
            raise ApiError(
                503,
                f"server busy: {self.cfg.max_queue} requests already waiting; retry later",
                reason="queue_full",
                headers={"Retry-After": "1"},
            ) from None
        except RuntimeError as exc:
            raise ApiError(503, str(exc), reason="batcher_down") from None
        return job

    async def run(
        self,
        request: Request,
        ids: list[list[int]],
        type_ids: list[list[int]] | None,
        deadline: float,
        complete: Callable[[np.ndarray], Any] | None = None,
    ) -> tuple[Any, int] | None:
        """(the job's result, its tokens), or None when the client went away first (answer
        499); ApiError 503/504/500 otherwise."""
        job = self.submit(ids, type_ids, deadline, complete)
        watcher = asyncio.ensure_future(until_disconnect(request))
        try:
            waiting: set[asyncio.Future[Any]] = {job.future, watcher}
            done, _ = await asyncio.wait(
                waiting,
                timeout=max(0.0, deadline - time.monotonic()),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            watcher.cancel()
        if job.future not in done:
            left = watcher in done
            self.batcher.cancel(job, "client_disconnected" if left else "deadline")
            if left:  # nobody is listening any more
                self.metrics.refuse("client_disconnected")
                return None
            raise self._late()
        try:
            return job.future.result(), job.tokens
        except TimeoutError:  # the batcher dropped it at the deadline first
            raise self._late() from None
        except FloatingPointError as exc:  # NaN/Inf from the model: never a silent value
            raise ApiError(500, str(exc)) from None
        except RuntimeError as exc:  # the batcher stopped while the request was in flight
            raise ApiError(503, str(exc), reason="batcher_down") from None

    def _late(self) -> ApiError:
        return ApiError(
            504,
            f"request not answered within {self.cfg.request_timeout_s:g} s; retry later",
            reason="deadline",
        )
