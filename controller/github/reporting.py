"""The reporter: reconcile GitHub from Slipway's state, the way Flux reconciles a cluster.

The pipeline knows nothing of GitHub. Each pass of :meth:`Reporter.run` loads the
deployments of projects whose repository has an App installation (recent ones without a
report row, and every row not yet ``done``) and compares what each should look like on
GitHub (:mod:`controller.github.render`) with what ``github_reports`` says was sent; it
sends only the difference:

* a GitHub Deployment (environment ``slipway/<env>``), then a status when the state
  changed; an archived preview's deployments get ``inactive``;
* a check run ``Slipway (<environment>)``, created, then completed;
* per pull request one comment (``github_comments``), edited when its body changed
  (:mod:`controller.github.comments`).

**Idempotent by construction.** Every id GitHub gives is recorded in its own short
transaction right after the create succeeds. Before creating, the object is looked up
(the deployment by sha + environment + our id in its ``payload``, the check run by name
on the commit + ``external_id``, the comment by its hidden marker), so a crash between
the create and the record finds the object instead of duplicating it. A status sent twice
(a crash after sending, before recording) is harmless.

**GitHub being down only delays.** A :class:`TemporaryError` (5xx, timeout, rate limit)
backs off that repository (exponential with jitter, at least GitHub's ``Retry-After`` or
rate-limit reset) and leaves its rows as they are; the next pass after the delay sends
what is still missing. A :class:`PermanentError` (422, 404: the App lost access) is
recorded on the row, which is then ``done``: retrying cannot fix it. The pipeline never
waits on any of this.

Deployments that were superseded or canceled before anything was sent are not shown on
GitHub at all (``done`` at once): they never ran.

Passes run in the controller's ``report`` drain: woken by ``notify("report")`` (a status
change the services see) and otherwise at the drain's poll interval. Rows whose
deployment is final and fully reported (and, for previews, archived) are ``done`` and no
longer loaded, so a pass stays small.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from controller.errors import PermanentError, TemporaryError
from controller.github.client import GitHubClient
from controller.github.comments import LOOKBACK, Comments, deployment_view
from controller.github.render import (
    FINAL_STATES,
    DeploymentView,
    check_conclusion,
    check_name,
    check_output,
    check_phase,
    check_status,
    deployment_phase,
    deployment_state,
    describe,
    environment_url,
    log_url,
)
from controller.models import FINAL_STATUSES, WAITING
from controller.store.db import Database
from controller.store.reports import (
    deployments_to_report,
    log_tail,
    step_timings,
    version_of_deployment,
)
from controller.store.tables import Deployment, GitHubReport, utcnow

log = logging.getLogger(__name__)

BATCH = 200
MIN_BACKOFF = 2.0
MAX_BACKOFF = 600.0
# Comments are rendered when a deployment needed reporting, else at most this often
# (a fork refusal has no deployment; it waits this long at most).
COMMENT_INTERVAL = 15.0


@dataclass(frozen=True)
class Reported:
    github_deployment_id: int | None = None
    deployment_state: str | None = None
    check_run_id: int | None = None
    check_state: str | None = None


class Reporter:
    def __init__(
        self,
        *,
        db: Database,
        client_for: Callable[[], GitHubClient | None],
        public_url: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.client_for = client_for
        self.public_url = public_url.rstrip("/")
        self.clock = clock
        self._backoff: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()
        self._comments_at = -COMMENT_INTERVAL
        self.comments = Comments(db=db, public_url=self.public_url)

    # -- the pass -------------------------------------------------------------------------

    def run(self) -> bool | None:
        """One pass (the drain's callback): ``None`` — wait for the next wake-up."""
        client = self.client_for()
        if client is None:
            return None
        with self._lock:
            pending = self.load()
            for dep, reported in pending:
                if self.backed_off(dep.repo):
                    continue
                self.attempt(dep.repo, partial(self.reconcile, client, dep, reported))
            now = self.clock()
            if not pending and now - self._comments_at < COMMENT_INTERVAL:
                return None
            self._comments_at = now
            for target in self.comments.load():
                if self.backed_off(target.repo):
                    continue
                self.attempt(target.repo, partial(self.comments.reconcile, client, target))
        return None

    def attempt(self, repo: str, call: Callable[[], None]) -> None:
        try:
            call()
        except TemporaryError as exc:
            failures = self._backoff.get(repo, (0, 0.0))[0] + 1
            delay = min(MAX_BACKOFF, MIN_BACKOFF * 2 ** (failures - 1))
            delay = max(delay * random.uniform(0.8, 1.2), exc.delay or 0.0)
            self._backoff[repo] = (failures, self.clock() + delay)
            log.warning("reporting to GitHub for %s: %s; again in %.0fs", repo, exc, delay)
        else:
            self._backoff.pop(repo, None)

    def backed_off(self, repo: str) -> bool:
        entry = self._backoff.get(repo)
        return entry is not None and self.clock() < entry[1]

    # -- loading --------------------------------------------------------------------------

    def load(self) -> list[tuple[DeploymentView, Reported]]:
        since = utcnow() - LOOKBACK
        out: list[tuple[DeploymentView, Reported]] = []
        with self.db.read() as session:
            rows = deployments_to_report(session, since=since, limit=BATCH)
            for dep, env, project, repo, report in rows:
                if report is not None and not _needs_work(
                    dep.status, env.status == "archived", env.name, report
                ):
                    continue
                view = deployment_view(
                    dep,
                    env,
                    project,
                    repo,
                    error=dep.error,
                    gate=dep.gate,
                    waiting_since=dep.waiting_since,
                    gate_deadline=dep.gate_deadline,
                )
                if dep.status in FINAL_STATUSES or dep.status == WAITING:
                    view = self._details(session, view, dep)
                reported = (
                    Reported(
                        report.github_deployment_id,
                        report.deployment_state,
                        report.check_run_id,
                        report.check_state,
                    )
                    if report is not None
                    else Reported()
                )
                out.append((view, reported))
        return out

    def _details(self, session: Any, view: DeploymentView, dep: Deployment) -> DeploymentView:
        """Version, tasks, step timings and the log tail: only for a final deployment
        (or waiting) that has something left to send."""
        version = version_of_deployment(session, dep.id)
        steps = step_timings(session, dep.id)
        tail = log_tail(session, dep.id, lines=40) if dep.status in ("failed", "timed_out") else []
        return replace(
            view,
            version=version.version if version else None,
            tasks=[str(t.get("id", t)) if isinstance(t, dict) else str(t) for t in version.tasks]
            if version
            else [],
            steps=steps,
            log_tail=[line[:500] for line in tail],
        )

    # -- one deployment -------------------------------------------------------------------

    def reconcile(self, client: GitHubClient, dep: DeploymentView, was: Reported) -> None:
        try:
            self._reconcile(client, dep, was)
        except PermanentError as exc:
            log.warning("GitHub refused the report of deployment %s: %s", dep.id, exc)
            self.record(dep.id, done=True, error=str(exc)[:2000])

    def _reconcile(self, client: GitHubClient, dep: DeploymentView, was: Reported) -> None:
        state = deployment_state(dep.status)
        if was.github_deployment_id is None and state == "error" and dep.status != "timed_out":
            self.record(dep.id, done=True)  # superseded or canceled before it was shown
            return
        if was.github_deployment_id is None and dep.env_archived:
            self.record(dep.id, done=True)
            return
        gh_id = was.github_deployment_id or self.ensure_deployment(client, dep)
        phase = deployment_phase(dep.status)
        wanted = "inactive" if dep.env_archived and state in FINAL_STATES else phase
        sent = was.deployment_state
        if sent not in (wanted, "inactive"):
            if wanted == "inactive" and sent not in FINAL_STATES:
                self.post_status(client, dep, gh_id, state)  # its outcome first
            self.post_status(
                client, dep, gh_id, deployment_state(dep.status) if wanted == WAITING else wanted
            )
            sent = wanted
            self.record(dep.id, deployment_state=wanted)
        check = check_phase(dep.status)
        check_sent = was.check_state
        if check_sent != check and check_sent != "completed":
            self.send_check(client, dep, was.check_run_id, check)
            check_sent = check
        final = dep.status in FINAL_STATUSES and check_sent == "completed"
        if final and (sent == "inactive" or (dep.environment != "preview" and sent == wanted)):
            self.record(dep.id, done=True)

    def ensure_deployment(self, client: GitHubClient, dep: DeploymentView) -> int:
        owner_repo = dep.repo
        found = client.request(
            dep.installation_id,
            "GET",
            f"/repos/{owner_repo}/deployments",
            params={"sha": dep.sha, "environment": dep.github_environment, "per_page": 100},
        )
        for item in found.data or []:
            payload = item.get("payload")
            if isinstance(payload, dict) and payload.get("slipway_deployment") == dep.id:
                self.record(dep.id, github_deployment_id=int(item["id"]))
                return int(item["id"])
        created = client.request(
            dep.installation_id,
            "POST",
            f"/repos/{owner_repo}/deployments",
            body={
                "ref": dep.sha,
                "task": "deploy",
                "auto_merge": False,
                "required_contexts": [],
                "payload": {"slipway_deployment": dep.id, "project": dep.project_ref},
                "environment": dep.github_environment,
                "description": f"Slipway {dep.project_ref} {dep.label}"[:140],
                "transient_environment": dep.environment == "preview",
                "production_environment": dep.environment == "production",
            },
        )
        gh_id = int(created.data["id"])
        self.record(dep.id, github_deployment_id=gh_id)
        log.info("GitHub deployment %s created for %s", gh_id, dep.id)
        return gh_id

    def post_status(
        self, client: GitHubClient, dep: DeploymentView, gh_id: int, state: str
    ) -> None:
        body: dict[str, Any] = {
            "state": state,
            "log_url": log_url(self.public_url, dep),
            "description": "preview archived" if state == "inactive" else describe(dep),
        }
        if state in ("success", "in_progress", "queued", "inactive"):
            body["environment_url"] = environment_url(self.public_url, dep)
        client.request(
            dep.installation_id,
            "POST",
            f"/repos/{dep.repo}/deployments/{gh_id}/statuses",
            body=body,
        )

    def send_check(
        self, client: GitHubClient, dep: DeploymentView, run_id: int | None, phase: str
    ) -> None:
        status = check_status(dep.status)
        body: dict[str, Any] = {
            "status": status,
            "details_url": log_url(self.public_url, dep),
            "output": check_output(dep),
        }
        if status == "completed":
            body["conclusion"] = check_conclusion(dep.status)
            body["completed_at"] = utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")
        if run_id is None:
            run_id = self.find_check(client, dep)
        if run_id is None:
            created = client.request(
                dep.installation_id,
                "POST",
                f"/repos/{dep.repo}/check-runs",
                body={"name": check_name(dep), "head_sha": dep.sha, "external_id": dep.id, **body},
            )
            self.record(dep.id, check_run_id=int(created.data["id"]), check_state=phase)
            return
        self.record(dep.id, check_run_id=run_id)
        client.request(
            dep.installation_id, "PATCH", f"/repos/{dep.repo}/check-runs/{run_id}", body=body
        )
        self.record(dep.id, check_state=phase)

    def find_check(self, client: GitHubClient, dep: DeploymentView) -> int | None:
        found = client.request(
            dep.installation_id,
            "GET",
            f"/repos/{dep.repo}/commits/{dep.sha}/check-runs",
            params={"check_name": check_name(dep), "filter": "all", "per_page": 100},
        )
        for run in (found.data or {}).get("check_runs", []):
            if run.get("external_id") == dep.id:
                return int(run["id"])
        return None

    def record(self, deployment_id: str, **values: Any) -> None:
        with self.db.transaction() as session:
            row = session.get(GitHubReport, deployment_id)
            if row is None:
                row = GitHubReport(deployment_id=deployment_id, done=False)
                session.add(row)
            for name, value in values.items():
                setattr(row, name, value)


def _needs_work(status: str, archived: bool, environment: str, report: GitHubReport) -> bool:
    """Whether :meth:`Reporter.reconcile` would send or record anything for this row
    (the steady state of a pass is one query and this check per row)."""
    state = deployment_state(status)
    wanted = "inactive" if archived and state in FINAL_STATES else deployment_phase(status)
    sent = report.deployment_state
    if sent not in (wanted, "inactive"):
        return True
    if report.check_state not in (check_phase(status), "completed"):
        return True
    final = status in FINAL_STATUSES and report.check_state == "completed"
    return final and (sent == "inactive" or (environment != "preview" and sent == wanted))
