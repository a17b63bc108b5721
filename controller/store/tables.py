"""SQLAlchemy tables. One row type per concept; the queries live in the query functions
of the sibling modules (:mod:`~controller.store.projects`,
:mod:`~controller.store.environments`, :mod:`~controller.store.deployments`,
:mod:`~controller.store.routejobs`, …).

The file is over 400 lines on purpose: it is the whole schema, one ``MetaData`` that the
migrations are checked against, and its foreign keys and indexes read best side by side.

Times are stored as UTC and always come back timezone-aware (SQLite forgets the zone, so
:class:`UTCDateTime` puts it back). JSON columns hold small documents only (task lists,
options, step results); bodies and logs are bounded before they get here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class Installation(Base):
    __tablename__ = "installations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    account: Mapped[str | None] = mapped_column(String(200))
    suspended: Mapped[bool] = mapped_column(Boolean, default=False)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Repository(Base):
    """A repository some installation of the App can (or could) reach."""

    __tablename__ = "repositories"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    full_name: Mapped[str] = mapped_column(String(300))
    full_name_lower: Mapped[str] = mapped_column(String(300), unique=True)
    github_id: Mapped[int | None] = mapped_column(Integer)
    installation_id: Mapped[int | None] = mapped_column(Integer)
    # The clone_url the newest delivery reported; fetched with an installation token.
    clone_url: Mapped[str | None] = mapped_column(Text)
    reachable: Mapped[bool] = mapped_column(Boolean, default=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ref: Mapped[str] = mapped_column(String(100), unique=True)
    repo: Mapped[str] = mapped_column(String(300))
    repo_lower: Mapped[str] = mapped_column(String(300), index=True)
    clone_url: Mapped[str | None] = mapped_column(Text)
    production_branch: Mapped[str | None] = mapped_column(String(255))
    staging_branch: Mapped[str | None] = mapped_column(String(255))
    previews: Mapped[bool] = mapped_column(Boolean, default=True)
    fork_previews: Mapped[bool] = mapped_column(Boolean, default=False)
    preview_limit: Mapped[int] = mapped_column(Integer, default=10)
    config_path: Mapped[str | None] = mapped_column(String(500))
    install_command: Mapped[str | None] = mapped_column(Text)
    pre_build_command: Mapped[str | None] = mapped_column(Text)
    default_branch: Mapped[str | None] = mapped_column(String(255))
    # Promotion gates by environment name (controller.gates.spec), and how long one waits.
    promotion_gates: Mapped[dict[str, Any]] = mapped_column(default=dict)
    promotion_timeout: Mapped[int] = mapped_column(Integer, default=1800)
    disconnected_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Environment(Base):
    """production, staging, the preview root, or one preview branch.

    ``branch_key`` is ``branch`` or ``""`` so the unique constraint also holds for the
    rows without a branch (NULLs never collide in SQL).
    """

    __tablename__ = "environments"
    __table_args__ = (UniqueConstraint("project_id", "name", "branch_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    name: Mapped[str] = mapped_column(String(20))
    branch: Mapped[str | None] = mapped_column(String(255))
    branch_key: Mapped[str] = mapped_column(String(255), default="")
    status: Mapped[str] = mapped_column(String(20), default="active")
    status_reason: Mapped[str | None] = mapped_column(Text)
    current_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("versions.id", use_alter=True, name="fk_environments_current_version")
    )
    pr_number: Mapped[int | None] = mapped_column(Integer)
    head_repo: Mapped[str | None] = mapped_column(String(300))
    is_fork: Mapped[bool] = mapped_column(Boolean, default=False)
    secret_key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    secret_key_encrypted: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    archived_at: Mapped[datetime | None] = mapped_column()


class Delivery(Base):
    """A webhook delivery, recorded before we answer 202."""

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivery_id: Mapped[str] = mapped_column(String(100), unique=True)
    event: Mapped[str] = mapped_column(String(100))
    action: Mapped[str | None] = mapped_column(String(100))
    repo_lower: Mapped[str | None] = mapped_column(String(300), index=True)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column()
    outcome: Mapped[str | None] = mapped_column(Text)


class Event(Base):
    """Something a user should be able to see about a project: why a delivery did nothing,
    why a preview was not created, that access was lost."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    delivery_id: Mapped[str | None] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(40))
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    """A durable unit of queued work. See :mod:`controller.queue`."""

    __tablename__ = "jobs"
    __table_args__ = (
        # One key, one worker: at most one running job per key, enforced by the database.
        Index(
            "uq_jobs_running_key",
            "key",
            unique=True,
            sqlite_where=text("status = 'running'"),
            postgresql_where=text("status = 'running'"),
        ),
        # Claims walk queued jobs of a kind in id order without sorting the backlog.
        Index("ix_jobs_claim_order", "status", "kind", "id"),
        Index("ix_jobs_key_status", "key", "status"),
        Index("ix_jobs_status_updated_at", "status", "updated_at"),  # retention
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(40))
    key: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), default="queued")
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    deployment_id: Mapped[str | None] = mapped_column(String(40), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=20)
    run_after: Mapped[datetime] = mapped_column(default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Deployment(Base):
    __tablename__ = "deployments"
    __table_args__ = (
        # The resync filters on status; its branch pass asks "was this commit attempted
        # here?"; log retention walks finished deployments by age.
        Index("ix_deployments_status", "status"),
        Index("ix_deployments_environment_sha", "environment_id", "sha"),
        Index("ix_deployments_finished_at", "finished_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    environment_id: Mapped[int] = mapped_column(ForeignKey("environments.id"), index=True)
    sha: Mapped[str | None] = mapped_column(String(64))
    ref: Mapped[str | None] = mapped_column(String(300))
    source: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), default="queued")
    version_id: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    upload_path: Mapped[str | None] = mapped_column(Text)
    artifact_digest: Mapped[str | None] = mapped_column(String(80))
    delivery_id: Mapped[str | None] = mapped_column(String(100))
    pr_number: Mapped[int | None] = mapped_column(Integer)
    # Set when the deployment starts waiting for its promotion gate (controller.gates).
    gate: Mapped[str | None] = mapped_column(String(300))
    waiting_since: Mapped[datetime | None] = mapped_column()
    gate_deadline: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class DeploymentStep(Base):
    """A journaled pipeline step: once ``done``, its stored result replaces running it."""

    __tablename__ = "deployment_steps"
    __table_args__ = (UniqueConstraint("deployment_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20), default="running")
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()
    duration_ms: Mapped[float | None] = mapped_column(Float)


class DeploymentLog(Base):
    __tablename__ = "deployment_logs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id"), index=True)
    step: Mapped[str | None] = mapped_column(String(100))
    level: Mapped[str] = mapped_column(String(10), default="info")
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Version(Base):
    __tablename__ = "versions"
    __table_args__ = (
        UniqueConstraint("environment_id", "version"),
        UniqueConstraint("environment_id", "day", "seq", name="uq_versions_env_day_seq"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    environment_id: Mapped[int] = mapped_column(ForeignKey("environments.id"), index=True)
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id"), unique=True)
    version: Mapped[str] = mapped_column(String(20))
    day: Mapped[str] = mapped_column(String(8))
    seq: Mapped[int] = mapped_column(Integer)
    sha: Mapped[str | None] = mapped_column(String(64))
    tasks: Mapped[list[Any]] = mapped_column(default=list)
    artifact_digest: Mapped[str | None] = mapped_column(String(80))
    source_path: Mapped[str] = mapped_column(Text)
    venv_path: Mapped[str] = mapped_column(Text)
    tasks_dir: Mapped[str] = mapped_column(String(500), default="tasks")
    release_tasks: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    promoted_at: Mapped[datetime | None] = mapped_column()
    # The version's bundle in the database (controller.store.bundles), once published.
    bundle_digest: Mapped[str | None] = mapped_column(
        ForeignKey("bundles.digest"), index=True, default=None
    )


class StoredBundle(Base):
    """A content-addressed bundle; its bytes are the ``bundle_chunks`` rows, in order."""

    __tablename__ = "bundles"

    digest: Mapped[str] = mapped_column(String(71), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    chunks: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BundleChunk(Base):
    __tablename__ = "bundle_chunks"

    digest: Mapped[str] = mapped_column(ForeignKey("bundles.digest"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        # Retention finds runs that still hold logs without walking every run ever made.
        Index(
            "ix_runs_finished_with_logs",
            "finished_at",
            sqlite_where=text("logs IS NOT NULL"),
            postgresql_where=text("logs IS NOT NULL"),
        ),
        # The resync finds runs whose process is gone among the few still running.
        Index(
            "ix_runs_running_expires_at",
            "expires_at",
            sqlite_where=text("status = 'running'"),
            postgresql_where=text("status = 'running'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    environment_id: Mapped[int] = mapped_column(ForeignKey("environments.id"), index=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"))
    task_id: Mapped[str] = mapped_column(String(300))
    status: Mapped[str] = mapped_column(String(20), default="running")
    payload: Mapped[Any] = mapped_column(JSON, nullable=True)
    output: Mapped[Any] = mapped_column(JSON, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    logs: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()
    duration_ms: Mapped[float | None] = mapped_column(Float)
    # While running: the process that waits for the outcome (controller.owners) and when
    # the run is certainly over (its time limit and the runtime's slack).
    owner: Mapped[str | None] = mapped_column(String(120))
    expires_at: Mapped[datetime | None] = mapped_column()


class Worker(Base):
    """A live worker process serving one version (local runtime)."""

    __tablename__ = "workers"

    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"), primary_key=True)
    pid: Mapped[int] = mapped_column(Integer)
    host: Mapped[str] = mapped_column(String(200))
    port: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)


class EnvVar(Base):
    """An environment variable of one environment, the preview root, or one preview branch.

    Keyed by name (``production``, ``staging``, ``preview``) and ``branch_key`` (``""``
    outside preview branches) rather than by environment row, so a branch override can
    be set before its pull request opens. ``value_encrypted`` is AES-GCM bound to
    ``project_id/environment/branch_key/name`` (see :mod:`controller.secretstore.crypto`).
    """

    __tablename__ = "env_vars"
    __table_args__ = (UniqueConstraint("project_id", "environment", "branch_key", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    environment: Mapped[str] = mapped_column(String(20))
    branch_key: Mapped[str] = mapped_column(String(255), default="")
    name: Mapped[str] = mapped_column(String(255))
    value_encrypted: Mapped[str] = mapped_column(Text)
    secret: Mapped[bool] = mapped_column(Boolean, default=False)
    fork_safe: Mapped[bool] = mapped_column(Boolean, default=False)
    source: Mapped[str] = mapped_column(String(20), default="manual")
    updated_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class EnvVarChange(Base):
    """The audit trail of env vars: who or what changed which name, when (never values)."""

    __tablename__ = "env_var_changes"
    # The newest change of a project is the stamp of its resolved-variables cache.
    __table_args__ = (Index("ix_env_var_changes_project_order", "project_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
    environment: Mapped[str] = mapped_column(String(20))
    branch_key: Mapped[str] = mapped_column(String(255), default="")
    name: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(20))
    actor: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class GitHubApp(Base):
    """The GitHub App the manifest flow created (one row: the newest set-up replaces it).

    The private key, webhook secret and client secret are AES-GCM ciphertexts bound to
    ``github-app/<app_id>/<field>`` (see :mod:`controller.github.storage`).
    """

    __tablename__ = "github_apps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    app_id: Mapped[int] = mapped_column(Integer)
    slug: Mapped[str] = mapped_column(String(200))
    html_url: Mapped[str] = mapped_column(Text)
    client_id: Mapped[str] = mapped_column(String(200))
    private_key_encrypted: Mapped[str] = mapped_column(Text)
    webhook_secret_encrypted: Mapped[str] = mapped_column(Text)
    client_secret_encrypted: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class GitHubSetupToken(Base):
    """A one-time set-up token (``setup``) or manifest ``state``: stored as a SHA-256."""

    __tablename__ = "github_setup_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(10))
    org: Mapped[str | None] = mapped_column(String(100))
    expires_at: Mapped[datetime] = mapped_column()
    used_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class CommitSignal(Base):
    """A ``deployment_status`` or ``check_run`` GitHub reported for a commit: what a
    promotion gate (``github-deployment:NAME``, ``check-run:NAME``) decides with."""

    __tablename__ = "commit_signals"
    __table_args__ = (Index("ix_commit_signals_repo_sha", "repo_lower", "sha"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    repo_lower: Mapped[str] = mapped_column(String(300))
    sha: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(50))
    github_id: Mapped[int] = mapped_column(BigInteger)
    deployment_id: Mapped[int | None] = mapped_column(BigInteger)
    url: Mapped[str | None] = mapped_column(Text)
    delivery_id: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class GitHubUserSession(Base):
    """A person signed in with GitHub (see :mod:`controller.web.signin_records`): keyed by
    the SHA-256 of the session id in their cookie; their user token is an AES-GCM
    ciphertext bound to that key."""

    __tablename__ = "github_user_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    login: Mapped[str] = mapped_column(String(100))
    github_user_id: Mapped[int] = mapped_column(BigInteger)
    token_encrypted: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[datetime] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# --- GitHub reporting (controller.github.reporting) --------------------------------------


class GitHubReport(Base):
    """What was last reported to GitHub for one deployment, so each pass sends only the
    difference, and ids GitHub gave (recorded right after each create succeeds)."""

    __tablename__ = "github_reports"
    __table_args__ = (Index("ix_github_reports_done", "done"),)

    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id"), primary_key=True)
    github_deployment_id: Mapped[int | None] = mapped_column(BigInteger)
    deployment_state: Mapped[str | None] = mapped_column(String(20))
    check_run_id: Mapped[int | None] = mapped_column(BigInteger)
    check_state: Mapped[str | None] = mapped_column(String(20))
    done: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class GitHubComment(Base):
    """The one comment a project keeps on a pull request, and a hash of its last body."""

    __tablename__ = "github_comments"
    __table_args__ = (UniqueConstraint("project_id", "pr_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
    pr_number: Mapped[int] = mapped_column(Integer)
    comment_id: Mapped[int | None] = mapped_column(BigInteger)
    body_hash: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
