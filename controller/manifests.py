"""The Kubernetes runtime's inputs from the store, and the manifests ``slipway kubernetes
manifests`` prints.

:class:`StoreInputs` gives the runtime what it cannot know itself: a version's bundle
(made from its artifact reference), the environment's bundle token, its resolved
variables, whether it was archived. :func:`environment_manifests` renders with the same
functions and inputs the runtime applies, for any ``SLIPWAY_RUNTIME``, offline (no
cluster is asked). Two differences, both on purpose: values of variables marked secret
and the bundle token are replaced by a placeholder, because no secret ever appears in an
API answer (keys stay, so the output shows what the Secret holds).
"""

from __future__ import annotations

import tarfile
import tomllib
from pathlib import PurePosixPath
from typing import Any

from controller.bundles import bundle_token, make_bundle
from controller.domain.environments import find_environment
from controller.domain.projects import get_project
from controller.errors import NotFound, PermanentError
from controller.models import normalise_environment
from controller.runtimes.base import VersionSpec, host_paths
from controller.runtimes.kubernetes.render import Bundle, Target, render_environment
from controller.runtimes.kubernetes.resources import resource_overrides
from controller.runtimes.kubernetes.runtime import worker_version
from controller.secretstore.crypto import Cipher
from controller.secretstore.store import resolve_for_environment
from controller.secretstore.variables import run_variables
from controller.settings import Settings
from controller.store.bundles import prune_bundles, publish_bundle, read_member, version_bundle
from controller.store.db import Database
from controller.store.tables import Environment, Project, Version
from controller.versions import find_version, spec_for

REDACTED = "(secret: not shown; the runtime applies the stored value)"


def artifact_base(settings: Settings) -> str:
    return (settings.kubernetes.artifact_url or settings.public_url).rstrip("/")


class StoreInputs:
    def __init__(self, settings: Settings, *, db: Database, cipher: Cipher | None) -> None:
        self.settings = settings
        self.db = db
        self.cipher = cipher

    def bundle(self, spec: VersionSpec) -> Bundle:
        """The version's published bundle; made and published first if it has none (then
        the environment's bundles beyond retention go)."""
        digest = version_bundle(self.db, spec.version_id)
        if digest is None:
            source, venv = host_paths(spec.artifact)
            made = make_bundle(
                self.settings.data_dir, version_id=spec.version_id, source=source, venv=venv
            )
            publish_bundle(self.db, digest=made.digest, path=made.path, version_id=spec.version_id)
            prune_bundles(
                self.db,
                environment_id=int(spec.context["environment_id"]),
                keep=self.settings.kubernetes.keep_versions,
                also=spec.version_id,
            )
            digest = made.digest
        return Bundle(digest=digest, url=f"{artifact_base(self.settings)}/api/v1/bundles/{digest}")

    def token(self, spec: VersionSpec) -> str:
        return bundle_token(self.settings.encryption_keys, int(spec.context["environment_id"]))

    def variables(self, spec: VersionSpec) -> dict[str, str]:
        if self.cipher is None:
            return {}
        with self.db.read() as session:
            env = session.get(Environment, int(spec.context["environment_id"]))
            if env is None:
                return {}
            return run_variables(resolve_for_environment(session, self.cipher, env))

    def resources(self, spec: VersionSpec) -> dict[str, str]:
        with self.db.read() as session:
            env = session.get(Environment, int(spec.context["environment_id"]))
            project = session.get(Project, env.project_id) if env else None
            config_path = (project.config_path if project else None) or "slipway.toml"
        name = PurePosixPath(config_path).name if config_path.endswith(".toml") else "slipway.toml"
        text = self._config_text(spec, name)
        if text is None:
            return {}
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PermanentError(f"{name} cannot be read: {exc}") from exc
        return resource_overrides(data.get("kubernetes"), where=name)

    def _config_text(self, spec: VersionSpec, name: str) -> str | None:
        """``slipway.toml`` from the built tree, or on a replica that did not build the
        version (a new leader, a follower rendering manifests) from its stored bundle."""
        source, _venv = host_paths(spec.artifact)
        try:
            if source.is_dir():
                return (source / name).read_text(encoding="utf-8")
            digest = version_bundle(self.db, spec.version_id)
            data = read_member(self.db, digest=digest, name=f"source/{name}") if digest else None
            return None if data is None else data.decode("utf-8")
        except FileNotFoundError:
            return None
        except (UnicodeDecodeError, OSError, tarfile.TarError) as exc:
            raise PermanentError(f"{name} cannot be read: {exc}") from exc

    def archived(self, version_id: int) -> bool:
        with self.db.read() as session:
            version = session.get(Version, version_id)
            env = session.get(Environment, version.environment_id) if version else None
            return env is None or env.status == "archived"


def environment_manifests(
    settings: Settings,
    *,
    db: Database,
    cipher: Cipher | None,
    ref: str,
    environment: str,
    branch: str | None,
    version: str | None,
) -> list[dict[str, Any]]:
    """What the runtime applies for that environment with ``version`` (default: the
    current one) live; secret values redacted."""
    name = normalise_environment(environment)
    with db.read() as session:
        project: Project = get_project(session, ref)
        if name == "preview" and not branch:
            raise NotFound("name a preview branch (--branch): each has its own namespace")
        env = find_environment(session, project, name, branch)
        current = session.get(Version, env.current_version_id) if env.current_version_id else None
        row = find_version(session, env, version) if version else current
        spec = spec_for(session, row) if row is not None else None
        resolved = resolve_for_environment(session, cipher, env) if cipher is not None else {}
        variables = {
            key: REDACTED if var.secret else var.value
            for key, var in resolved.items()
            if key in run_variables(resolved)
        }
        target = Target(project=project.ref, environment=env.name, branch=env.branch)
        current_name = current.version if current is not None else None
    worker = None
    if spec is not None:
        inputs = StoreInputs(settings, db=db, cipher=cipher)
        worker = worker_version(spec, inputs.bundle(spec), inputs.resources(spec))
    return render_environment(
        settings.kubernetes,
        target,
        variables=variables,
        bundle_token=REDACTED,
        version=worker,
        current_version=current_name,
    )
