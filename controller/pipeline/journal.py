"""Journaled steps, after the seed's ``io.runTask``.

Each step of a deployment has an idempotency key (``deployment id`` + step name) and a
stored result. Running a step whose result is stored returns that result without running
it again, so a controller that died anywhere resumes the deployment without cloning twice,
numbering a second version or promoting twice. A step that was started but has no result
is run again from scratch (``attempt`` tells it so); steps are written so that a rerun
starts from a clean slate (fresh work directory) or is naturally idempotent.

Temporary failures retry in place with exponential backoff and jitter (``limit``, ``min``
and ``max`` timeout, ``factor``, ``randomize``); permanent ones are recorded and raised.

Log lines are buffered and written in small batches, so a chatty ``pip install`` costs a
few transactions a second, not one per line.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from controller.errors import PermanentError, TemporaryError
from controller.queue import Backoff
from controller.store.db import Database
from controller.store.tables import DeploymentLog, DeploymentStep, utcnow

MAX_LOG_LINES = 20_000


class Journal:
    def __init__(
        self, db: Database, deployment_id: str, *, stopping: threading.Event | None = None
    ) -> None:
        self.db = db
        self.deployment_id = deployment_id
        self.stopping = stopping or threading.Event()
        self._buffer: list[DeploymentLog] = []
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()
        self._count = 0
        self.step_name: str | None = None

    # -- logs -----------------------------------------------------------------------------

    def log(self, message: str, *, level: str = "info", step: str | None = None) -> None:
        with self._lock:
            self._count += 1
            if self._count > MAX_LOG_LINES:
                return
            if self._count == MAX_LOG_LINES:
                message, level = "[slipway] log limit reached; further lines are dropped", "warn"
            self._buffer.append(
                DeploymentLog(
                    deployment_id=self.deployment_id,
                    step=step or self.step_name,
                    level=level,
                    message=message[:8000],
                    created_at=utcnow(),
                )
            )
            due = len(self._buffer) >= 200 or time.monotonic() - self._last_flush > 0.5
        if due:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            batch, self._buffer = self._buffer, []
            self._last_flush = time.monotonic()
        if batch:
            with self.db.transaction() as session:
                session.add_all(batch)

    # -- steps ----------------------------------------------------------------------------

    def done(self, name: str) -> dict[str, Any] | None:
        with self.db.read() as session:
            row = session.execute(
                select(DeploymentStep).where(
                    DeploymentStep.deployment_id == self.deployment_id,
                    DeploymentStep.name == name,
                    DeploymentStep.status == "done",
                )
            ).scalar_one_or_none()
            return dict(row.result or {}) if row is not None else None

    def step(
        self,
        name: str,
        fn: Callable[[int], dict[str, Any] | None],
        *,
        retry: Backoff | None = None,
    ) -> dict[str, Any]:
        """Run ``fn(attempt)`` once per deployment; return its stored result."""
        stored = self.done(name)
        if stored is not None:
            self.log(f"Step {name}: already done, resuming after it", step=name)
            return stored
        retry = retry or Backoff(limit=5, min_timeout=1.0, max_timeout=30.0)
        self.step_name = name
        try:
            while True:
                attempt = self._begin(name)
                started = time.monotonic()
                try:
                    result = fn(attempt) or {}
                except TemporaryError as exc:
                    if attempt >= retry.limit:
                        self._end(name, started, error=str(exc))
                        raise
                    delay = max(retry.delay(attempt), exc.delay or 0)
                    self.log(
                        f"{exc} — retrying in {delay:.1f}s (attempt {attempt}/{retry.limit})",
                        level="warn",
                    )
                    self.flush()
                    if self.stopping.wait(delay):
                        raise
                    continue
                except PermanentError as exc:
                    self._end(name, started, error=str(exc))
                    raise
                self._end(name, started, result=result)
                return result
        finally:
            self.flush()
            self.step_name = None

    def _begin(self, name: str) -> int:
        with self.db.transaction() as session:
            row = session.execute(
                select(DeploymentStep).where(
                    DeploymentStep.deployment_id == self.deployment_id,
                    DeploymentStep.name == name,
                )
            ).scalar_one_or_none()
            if row is None:
                row = DeploymentStep(deployment_id=self.deployment_id, name=name, attempts=0)
                session.add(row)
            row.status = "running"
            row.attempts += 1
            row.started_at = utcnow()
            row.error = None
            return row.attempts

    def _end(
        self,
        name: str,
        started: float,
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        elapsed = (time.monotonic() - started) * 1000
        self.flush()
        with self.db.transaction() as session:
            row = session.execute(
                select(DeploymentStep).where(
                    DeploymentStep.deployment_id == self.deployment_id,
                    DeploymentStep.name == name,
                )
            ).scalar_one()
            row.status = "failed" if error is not None else "done"
            row.result = result
            row.error = error
            row.finished_at = utcnow()
            row.duration_ms = elapsed
            session.add(
                DeploymentLog(
                    deployment_id=self.deployment_id,
                    step=name,
                    level="error" if error is not None else "info",
                    message=f"Step {name} {'failed' if error is not None else 'done'} in {elapsed / 1000:.2f}s",
                )
            )
