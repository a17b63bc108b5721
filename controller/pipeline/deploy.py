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
deploying   promote      make it current (unless ``--skip-promotion``, or gated:)
waiting     wait         start waiting for the environment's promotion gate; the job ends
waiting     promote      a ``promote`` job, once the gate passed (:mod:`controller.gates`)
==========  ===========  ===============================================================

The phases live in :mod:`controller.pipeline.build` (fetch to sync-env) and
:mod:`controller.pipeline.release` (version to promote), :mod:`controller.pipeline.gate`
(wait); this module orders them, guards between them and records the outcome. A job of
kind ``promote`` applies a gate's decision to a deployment that still waits (pass: the
journaled promote step; fail; timeout), so a decision enqueued twice promotes once.

**Bookkeeping rides along**: status changes are staged in the journal and written with
its next transaction (a step's end; the durable start of the pre-build), the version's
number and its step commit together, and so do the promotion and its step — about one
write per step instead of three (issue 8).

Failures are classified: a :class:`PermanentError` fails the deployment with its message
and hint; a :class:`TemporaryError` is retried (in the step, then by the queue) until the
attempts run out. The current version is never touched by a failed deployment.

**Env vars**: build steps see the build-time variables and ``sync-env`` imports what
``sync_env_vars`` prints (:mod:`controller.pipeline.envvars`); release tasks run with
the variables runs see, their secrets masked in the deployment log.
"""

from __future__ import annotations

import functools
import logging
import shlex
import shutil
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.builders.base import Builder
from controller.datadir import private_dir
from controller.domain.projects import deployment_not_deploying_reason
from controller.errors import PermanentError, TemporaryError
from controller.gates.waiting import PROMOTE_JOB, NoLongerWaiting, check_still_promotable
from controller.logs import bind_log_context
from controller.manager import Interrupted
from controller.models import FINAL_STATUSES, WAITING
from controller.pipeline.build import Attempt, BuildPhases, CloneAuth, Snapshot
from controller.pipeline.envvars import EnvVarsPhase
from controller.pipeline.gate import GatePhase
from controller.pipeline.handover import node_id, redo_foreign_steps
from controller.pipeline.journal import Journal
from controller.pipeline.release import ReleasePhases
from controller.queue import Claimed
from controller.runtimes.base import Runtime
from controller.secretstore.crypto import Cipher
from controller.sources.git import GitSource
from controller.store.db import Database
from controller.store.deployments import deployment_state
from controller.store.tables import Deployment, Environment, Project, Repository, Version, utcnow

__all__ = ["CloneAuth", "Pipeline", "Snapshot", "Stop"]

log = logging.getLogger(__name__)

JOB_ATTEMPTS = 5


class Stop(Exception):
    """End the deployment with ``status`` (canceled, timed_out) and ``message``."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


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
        self.runtime = runtime
        self.build_timeout = build_timeout
        self.stopping = stopping
        self.node = node_id(data_dir)
        self.build = BuildPhases(
            node=self.node,
            source=source,
            builder=builder,
            envvars=EnvVarsPhase(db=db, cipher=cipher, builder=builder, stopping=stopping),
            stopping=stopping,
            clone_auth=clone_auth,
        )
        self.release = ReleasePhases(db=db, runtime=runtime, cipher=cipher)
        self.gates = GatePhase(db=db)
        self.builds = data_dir / "builds"
        self.artifacts = data_dir / "artifacts"
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
            if job.kind == PROMOTE_JOB:
                self._decide(snap, journal, job.payload)
            elif snap.deployment.status != WAITING:  # a rerun after the wait step: it waits
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
        run = self._start(snap, journal)
        self._set_status(journal, snap.deployment.id, "installing")
        self.build.fetch(run)
        self.build.checkout(run)
        run.guard()
        self.build.install(run)
        run.guard()
        self._set_status(journal, snap.deployment.id, "building")
        self.build.build(run)
        run.guard()
        self.build.sync_env(run)
        self._set_status(journal, snap.deployment.id, "deploying")
        self.release.number(run)
        self.release.health(run)
        self.release.release_tasks(run)
        run.guard()
        if self._promote(run):
            self._deployed(snap, journal, version=run.version, tasks=len(run.built["tasks"]))

    def _deployed(self, snap: Snapshot, journal: Journal, *, version: str | None, tasks: int) -> None:  # fmt: skip
        journal.log(f"Version {version} deployed with {tasks} detected task{'s' if tasks != 1 else ''}")  # fmt: skip
        self._finish(snap, journal, "deployed", None)

    def _start(self, snap: Snapshot, journal: Journal) -> Attempt:
        dep, project, env = snap.deployment, snap.project, snap.environment
        self._guard(snap)
        redo_foreign_steps(journal, self.node)
        if dep.started_at is None:
            journal.log(
                f"Deploying {dep.sha[:12] if dep.sha else 'an upload'} of {project.repo} to "
                f"{env.name}{'/' + env.branch if env.branch else ''}"
            )
        clone_url, installation_id = self._clone_target(project)
        return Attempt(
            snap=snap,
            journal=journal,
            work=self.builds / dep.id,
            artifact=self.artifacts / dep.id,
            clone_url=clone_url,
            installation_id=installation_id,
            remaining=lambda: self._remaining(dep),
            guard=lambda: self._guard(snap),
        )

    def _promote(self, run: Attempt) -> bool:
        """Promote, or start waiting for the environment's gate (False: it waits)."""
        snap, journal = run.snap, run.journal
        dep, project, env = snap.deployment, snap.project, snap.environment
        assert run.version_id is not None
        if dep.options.get("skip_promotion"):
            branch = f" --branch {shlex.quote(env.branch)}" if env.branch else ""
            journal.log(
                f"Not promoting {run.version} (--skip-promotion); promote it with `slipway "
                f"promote {run.version} --project {project.ref} --env {env.name}{branch}`"
            )
            self.runtime.retire(run.version_id)
            return True
        gate = self.gates.gate_of(snap)
        if gate is None:
            self.release.promote(journal, run.version_id)
            return True
        waited = self.gates.wait(run, gate)
        self.runtime.retire(run.version_id)  # waiting holds no worker either
        if waited.get("superseded"):
            self._finish(snap, journal, "superseded", str(waited.get("error") or "superseded"))
        return False

    def _decide(self, snap: Snapshot, journal: Journal, payload: dict[str, Any]) -> None:
        """Apply a gate's decision (a ``promote`` job) to a deployment that still waits."""
        dep = snap.deployment
        if dep.status != WAITING or dep.version_id is None:
            return
        outcome, message = payload.get("outcome"), str(payload.get("message") or "")
        if outcome == "pass":
            journal.log(f"Promotion gate {dep.gate} passed: {message}")
            try:
                self.release.promote(journal, dep.version_id, check=functools.partial(check_still_promotable, deployment_id=dep.id))  # fmt: skip
            except NoLongerWaiting as gone:
                self._withdrawn(snap, journal, gone)
                return
            self._deployed(snap, journal, version=self._version_name(dep.version_id), tasks=self._task_count(dep.version_id))  # fmt: skip
            return
        if outcome == "fail":
            status = "failed"
        else:
            status = "timed_out"
            message = self.gates.timeout_message(snap)
        journal.log(message, level="error" if status == "failed" else "warn")
        self._finish(snap, journal, status, message)
        self.runtime.retire(dep.version_id)

    def _withdrawn(self, snap: Snapshot, journal: Journal, gone: NoLongerWaiting) -> None:
        """The gate passed, but a newer request superseded the deployment (or it ended
        otherwise) before its promotion committed: nothing was promoted."""
        journal.log(f"Not promoted: {gone.message}", level="warn")
        if gone.status != "superseded":
            journal.flush()
            return
        self._finish(snap, journal, "superseded", gone.message)
        assert snap.deployment.version_id is not None
        self.runtime.retire(snap.deployment.version_id)

    def _version_name(self, version_id: int) -> str | None:
        with self.db.read() as session:
            row = session.get(Version, version_id)
            return row.version if row is not None else None

    def _task_count(self, version_id: int) -> int:
        with self.db.read() as session:
            row = session.get(Version, version_id)
            return len(row.tasks or []) if row is not None else 0

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
            state = deployment_state(session, snap.deployment.id)
        assert state is not None
        if state.environment_status == "archived":
            raise Stop("canceled", f"canceled: preview branch {state.branch} was archived")
        reason = deployment_not_deploying_reason(state)
        if reason:
            raise Stop("canceled", f"canceled: {reason}")
        if state.status in FINAL_STATUSES:
            raise Stop(state.status, state.error or state.status)
        self._left(state.started_at)

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
            if dep.status in FINAL_STATUSES or dep.status == WAITING:
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
