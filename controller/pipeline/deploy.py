"""The deploy pipeline: reconcile one deployment from its recorded desired state.

Shape (Flux's ``kustomization_controller``): load → guards (archived branch, disconnected
project, deadline) → phases, writing the status before each → record the outcome. Every
phase is a journaled step (:mod:`controller.pipeline.journal`), so the controller can die
anywhere and the deployment resumes where it stopped, exactly once:

==========  ===========  ===============================================================
status      step         does
==========  ===========  ===============================================================
installing  fetch        fetch the commit into the repository's mirror (or check upload)
installing  checkout     export the tree into a fresh work dir; read ``slipway.toml``
installing  install      dependency environment (cached by key)
building    build        pre-build in a fresh checkout, freeze the artifact, discover tasks
building    sync-env     run ``sync_env_vars`` in the built environment, import its output
deploying   version      number the version (one per deployment)
deploying   health       start the version's worker and pass its health check
deploying   release:ID   run each ``release_tasks`` entry on the new version
deploying   promote      make it current (unless ``--skip-promotion``)
==========  ===========  ===============================================================

**Bookkeeping rides along**: status changes are staged in the journal and written with
its next transaction (a step's end; the durable start of the pre-build), the version's
number and its step commit together, and so do the promotion and its step — about one
write per step instead of three (issue 8).

Failures are classified: a :class:`PermanentError` fails the deployment with its message
and hint; a :class:`TemporaryError` is retried (in the step, then by the queue) until the
attempts run out. The current version is never touched by a failed deployment.

**Clone URL and credentials**: ``--clone-url`` if the project has one (fetched as is);
else the ``clone_url`` GitHub reported in the repository's newest delivery, with an
installation token from ``clone_auth`` (the GitHub App) as an ``http.extraHeader``; else
``https://github.com/OWNER/NAME.git`` without credentials. A token only ever goes to the
URL GitHub reported.

**Env vars**: build steps see the build-time variables and ``sync-env`` imports what
``sync_env_vars`` prints (:mod:`controller.pipeline.envvars`); release tasks run with
the variables runs see, their secrets masked in the deployment log.

Over 400 lines on purpose: the phases read best as one function, in order; the details
of steps live in their own modules (journal, env vars, builders).
"""

from __future__ import annotations

import logging
import shlex
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.builders.base import Builder
from controller.builders.config import BuildConfig, load_config
from controller.datadir import private_dir
from controller.domain.projects import project_not_deploying_reason
from controller.errors import BuildFailed, PermanentError, TemporaryError
from controller.ids import new_id
from controller.logs import bind_log_context
from controller.manager import Interrupted
from controller.models import FINAL_STATUSES
from controller.pipeline.envvars import EnvVarsPhase
from controller.pipeline.handover import node_id, on_node, redo_foreign_steps
from controller.pipeline.journal import Journal
from controller.queue import Backoff, Claimed
from controller.runs import mask_run_result, run_environment
from controller.runtimes.base import Runtime
from controller.secretstore.crypto import Cipher
from controller.sources.archive import content_digest, safe_extract
from controller.sources.git import GitSource
from controller.store.db import Database
from controller.store.tables import (
    Deployment,
    Environment,
    Project,
    Repository,
    Version,
    utcnow,
)
from controller.versions import allocate_version, promote, spec_for

log = logging.getLogger(__name__)

JOB_ATTEMPTS = 5


