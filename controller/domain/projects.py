"""Projects: create, update, disconnect, and whether a project is deploying."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from controller.domain.environments import cancel_queued, ensure_environment
from controller.domain.events import record_event
from controller.errors import Conflict, InvalidInput, NotFound
from controller.gates.spec import merge_gates, parse_duration
from controller.models import BRANCH_PATTERN, REF_PATTERN
from controller.secretstore.crypto import Cipher
from controller.store.deployments import DeploymentState
from controller.store.environments import active_preview_branches, environment_ids_of_project
from controller.store.projects import project_by_ref, projects_of_repo, repository_by_name
from controller.store.tables import Installation, Project, utcnow
from webhooks.routing import ProjectView

PROJECT_FIELDS = (
    "repo",
    "clone_url",
    "production_branch",
    "staging_branch",
    "previews",
    "fork_previews",
    "preview_limit",
    "config_path",
    "install_command",
    "pre_build_command",
    "promotion_gates",
    "promotion_timeout",
)


def get_project(session: Session, ref: str) -> Project:
    project = project_by_ref(session, ref)
    if project is None:
        raise NotFound(f"project {ref!r} does not exist", hint="see `slipway projects list`")
    return project


def _validate_project(values: dict[str, Any]) -> None:
    repo = values.get("repo")
    if repo is not None and (repo.count("/") != 1 or not all(repo.split("/"))):
        raise InvalidInput(f"--repo must look like OWNER/NAME, not {repo!r}")
    for name in ("production_branch", "staging_branch"):
        branch = values.get(name)
        if branch is not None and not BRANCH_PATTERN.match(branch):
            raise InvalidInput(f"{name} {branch!r} is not a valid branch name")
    limit = values.get("preview_limit")
    if limit is not None and not 0 <= int(limit) <= 1000:
        raise InvalidInput("preview_limit must be between 0 and 1000")
    config = values.get("config_path")
    if config is not None and (config.startswith("/") or ".." in config.split("/")):
        raise InvalidInput("config_path must be a relative path inside the repository")


def _normalise_gates(current: dict[str, Any] | None, values: dict[str, Any]) -> None:
    """Gate changes merge into the current gates (``ENV: none`` or null removes one); a
    timeout may be given as a duration (``30m``)."""
    if values.get("promotion_gates") is not None:
        values["promotion_gates"] = merge_gates(current, values["promotion_gates"])
    if values.get("promotion_timeout") is not None:
        values["promotion_timeout"] = parse_duration(values["promotion_timeout"])


def create_project(session: Session, cipher: Cipher, *, ref: str, **values: Any) -> Project:
    if not REF_PATTERN.match(ref):
        raise InvalidInput(
            f"project ref {ref!r} must be lowercase letters, digits and dashes (max 63)"
        )
    unknown = set(values) - set(PROJECT_FIELDS)
    if unknown:
        raise InvalidInput(f"unknown project fields: {', '.join(sorted(unknown))}")
    if not values.get("repo"):
        raise InvalidInput("a project needs --repo OWNER/NAME")
    _validate_project(values)
    _normalise_gates(None, values)
    if project_by_ref(session, ref) is not None:
        raise Conflict(f"project {ref!r} already exists")
    fields = {k: v for k, v in values.items() if v is not None}
    project = Project(ref=ref, repo_lower=values["repo"].lower(), **fields)
    session.add(project)
    session.flush()
    for name in ("production", "staging", "preview"):
        ensure_environment(session, cipher, project=project, name=name, branch=None)
    return project


def update_project(session: Session, project: Project, **values: Any) -> Project:
    unknown = set(values) - set(PROJECT_FIELDS) - {"connected"}
    if unknown:
        raise InvalidInput(f"unknown project fields: {', '.join(sorted(unknown))}")
    _validate_project(values)
    _normalise_gates(project.promotion_gates, values)
    connected = values.pop("connected", None)
    for name, value in values.items():
        setattr(project, name, value)
        if name == "repo":
            project.repo_lower = value.lower()
    if connected is True:
        project.disconnected_at = None
    elif connected is False and project.disconnected_at is None:
        disconnect_project(session, project)
    project.updated_at = utcnow()
    return project


def disconnect_project(session: Session, project: Project) -> list[str]:
    """Stop deploying; keep every record. Queued work is canceled."""
    project.disconnected_at = project.disconnected_at or utcnow()
    canceled: list[str] = []
    for env_id in environment_ids_of_project(session, project.id):
        canceled += cancel_queued(session, env_id, "the project was disconnected")
    record_event(session, project.id, "disconnected", "project disconnected; data is kept")
    return canceled


def project_not_deploying_reason(session: Session, project: Project) -> str | None:
    repo = repository_by_name(session, project.repo_lower)
    installation = (
        session.get(Installation, repo.installation_id)
        if repo is not None and repo.installation_id is not None
        else None
    )
    return not_deploying_reason(
        repo=project.repo,
        disconnected=project.disconnected_at is not None,
        reachable=repo.reachable if repo is not None else None,
        suspended=installation.suspended if installation is not None else None,
        installation=(installation.account or str(installation.id)) if installation else None,
    )


def deployment_not_deploying_reason(state: DeploymentState) -> str | None:
    """:func:`project_not_deploying_reason`, from what a deployment under way read of its
    project in one query."""
    return not_deploying_reason(
        repo=state.repo,
        disconnected=state.project_disconnected,
        reachable=state.repo_reachable,
        suspended=state.installation_suspended,
        installation=state.installation_account or str(state.installation_id),
    )


def not_deploying_reason(
    *,
    repo: str,
    disconnected: bool,
    reachable: bool | None,
    suspended: bool | None,
    installation: str | None,
) -> str | None:
    """Why a project may not deploy now (None: it may). ``reachable`` and ``suspended``
    are None when there is no repository or installation record."""
    if disconnected:
        return "the project is disconnected (`slipway projects update REF --connect`)"
    if reachable is False:
        return (
            f"the GitHub App can no longer reach {repo} (it was removed from the "
            "installation, or the installation was suspended or deleted)"
        )
    if suspended:
        return (
            f"the GitHub App's installation on {installation} is "
            f"suspended, so it cannot reach {repo}"
        )
    return None


def project_views(
    session: Session, repo: str | None
) -> tuple[list[ProjectView], dict[int, Project]]:
    """What routing (deliveries, and the resync's pull requests) knows of the projects
    of ``repo``, and the projects by id."""
    if not repo:
        return [], {}
    projects = projects_of_repo(session, repo.lower())
    views, by_id = [], {}
    for project in projects:
        reason = project_not_deploying_reason(session, project)
        by_id[project.id] = project
        views.append(
            ProjectView(
                id=project.id,
                ref=project.ref,
                repo=project.repo,
                production_branch=project.production_branch,
                staging_branch=project.staging_branch,
                previews=project.previews,
                fork_previews=project.fork_previews,
                preview_limit=project.preview_limit,
                active_previews=active_preview_branches(session, project.id),
                deploying=reason is None,
                not_deploying_reason=reason,
            )
        )
    return views, by_id
