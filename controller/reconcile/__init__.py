"""Reconcile: the resync passes that compare desired state with what is recorded.

Webhook deliveries only make things happen sooner; these passes make them happen at all
(STYLE.md, rule 1). The manager runs them every ``SLIPWAY_RESYNC_INTERVAL`` (±20%):

* :mod:`~controller.reconcile.branches` — every tracked branch's head (the desired state,
  read from the source) against the commits its environment has attempted; a new head is
  requested the way a push delivery would request it.
* storage retention (:mod:`controller.store.retention`) — finished jobs, old deployment
  logs and old run logs go, so the database stays bounded.

* :mod:`~controller.reconcile.deployments` — deployments that lost their job get one
  again; webhook deliveries past their retention go.

The pass that reconciles the runtime (which workers serve) still lives in
:mod:`controller.services`, as it holds the runtime this package may not import.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

from controller.reconcile.branches import BranchPass, Repo
from controller.secretstore.crypto import Cipher
from controller.settings import Settings
from controller.sources.base import GitRemote, RefResolver, Source
from controller.store.db import Database
from controller.store.retention import RetentionPolicy, prune_storage

log = logging.getLogger(__name__)

__all__ = ["BranchPass", "git_sources", "resync_passes"]


def git_sources(git: RefResolver) -> Callable[[Repo], Source | None]:
    """Every project with a clone URL is resolved with ``git ls-remote`` of that URL."""

    def source_for(repo: Repo) -> Source | None:
        return GitRemote(resolver=git, clone_url=repo.clone_url, name=repo.repo)

    return source_for


def resync_passes(
    *,
    db: Database,
    cipher: Cipher,
    git: RefResolver,
    settings: Settings,
    on_deploy: Callable[[], None],
) -> list[Callable[[], None]]:
    """The passes :class:`controller.manager.Manager` runs at each resync, in order."""
    runtime = settings.runtime
    policy = RetentionPolicy(
        jobs=timedelta(days=runtime.job_retention_days),
        deployment_logs=timedelta(days=runtime.deployment_log_retention_days),
        run_logs=timedelta(days=runtime.run_log_retention_days),
    )

    def prune_old_records() -> None:
        pruned = prune_storage(db, policy)
        if pruned:
            log.info(
                "retention: deleted %d finished jobs and %d deployment log lines; "
                "emptied the logs of %d runs",
                pruned.jobs,
                pruned.deployment_logs,
                pruned.run_logs,
            )

    passes: list[Callable[[], None]] = [prune_old_records]
    if runtime.resync_branches:
        branches = BranchPass(
            db=db, cipher=cipher, source_for=git_sources(git), on_deploy=on_deploy
        )
        passes.insert(0, branches.reconcile_branches)
    return passes
