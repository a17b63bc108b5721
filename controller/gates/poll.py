"""The resync's promotion-gate pass: ask GitHub (or the cluster) about waiting deployments.

Deliveries get lost, so every resync polls each waiting deployment's gate:

* ``github-deployment:NAME``: the commit's GitHub deployments (all environments: GitHub's
  ``environment`` filter is exact, our comparison is case-insensitive), then the statuses
  of those in NAME; ``check-run:NAME``: the commit's check runs named NAME. What GitHub
  answers is recorded as the same ``commit_signals`` a delivery records (skipping those
  already known), and the commit is decided from them exactly as routing decides it — one
  rule, whichever path saw the status first.
* ``kubernetes:NAMESPACE/DEPLOYMENT``: the Deployment's rollout, read through a
  :class:`~controller.gates.cluster.ClusterReader`.
* ``manual`` waits for ``slipway promote``; the deadline has its own job.

A GitHub or cluster error skips that deployment until the next pass (it is logged): an
error never decides a gate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from controller.gates.cluster import ClusterReader, rolled_out
from controller.gates.decide import Decision
from controller.gates.waiting import (
    Waiting,
    decide_commit,
    request_decision,
    waiting_deployments,
)
from controller.store.db import Database
from controller.store.gates import installation_of_repo, signal_known
from controller.store.tables import CommitSignal

log = logging.getLogger(__name__)


class GateGitHub(Protocol):
    """The part of :class:`controller.github.client.GitHubClient` the pass uses."""

    def list_deployments(
        self, repo: str, *, installation_id: int, sha: str, environment: str | None
    ) -> list[dict[str, Any]]: ...

    def list_deployment_statuses(
        self, repo: str, *, installation_id: int, deployment_id: int
    ) -> list[dict[str, Any]]: ...

    def list_check_runs(
        self, repo: str, *, installation_id: int, ref: str, check_name: str
    ) -> list[dict[str, Any]]: ...


class GatePoller:
    def __init__(
        self,
        *,
        db: Database,
        github: Callable[[], GateGitHub | None],
        cluster: Callable[[], ClusterReader | None],
        on_decision: Callable[[], None],
    ) -> None:
        self.db = db
        self.github = github
        self.cluster = cluster
        self.on_decision = on_decision

    def poll_waiting(self) -> None:
        with self.db.read() as session:
            waiting = waiting_deployments(session)
        decided = 0
        for item in waiting:
            try:
                decided += self._poll(item)
            except Exception as exc:
                log.warning(
                    "resync: promotion gate %s of deployment %s not checked: %s",
                    item.gate,
                    item.deployment_id,
                    exc,
                )
        if decided:
            self.on_decision()

    def _poll(self, item: Waiting) -> int:
        kind = item.gate.kind
        if kind in ("github-deployment", "check-run") and item.sha:
            return self._poll_github(item)
        if kind == "kubernetes" and item.sha:
            return self._poll_cluster(item)
        return 0

    def _poll_github(self, item: Waiting) -> int:
        client = self.github()
        installation_id = self._installation(item.repo)
        if client is None or installation_id is None:
            return 0
        found = []
        if item.gate.kind == "github-deployment":
            wanted = item.gate.target.lower()
            deployments = client.list_deployments(
                item.repo, installation_id=installation_id, sha=item.sha, environment=None
            )
            for dep in deployments:
                env = str(dep.get("environment") or "")
                if dep.get("sha") not in (None, item.sha):
                    continue
                if env.lower() != wanted or env.lower().startswith("slipway/"):
                    continue
                statuses = client.list_deployment_statuses(
                    item.repo, installation_id=installation_id, deployment_id=int(dep["id"])
                )
                for status in statuses:
                    found.append(
                        CommitSignal(
                            kind="deployment_status",
                            name=str(status.get("environment") or env),
                            state=str(status.get("state")),
                            github_id=int(status["id"]),
                            deployment_id=int(dep["id"]),
                            url=status.get("log_url") or status.get("target_url") or None,
                        )
                    )
        else:
            runs = client.list_check_runs(
                item.repo,
                installation_id=installation_id,
                ref=item.sha,
                check_name=item.gate.target,
            )
            for run in runs:
                found.append(
                    CommitSignal(
                        kind="check_run",
                        name=str(run.get("name")),
                        state=str(run.get("conclusion") or run.get("status")),
                        github_id=int(run["id"]),
                        deployment_id=None,
                        url=run.get("details_url") or run.get("html_url") or None,
                    )
                )
        with self.db.transaction() as session:
            for signal in found:
                if not signal_known(session, kind=signal.kind, github_id=signal.github_id, state=signal.state):  # fmt: skip
                    signal.repo_lower, signal.sha = item.repo.lower(), item.sha
                    session.add(signal)
            session.flush()
            return len(decide_commit(session, repo_lower=item.repo.lower(), sha=item.sha))

    def _poll_cluster(self, item: Waiting) -> int:
        reader = self.cluster()
        if reader is None:
            return 0
        state = reader.read_deployment(item.gate.namespace, item.gate.deployment)
        if state is None or not rolled_out(state, item.sha):
            return 0
        decision = Decision(
            "pass",
            f"Deployment {item.gate.deployment} in namespace {item.gate.namespace} rolled out "
            f"{item.sha[:12]} ({state.available}/{state.replicas} available)",
        )
        with self.db.transaction() as session:
            return int(
                request_decision(
                    session,
                    deployment_id=item.deployment_id,
                    environment_id=item.environment_id,
                    decision=decision,
                )
            )

    def _installation(self, repo: str) -> int | None:
        with self.db.read() as session:
            return installation_of_repo(session, repo)
