"""Journaled steps, after the seed's ``io.runTask``.

Each step of a deployment has an idempotency key (``deployment id`` + step name) and a
stored result. Running a step whose result is stored returns that result without running
it again, so a controller that died anywhere resumes the deployment without cloning twice,
numbering a second version or promoting twice. A step that was started but has no result
is run again from scratch (``attempt`` tells it so); steps are written so that a rerun
starts from a clean slate (fresh work directory) or is naturally idempotent.

**Bookkeeping is batched.** The journal reads the deployment's step rows once, then
writes each step's start and end in one transaction — the one that ends the step, with
the buffered log lines and the deployment field writes the pipeline staged meanwhile
(:meth:`Journal.stage`). A step whose effect is a database write records its own end
inside that write's transaction (:meth:`Journal.record`), so its effect and its result
commit together or not at all. The start is written earlier only when it must be:

- with any earlier write (a log flush of a long step carries it);
- by a timer once the step has run for ``start_after`` seconds (1 s), so a long step
  (a slow clone, ``pip install``) shows as started, with the staged status, while it
  runs;
- by :meth:`Journal.begin_durably`, which a step calls before work that a rerun must
  know was started (a user's pre-build command writing into the checkout).

The trade-off: a step that dies before its start was written is rerun as if it were its
first attempt, so the ``attempts`` count of quick steps only counts attempts that got as
far as a write. That is safe because every such step is idempotent or starts from a
clean slate without looking at ``attempt``; a step that does look at it calls
``begin_durably`` first.

Temporary failures retry in place with exponential backoff and jitter (``limit``, ``min``
and ``max`` timeout, ``factor``, ``randomize``); permanent ones are recorded and raised.

Log lines are buffered and written in small batches, so a chatty ``pip install`` costs a
few transactions a second, not one per line.

A little over 400 lines: the ordering of starts, ends and staged writes is one concern and
reads best in one place.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from controller.errors import PermanentError, TemporaryError
from controller.queue import Backoff
from controller.store.db import Database
from controller.store.deployments import deployment_steps, mark_step_running, step_by_name
from controller.store.tables import DeploymentLog, DeploymentStep, utcnow

log = logging.getLogger(__name__)

MAX_LOG_LINES = 20_000

Write = Callable[[Session], None]


@dataclass
class _StepState:
    status: str
    attempts: int
    result: dict[str, Any] | None


@dataclass
class _Running:
    """The step being run: its start is written with the journal's next transaction."""

    name: str
    attempt: int
    started_at: datetime
    started: float
    written: bool = False
    ending: bool = False
    lines: bool = False
    recorded: tuple[dict[str, Any], tuple[int, int]] | None = None
    holding: bool = False


