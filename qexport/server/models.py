"""The served models of one process: each artifact under its name with its own `Service`
(batcher, metrics), requests routed by `model`.

A request that names a model not served is a 404 `model_not_found` (OpenAI's code); one that
names a model of the other task is a 404 as well (that name serves no such route); one that
names none gets the only model of its route's task, and a 400 naming the choices when several
are served. `/metrics` labels the per-model families (`qexport_batch_*`, `qexport_tokens`,
`qexport_queue_depth`, `qexport_batcher_up`, dropped rows) with `model` when more than one
model is served; with one model it is exactly the single-model exposition.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

from ..tasks import Task
from .errors import ApiError
from .metrics import Metrics
from .service import Service

APP_FAMILIES = {"qexport_requests", "qexport_request_seconds"}  # counted once, by route


class Registry:
    """The served models by name, in the order given."""

    def __init__(self, services: list[Service], metrics: Metrics) -> None:
        self.services = {s.name: s for s in services}
        if len(self.services) != len(services):
            names = [s.name for s in services]
            dup = next(n for n in names if names.count(n) > 1)
            raise ValueError(f"two models are served as {dup!r}: give each its own --name")
        self.metrics = metrics  # the app's: requests by route, refusals before routing

    def __iter__(self) -> Iterator[Service]:
        return iter(self.services.values())

    def of_task(self, task: Task) -> list[Service]:
        return [s for s in self if s.task.name == task.name]

    def resolve(self, task: Task, name: Any) -> Service:
        """The service for a request of `task` naming `name` (None: the only one of the task)."""
        if name is not None and not isinstance(name, str):
            raise ApiError(400, f"model is {type(name).__name__}, not a string", "model")
        served = self.of_task(task)
        if name is None or name == "":
            if len(served) == 1:
                return served[0]
            names = ", ".join(s.name for s in served) or "none"
            raise ApiError(
                400 if served else 404,
                f"several {task.name} models are served ({names}): name one in `model`"
                if served
                else f"no {task.name} model is served here (served: {', '.join(self.services)})",
                "model",
                reason="bad_input",
                code=None if served else "model_not_found",
            )
        svc = self.services.get(name)
        if svc is None or svc.task.name != task.name:
            what = "is not served here" if svc is None else f"is a {svc.task.name} model"
            raise ApiError(
                404,
                f"the model `{name}` {what}; {task.name} models served: "
                f"{', '.join(s.name for s in served) or 'none'}",
                "model",
                reason="model_not_found",
                code="model_not_found",
            )
        return svc

    def health(self) -> JSONResponse:
        """One model: its health as before; several: each under its name, 503 if any is down."""
        answers = [s.health() for s in self]
        if len(answers) == 1:
            return answers[0]
        models = {s.name: json.loads(bytes(a.body)) for s, a in zip(self, answers, strict=True)}
        ok = all(a.status_code == 200 for a in answers)
        body = {"status": "ok" if ok else "unavailable", "models": models}
        return JSONResponse(body, status_code=200 if ok else 503)

    def registry(self) -> CollectorRegistry:
        """What `/metrics` exposes."""
        if len(self.services) == 1:
            return next(iter(self)).metrics.registry
        out = CollectorRegistry(auto_describe=False)
        out.register(_Labelled(self))  # type: ignore[arg-type]
        return out


class _Labelled:
    """A collector: the app's request families, and each model's families with `model`."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        sources: list[tuple[str | None, Metrics]] = [(None, self.registry.metrics)]
        sources += [(s.name, s.metrics) for s in self.registry]
        for model, metrics in sources:
            for fam in metrics.registry.collect():
                app_level = fam.name in APP_FAMILIES
                if model is None and not (app_level or fam.name == "qexport_refusals"):
                    continue
                if model is not None and app_level:
                    continue
                into = merged.setdefault(
                    fam.name, Metric(fam.name, fam.documentation, fam.type, fam.unit)
                )
                for s in fam.samples:
                    labels = s.labels if model is None else {**s.labels, "model": model}
                    into.add_sample(s.name, labels, s.value, s.timestamp, s.exemplar)
        yield from merged.values()
