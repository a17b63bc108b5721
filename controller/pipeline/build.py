"""The build half of a deployment: fetch, checkout, install, build, sync-env.

Each phase is one journaled step (:mod:`controller.pipeline.journal`) that reads and fills
an :class:`Attempt`, the state one run of the pipeline carries from phase to phase. A
phase whose step is already done gets its stored result back, so a resumed deployment
rebuilds the attempt without doing the work again.

**Clone URL and credentials**: ``--clone-url`` if the project has one (fetched as is);
else the ``clone_url`` GitHub reported in the repository's newest delivery, with an
installation token from ``clone_auth`` (the GitHub App) as an ``http.extraHeader``; else
``https://github.com/OWNER/NAME.git`` without credentials. A token only ever goes to the
URL GitHub reported.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from controller.builders.base import Builder
from controller.builders.config import BuildConfig, load_config
from controller.errors import BuildFailed, PermanentError
from controller.pipeline.envvars import EnvVarsPhase
from controller.pipeline.handover import on_node
from controller.pipeline.journal import Journal
from controller.queue import Backoff
from controller.sources.archive import content_digest, safe_extract
from controller.sources.git import GitSource
from controller.store.tables import Deployment, Environment, Project


class CloneAuth(Protocol):
    """Credentials for a GitHub-reported clone URL (``controller.github.auth``)."""

    def header_for(self, *, clone_url: str, installation_id: int | None) -> str | None: ...


@dataclass(frozen=True)
class Snapshot:
    deployment: Deployment
    project: Project
    environment: Environment


@dataclass
class Attempt:
    """One run of the pipeline over a deployment: what each phase hands the next."""

    snap: Snapshot
    journal: Journal
    work: Path
    artifact: Path
    clone_url: str
    installation_id: int | None
    remaining: Callable[[], float]
    guard: Callable[[], None]
    checked: dict[str, Any] = field(default_factory=dict)
    config: BuildConfig | None = None
    venv: Path | None = None
    built: dict[str, Any] = field(default_factory=dict)
    version_id: int | None = None
    version: str | None = None

    @property
    def checkout(self) -> Path:
        return self.work / "src"


class BuildPhases:
    def __init__(
        self,
        *,
        node: str,
        source: GitSource,
        builder: Builder,
        envvars: EnvVarsPhase,
        stopping: threading.Event,
        clone_auth: CloneAuth | None,
    ) -> None:
        self.node = node  # steps whose output is on this machine's disk (see handover)
        self.source = source
        self.builder = builder
        self.envvars = envvars
        self.stopping = stopping
        self.clone_auth = clone_auth

    def fetch(self, run: Attempt) -> None:
        dep = run.snap.deployment

        def fetch(_attempt: int) -> dict[str, Any]:
            if dep.upload_path:
                if not Path(dep.upload_path).is_file():
                    raise PermanentError("the uploaded source is missing from the data dir")
                return {"source": "upload"}
            assert dep.sha is not None
            auth_header = None
            if self.clone_auth is not None and run.installation_id is not None:
                auth_header = self.clone_auth.header_for(
                    clone_url=run.clone_url, installation_id=run.installation_id
                )
            self.source.fetch(
                clone_url=run.clone_url,
                sha=dep.sha,
                refs=[dep.ref] if dep.ref else [],
                auth_header=auth_header,
            )
            return {"source": "git", "sha": dep.sha}

        run.journal.step(
            "fetch",
            on_node(self.node, fetch),
            retry=Backoff(limit=5, min_timeout=2, max_timeout=60),
        )

    def _materialise(self, run: Attempt) -> str:
        dep = run.snap.deployment
        shutil.rmtree(run.work, ignore_errors=True)
        run.work.mkdir(parents=True)
        if dep.upload_path:
            safe_extract(Path(dep.upload_path), run.checkout)
            return content_digest(run.checkout)
        assert dep.sha is not None
        return self.source.export(clone_url=run.clone_url, sha=dep.sha, dest=run.checkout)

    def checkout(self, run: Attempt) -> None:
        project, journal = run.snap.project, run.journal

        def checkout(_attempt: int) -> dict[str, Any]:
            digest = self._materialise(run)
            config = load_config(
                run.checkout,
                config_path=project.config_path,
                install_command=project.install_command,
                pre_build_command=project.pre_build_command,
            )
            for warning in config.warnings:
                journal.log(warning, level="warn")
            journal.log(
                f"Checked out {digest[:19]}; project root {config.root}, tasks in {config.tasks_dir}/"
            )
            return {"digest": digest, "config": config.to_dict()}

        run.checked = journal.step("checkout", on_node(self.node, checkout))
        run.config = BuildConfig.from_dict(run.checked["config"])

    def install(self, run: Attempt) -> None:
        config = run.config
        assert config is not None

        def install(_attempt: int) -> dict[str, Any]:
            if not run.checkout.is_dir():
                self._materialise(run)
            build_env, log = self.envvars.build_variables(
                run.snap.deployment, run.snap.environment, run.journal
            )
            return self.builder.prepare(
                run.checkout / config.root,
                install=config.install,
                log=log,
                cancel=self.stopping,
                timeout=run.remaining(),
                build_env=build_env,
            )

        result = run.journal.step("install", on_node(self.node, install), retry=Backoff(limit=1))
        run.venv = Path(result["venv"])

    def build(self, run: Attempt) -> None:
        config, venv, journal = run.config, run.venv, run.journal
        assert config is not None and venv is not None
        artifact, checkout = run.artifact, run.checkout

        def build(attempt: int) -> dict[str, Any]:
            digest = run.checked["digest"]
            if attempt > 1 or not checkout.is_dir():
                journal.log("Starting the build again from a clean checkout")
                digest = self._materialise(run)
            if config.pre_build:
                journal.begin_durably()  # a rerun must know the checkout may be dirty
                build_env, log = self.envvars.build_variables(
                    run.snap.deployment, run.snap.environment, journal
                )
                self.builder.pre_build(
                    checkout / config.root,
                    venv=venv,
                    command=config.pre_build,
                    log=log,
                    cancel=self.stopping,
                    timeout=run.remaining(),
                    build_env=build_env,
                )
            shutil.rmtree(artifact, ignore_errors=True)
            checkout.rename(artifact)
            shutil.rmtree(run.work, ignore_errors=True)
            root = artifact / config.root
            tasks = self.builder.discover(
                root,
                venv=venv,
                tasks_dir=config.tasks_dir,
                timeout=120,
                tree=None if config.pre_build else f"{digest}:{config.root}",
                log=journal.log,
            )
            ids = {t["id"] for t in tasks}
            missing = [t for t in config.release_tasks if t not in ids]
            if missing:
                raise BuildFailed(
                    f"release_tasks names tasks that do not exist: {', '.join(missing)}",
                    hint="fix release_tasks in slipway.toml",
                )
            journal.log(f"Detected {len(tasks)} tasks: {', '.join(sorted(ids)) or '(none)'}")
            return {"artifact": str(root), "tasks": tasks, "digest": digest}

        run.built = journal.step("build", on_node(self.node, build), retry=Backoff(limit=1))

    def sync_env(self, run: Attempt) -> None:
        config, venv = run.config, run.venv
        assert config is not None and venv is not None
        if not config.sync_env_vars:
            return
        self.envvars.sync(
            run.snap.deployment,
            run.snap.environment,
            run.journal,
            command=config.sync_env_vars,
            root=Path(run.built["artifact"]),
            venv=venv,
            timeout=lambda: min(run.remaining(), 600.0),
        )
