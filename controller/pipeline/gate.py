"""The ``wait`` phase: a gated deployment starts waiting for its promotion gate.

One journaled step whose effect is one transaction: the deployment's status ``waiting``,
its gate, since when and until when, the deadline's own ``promote`` job (due then) and
the step's end commit together (:meth:`Journal.record`). Then the job ends, holding no
thread and no build slot (see :mod:`controller.gates`). A controller killed before that
commit runs the step again; after it, the deployment waits and its rerun does nothing.
A deployment that a newer request for its environment overtook while it was built ends
``superseded`` in that transaction instead of waiting.
"""

from __future__ import annotations

import shlex
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from controller.gates.spec import Gate, describe_gate, format_duration, gate_for
from controller.gates.waiting import schedule_timeout
from controller.models import FINAL_STATUSES, WAITING
from controller.pipeline.build import Attempt, Snapshot
from controller.pipeline.journal import Journal
from controller.store.db import Database
from controller.store.gates import newer_request
from controller.store.tables import Deployment, Project, Version, utcnow


class GatePhase:
    def __init__(self, *, db: Database) -> None:
        self.db = db

    def gate_of(self, snap: Snapshot) -> Gate | None:
        """The gate of the deployment's environment, read now (not when it was queued)."""
        with self.db.read() as session:
            project = session.get(Project, snap.project.id)
            assert project is not None
            return gate_for(project.promotion_gates, snap.environment.name)

    def wait(self, run: Attempt, gate: Gate) -> dict[str, Any]:
        dep, project, journal = run.snap.deployment, run.snap.project, run.journal
        journal.flush()  # staged status writes go first: nothing may follow "waiting"

        def wait(_attempt: int) -> dict[str, Any]:
            with self.db.transaction() as session:
                row = session.get(Deployment, dep.id)
                fresh = session.get(Project, project.id)
                assert row is not None and fresh is not None
                if row.status in FINAL_STATUSES:
                    return {"gate": str(gate), "skipped": row.status}
                newer = newer_request(session, environment_id=row.environment_id, deployment_id=row.id, created_at=row.created_at)  # fmt: skip
                if newer is not None:
                    return self._superseded(session, row, gate, newer=newer.id, journal=journal)
                since = utcnow()
                deadline = since + timedelta(seconds=fresh.promotion_timeout)
                row.status, row.gate = WAITING, str(gate)
                row.waiting_since, row.gate_deadline = since, deadline
                schedule_timeout(session, deployment=row, deadline=deadline)
                result = {"gate": str(gate), "since": since.isoformat(), "deadline": deadline.isoformat()}  # fmt: skip
                journal.record(
                    session,
                    result,
                    lines=[
                        f"Version {run.version} is waiting for {describe_gate(gate, dep.sha)} "
                        f"(gate {gate}), since {since:%Y-%m-%d %H:%M:%S} UTC, until "
                        f"{deadline:%Y-%m-%d %H:%M:%S} UTC; the current version is unchanged"
                    ],
                )
            return result

        return journal.step("wait", wait)

    @staticmethod
    def _superseded(session: Session, row: Deployment, gate: Gate, *, newer: str, journal: Journal) -> dict[str, Any]:  # fmt: skip
        """A request for the environment came while this one was built (only a waiting
        deployment is superseded at request time): it ends instead of waiting."""
        message = f"superseded by {newer}, requested while this one was being built; the current version is unchanged"  # fmt: skip
        row.status, row.gate = "superseded", str(gate)
        row.error, row.finished_at = message, utcnow()
        result = {"gate": str(gate), "superseded": newer, "error": message}
        journal.record(session, result, lines=[message])
        return result

    def timeout_message(self, snap: Snapshot) -> str:
        with self.db.read() as session:
            row = session.get(Deployment, snap.deployment.id)
            project = session.get(Project, snap.project.id)
            assert row is not None and project is not None
            version = self._version(session, row)
        env = snap.environment
        branch = f" --branch {shlex.quote(env.branch)}" if env.branch else ""
        waited = format_duration(project.promotion_timeout)
        return (
            f"timed out: promotion gate {row.gate} did not pass within {waited}; the current "
            f"version is unchanged. Promote {version} by hand with `slipway promote {version} "
            f"--project {project.ref} --env {env.name}{branch}`"
        )

    @staticmethod
    def _version(session: Session, row: Deployment) -> str:
        version = session.get(Version, row.version_id) if row.version_id else None
        return version.version if version is not None else "its version"
