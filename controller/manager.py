"""Worker threads, lease heartbeats, a jittered resync, and a graceful drain.

Work arrives as durable jobs (:mod:`controller.queue`); each kind has its own handler and
its own pool of threads (routing: one thread, which keeps a repository's deliveries in
order; deployments: ``SLIPWAY_MAX_CONCURRENT_BUILDS`` threads). A handler's exception
never kills a thread: :class:`~controller.errors.TemporaryError` and unexpected errors
are retried with backoff and jitter until the job's ``max_attempts``;
:class:`~controller.errors.PermanentError` fails the job at once.

Webhooks only speed things up. Every ``resync_interval`` (±20% jitter, so replicas do not
beat in step) the resync callbacks re-derive what should be running from the database:
queued deployments without a live job get one, and the runtime is reconciled.

Recording a job's outcome (ack, fail, retry) can fail too (the database is down or
busy). That must not kill the thread either: the error is logged with the job and the
outcome that was lost, and the job keeps its lease, which lapses, so the job is claimed
and run again — the one safe reading of "we do not know whether it was recorded".

With an ``elector`` (several replicas, :mod:`controller.leadership`), routing drains run
in every replica but the worker pools and the resync start only once this replica is
elected, and losing leadership stops them (:attr:`Manager.lost_leadership`): the builds
stop between steps and their commands are cancelled, as at a graceful stop.

Stopping sets :attr:`Manager.stopping`; long handlers check it between steps and raise
:class:`Interrupted`, which hands the job back to the queue at once instead of waiting for
its lease to run out.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from controller.errors import PermanentError, TemporaryError
from controller.leadership import Campaign
from controller.queue import Backoff, Claimed, Queue

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """The controller is stopping; hand the job back to the queue."""


Handler = Callable[[Claimed], None]


@dataclass
class Pool:
    kinds: tuple[str, ...]
    handler: Handler
    threads: int = 1
    backoff: Backoff = field(
        default_factory=lambda: Backoff(limit=20, min_timeout=1.0, max_timeout=60.0)
    )


@dataclass
class Drain:
    """A loop that does its own transactional work. ``fn`` returns None when there was
    nothing to do (wait for a notification of ``kinds``), True when more is waiting (go on
    at once), False when it caught up (pause, so the next burst batches up)."""

    name: str
    kinds: tuple[str, ...]
    fn: Callable[[], bool | None]
    pause: float = 0.0


class Manager:
    def __init__(
        self,
        queue: Queue,
        pools: list[Pool],
        *,
        resync: list[Callable[[], None]] | None = None,
        drains: list[Drain] | None = None,
        resync_interval: float = 60.0,
        poll_interval: float = 1.0,
        elector: Campaign | None = None,
    ) -> None:
        self.queue = queue
        self.pools = pools
        self.resync_callbacks = resync or []
        self.drains = drains or []
        self.resync_interval = resync_interval
        self.poll_interval = poll_interval
        self.elector = elector
        self.stopping = threading.Event()
        self.lost_leadership = threading.Event()
        self._threads: list[threading.Thread] = []
        self._spawning = threading.Lock()
        self._resync_now = threading.Event()

    def start(self) -> None:
        for drain in self.drains:
            self._spawn(f"drain-{drain.name}", self._drain, drain)
        self._spawn("lease-heartbeat", self._heartbeat)
        if self.elector is None:
            self._lead()
        else:
            self.elector.start(on_elected=self._lead, on_lost=self._lose)

    def _lead(self) -> None:
        freed = self.queue.release_dead_leases()
        if freed:
            log.info("re-queued %d job(s) held by a controller that is gone", freed)
        for pool in self.pools:
            for n in range(pool.threads):
                self._spawn(f"worker-{pool.kinds[0]}-{n}", self._work, pool)
        self._spawn("resync", self._resync_loop)

    def _lose(self, reason: str) -> None:
        self.lost_leadership.set()
        self.stopping.set()
        self._resync_now.set()
        self.queue.notify()

    def stop(self, timeout: float = 30.0) -> None:
        self.stopping.set()
        self._resync_now.set()
        self.queue.notify()
        with self._spawning:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)
        self._threads.clear()
        # Leadership goes last: the jobs this replica held are settled by now.
        if self.elector is not None:
            self.elector.stop()

    def request_resync(self) -> None:
        self._resync_now.set()

    def _spawn(self, name: str, target: Callable[..., None], *args: object) -> None:
        with self._spawning:
            if self.stopping.is_set():
                return
            thread = threading.Thread(target=target, args=args, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _work(self, pool: Pool) -> None:
        while not self.stopping.is_set():
            seen = self.queue.generation(pool.kinds)
            try:
                job = self.queue.claim(pool.kinds)
            except Exception:
                log.exception("claiming a job failed; retrying")
                self.stopping.wait(self.poll_interval)
                continue
            if job is None:
                self.queue.wait(self.poll_interval, since=seen, kinds=pool.kinds)
                continue
            self._run(pool, job)

    def _run(self, pool: Pool, job: Claimed) -> None:
        try:
            pool.handler(job)
        except Interrupted:
            self._settle(
                job,
                "retry",
                lambda: self.queue.retry(
                    job.id, delay=0, error="controller stopped; resumed on restart"
                ),
            )
        except PermanentError as exc:
            log.warning("job %s (%s) failed: %s", job.id, job.kind, exc)
            reason = str(exc)
            self._settle(job, "fail", lambda: self.queue.fail(job.id, reason))
        except Exception as exc:
            temporary = isinstance(exc, TemporaryError)
            if job.attempts >= min(job.max_attempts, pool.backoff.limit):
                log.error(
                    "job %s (%s) gave up after %d attempts: %s", job.id, job.kind, job.attempts, exc
                )
                message = f"gave up after {job.attempts} attempts: {exc}"
                self._settle(job, "fail", lambda: self.queue.fail(job.id, message))
                return
            delay = pool.backoff.delay(job.attempts)
            if isinstance(exc, TemporaryError) and exc.delay:
                delay = max(delay, exc.delay)
            if not temporary:
                log.exception("job %s (%s) raised; retrying in %.1fs", job.id, job.kind, delay)
            error = f"{type(exc).__name__}: {exc}"
            self._settle(job, "retry", lambda: self.queue.retry(job.id, delay=delay, error=error))
        else:
            self._settle(job, "ack", lambda: self.queue.ack(job.id))

    def _settle(self, job: Claimed, outcome: str, record: Callable[[], object]) -> None:
        """Record a job's outcome; a failure to record is logged, never raised."""
        try:
            record()
        except Exception as exc:
            kind = "temporary" if _is_temporary(exc) else "unexpected"
            log.error(
                "job %s (%s, attempt %d): recording its outcome (%s) failed (%s error: %s: %s); "
                "it stays leased and runs again when its lease lapses",
                job.id,
                job.kind,
                job.attempts,
                outcome,
                kind,
                type(exc).__name__,
                exc,
                exc_info=kind == "unexpected",
            )

    def _drain(self, drain: Drain) -> None:
        while not self.stopping.is_set():
            seen = self.queue.generation(drain.kinds)
            try:
                worked = drain.fn()
            except Exception:
                log.exception("%s failed; trying again shortly", drain.name)
                self.stopping.wait(self.poll_interval)
                continue
            if worked is True:
                continue
            if worked is False:
                if drain.pause:
                    self.stopping.wait(drain.pause)
                continue
            self.queue.wait(self.poll_interval, since=seen, kinds=drain.kinds)

    def _heartbeat(self) -> None:
        interval = self.queue.lease_seconds / 3
        while not self.stopping.wait(interval):
            try:
                self.queue.renew()
            except Exception:
                log.exception("renewing leases failed")

    def _resync_loop(self) -> None:
        while not self.stopping.is_set():
            self.resync_once()
            delay = self.resync_interval * random.uniform(0.8, 1.2)
            self._resync_now.wait(delay)
            self._resync_now.clear()

    def resync_once(self) -> None:
        for callback in self.resync_callbacks:
            if self.stopping.is_set():
                return
            try:
                callback()
            except Exception:
                log.exception("resync step %s failed", getattr(callback, "__name__", callback))


def _is_temporary(exc: BaseException) -> bool:
    """Database errors a retry may cure (connection lost, locked, busy) and our own."""
    if isinstance(exc, TemporaryError):
        return True
    return isinstance(exc, (OperationalError, PoolTimeout)) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    )