class Stop(Exception):
    """End the deployment with ``status`` (canceled, timed_out) and ``message``."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class CloneAuth(Protocol):
    """Credentials for a GitHub-reported clone URL (``controller.github.auth``)."""

    def header_for(self, *, clone_url: str, installation_id: int | None) -> str | None: ...


@dataclass(frozen=True)
class Snapshot:
    deployment: Deployment
    project: Project
    environment: Environment


class Pipeline:
    def __init__(
        self,
        *,
        db: Database,
        data_dir: Path,
        source: GitSource,
        builder: Builder,
        runtime: Runtime,
        build_timeout: float,
        stopping: threading.Event,
        cipher: Cipher | None = None,
        clone_auth: CloneAuth | None = None,
    ) -> None:
        self.db = db
        self.clone_auth = clone_auth
        self.cipher = cipher
        self.envvars = EnvVarsPhase(db=db, cipher=cipher, builder=builder, stopping=stopping)
        self.source = source
        self.builder = builder
        self.runtime = runtime
        self.build_timeout = build_timeout
        self.stopping = stopping
        self.builds = data_dir / "builds"
        self.artifacts = data_dir / "artifacts"
        self.node = node_id(data_dir)
        private_dir(self.builds)
        private_dir(self.artifacts)

    # -- entry point ----------------------------------------------------------------------

    def handle(self, job: Claimed) -> None:
        if job.deployment_id is None:
            return
        snap = self._load(job.deployment_id)
        if snap is None or snap.deployment.status in FINAL_STATUSES:
            return
        bind_log_context(deployment=snap.deployment.id, project=snap.project.ref, environment=snap.environment.branch or snap.environment.name, delivery=snap.deployment.delivery_id)  # fmt: skip
        journal = Journal(self.db, snap.deployment.id, stopping=self.stopping)
        try:
            self._run(snap, journal)
        except Stop as stop:
            journal.log(stop.message, level="warn")
            self._finish(snap, journal, stop.status, stop.message)
        except Interrupted:
            journal.log(
                "Controller stopping: this deployment resumes when it is back", level="warn"
            )
            journal.flush()
            raise
        except PermanentError as exc:
            message = f"{exc.message}\nHow to fix: {exc.hint}" if exc.hint else exc.message
            journal.log(message, level="error")
            self._finish(snap, journal, "failed", message)
        except Exception as exc:
            if job.attempts >= JOB_ATTEMPTS:
                message = f"gave up after {job.attempts} attempts: {type(exc).__name__}: {exc}"
                journal.log(message, level="error")
                self._finish(snap, journal, "failed", message)
                return
            if not isinstance(exc, TemporaryError):
                log.exception("deployment %s raised; the queue retries it", snap.deployment.id)
            journal.log(f"{exc} — the deployment will be retried", level="warn")
            journal.flush()
            raise

    # -- phases ---------------------------------------------------------------------------

    def _run(self, snap: Snapshot, journal: Journal) -> None:
        dep, project, env = snap.deployment, snap.project, snap.environment
        self._guard(snap)
        redo_foreign_steps(journal, self.node)
        if dep.started_at is None:
            journal.log(
                f"Deploying {dep.sha[:12] if dep.sha else 'an upload'} of {project.repo} to "
                f"{env.name}{'/' + env.branch if env.branch else ''}"
            )
        self._set_status(journal, dep.id, "installing")
        work = self.builds / dep.id
        checkout = work / "src"
        clone_url, installation_id = self._clone_target(project)

        def fetch(_attempt: int) -> dict[str, Any]:
            if dep.upload_path:
                if not Path(dep.upload_path).is_file():
                    raise PermanentError("the uploaded source is missing from the data dir")
                return {"source": "upload"}
            assert dep.sha is not None
            auth_header = None
            if self.clone_auth is not None and installation_id is not None:
                auth_header = self.clone_auth.header_for(
                    clone_url=clone_url, installation_id=installation_id
                )
            self.source.fetch(
                clone_url=clone_url,
                sha=dep.sha,
                refs=[dep.ref] if dep.ref else [],
                auth_header=auth_header,
            )
            return {"source": "git", "sha": dep.sha}

        journal.step(
            "fetch",
            on_node(self.node, fetch),
            retry=Backoff(limit=5, min_timeout=2, max_timeout=60),
        )

        def materialise() -> str:
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            if dep.upload_path:
                safe_extract(Path(dep.upload_path), checkout)
                return content_digest(checkout)
            assert dep.sha is not None
            return self.source.export(clone_url=clone_url, sha=dep.sha, dest=checkout)

        def do_checkout(_attempt: int) -> dict[str, Any]:
            digest = materialise()
            config = load_config(
                checkout,
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

        checked = journal.step("checkout", on_node(self.node, do_checkout))
        config = BuildConfig.from_dict(checked["config"])
        self._guard(snap)

        def install(_attempt: int) -> dict[str, Any]:
            if not checkout.is_dir():
                materialise()
            build_env, log = self.envvars.build_variables(
                snap.deployment, snap.environment, journal
            )
            return self.builder.prepare(
                checkout / config.root,
                install=config.install,
                log=log,
                cancel=self.stopping,
                timeout=self._remaining(dep),
                build_env=build_env,
            )

        env_result = journal.step("install", on_node(self.node, install), retry=Backoff(limit=1))
        venv = Path(env_result["venv"])
        self._guard(snap)
        self._set_status(journal, dep.id, "building")
        artifact = self.artifacts / dep.id

        def build(attempt: int) -> dict[str, Any]:
            digest = checked["digest"]
            if attempt > 1 or not checkout.is_dir():
                journal.log("Starting the build again from a clean checkout")
                digest = materialise()
            if config.pre_build:
                journal.begin_durably()  # a rerun must know the checkout may be dirty
                build_env, log = self.envvars.build_variables(
                    snap.deployment, snap.environment, journal
                )
                self.builder.pre_build(
                    checkout / config.root,
                    venv=venv,
                    command=config.pre_build,
                    log=log,
                    cancel=self.stopping,
                    timeout=self._remaining(dep),
                    build_env=build_env,
                )
            shutil.rmtree(artifact, ignore_errors=True)
            checkout.rename(artifact)
            shutil.rmtree(work, ignore_errors=True)
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

        built = journal.step("build", on_node(self.node, build), retry=Backoff(limit=1))
        self._guard(snap)
        if config.sync_env_vars:
            self.envvars.sync(
                snap.deployment,
                snap.environment,
                journal,
                command=config.sync_env_vars,
                root=Path(built["artifact"]),
                venv=venv,
                timeout=lambda: min(self._remaining(dep), 600.0),
            )
        self._set_status(journal, dep.id, "deploying")

        def number(_attempt: int) -> dict[str, Any]:
            version = allocate_version(
                self.db,
                deployment=dep,
                sha=dep.sha,
                tasks=built["tasks"],
                artifact_digest=built["digest"],
                source_path=built["artifact"],
                venv_path=str(venv),
                tasks_dir=config.tasks_dir,
                release_tasks=config.release_tasks,
                record=record,
            )
            return {"version_id": version.id, "version": version.version}

        def record(session: Session, version: Version) -> None:
            row = session.get(Deployment, dep.id)
            assert row is not None
            row.version_id, row.artifact_digest = version.id, built["digest"]
            journal.record(
                session,
                {"version_id": version.id, "version": version.version},
                lines=[f"Version {version.version}"],
            )

        numbered = journal.step("version", number)
        version_id, version = numbered["version_id"], numbered["version"]

        def health(_attempt: int) -> dict[str, Any]:
            with self.db.read() as session:
                row = session.get(Version, version_id)
                assert row is not None
                spec = spec_for(session, row)
            self.runtime.ensure(spec)
            journal.log(f"Version {version} passed its health check")
            return {"healthy": True}

        journal.step("health", health, retry=Backoff(limit=3, min_timeout=1, max_timeout=10))

        for task_id in config.release_tasks:
            self._guard(snap)
            journal.step(f"release:{task_id}", self._release_step(task_id, version_id, journal))

        self._guard(snap)
        if dep.options.get("skip_promotion"):
            branch = f" --branch {shlex.quote(env.branch)}" if env.branch else ""
            journal.log(
                f"Not promoting {version} (--skip-promotion); promote it with `slipway promote "
                f"{version} --project {project.ref} --env {env.name}{branch}`"
            )
            self.runtime.retire(version_id)
        else:

            def promoted(session: Session, new: str, old: str | None) -> None:
                journal.record(
                    session,
                    {"version": new, "previous": old},
                    lines=[f"Promoted {new} to current" + (f" (was {old})" if old else "")],
                )

            def do_promote(_attempt: int) -> dict[str, Any]:
                new, old = promote(self.db, self.runtime, version_id=version_id, record=promoted)
                return {"version": new, "previous": old}

            journal.step(
                "promote", do_promote, retry=Backoff(limit=3, min_timeout=1, max_timeout=10)
            )
        n = len(built["tasks"])
        journal.log(f"Version {version} deployed with {n} detected task{'s' if n != 1 else ''}")
        self._finish(snap, journal, "deployed", None)

    def _release_step(
        self, task_id: str, version_id: int, journal: Journal
    ) -> Callable[[int], dict[str, Any]]:
        return lambda _attempt: self._release_task(task_id, version_id, journal)

    def _release_task(self, task_id: str, version_id: int, journal: Journal) -> dict[str, Any]:
        with self.db.read() as session:
            row = session.get(Version, version_id)
            assert row is not None
            spec = spec_for(session, row)
        journal.log(f"Running release task {task_id} on {spec.version}")
        run_id = new_id("run")
        with self.db.read() as session:
            env = session.get(Environment, row.environment_id)
            project = session.get(Project, row.project_id)
            assert env is not None and project is not None
            run_env, secrets = run_environment(
                session,
                self.cipher,
                env,
                project=project,
                version=spec.version,
                run_id=run_id,
                task_id=task_id,
            )
        result = mask_run_result(
            self.runtime.run(
                spec, run_id=run_id, task_id=task_id, payload={}, timeout=None, env=run_env
            ),
            secrets,
        )
        for line in (result.get("logs") or "").splitlines()[-200:]:
            journal.log(f"[{task_id}] {line}")
        if result.get("status") != "completed":
            error = result.get("error") or {}
            raise PermanentError(
                f"release task {task_id} {result.get('status')}: {error.get('message', '')}",
                hint="the new version was not promoted; fix the task and push again",
            )
        return {"status": "completed"}

    # -- bookkeeping ----------------------------------------------------------------------

    def _load(self, deployment_id: str) -> Snapshot | None:
        with self.db.read() as session:
            dep = session.get(Deployment, deployment_id)
            if dep is None:
                return None
            project = session.get(Project, dep.project_id)
            env = session.get(Environment, dep.environment_id)
            assert project is not None and env is not None
            return Snapshot(dep, project, env)

    def _clone_target(self, project: Project) -> tuple[str, int | None]:
        """The URL to fetch and, for a GitHub-reported URL, the installation to ask."""
        if project.clone_url:
            return project.clone_url, None
        with self.db.read() as session:
            repo = session.execute(
                select(Repository).where(Repository.full_name_lower == project.repo_lower)
            ).scalar_one_or_none()
            if repo is not None and repo.clone_url:
                return repo.clone_url, repo.installation_id
        return f"https://github.com/{project.repo}.git", None

    def _guard(self, snap: Snapshot) -> None:
        if self.stopping.is_set():
            raise Interrupted
        with self.db.read() as session:
            env = session.get(Environment, snap.environment.id)
            project = session.get(Project, snap.project.id)
            dep = session.get(Deployment, snap.deployment.id)
            assert env is not None and project is not None and dep is not None
            if env.status == "archived":
                raise Stop("canceled", f"canceled: preview branch {env.branch} was archived")
            reason = project_not_deploying_reason(session, project)
            if reason:
                raise Stop("canceled", f"canceled: {reason}")
            if dep.status in FINAL_STATUSES:
                raise Stop(dep.status, dep.error or dep.status)
            self._left(dep.started_at)

    def _remaining(self, dep: Deployment) -> float:
        with self.db.read() as session:
            started = session.execute(
                select(Deployment.started_at).where(Deployment.id == dep.id)
            ).scalar_one()
        return self._left(started)

    def _left(self, started: datetime | None) -> float:
        if started is None:
            return self.build_timeout
        left = (started + timedelta(seconds=self.build_timeout) - utcnow()).total_seconds()
        if left <= 0:
            raise Stop(
                "timed_out", f"timed out: the deployment took longer than {self.build_timeout:.0f}s"
            )
        return left

    def _set_status(self, journal: Journal, deployment_id: str, status: str) -> None:
        """Staged: written with the journal's next transaction (a step's end, or the
        durable start of a step that runs a user's command)."""
        started_at = utcnow()

        def write(session: Session) -> None:
            dep = session.get(Deployment, deployment_id)
            assert dep is not None
            if dep.status in FINAL_STATUSES:
                return
            dep.status = status
            if dep.started_at is None:
                dep.started_at = started_at

        journal.stage(write)

    def _finish(self, snap: Snapshot, journal: Journal, status: str, error: str | None) -> None:
        def write(session: Session) -> None:
            dep = session.get(Deployment, snap.deployment.id)
            assert dep is not None
            if dep.status not in FINAL_STATUSES or dep.status == status:
                dep.status = status
                dep.error = error[:8000] if error else None
                dep.finished_at = dep.finished_at or utcnow()

        journal.stage(write)
        journal.flush()
        log.info("deployment %s finished: %s", snap.deployment.id, status)
        if status != "deployed":
            shutil.rmtree(self.builds / snap.deployment.id, ignore_errors=True)
            if snap.deployment.version_id is None and not self._has_version(snap.deployment.id):
                shutil.rmtree(self.artifacts / snap.deployment.id, ignore_errors=True)

    def _has_version(self, deployment_id: str) -> bool:
        with self.db.read() as session:
            return (
                session.execute(
                    select(Version.id).where(Version.deployment_id == deployment_id)
                ).first()
                is not None
            )
