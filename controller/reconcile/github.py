"""Reconcile from GitHub: branch heads and open pull requests read with the App's token.

**Conditional reads** (:class:`ConditionalReads`): every GET remembers the answer's
``ETag`` per URL (in memory: a restart costs one full read per URL) and sends it back as
``If-None-Match``; GitHub answers ``304`` without a body and without charging the rate
limit, and the remembered answer is used. An unchanged repository costs two free
requests per resync (its tracked branch and its open pull requests).

**Branch heads** (:class:`GitHubBranches`) implement the resync's
:class:`~controller.sources.base.Source` with ``GET /repos/{o}/{r}/branches/{b}`` (and
``GET /repos/{o}/{r}`` for the default branch), so :class:`~controller.reconcile.branches.
BranchPass` requests a missed head exactly as for a ``git ls-remote`` source. A 404 is
"no such branch"; any other error raises and changes nothing.

**Pull requests** (:class:`PullRequestPass`), per connected repository (projects without
``--clone-url`` whose repository has an installation), one paged
``GET /repos/{o}/{r}/pulls?state=open``:

* each open pull request is routed as a ``pull_request.synchronize`` delivery would be
  (:func:`webhooks.routing.route`: fork, draft, previews-off and limit rules included),
  and a preview whose head commit was never attempted is requested through
  :func:`controller.domain.deployments.apply_deploy`. A preview archived in Slipway (by hand, or
  its PR closed) is not revived here: only a delivery (``reopened``) does that. Refusals
  are not recorded again at each pass.
* an active preview with a pull request number that GitHub does not list as open is
  archived — only after every page of the list was read successfully, and not within
  ``SETTLE`` seconds of the preview's creation or newest deployment (a delivery can be
  newer than the list). An error, a
  timeout or a 5xx archives nothing (STYLE.md rule 1: an error is never a state).

**Preview TTL** (``SLIPWAY_PREVIEW_TTL``, seconds, default 7 days, ``0`` never): an active
preview branch whose newest deployment (or, without one, its creation) is older than
that is archived, whatever GitHub says.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from controller.domain.deployments import Applied, apply_deploy
from controller.domain.environments import archive_branch
from controller.domain.projects import project_not_deploying_reason, project_views
from controller.errors import PermanentError
from controller.github.client import GitHubClient
from controller.github.errors import GitHubRejected
from controller.reconcile.branches import resolve_all
from controller.secretstore.crypto import Cipher
from controller.sources.base import Resolved
from controller.store.db import Database
from controller.store.deployments import attempted_deployment
from controller.store.environments import preview_by_branch
from controller.store.installed import installed_projects_to_resync
from controller.store.previews import (
    idle_previews,
    newest_deployment_at,
    open_pull_request_previews,
)
from controller.store.projects import projects_of_repo
from controller.store.tables import Environment, utcnow
from webhooks.events import PayloadError
from webhooks.routing import Deploy, route

log = logging.getLogger(__name__)

PER_PAGE = 100
MAX_PAGES = 10
WORKERS = 8
TIMEOUT = 30.0
# A preview created or deployed this recently is never archived for missing from the list:
# the delivery that made it may be newer than the list GitHub answered.
SETTLE = 30.0


class ConditionalReads:
    """GETs with ``If-None-Match``; counts requests and 304s (the benchmark prints them)."""

    def __init__(self, client_for: Callable[[], GitHubClient | None]) -> None:
        self.client_for = client_for
        self._cache: dict[str, tuple[str, Any]] = {}
        self._lock = threading.Lock()
        self.requests = 0
        self.not_modified = 0

    def get(self, installation_id: int, path: str, params: dict[str, Any] | None = None) -> Any:
        client = self.client_for()
        if client is None:
            raise PermanentError("no GitHub App is configured")
        key = f"{installation_id} {path}?{sorted((params or {}).items())}"
        with self._lock:
            cached = self._cache.get(key)
            self.requests += 1
        answer = client.request(
            installation_id, "GET", path, params=params, etag=cached[0] if cached else None
        )
        if answer.status == 304 and cached is not None:
            with self._lock:
                self.not_modified += 1
            return cached[1]
        if answer.etag:
            with self._lock:
                self._cache[key] = (answer.etag, answer.data)
        return answer.data


@dataclass(frozen=True)
class GitHubBranches:
    """One repository's branch heads from GitHub's REST API (a reconcile ``Source``)."""

    reads: ConditionalReads
    installation_id: int
    name: str  # owner/name

    def resolve(self, ref: str) -> Resolved | None:
        try:
            if ref == "HEAD":
                repo = self.reads.get(self.installation_id, f"/repos/{self.name}")
                branch = str(repo["default_branch"])
            else:
                branch = ref.removeprefix("refs/heads/")
            found = self.reads.get(self.installation_id, f"/repos/{self.name}/branches/{branch}")
        except GitHubRejected as exc:
            if exc.status == 404:
                return None
            raise
        return Resolved(ref=f"refs/heads/{branch}", sha=str(found["commit"]["sha"]).lower())


@dataclass(frozen=True)
class Connected:
    repo: str
    installation_id: int


class PullRequestPass:
    """``reconcile_pull_requests`` is the resync callback (see the module docstring)."""

    def __init__(
        self,
        *,
        db: Database,
        cipher: Cipher,
        reads: ConditionalReads,
        preview_ttl: float,
        on_deploy: Callable[[], None] = lambda: None,
        on_archive: Callable[[int], None] = lambda env_id: None,
        workers: int = WORKERS,
        timeout: float = TIMEOUT,
        settle: float = SETTLE,
    ) -> None:
        self.settle = settle
        self.db = db
        self.cipher = cipher
        self.reads = reads
        self.preview_ttl = preview_ttl
        self.on_deploy = on_deploy
        self.on_archive = on_archive
        self.workers = workers
        self.timeout = timeout

    def reconcile_pull_requests(self) -> None:
        self.run()

    def run(self) -> tuple[list[str], list[int]]:
        """One pass: the deployments requested and the environments archived."""
        requested: list[str] = []
        archived = self.archive_expired()
        if self.reads.client_for() is not None:
            repos = self.load()
            listed_at = utcnow()
            calls = {r.repo: _bind(self.open_pulls, r) for r in repos}
            lists = resolve_all(calls, workers=self.workers, timeout=self.timeout)
            for repo in repos:
                pulls = lists.get(repo.repo)
                if pulls is None:
                    continue  # GitHub did not answer: nothing changes
                try:
                    got, gone = self.apply(repo, pulls, listed_at)
                except Exception:
                    log.exception("resync: applying the pull requests of %s failed", repo.repo)
                    continue
                requested += got
                archived += gone
        if requested:
            self.on_deploy()
        for env_id in archived:
            self.on_archive(env_id)
        return requested, archived

    def load(self) -> list[Connected]:
        with self.db.read() as session:
            found: dict[str, Connected] = {}
            for project, repo in installed_projects_to_resync(session):
                if project_not_deploying_reason(session, project):
                    continue
                assert repo.installation_id is not None
                found.setdefault(
                    repo.full_name_lower, Connected(repo.full_name, repo.installation_id)
                )
        return list(found.values())

    def open_pulls(self, repo: Connected) -> list[dict[str, Any]]:
        """Every open pull request, or an exception (never a partial list)."""
        pulls: list[dict[str, Any]] = []
        for page in range(1, MAX_PAGES + 1):
            batch = self.reads.get(
                repo.installation_id,
                f"/repos/{repo.repo}/pulls",
                {"state": "open", "per_page": PER_PAGE, "page": page},
            )
            if not isinstance(batch, list):
                raise PermanentError(f"GitHub listed the pull requests of {repo.repo} oddly")
            pulls += batch
            if len(batch) < PER_PAGE:
                return pulls
        raise PermanentError(f"{repo.repo} has more than {PER_PAGE * MAX_PAGES} open pull requests")

    def apply(
        self, repo: Connected, pulls: list[dict[str, Any]], listed_at: datetime
    ) -> tuple[list[str], list[int]]:
        """Plan in a read transaction; only a repository with something to do takes a
        (short) write transaction, which plans again and applies."""
        with self.db.read() as session:
            deploys, stale = self._plan(session, repo, pulls, listed_at)
        if not deploys and not stale:
            return [], []
        requested: list[str] = []
        archived: list[int] = []
        with self.db.transaction() as session:
            deploys, stale = self._plan(session, repo, pulls, listed_at)
            _, projects = project_views(session, repo.repo)
            for intent in deploys:
                applied = Applied("resync")
                apply_deploy(
                    session, self.cipher, projects[intent.project_id], intent, None, applied
                )
                requested += applied.deployments
            for env in stale:
                assert env.branch is not None
                reason = f"pull request #{env.pr_number} is no longer open on GitHub (resync)"
                if archive_branch(session, projects[env.project_id], env.branch, reason):
                    archived.append(env.id)
        for deployment_id in requested:
            log.info(
                "resync: an open pull request of %s was missed: requested %s",
                repo.repo,
                deployment_id,
            )
        for env_id in archived:
            log.info(
                "resync: archived preview environment %s of %s (pull request closed)",
                env_id,
                repo.repo,
            )
        return requested, archived

    def _plan(
        self, session: Any, repo: Connected, pulls: list[dict[str, Any]], listed_at: datetime
    ) -> tuple[list[Deploy], list[Environment]]:
        """The previews to request and the active previews whose PR is not open. A
        preview created or deployed within ``settle`` seconds before the list was asked
        for is kept: its delivery may be newer than GitHub's list."""
        views, projects = project_views(session, repo.repo) if pulls else ([], {})
        if not pulls:
            project_ids = [p.id for p in projects_of_repo(session, repo.repo.lower())]
        else:
            project_ids = list(projects)
        deploys: list[Deploy] = []
        for pull in pulls:
            payload = {
                "action": "synchronize",
                "number": pull.get("number"),
                "pull_request": pull,
                "repository": {"full_name": repo.repo},
            }
            try:
                routed = route("pull_request", payload, views)
            except PayloadError as exc:
                log.warning("resync: pull request of %s not understood: %s", repo.repo, exc)
                continue
            deploys += [
                i for i in routed.intents if isinstance(i, Deploy) and self._missed(session, i)
            ]
        open_numbers = {int(p["number"]) for p in pulls if isinstance(p.get("number"), int)}
        stale = open_pull_request_previews(session, project_ids)
        settled = listed_at - timedelta(seconds=self.settle)
        closed = []
        for env in stale:
            if env.pr_number in open_numbers or env.created_at > settled:
                continue
            newest = newest_deployment_at(session, env.id)
            if newest is None or newest <= settled:
                closed.append(env)
        return deploys, closed

    def _missed(self, session: Any, intent: Deploy) -> bool:
        env = (
            preview_by_branch(session, intent.project_id, intent.branch)
            if intent.branch is not None
            else None
        )
        if env is None:
            return True
        if env.status == "archived":
            return False
        return attempted_deployment(session, env.id, intent.sha) is None

    def archive_expired(self) -> list[int]:
        if self.preview_ttl <= 0:
            return []
        cutoff = utcnow() - timedelta(seconds=self.preview_ttl)
        archived: list[int] = []
        with self.db.transaction() as session:
            for env, project in idle_previews(session, before=cutoff):
                assert env.branch is not None
                days = self.preview_ttl / 86400
                reason = f"no deployment for {days:g} days (SLIPWAY_PREVIEW_TTL)"
                if archive_branch(session, project, env.branch, reason) is not None:
                    archived.append(env.id)
                    log.info(
                        "resync: archived preview %s of %s: %s", env.branch, project.ref, reason
                    )
        return archived


def _bind(
    fn: Callable[[Connected], list[dict[str, Any]]], repo: Connected
) -> Callable[[], list[dict[str, Any]]]:
    return lambda: fn(repo)
