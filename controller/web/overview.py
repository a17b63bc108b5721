"""The project page's read: everything it shows, in one read transaction, a page at a time.

The other pages call the API's handlers (:mod:`controller.web.reads`); the project page
does not, because those answer whole lists: every environment (a project with hundreds
of preview branches loads each of them), and each call opens its own transaction. Here
the same view functions the API answers with (:mod:`controller.views`) are fed by one
query per list, each bounded by what the page shows:

* the fixed environments, and one page of preview branches (active first, then by
  branch; :data:`PREVIEWS_PER_PAGE`), with the number of branches by status;
* the newest deployment of each *shown* environment, and which of them can roll back
  (an older deployed version exists: the button is not offered where it would fail);
* the newest :data:`SHOWN_DEPLOYMENTS` deployments and :data:`SHOWN_EVENTS` events.

The work of rendering is then proportional to what is shown, not to the project's
history.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from controller.domain.projects import get_project, project_not_deploying_reason
from controller.store.events import recent_events
from controller.store.overview import (
    fixed_environments,
    last_deployments,
    newest_deployments,
    rollback_targets,
)
from controller.store.previews import preview_counts_by_status, previews_page
from controller.views import (
    deployments_view,
    environment_view,
    event_view,
    project_view,
    version_strings,
)
from controller.web.reads import SHOWN_DEPLOYMENTS

PREVIEWS_PER_PAGE = 50
SHOWN_EVENTS = 20


def can_roll_back(request: Request, env_id: int) -> bool:
    with request.app.state.services.db.read() as session:
        return env_id in rollback_targets(session, [env_id])


def project_overview(request: Request, ref: str, *, preview_page: int = 1) -> dict[str, Any]:
    """The project page's context; ``preview_page`` counts from 1 and is clamped."""
    with request.app.state.services.db.read() as session:
        project = get_project(session, ref)
        counts = preview_counts_by_status(session, project.id)
        total = sum(counts.values())
        pages = max(1, -(-total // PREVIEWS_PER_PAGE))
        page = min(max(1, preview_page), pages)
        fixed = fixed_environments(session, project.id)
        previews = previews_page(
            session,
            project.id,
            limit=PREVIEWS_PER_PAGE,
            offset=(page - 1) * PREVIEWS_PER_PAGE,
        )
        shown = fixed + previews
        versions = version_strings(session, {e.current_version_id for e in shown})
        deployments = newest_deployments(session, project.id, limit=SHOWN_DEPLOYMENTS)
        events = recent_events(session, project.id, limit=SHOWN_EVENTS)
        return {
            "project": project_view(
                project, not_deploying=project_not_deploying_reason(session, project)
            ),
            "environments": [
                environment_view(e, versions.get(e.current_version_id or 0)) for e in fixed
            ],
            "previews": [
                environment_view(e, versions.get(e.current_version_id or 0)) for e in previews
            ],
            "preview_counts": counts,
            "preview_total": total,
            "preview_page": page,
            "preview_pages": pages,
            "last": last_deployments(session, [e.id for e in shown]),
            "can_roll_back": rollback_targets(session, [e.id for e in shown]),
            "deployments": deployments_view(session, deployments),
            "events": [event_view(e) for e in events],
        }
