"""The release half of a deployment: version, health, release tasks, promote.

Each phase is one journaled step over an :class:`~controller.pipeline.build.Attempt`.
The version's number and the promotion each commit together with their step's end
(:meth:`Journal.record`), so a controller killed between them cannot number a second
version or promote twice. Release tasks run with the variables runs see, their secrets
masked in the deployment log.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from controller.errors import PermanentError
from controller.ids import new_id
from controller.pipeline.build import Attempt
from controller.pipeline.journal import Journal
from controller.queue import Backoff
from controller.runs import mask_run_result, run_environment
from controller.runtimes.base import Runtime
from controller.secretstore.crypto import Cipher
from controller.store.db import Database
from controller.store.tables import Deployment, Environment, Project, Version
from controller.versions import allocate_version, promote, spec_for


class ReleasePhases:
    def __init__(self, *, db: Database, runtime: Runtime, cipher: Cipher | None) -> None:
        self.db = db
        self.runtime = runtime
        self.cipher = cipher

    def number(self, run: Attempt) -> None:
        dep, built, config, journal = run.snap.deployment, run.built, run.config, run.journal
        assert config is not None and run.venv is not None
        venv = run.venv

        def record(session: Session, version: Version) -> None:
            row = session.get(Deployment, dep.id)
            assert row is not None
            row.version_id, row.artifact_digest = version.id, built["digest"]
            journal.record(
                session,
                {"version_id": version.id, "version": version.version},
                lines=[f"Version {version.version}"],
            )

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

        numbered = journal.step("version", number)
        run.version_id, run.version = numbered["version_id"], numbered["version"]

    def health(self, run: Attempt) -> None:
        version_id, version, journal = run.version_id, run.version, run.journal

        def health(_attempt: int) -> dict[str, Any]:
            with self.db.read() as session:
                row = session.get(Version, version_id)
                assert row is not None
                spec = spec_for(session, row)
            self.runtime.ensure(spec)
            journal.log(f"Version {version} passed its health check")
            return {"healthy": True}

        journal.step("health", health, retry=Backoff(limit=3, min_timeout=1, max_timeout=10))

    def release_tasks(self, run: Attempt) -> None:
        assert run.config is not None and run.version_id is not None
        version_id = run.version_id
        for task_id in run.config.release_tasks:
            run.guard()
            run.journal.step(
                f"release:{task_id}",
                lambda _attempt, task_id=task_id: self._release_task(  # type: ignore[misc]
                    task_id, version_id, run.journal
                ),
            )

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

    def promote(
        self, journal: Journal, version_id: int, *, check: Callable[[Session], None] | None = None
    ) -> None:
        """The journaled promotion: the environment's current version and the step's
        end commit together, so it happens once per deployment. ``check`` runs first in
        that transaction (see :func:`controller.versions.promote`)."""

        def promoted(session: Session, new: str, old: str | None) -> None:
            journal.record(
                session,
                {"version": new, "previous": old},
                lines=[f"Promoted {new} to current" + (f" (was {old})" if old else "")],
            )

        def do_promote(_attempt: int) -> dict[str, Any]:
            new, old = promote(
                self.db, self.runtime, version_id=version_id, record=promoted, check=check
            )
            return {"version": new, "previous": old}

        journal.step("promote", do_promote, retry=Backoff(limit=3, min_timeout=1, max_timeout=10))
