"""Controller settings: environment variables with the ``SLIPWAY_`` prefix, or a ``.env`` file.

Settings are grouped by topic (server, GitHub, security, runtime) and merged in one place,
:func:`load_settings`, the way Probot's ``create-probot`` does: defaults < environment <
explicit overrides. The names are fixed by SPEC.md.

Two secrets are generated on first start when not given: the admin token and the
encryption key. They are written into the data dir with mode 0600; we tell the user where
the admin token lives, and never print the encryption key.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography.fernet import Fernet
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from controller import __version__
from controller.datadir import DIR_MODE

_CONFIG = SettingsConfigDict(env_prefix="SLIPWAY_", env_file=".env", extra="ignore")


class ServerSettings(BaseSettings):
    model_config = _CONFIG

    data_dir: Path = Path(".slipway")
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str | None = None


class GitHubSettings(BaseSettings):
    model_config = _CONFIG

    webhook_secret: SecretStr | None = None
    github_app_id: str | None = None
    github_private_key: SecretStr | None = None
    github_private_key_path: Path | None = None
    github_api_url: str = "https://api.github.com"
    # Not in SPEC's table: a webhook body not received within this many seconds is
    # answered 408 and its connection closed (slow or lying clients).
    webhook_body_timeout: float = Field(default=10.0, gt=0)


class SecuritySettings(BaseSettings):
    model_config = _CONFIG

    encryption_key: SecretStr | None = None
    admin_token: SecretStr | None = None
    metrics_token: SecretStr | None = None


class RuntimeSettings(BaseSettings):
    model_config = _CONFIG

    runtime: Literal["local", "kubernetes"] = "local"
    max_concurrent_builds: int = Field(default=2, ge=1, le=64)
    preview_idle_timeout: float = Field(default=600.0, ge=0)
    max_live_preview_workers: int = Field(default=50, ge=1)
    # Not in SPEC's table: tuning knobs with safe defaults, documented in the README.
    resync_interval: float = Field(default=60.0, gt=0)
    build_timeout: float = Field(default=1800.0, gt=0)
    delivery_retention_days: float = Field(default=14.0, gt=0)
    # Reconcile and retention (controller.reconcile, controller.store.retention).
    resync_branches: bool = True
    # SLIPWAY_PREVIEW_TTL: seconds without a deployment after which an active preview
    # branch is archived by the resync (default 7 days; 0: never).
    preview_ttl: float = Field(default=7 * 86400.0, ge=0)
    job_retention_days: float = Field(default=7.0, gt=0)
    deployment_log_retention_days: float = Field(default=30.0, gt=0)
    run_log_retention_days: float = Field(default=7.0, gt=0)
    # Leader election through a coordination.k8s.io Lease (controller.leadership; the
    # Helm chart sets them); unset on PostgreSQL: an advisory lock elects.
    kubernetes_lease_name: str | None = None
    kubernetes_lease_namespace: str | None = None
    kubernetes_lease_identity: str | None = None
    # How long a graceful stop lets runs in flight finish before they are stopped.
    shutdown_grace_period: float = Field(default=30.0, ge=0)
    # Bounds on what one run may put in the database (the trigger answers 413 over the
    # payload bound; an output over its bound fails the run; logs keep their tail).
    max_payload_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_output_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_run_log_bytes: int = Field(default=1024 * 1024, ge=1024)
    # The CPUs the controller process and its builds may use (controller.cpus): all by
    # default; auto leaves the first CPU to the HTTP process when there are two or more.
    controller_cpus: str = "all"

    @field_validator("controller_cpus")
    @classmethod
    def _cpu_list(cls, value: str) -> str:
        from controller.cpus import allowed, choose

        choose(value, allowed())  # ValueError: says what is accepted, or what CPUs there are
        return value

    @field_validator("runtime", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


class KubernetesSettings(BaseSettings):
    """``SLIPWAY_KUBERNETES_*``: read by the Kubernetes runtime and by the manifest
    renderer (``slipway kubernetes manifests`` renders with these whatever the runtime)."""

    model_config = SettingsConfigDict(
        env_prefix="SLIPWAY_KUBERNETES_", env_file=".env", extra="ignore"
    )

    namespace_prefix: str = Field(default="slipway-", pattern=r"^([a-z0-9][-a-z0-9]{0,19})?$")
    worker_image: str = f"ghcr.io/slipway-dev/slipway:{__version__}"
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    replicas: int = Field(default=1, ge=1, le=100)
    cpu_request: str = "100m"
    memory_request: str = "256Mi"
    cpu_limit: str | None = "1"
    memory_limit: str | None = "1Gi"
    # How long a rollout may take before the deployment fails (also the Deployment's
    # progressDeadlineSeconds), and how many versions' Deployments stay per namespace.
    rollout_timeout: float = Field(default=300.0, gt=0)
    keep_versions: int = Field(default=3, ge=1)
    # Outside the cluster: the kubeconfig (and its context); inside, the service account.
    kubeconfig: Path | None = None
    context: str | None = None
    # Where pods fetch version bundles from (the controller as the cluster sees it);
    # default SLIPWAY_PUBLIC_URL.
    artifact_url: str | None = None
    # True when Slipway runs in the cluster: runs go to the Service directly; otherwise
    # through the API server's service proxy.
    in_cluster: bool | None = None


@dataclass(frozen=True)
class Settings:
    """All settings, merged. ``data_dir`` is absolute and exists once :func:`prepare` ran."""

    server: ServerSettings
    github: GitHubSettings
    security: SecuritySettings
    runtime: RuntimeSettings
    kubernetes: KubernetesSettings = field(default_factory=KubernetesSettings)

    @property
    def data_dir(self) -> Path:
        return self.server.data_dir

    @property
    def database_url(self) -> str:
        url = self.server.database_url or f"sqlite:///{self.data_dir / 'slipway.db'}"
        return normalise_database_url(url)

    @property
    def public_url(self) -> str:
        return (self.server.public_url or f"http://{self.server.host}:{self.server.port}").rstrip(
            "/"
        )

    @property
    def webhook_secret(self) -> str | None:
        secret = self.github.webhook_secret
        return secret.get_secret_value() if secret else None

    @property
    def admin_token(self) -> str:
        if self.security.admin_token is None:
            raise RuntimeError("settings not prepared: call prepare() first")
        return self.security.admin_token.get_secret_value()

    @property
    def metrics_token(self) -> str | None:
        token = self.security.metrics_token
        return token.get_secret_value() if token else None

    @property
    def encryption_keys(self) -> list[str]:
        """Newest first. A comma-separated value lists older keys after the new one."""
        if self.security.encryption_key is None:
            raise RuntimeError("settings not prepared: call prepare() first")
        value = self.security.encryption_key.get_secret_value()
        return [k.strip() for k in value.split(",") if k.strip()]


def normalise_database_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 here (SQLAlchemy would pick psycopg2)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def load_settings(**overrides: object) -> Settings:
    """Defaults < environment (and ``.env``) < ``overrides`` (flat SPEC names, no prefix)."""
    groups: dict[str, type[BaseSettings]] = {
        "server": ServerSettings,
        "github": GitHubSettings,
        "security": SecuritySettings,
        "runtime": RuntimeSettings,
        "kubernetes": KubernetesSettings,
    }
    built = {}
    for name, model in groups.items():
        strip = "kubernetes_" if name == "kubernetes" else ""
        mine = {
            k[len(strip) :]: v
            for k, v in overrides.items()
            if k.startswith(strip) and k[len(strip) :] in model.model_fields
        }
        built[name] = model(**mine)  # type: ignore[arg-type]
    return Settings(**built)  # type: ignore[arg-type]


ADMIN_TOKEN_FILE = "admin_token"  # noqa: S105 - a file name
ENCRYPTION_KEY_FILE = "encryption.key"


def read_or_create_secret(path: Path, make: Callable[[], str]) -> tuple[str, bool]:
    """Return the secret stored at ``path``, creating it (mode 0600) if absent."""
    try:
        return path.read_text().strip(), False
    except FileNotFoundError:
        pass
    value = make()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:  # another process won the race; use its value
        return path.read_text().strip(), False
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return value, True


def prepare(settings: Settings) -> tuple[Settings, list[str]]:
    """Make the data dir absolute and present; fill in generated secrets.

    Returns the completed settings and human-readable notices (never a secret's value).
    """
    notices: list[str] = []
    data_dir = settings.server.data_dir.expanduser().resolve()
    # Private, even when it existed: it holds the database, webhook payloads, logs and the
    # keys, and it is Slipway's (see controller.datadir).
    data_dir.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    try:
        data_dir.chmod(DIR_MODE)
    except PermissionError:
        notices.append(
            f"Could not make {data_dir} private (mode 0700): it belongs to another user; "
            "run `chmod 700` on it as its owner."
        )
    server = settings.server.model_copy(update={"data_dir": data_dir})
    security = settings.security
    if security.admin_token is None:
        path = data_dir / ADMIN_TOKEN_FILE
        token, created = read_or_create_secret(path, lambda: "slw_" + secrets.token_urlsafe(32))
        security = security.model_copy(update={"admin_token": SecretStr(token)})
        if created:
            notices.append(f"Generated an admin token in {path} (mode 0600); the CLI reads it.")
    if security.encryption_key is None:
        path = data_dir / ENCRYPTION_KEY_FILE
        key, created = read_or_create_secret(path, lambda: Fernet.generate_key().decode())
        security = security.model_copy(update={"encryption_key": SecretStr(key)})
        if created:
            notices.append(
                f"Generated an encryption key in {path} (mode 0600). Back it up: without it, "
                "stored environment variables cannot be read."
            )
    return (
        Settings(
            server=server,
            github=settings.github,
            security=security,
            runtime=settings.runtime,
            kubernetes=settings.kubernetes,
        ),
        notices,
    )
