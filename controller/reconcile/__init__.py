"""Reconcile: the resync passes that compare desired state with what is recorded.

Webhook deliveries only make things happen sooner; these passes make them happen at all
(STYLE.md, rule 1). The manager runs them every ``SLIPWAY_RESYNC_INTERVAL`` (±20%):

* :mod:`~controller.reconcile.branches` — every tracked branch's head (the desired state,
  read from the source) against the commits its environment has attempted; a new head is
  requested the way a push delivery would request it.
* :mod:`~controller.reconcile.github` — with a GitHub App: open pull requests (missed
  previews deployed, previews of closed ones archived) and expired previews
  (``SLIPWAY_PREVIEW_TTL``); branch heads of repositories without ``--clone-url``.
* storage retention (:mod:`controller.store.retention`) — finished jobs, old deployment
  logs and old run logs go, so the database stays bounded.
* runs whose process is gone (:func:`controller.store.runs.fail_abandoned_runs`) are
  marked failed instead of staying "running".

* :mod:`~controller.reconcile.deployments` — deployments that lost their job get one
  again; webhook deliveries past their retention go.

The pass that reconciles the runtime (which workers serve) still lives in
:mod:`controller.services`, as it holds the runtime this package may not import.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

from controller.github.client import GitHubClient
from controller.reconcile.branches import BranchPass, Repo
from controller.reconcile.github import ConditionalReads, GitHubBranches, PullRequestPass
from controller.secretstore.crypto import Cipher
from controller.settings import Settings
from controller.sources.base import GitRemote, RefResolver, Source
from controller.store.db import Database
from controller.store.retention import RetentionPolicy, prune_storage
from controller.store.runs import fail_abandoned_runs

log = logging.getLogger(__name__)

__all__ = ["BranchPass", "git_sources", "resync_passes"]


def git_sources(
    git: RefResolver, *, github: ConditionalReads | None = None
) -> Callable[[Repo], Source | None]:
    """A project with a clone URL is resolved with ``git ls-remote`` of that URL; one
    without, whose repository has an installation, with GitHub's API."""

    def source_for(repo: Repo) -> Source | None:
        if repo.clone_url:
            return GitRemote(resolver=git, clone_url=repo.clone_url, name=repo.repo)
        if github is not None and repo.installation_id is not None:
            return GitHubBranches(github, repo.installation_id, repo.repo)
        return None

    return source_for


def resync_passes(
    *,
    db: Database,
    cipher: Cipher,
    git: RefResolver,
    settings: Settings,
    on_deploy: Callable[[], None],
    github: Callable[[], GitHubClient | None] | None = None,
    on_archive: Callable[[int], None] = lambda env_id: None,
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

    def fail_runs_left_running() -> None:
        failed = fail_abandoned_runs(db)
        if failed:
            log.warning(
                "%d run(s) were left running by a server process that is gone: "
                "marked failed (RunAbandoned)",
                failed,
            )

    passes: list[Callable[[], None]] = [prune_old_records, fail_runs_left_running]
    reads = ConditionalReads(github) if github is not None else None
    if reads is not None:
        pulls = PullRequestPass(
            db=db,
            cipher=cipher,
            reads=reads,
            preview_ttl=runtime.preview_ttl,
            on_deploy=on_deploy,
            on_archive=on_archive,
        )
        passes.insert(0, pulls.reconcile_pull_requests)
    if runtime.resync_branches:
        branches = BranchPass(
            db=db, cipher=cipher, source_for=git_sources(git, github=reads), on_deploy=on_deploy
        )
        passes.insert(0, branches.reconcile_branches)
    return passes
