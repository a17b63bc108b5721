"""Apply what GitHub says about the App's access (installation and repository events),
and record commit signals (statuses, check runs, deployments) for the pages."""

from __future__ import annotations

from sqlalchemy.orm import Session

from controller.domain.environments import cancel_queued
from controller.domain.events import record_event
from controller.store.environments import environment_ids_of_project
from controller.store.projects import (
    projects_of_repo,
    repositories_of_installation,
    repository_by_name,
)
from controller.store.tables import CommitSignal as SignalRow
from controller.store.tables import Installation, Repository
from webhooks.events import CommitSignal, InstallationChange


def apply_access(session: Session, change: InstallationChange) -> None:
    installation = session.get(Installation, change.installation_id)
    if installation is None:
        installation = Installation(id=change.installation_id, account=change.account)
        session.add(installation)
    if change.event == "installation":
        installation.deleted = change.action == "deleted"
        if change.action in ("suspend", "unsuspend"):
            installation.suspended = change.action == "suspend"
            announce_suspension(session, installation)
            return
    reachable = {r.full_name.lower(): r for r in change.added}
    gone = {r.full_name.lower(): r for r in change.removed}
    if change.event == "installation" and change.action == "deleted":
        # GitHub may omit the list; every repository of the installation is gone.
        for repo in repositories_of_installation(session, change.installation_id):
            repo.reachable = False
    for lower, ref in [*((k, v) for k, v in reachable.items()), *((k, v) for k, v in gone.items())]:
        found = repository_by_name(session, lower)
        if found is None:
            found = Repository(full_name=ref.full_name, full_name_lower=lower)
            session.add(found)
        repo = found
        repo.github_id = ref.id or repo.github_id
        repo.installation_id = change.installation_id
        repo.reachable = lower in reachable
        session.flush()
        for project in projects_of_repo(session, lower):
            if lower in gone:
                for env_id in environment_ids_of_project(session, project.id):
                    cancel_queued(session, env_id, f"{ref.full_name} is no longer reachable")
                record_event(
                    session,
                    project.id,
                    "access",
                    f"the GitHub App lost access to {ref.full_name}; deployments stop (data kept)",
                )
            else:
                record_event(
                    session, project.id, "access", f"the GitHub App can reach {ref.full_name}"
                )


def announce_suspension(session: Session, installation: Installation) -> None:
    """A suspended installation's projects stop deploying (their queued work is
    canceled); unsuspended, those whose repository the App still reaches resume."""
    account = installation.account or f"installation {installation.id}"
    for repo in repositories_of_installation(session, installation.id):
        for project in projects_of_repo(session, repo.full_name_lower):
            if installation.suspended:
                for env_id in environment_ids_of_project(session, project.id):
                    cancel_queued(session, env_id, f"the GitHub App on {account} was suspended")
                message = (
                    f"the GitHub App's installation on {account} was suspended; deployments "
                    "stop (data kept) until it is unsuspended"
                )
            elif repo.reachable:
                message = (
                    f"the GitHub App's installation on {account} was unsuspended; deploying again"
                )
            else:
                continue
            record_event(session, project.id, "access", message)


def record_signal(session: Session, signal: CommitSignal, delivery_id: str) -> None:
    session.add(
        SignalRow(
            kind=signal.kind,
            repo_lower=signal.repo.lower(),
            sha=signal.sha,
            name=signal.name,
            state=signal.state,
            github_id=signal.github_id,
            deployment_id=signal.deployment_id,
            url=signal.url,
            delivery_id=delivery_id,
        )
    )
