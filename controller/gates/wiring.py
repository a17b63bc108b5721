"""The gate pass as the manager's resync runs it: clients made once, on first use.

The GitHub client is the App's (none without one: GitHub gates are then decided by
deliveries only, and the deadline); the cluster reader needs the ``kubernetes`` package,
imported only when a ``kubernetes:`` gate is first polled.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Callable

from controller.gates.cluster import ClusterReader, KubernetesReader
from controller.gates.poll import GateGitHub, GatePoller
from controller.github.client import make_client
from controller.settings import Settings
from controller.store.db import Database

log = logging.getLogger(__name__)


def gate_poller(
    db: Database, settings: Settings, *, on_decision: Callable[[], None]
) -> Callable[[], None]:
    @functools.cache
    def github() -> GateGitHub | None:
        try:
            return make_client(settings)
        except Exception as exc:
            log.warning("promotion gates: no GitHub client (%s); deliveries still decide", exc)
            return None

    @functools.cache
    def cluster() -> ClusterReader | None:
        if importlib.util.find_spec("kubernetes") is None:
            log.warning("promotion gates: the kubernetes package is not installed")
            return None
        return KubernetesReader(settings=settings.kubernetes)

    poller = GatePoller(db=db, github=github, cluster=cluster, on_decision=on_decision)
    return poller.poll_waiting