class Journal:
    def __init__(
        self,
        db: Database,
        deployment_id: str,
        *,
        stopping: threading.Event | None = None,
        start_after: float = 1.0,
    ) -> None:
        self.db = db
        self.start_after = start_after
        self.deployment_id = deployment_id
        self.stopping = stopping or threading.Event()
        self._buffer: list[dict[str, Any]] = []
        self._staged: list[Write] = []
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()
        self._write_lock = threading.RLock()
        self._count = 0
        self._steps: dict[str, _StepState] | None = None
        self._running: _Running | None = None
        self.step_name: str | None = None

    # -- logs -----------------------------------------------------------------------------

    def log(self, message: str, *, level: str = "info", step: str | None = None) -> None:
        if self._buffered(message, level=level, step=step):
            running = self._running
            if running is None or not running.ending:  # never inside a step's own write
                self.flush()

    def _buffered(self, message: str, *, level: str, step: str | None) -> bool:
        """Buffer one line; whether a flush is due."""
        with self._lock:
            self._count += 1
            if self._count > MAX_LOG_LINES:
                return False
            if self._count == MAX_LOG_LINES:
                message, level = "[slipway] log limit reached; further lines are dropped", "warn"
            self._buffer.append(
                {
                    "step": step or self.step_name,
                    "level": level,
                    "message": message[:8000],
                    "created_at": utcnow(),
                }
            )
            return len(self._buffer) >= 200 or time.monotonic() - self._last_flush > 0.5

    def stage(self, write: Write) -> None:
        """Apply ``write`` in the journal's next transaction (status and field updates
        that need not be visible before then)."""
        with self._lock:
            self._staged.append(write)

    def flush(self) -> None:
        """Write buffered log lines, staged writes and a pending step start, if any."""
        with self._write_lock:
            with self._lock:
                pending = bool(self._buffer or self._staged)
            running = self._running
            if not pending and (running is None or running.written):
                return
            with self.db.transaction() as session:
                taken = self._apply(session)
            self._taken(taken)

    def _apply(self, session: Session) -> tuple[int, int]:
        """Add what is pending to ``session``; :meth:`_taken` drops it once committed."""
        with self._lock:
            logs, staged = list(self._buffer), list(self._staged)
            self._last_flush = time.monotonic()
        for write in staged:
            write(session)
        running = self._running
        if running is not None and not running.written and not running.ending:
            self._write_start(session, running)
        session.add_all(DeploymentLog(deployment_id=self.deployment_id, **line) for line in logs)
        return len(logs), len(staged)

    def _write_start(self, session: Session, running: _Running) -> None:
        """Conditional in SQL: a start written by the timer thread never undoes an end
        that committed meanwhile."""
        mark_step_running(
            session,
            self.deployment_id,
            running.name,
            attempts=running.attempt,
            started_at=running.started_at,
        )

    def _taken(self, taken: tuple[int, int]) -> None:
        logs, staged = taken
        with self._lock:
            del self._buffer[:logs]
            del self._staged[:staged]
        if self._running is not None:
            self._running.written = True

    # -- steps ----------------------------------------------------------------------------

    def _load(self) -> dict[str, _StepState]:
        if self._steps is None:
            with self.db.read() as session:
                rows = deployment_steps(session, self.deployment_id)
                self._steps = {
                    row.name: _StepState(row.status, row.attempts, dict(row.result or {}))
                    for row in rows
                }
        return self._steps

    def done(self, name: str) -> dict[str, Any] | None:
        state = self._load().get(name)
        return dict(state.result or {}) if state is not None and state.status == "done" else None

    def redo(self, name: str) -> None:
        """Run ``name`` again although it is done: its effect is gone (it is on another
        replica's disk, see :mod:`controller.pipeline.handover`)."""
        state = self._load().get(name)
        if state is not None:
            self._load()[name] = _StepState("running", state.attempts, None)

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
        attempt = 0
        timer = threading.Timer(self.start_after, self._flush_start)
        timer.daemon = True
        timer.start()
        try:
            while True:
                attempt = self._begin(name, previous=attempt)
                try:
                    result = self._call(fn, attempt)
                except TemporaryError as exc:
                    if attempt >= retry.limit:
                        self._end(error=str(exc))
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
                    self._end(error=str(exc))
                    raise
                if result is None:
                    return self._ended_in_step()
                self._end(result=result)
                return result
        finally:
            timer.cancel()
            timer.join()
            self._running = None
            self.flush()
            self.step_name = None

    def _flush_start(self) -> None:
        try:
            self.flush()
        except Exception:  # the step's own writes report the database's trouble
            log.warning("could not write the start of a step of %s", self.deployment_id, exc_info=True)  # fmt: skip

    def _call(
        self, fn: Callable[[int], dict[str, Any] | None], attempt: int
    ) -> dict[str, Any] | None:
        """``fn(attempt)``; ``None`` when the step recorded its own end (:meth:`record`)."""
        running = self._running
        assert running is not None
        try:
            result = fn(attempt) or {}
        finally:
            if running.holding:
                running.holding = False
                self._write_lock.release()
        if running.recorded is not None:
            return None
        return result

    def _ended_in_step(self) -> dict[str, Any]:
        running = self._running
        assert running is not None and running.recorded is not None
        result, taken = running.recorded
        self._ended(running, result, taken)
        return dict(result)

    def begin_durably(self) -> None:
        """Write the running step's start now (before work a rerun must know about)."""
        self.flush()

    def record(
        self, session: Session, result: dict[str, Any], *, lines: Sequence[str] = ()
    ) -> None:
        """End the running step inside the caller's transaction with ``result`` (and
        ``lines`` logged), so the step's effect and its result commit together. The
        step must return only once that transaction committed; if it raises instead,
        nothing recorded is kept. Called again (the caller retries its transaction),
        the last call counts. Inside that transaction use ``lines``, not :meth:`log`."""
        running = self._running
        assert running is not None, "record() is for the step being run"
        running.ending = True
        if not running.lines:
            running.lines = True
            for line in lines:
                self._buffered(line, level="info", step=None)
        if not running.holding:
            # Never wait here: a log flush of another thread may be waiting for the
            # write lock this transaction holds. Its lines then go with the next write.
            running.holding = self._write_lock.acquire(blocking=False)
        ended = self._write_end(session, running, result=result, error=None)
        taken = self._apply(session) if running.holding else (0, 0)
        session.add(ended)
        running.recorded = (dict(result), taken)

    def _begin(self, name: str, *, previous: int) -> int:
        state = self._load().get(name)
        attempt = max(state.attempts if state is not None else 0, previous) + 1
        self._running = _Running(name, attempt, utcnow(), time.monotonic())
        return attempt

    def _end(self, *, result: dict[str, Any] | None = None, error: str | None = None) -> None:
        running = self._running
        assert running is not None
        running.ending = True
        with self._write_lock:
            with self.db.transaction() as session:
                ended = self._write_end(session, running, result=result, error=error)
                taken = self._apply(session)
                session.add(ended)
            self._ended(running, result if error is None else None, taken, error=error)

    def _ended(
        self,
        running: _Running,
        result: dict[str, Any] | None,
        taken: tuple[int, int],
        *,
        error: str | None = None,
    ) -> None:
        self._taken(taken)
        running.written = True
        status = "failed" if error is not None else "done"
        self._load()[running.name] = _StepState(status, running.attempt, result)

    def _write_end(
        self,
        session: Session,
        running: _Running,
        *,
        result: dict[str, Any] | None,
        error: str | None,
    ) -> DeploymentLog:
        """Write the step's end into ``session``; return its log line (added last)."""
        elapsed = (time.monotonic() - running.started) * 1000
        row = self._row(session, running.name)
        row.status = "failed" if error is not None else "done"
        row.attempts = running.attempt
        row.started_at = running.started_at
        row.result = result
        row.error = error
        row.finished_at = utcnow()
        row.duration_ms = elapsed
        return DeploymentLog(
            deployment_id=self.deployment_id,
            step=running.name,
            level="error" if error is not None else "info",
            message=f"Step {running.name} {'failed' if error is not None else 'done'} in {elapsed / 1000:.2f}s",
            created_at=utcnow(),
        )

    def _row(self, session: Session, name: str) -> DeploymentStep:
        row = step_by_name(session, self.deployment_id, name)
        if row is None:
            row = DeploymentStep(deployment_id=self.deployment_id, name=name, attempts=0)
            session.add(row)
        return row
