"""Apply one batch of routed deliveries' intents (one repository), in the caller's
transaction: each delivery's body is read, parsed, routed by the pure
:func:`webhooks.routing.route` and dropped; its intents are applied through
:mod:`controller.domain`.

Tracked-branch pushes wait for the end of the batch (:meth:`IntentBatch.flush_deploys`)
so a burst of pushes to one branch collapses to the newest (the older ones are recorded
superseded); anything else applies in order.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from controller.domain.deployments import Applied, DeployRequest, apply_deploy, record_superseded
from controller.domain.environments import archive_branch, find_environment
from controller.domain.events import record_event
from controller.domain.projects import project_views
from controller.gates.waiting import decide_commit
from controller.logs import bind_log_context
from controller.models import BRANCH_PATTERN
from controller.routing.access import apply_access, record_signal
from controller.secretstore.crypto import Cipher
from controller.store.deployments import active_deployment_count, attempted_deployment
from controller.store.environments import preview_owner
from controller.store.projects import repository_by_name
from controller.store.routejobs import delivery_body
from controller.store.tables import Delivery, Project, Repository, utcnow
from webhooks.events import PayloadError, RepositorySource, repository_full_name
from webhooks.routing import (
    AccessChange,
    Archive,
    Deploy,
    ProjectView,
    RecordSignal,
    Skip,
    route,
)

log = logging.getLogger(__name__)


class IntentBatch:
    """Routing state shared by the deliveries of one batch (one repository)."""

    def __init__(self, session: Session, cipher: Cipher) -> None:
        self.session = session
        self.cipher = cipher
        self.results: list[Applied] = []
        self._views: dict[str | None, tuple[list[ProjectView], dict[int, Project]]] = {}
        self._pending: dict[tuple[int, str], list[tuple[Deploy, Delivery, Applied]]] = {}

    def views(self, repo: str | None) -> tuple[list[ProjectView], dict[int, Project]]:
        if repo not in self._views:
            self._views[repo] = project_views(self.session, repo)
        return self._views[repo]

    def process(self, delivery: Delivery) -> None:
        if delivery.processed_at is not None:
            return
        bind_log_context(delivery=delivery.delivery_id)
        session = self.session
        try:
            payload = json.loads(delivery_body(session, delivery.id))
            views, projects = self.views(repository_full_name(payload))
        except (PayloadError, ValueError, RecursionError) as exc:
            self._reject(delivery, str(exc) if not isinstance(exc, RecursionError) else "")
            return
        try:
            routed = route(delivery.event, payload, views)
            _record_default_branch(projects.values(), payload)
            if projects:
                _record_repository(session, payload)
        except (PayloadError, ValueError) as exc:
            self._reject(delivery, str(exc))
            return
        except Exception as exc:  # a bug in pure routing: retrying cannot help
            log.exception(
                "routing delivery %s (%s) raised %s; recorded as rejected",
                delivery.delivery_id,
                delivery.event,
                type(exc).__name__,
            )
            self._reject(delivery, f"routing failed ({type(exc).__name__})")
            return
        del payload  # only the intents are needed from here on
        applied = Applied(routed.outcome)
        for intent in routed.intents:
            if isinstance(intent, Deploy) and intent.source == "push":
                # Tracked-branch pushes wait for the end of the batch (see flush_deploys).
                self._pending.setdefault((intent.project_id, intent.environment), []).append(
                    (intent, delivery, applied)
                )
                continue
            # Anything else applies in order, after the deploys that came before it, and
            # may change what routing sees (previews, access): drop the cached views.
            self.flush_deploys()
            self._views.clear()
            if isinstance(intent, Deploy):
                apply_deploy(
                    session, self.cipher, projects[intent.project_id], intent, delivery, applied
                )
            elif isinstance(intent, Archive):
                if _owned_by_another_pull_request(session, intent):
                    continue
                env = archive_branch(
                    session, projects[intent.project_id], intent.branch, intent.reason
                )
                if env is not None:
                    applied.archived_env_ids.append(env.id)
            elif isinstance(intent, Skip):
                record_event(
                    session, intent.project_id, "skipped", intent.reason, delivery.delivery_id
                )
            elif isinstance(intent, AccessChange):
                apply_access(session, intent.change)
            elif isinstance(intent, RecordSignal):
                record_signal(session, intent.signal, delivery.delivery_id)
                # A waiting deployment of that commit may be decided by it now.
                applied.deployments += decide_commit(
                    session, repo_lower=intent.signal.repo.lower(), sha=intent.signal.sha
                )
        delivery.processed_at = utcnow()
        delivery.outcome = applied.outcome[:4000]
        self.results.append(applied)

    def _reject(self, delivery: Delivery, reason: str) -> None:
        delivery.processed_at = utcnow()
        delivery.outcome = f"rejected: {reason or 'malformed payload'}"[:4000]
        self.results.append(Applied(delivery.outcome))

    def flush_deploys(self) -> None:
        pending, self._pending = self._pending, {}
        for (project_id, env_name), items in pending.items():
            project = self.session.get(Project, project_id)
            assert project is not None
            env = find_environment(self.session, project, env_name, None)
            supersede = True
            if len(items) > 1 and active_deployment_count(self.session, env.id) == 0:
                # The environment is idle: the oldest starts at once, as it would have had
                # it been routed alone; newest-wins applies to the ones waiting behind it.
                first, first_delivery, first_applied = items.pop(0)
                apply_deploy(
                    self.session, self.cipher, project, first, first_delivery, first_applied
                )
                supersede = not first_applied.deployments
            newest, newest_delivery, newest_applied = items[-1]
            apply_deploy(
                self.session,
                self.cipher,
                project,
                newest,
                newest_delivery,
                newest_applied,
                supersede=supersede,
            )
            if not newest_applied.deployments:
                continue  # refused (recorded as an event); the older ones would be too
            winner = newest_applied.deployments[-1]
            now = utcnow()
            older = items[:-1]
            for n, (intent, delivery, applied) in enumerate(older):
                if attempted_deployment(self.session, env.id, intent.sha) is not None:
                    continue
                dep = record_superseded(
                    self.session,
                    project=project,
                    environment=env,
                    request=DeployRequest(
                        sha=intent.sha,
                        ref=intent.ref,
                        source=intent.source,
                        delivery_id=delivery.delivery_id,
                    ),
                    winner=winner,
                    created_at=now - timedelta(microseconds=len(older) - n),
                )
                applied.deployments.append(dep.id)


def _record_default_branch(projects: Iterable[Project], payload: dict[str, Any]) -> None:
    """Remember the repository's default branch, which every delivery carries: the resync
    tracks it for projects without a production branch (else it asks the remote's HEAD)."""
    repository = payload.get("repository") if isinstance(payload, dict) else None
    branch = repository.get("default_branch") if isinstance(repository, dict) else None
    if not isinstance(branch, str) or not BRANCH_PATTERN.match(branch):
        return
    for project in projects:
        if project.default_branch != branch:
            project.default_branch = branch


def _record_repository(session: Session, payload: dict[str, Any]) -> None:
    """Remember the clone URL and installation a delivery of a connected repository names:
    a project without ``--clone-url`` fetches from there with an installation token. A
    field of the wrong shape records nothing (the delivery is still routed)."""
    try:
        source = RepositorySource.parse(payload)
    except PayloadError as exc:
        log.info("not recording the repository's clone URL or installation: %s", exc)
        return
    if source is None or (source.clone_url is None and source.installation_id is None):
        return
    lower = source.full_name.lower()
    found = repository_by_name(session, lower)
    if found is None:
        found = Repository(full_name=source.full_name, full_name_lower=lower)
        session.add(found)
    if source.clone_url is not None and found.clone_url != source.clone_url:
        found.clone_url = source.clone_url
    if source.installation_id is not None and found.installation_id != source.installation_id:
        found.installation_id = source.installation_id


def _owned_by_another_pull_request(session: Session, intent: Archive) -> bool:
    """A closed pull request archives only its own preview, not another pull request's
    preview of the same branch name (e.g. an outsider's fork PR from a branch named
    like ours)."""
    if intent.pr_number is None:
        return False
    owner = preview_owner(session, intent.project_id, intent.branch)
    return owner is not None and owner != intent.pr_number
