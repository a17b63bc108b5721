"""Leader election: with several replicas, one at a time reconciles and builds.

Every replica serves webhooks, the API, the pages and runs, and routes deliveries (that
is safe in parallel: see :func:`controller.dispatch.route_pending`). The reconcile passes
and the deploy queue's consumers run only in the leader, so two replicas never build at
once and the reconcile loop does not run twice. Which mechanism elects it:

* **SQLite**: one replica by construction (the chart refuses more): always the leader,
  no election (:data:`None` from :func:`make_elector`).
* **Kubernetes** (``SLIPWAY_KUBERNETES_LEASE_NAME`` set, as the Helm chart does): a
  ``coordination.k8s.io`` Lease (:mod:`controller.leadership.lease`), the convention of
  client-go's leader election, so ``kubectl get lease`` shows who leads.
* **PostgreSQL elsewhere**: a session advisory lock on a dedicated connection
  (:mod:`controller.leadership.advisory`); the lock lives exactly as long as that
  connection, so a leader that dies or loses the database loses the lock with it.

Losing leadership is final for the process: :class:`Campaign` calls ``on_lost`` once and
ends. The controller then stops building at once (its ``stopping`` event cancels the
running build commands) and exits; ``slipway serve`` starts it again as a candidate. That
is how controller-runtime handles it too: a former leader that kept its in-memory state
and went on would be the risky part. Jobs it held go back to the queue when their lease
lapses (or at once, when the next leader on the same host sees their owner is dead), and
their deployments resume from the journal (:mod:`controller.pipeline.journal`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

from controller.settings import Settings

log = logging.getLogger(__name__)

RETRY_SECONDS = 2.0


class Claim(Protocol):
    """One way of holding leadership: try to take it, check it is still held, give it up."""

    description: str

    def acquire(self) -> bool: ...

    def keep(self) -> bool: ...

    def release(self) -> None: ...


class Campaign:
    """A thread that tries to become leader every ``retry`` seconds, then checks every
    ``retry`` seconds that it still is. ``on_elected`` runs once when it wins;
    ``on_lost(reason)`` once if it loses, after which the campaign is over."""

    def __init__(self, claim: Claim, *, retry: float = RETRY_SECONDS) -> None:
        self.claim = claim
        self.retry = retry
        self.leading = threading.Event()
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, *, on_elected: Callable[[], None], on_lost: Callable[[str], None]) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(on_elected, on_lost), name="leader-election", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """End the campaign and give up leadership (the next candidate takes over now
        instead of waiting for a lease to run out)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self, on_elected: Callable[[], None], on_lost: Callable[[str], None]) -> None:
        try:
            if not self._campaign():
                return
            log.info("leader: this replica reconciles and builds (%s)", self.claim.description)
            self.leading.set()
            on_elected()
            reason = self._hold()
            if reason is not None:
                self.leading.clear()
                self.lost.set()
                log.error("leadership lost: %s; stopping the builds", reason)
                on_lost(reason)
        finally:
            self._give_up()

    def _campaign(self) -> bool:
        waiting_logged = False
        while not self._stop.is_set():
            try:
                if self.claim.acquire():
                    return True
            except Exception as exc:
                log.warning("leader election (%s) failed: %s: %s", self.claim.description, type(exc).__name__, exc)  # fmt: skip
            if not waiting_logged:
                log.info("follower: another replica leads (%s)", self.claim.description)
                waiting_logged = True
            self._stop.wait(self.retry)
        return False

    def _hold(self) -> str | None:
        while not self._stop.wait(self.retry):
            try:
                if not self.claim.keep():
                    return f"{self.claim.description} is no longer held by this replica"
            except Exception as exc:
                return f"{self.claim.description}: {type(exc).__name__}: {exc}"
        return None

    def _give_up(self) -> None:
        self.leading.clear()
        try:
            self.claim.release()
        except Exception as exc:
            log.warning("giving up leadership (%s) failed: %s", self.claim.description, exc)


def make_elector(settings: Settings) -> Campaign | None:
    """The election for this deployment, or None when this replica is the only one."""
    url, runtime = settings.database_url, settings.runtime
    if url.startswith("sqlite"):
        return None
    if runtime.kubernetes_lease_name:
        from controller.leadership.lease import KubernetesLeaseApi, LeaseClaim, default_identity

        api = KubernetesLeaseApi(
            name=runtime.kubernetes_lease_name,
            namespace=runtime.kubernetes_lease_namespace,
            settings=settings.kubernetes,
        )
        identity = runtime.kubernetes_lease_identity or default_identity()
        return Campaign(LeaseClaim(api, identity=identity))
    from controller.leadership.advisory import AdvisoryLock

    return Campaign(AdvisoryLock(url))
