"""Prometheus metrics for ``GET /metrics``: what is derived from the store, and what is counted.

``slipway serve`` is two processes (the web process and its controller child, see
:mod:`controller.supervisor`), and may run as several replicas on PostgreSQL. What the
controller does (routing, builds, deployments, promotions while deploying) and what is
recorded durably (runs, the queue, the worker registry) is therefore **derived from the database at
scrape time** by :class:`StoreCollector`: a handful of aggregate queries, truthful across
restarts, processes and replicas (every replica reports the same totals; aggregate them
with ``max``, not ``sum``). Only what happens in the web process itself and leaves no
row is **counted in process**: webhook deliveries as they are answered (including the
refused ones, which are never stored), manual promotions and rollbacks. GitHub API calls
and rate limits happen mostly in the controller child: each process writes its counts to
a file of its own and :class:`GitHubCollector` sums them at scrape time
(:mod:`controller.github.metering` explains why not prometheus_client's multiprocess mode).

Trade-off: the store-derived histograms scan the steps and runs tables on each scrape.
That is cheap for the tables a single controller accumulates (100k rows take a few ms on
PostgreSQL); a much larger history would want rollup rows instead.

Labels are bounded and never carry secrets or repository-controlled strings: webhook
events outside the set GitHub documents become ``other``, ``release:<task>`` steps become
``release``. Outcome labels are named ``status``.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from controller.github.metering import METER
from controller.models import ACTIVE_STATUSES, FINAL_STATUSES, WAITING
from controller.store.db import Database
from controller.store.stats import (
    deployments_by_status,
    pending_deliveries,
    queued_jobs_by_kind,
    run_durations,
    step_durations,
)
from controller.store.tables import utcnow

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

STEP_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
RUN_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
BUILD_STATUSES = ("installing", "building")
RUN_FINAL = ("completed", "failed", "timed_out")

KNOWN_EVENTS = frozenset(
    {
        "push",
        "pull_request",
        "installation",
        "installation_repositories",
        "deployment_status",
        "check_run",
        "check_suite",
        "create",
        "delete",
        "ping",
        "github_app_authorization",
        "repository",
    }
)

# In-process metrics of the web process, in their own registry so that each app's store
# collector can be scraped beside them without touching prometheus_client's global one.
PROCESS_REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=PROCESS_REGISTRY, namespace="slipway")

DELIVERIES = Counter(
    "slipway_webhook_deliveries",
    "Webhook deliveries answered by this process, by event and outcome",
    ["event", "status"],
    registry=PROCESS_REGISTRY,
)
PROMOTIONS = Counter(
    "slipway_promotions",
    "Promotions and rollbacks asked for by hand (API or pages), by outcome",
    ["action", "status"],
    registry=PROCESS_REGISTRY,
)


class GitHubCollector(Collector):
    """GitHub API calls and rate limits of every process of this server (see
    :mod:`controller.github.metering`)."""

    def collect(self) -> Iterator[Metric]:
        calls, limits = METER.totals()
        counted = CounterMetricFamily(
            "slipway_github_api_calls",
            "GitHub API requests, by method and response status class",
            labels=["method", "status"],
        )
        for (method, status), count in sorted(calls.items()):
            counted.add_metric([method, status], count)
        yield counted
        left = GaugeMetricFamily(
            "slipway_github_rate_limit_remaining",
            "Requests left in GitHub's current rate-limit window, per installation "
            "(app: calls as the App itself)",
            labels=["installation"],
        )
        for installation, remaining in sorted(limits.items()):
            left.add_metric([installation], remaining)
        yield left


PROCESS_REGISTRY.register(GitHubCollector())

_DELIVERY_STATUS = {
    202: "accepted",
    400: "invalid",
    401: "unauthorized",
    413: "too_large",
    503: "unavailable",
}


def event_label(event: str | None) -> str:
    return event if event in KNOWN_EVENTS else "other"


def count_deliveries(
    endpoint: Callable[[Request], Awaitable[JSONResponse]],
) -> Callable[[Request], Awaitable[JSONResponse]]:
    """Wrap the webhook endpoint: count each answer by event and outcome."""

    async def counted(request: Request) -> JSONResponse:
        response = await endpoint(request)
        status = _DELIVERY_STATUS.get(response.status_code, str(response.status_code))
        if response.status_code == 202 and b'"duplicate":true' in bytes(response.body):
            status = "duplicate"
        DELIVERIES.labels(event_label(request.headers.get("x-github-event")), status).inc()
        return response

    return counted


def count_promotion(action: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a (sync) promote or rollback handler: count it by outcome, ``ok`` or
    ``refused``. ``functools.wraps`` keeps the signature FastAPI reads."""

    def decorate(handler: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(handler)
        def counted(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                result = handler(*args, **kwargs)
            except Exception:
                PROMOTIONS.labels(action, "refused").inc()
                raise
            PROMOTIONS.labels(action, "ok").inc()
            return result

        return counted

    return decorate


def _seconds_since(moment: datetime | None) -> float:
    return max(0.0, (utcnow() - moment).total_seconds()) if moment else 0.0


def count_live_workers(registry: Path) -> int:
    """Workers in the local runtime's registry (``<data>/workers/<id>.json``) whose process
    is alive; the registry, not the controller's memory, is shared by both processes."""
    live = 0
    for path in registry.glob("*.json"):
        try:
            os.kill(int(json.loads(path.read_text())["pid"]), 0)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        live += 1
    return live


class StoreCollector(Collector):
    """Metrics read from the database at scrape time (see the module docstring)."""

    def __init__(self, db: Database, *, workers: Path) -> None:
        self.db = db
        self.workers = workers

    def collect(self) -> Iterator[Metric]:
        started = time.monotonic()
        try:
            families = list(self._families())
        except Exception as exc:
            log.warning("metrics: cannot read the store: %s", type(exc).__name__)
            up = GaugeMetricFamily("slipway_store_up", "1 when the store answered the scrape")
            up.add_metric([], 0)
            yield up
            return
        yield from families
        up = GaugeMetricFamily("slipway_store_up", "1 when the store answered the scrape")
        up.add_metric([], 1)
        yield up
        took = GaugeMetricFamily(
            "slipway_store_scrape_seconds", "Time the store queries of this scrape took"
        )
        took.add_metric([], time.monotonic() - started)
        yield took

    def _families(self) -> Iterator[Metric]:
        with self.db.read() as session:
            yield from self._deliveries(session)
            yield from self._queue(session)
            yield from self._deployments(session)
            yield self._steps(session)
            yield from self._runs(session)
        workers = GaugeMetricFamily(
            "slipway_workers_live", "Task worker processes alive (local runtime's registry)"
        )
        workers.add_metric([], count_live_workers(self.workers))
        yield workers

    def _deliveries(self, session: Any) -> Iterator[Metric]:
        pending, oldest = pending_deliveries(session)
        lag = GaugeMetricFamily(
            "slipway_routing_lag_seconds",
            "Age of the oldest stored delivery not yet routed (0 when none waits)",
        )
        lag.add_metric([], _seconds_since(oldest))
        yield lag
        waiting = GaugeMetricFamily(
            "slipway_deliveries_pending", "Stored deliveries not yet routed"
        )
        waiting.add_metric([], pending)
        yield waiting

    def _queue(self, session: Any) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "slipway_queue_depth", "Jobs waiting in the durable queue, per kind", labels=["kind"]
        )
        counts = {"deploy": 0, **queued_jobs_by_kind(session)}
        for kind, count in sorted(counts.items()):
            depth.add_metric([kind], count)
        yield depth

    def _deployments(self, session: Any) -> Iterator[Metric]:
        rows = deployments_by_status(session)
        finished = CounterMetricFamily(
            "slipway_deployments",
            "Deployments that reached a final status, by status",
            labels=["status"],
        )
        for status in sorted(FINAL_STATUSES):
            finished.add_metric([status], rows.get(status, 0))
        yield finished
        active = GaugeMetricFamily(
            "slipway_deployments_active",
            "Deployments not finished yet, by status",
            labels=["status"],
        )
        for status in sorted(ACTIVE_STATUSES | {WAITING}):
            active.add_metric([status], rows.get(status, 0))
        yield active
        builds = GaugeMetricFamily("slipway_builds_running", "Deployments installing or building")
        builds.add_metric([], sum(rows.get(s, 0) for s in BUILD_STATUSES))
        yield builds

    def _steps(self, session: Any) -> Metric:
        rows = step_durations(session, STEP_BUCKETS)
        merged: dict[str, list[float]] = {}
        for name, count, total, *buckets in rows:
            step = "release" if name.startswith("release:") else name
            into = merged.setdefault(step, [0.0] * (len(STEP_BUCKETS) + 2))
            for i, value in enumerate([count, total, *buckets]):
                into[i] += float(value or 0)
        family = HistogramMetricFamily(
            "slipway_deployment_step_duration_seconds",
            "Durations of finished deployment steps, per step",
            labels=["step"],
        )
        for step, (count, total, *buckets) in sorted(merged.items()):
            pairs = [(str(b), v) for b, v in zip(STEP_BUCKETS, buckets, strict=True)]
            family.add_metric([step], [*pairs, ("+Inf", count)], total / 1000.0)
        return family

    def _runs(self, session: Any) -> Iterator[Metric]:
        rows = run_durations(session, RUN_BUCKETS)
        by_status = {r[0]: r for r in rows}
        runs = CounterMetricFamily(
            "slipway_runs", "Finished task runs, by status", labels=["status"]
        )
        for status in RUN_FINAL:
            runs.add_metric([status], by_status[status][1] if status in by_status else 0)
        yield runs
        running = GaugeMetricFamily("slipway_runs_running", "Task runs in progress")
        running.add_metric([], by_status["running"][1] if "running" in by_status else 0)
        yield running
        family = HistogramMetricFamily(
            "slipway_run_duration_seconds",
            "Durations of finished task runs, by status",
            labels=["status"],
        )
        for status in RUN_FINAL:
            if status not in by_status:
                continue
            _status, _n, timed, total, *buckets = by_status[status]
            pairs = [(str(b), float(v or 0)) for b, v in zip(RUN_BUCKETS, buckets, strict=True)]
            family.add_metric([status], [*pairs, ("+Inf", float(timed))], float(total) / 1000.0)
        yield family


def make_metrics_endpoint(
    services: Any,
) -> Callable[[Request], Awaitable[Response]]:
    """``GET /metrics``: open by default, as exporters are; ``SLIPWAY_METRICS_TOKEN``
    makes it require ``Authorization: Bearer <token>``."""
    store = CollectorRegistry(auto_describe=False)
    store.register(
        StoreCollector(services.db, workers=Path(services.settings.data_dir) / "workers")
    )

    def render() -> bytes:
        return generate_latest(PROCESS_REGISTRY) + generate_latest(store)

    async def metrics(request: Request) -> Response:
        expected = services.settings.metrics_token
        if expected:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode(), expected.encode()
            ):
                return JSONResponse(
                    {"error": "/metrics needs Authorization: Bearer <SLIPWAY_METRICS_TOKEN>"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
        return Response(await run_in_threadpool(render), media_type=CONTENT_TYPE)

    return metrics
