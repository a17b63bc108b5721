"""Who may see what on the pages: the admin everything, a GitHub user their projects.

An admin-token session sees and may promote every project. A person signed in with
GitHub sees and may promote a project only while GitHub says they may push to its
repository (``permissions.push`` of ``GET /repos/{owner}/{repo}`` with their own token,
each answer kept a minute by :class:`~controller.github.oauth.PushAccess`). Every page
that names a project, a deployment or a run checks it; a project the person may not
push to answers as one that does not exist (the same 404 and message), so the pages do
not tell which repositories Slipway deploys.

The list of projects asks GitHub about the uncached repositories a few at a time
(:data:`PARALLEL_CHECKS` threads, ended before the page answers).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy.orm import Session
from starlette.requests import Request

from controller.errors import NotFound
from controller.github.oauth import PushAccess
from controller.store.projects import repo_of_deployment, repo_of_project, repo_of_run
from controller.web.session import WebSession

PARALLEL_CHECKS = 8
_created = threading.Lock()


def push_access(request: Request) -> PushAccess:
    """The process's cache of push-access answers (one per app)."""
    state = request.app.state
    with _created:
        found = getattr(state, "push_access", None)
        if found is None:
            settings = state.services.settings
            found = PushAccess(api_url=lambda: settings.github.github_api_url)
            state.push_access = found
    return found


def _may_push(request: Request, session: WebSession, repo: str | None) -> bool:
    if session.is_admin:
        return True
    if not repo or session.user_token is None:
        return False
    return push_access(request).can_push(session.user_token, repo)


def visible_projects(
    request: Request, session: WebSession, projects: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    if session.is_admin:
        return projects
    if len(projects) <= 1:
        return [p for p in projects if _may_push(request, session, p.get("repo"))]
    with ThreadPoolExecutor(max_workers=min(PARALLEL_CHECKS, len(projects))) as pool:
        allowed = list(pool.map(lambda p: _may_push(request, session, p.get("repo")), projects))
    return [p for p, ok in zip(projects, allowed, strict=True) if ok]


def _require(
    request: Request, session: WebSession, repo_of: Callable[[Session], str | None]
) -> bool:
    if session.is_admin:
        return True
    with request.app.state.services.db.read() as db:
        repo = repo_of(db)
    return _may_push(request, session, repo)


def require_project(request: Request, session: WebSession, ref: str) -> None:
    """Nothing if ``session`` may see and promote project ``ref``; else :class:`NotFound`."""
    if not _require(request, session, lambda db: repo_of_project(db, ref)):
        raise NotFound(f"project {ref!r} does not exist", hint="see `slipway projects list`")


def require_run(request: Request, session: WebSession, run_id: str) -> None:
    """Nothing if ``session`` may see run ``run_id``'s project; else :class:`NotFound`."""
    if not _require(request, session, lambda db: repo_of_run(db, run_id)):
        raise NotFound(f"run {run_id!r} does not exist")


def require_deployment(request: Request, session: WebSession, deployment_id: str) -> None:
    """Nothing if ``session`` may see deployment ``deployment_id``; else :class:`NotFound`
    (one indexed read: the log follower asks on every poll)."""
    if not _require(request, session, lambda db: repo_of_deployment(db, deployment_id)):
        raise NotFound(f"deployment {deployment_id!r} does not exist")
