"""Queries of the GitHub reporter: the deployments to report, the details a final report
carries, and the pull requests whose comment to render (previews, and fork refusals that
got none). Callers own the session; these only read."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from controller.store.installed import with_installed_repository
from controller.store.tables import (
    Deployment,
    DeploymentLog,
    DeploymentStep,
    Environment,
    Event,
    GitHubComment,
    GitHubReport,
    Project,
    Repository,
    Version,
)

FORK_REFUSAL = "no preview for pull request #%comes from the fork%"


def deployments_to_report(
    session: Session, *, since: datetime, limit: int
) -> list[tuple[Deployment, Environment, Project, Repository, GitHubReport | None]]:
    """Deployments of an installed repository whose report is not done, or that have none
    yet and were created after ``since``; oldest first, at most ``limit``."""
    rows = session.execute(
        with_installed_repository(
            select(Deployment, Environment, Project, Repository, GitHubReport)
            .join(Environment, Environment.id == Deployment.environment_id)
            .join(Project, Project.id == Deployment.project_id)
        )
        .outerjoin(GitHubReport, GitHubReport.deployment_id == Deployment.id)
        .where(
            Deployment.sha.is_not(None),
            or_(
                GitHubReport.done.is_(False),
                and_(GitHubReport.deployment_id.is_(None), Deployment.created_at > since),
            ),
        )
        .order_by(Deployment.created_at)
        .limit(limit)
    ).all()
    return [(dep, env, project, repo, report) for dep, env, project, repo, report in rows]


def version_of_deployment(session: Session, deployment_id: str) -> Version | None:
    return session.execute(
        select(Version).where(Version.deployment_id == deployment_id)
    ).scalar_one_or_none()


def step_timings(session: Session, deployment_id: str) -> list[tuple[str, str, float | None]]:
    """(name, status, duration in ms) of each step of the deployment, in order."""
    rows = session.execute(
        select(DeploymentStep.name, DeploymentStep.status, DeploymentStep.duration_ms)
        .where(DeploymentStep.deployment_id == deployment_id)
        .order_by(DeploymentStep.id)
    ).all()
    return [(name, status, ms) for name, status, ms in rows]


def log_tail(session: Session, deployment_id: str, *, lines: int) -> list[str]:
    """The deployment's last ``lines`` log lines, oldest first."""
    newest = session.execute(
        select(DeploymentLog.message)
        .where(DeploymentLog.deployment_id == deployment_id)
        .order_by(DeploymentLog.id.desc())
        .limit(lines)
    ).scalars()
    return list(newest)[::-1]


def previews_to_comment(
    session: Session, *, since: datetime
) -> list[tuple[Environment, Project, Repository]]:
    """Pull request previews of installed repositories, active or changed after ``since``."""
    rows = session.execute(
        with_installed_repository(
            select(Environment, Project, Repository).join(
                Project, Project.id == Environment.project_id
            )
        ).where(
            Environment.name == "preview",
            Environment.pr_number.is_not(None),
            or_(Environment.status == "active", Environment.updated_at > since),
        )
    ).all()
    return [(env, project, repo) for env, project, repo in rows]


def fork_refusals(session: Session, *, since: datetime) -> list[tuple[Event, Project, Repository]]:
    """The "no preview for a fork's pull request" events after ``since``, oldest first."""
    rows = session.execute(
        with_installed_repository(
            select(Event, Project, Repository).join(Project, Project.id == Event.project_id)
        )
        .where(
            Event.kind == "skipped",
            Event.created_at > since,
            Event.message.like(FORK_REFUSAL),
        )
        .order_by(Event.id)
    ).all()
    return [(event, project, repo) for event, project, repo in rows]


def comments_by_pull_request(session: Session) -> dict[tuple[int, int], GitHubComment]:
    """Every recorded comment by (project id, pull request number)."""
    return {
        (c.project_id, c.pr_number): c for c in session.execute(select(GitHubComment)).scalars()
    }


def comment_of_pull_request(
    session: Session, project_id: int, pr_number: int
) -> GitHubComment | None:
    return session.execute(
        select(GitHubComment).where(
            GitHubComment.project_id == project_id, GitHubComment.pr_number == pr_number
        )
    ).scalar_one_or_none()


def newest_deployment_with_commit(session: Session, environment_id: int) -> Deployment | None:
    """The environment's newest deployment that has a commit."""
    return session.execute(
        select(Deployment)
        .where(Deployment.environment_id == environment_id, Deployment.sha.is_not(None))
        .order_by(Deployment.created_at.desc())
        .limit(1)
    ).scalar_one_or_none()
