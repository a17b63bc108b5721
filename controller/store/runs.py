"""Run records, written on the trigger's hot path.

Two precompiled Core statements on the session's connection: the ORM's unit of work
(``session.add`` then ``merge`` and flush) cost about twice the CPU for the same two
rows (1.5-2.0 ms against 0.9-1.0 ms per run, measured side by side), and a trivial run
spends most of its time in the web process.
"""

from __future__ import annotations

import socket
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.orm import Session

from controller.owners import owner_alive, owner_host, process_owner
from controller.store.db import Database
from controller.store.sql import one_of
from controller.store.tables import Run, utcnow

_RUNS: Table = Run.__table__  # type: ignore[assignment]
_INSERT = _RUNS.insert()
_FINISH = _RUNS.update().where(_RUNS.c.id == bindparam("run_key"))


def insert_started(
    session: Session,
    *,
    run_id: str,
    environment_id: int,
    version_id: int,
    task_id: str,
    payload: Any,
    created_at: datetime,
    expires_at: datetime,
) -> None:
    session.connection().execute(
        _INSERT,
        {
            "id": run_id,
            "environment_id": environment_id,
            "version_id": version_id,
            "task_id": task_id,
            "status": "running",
            "payload": payload,
            "created_at": created_at,
            "owner": process_owner(),
            "expires_at": expires_at,
        },
    )


def record_finished(
    session: Session,
    run_id: str,
    *,
    status: str,
    output: Any,
    error: Any,
    logs: str | None,
    duration_ms: float | None,
    finished_at: datetime,
) -> bool:
    """False when the run's row is gone (deleted while the run went on)."""
    done = session.connection().execute(
        _FINISH,
        {
            "run_key": run_id,
            "status": status,
            "output": output,
            "error": error,
            "logs": logs,
            "duration_ms": duration_ms,
            "finished_at": finished_at,
            "owner": None,
            "expires_at": None,
        },
    )
    return bool(done.rowcount)


# Rows from before runs had a deadline: over once the longest run could be.
_LEGACY_DEADLINE = timedelta(days=1, minutes=5)


def fail_abandoned_runs(db: Database, *, now: datetime | None = None) -> int:
    """Mark failed the runs whose outcome nobody is left to record (module docstring)."""
    now = now or utcnow()
    host, me = socket.gethostname(), process_owner()
    with db.read() as session:
        running = session.execute(
            select(Run.id, Run.owner, Run.expires_at, Run.created_at).where(Run.status == "running")
        ).all()
    gone: list[str] = []
    late: list[str] = []
    for run_id, owner, expires_at, created_at in running:
        if owner and owner_host(owner) == host and not owner_alive(owner, me):
            gone.append(run_id)
        elif (expires_at or created_at + _LEGACY_DEADLINE) < now:
            late.append(run_id)
    for ids, message in (
        (gone, "the server process that ran it stopped before the run finished"),
        (late, "no outcome arrived within its time limit; the server process that ran it is gone"),
    ):
        if not ids:
            continue
        error = {
            "type": "RunAbandoned",
            "message": f"{message}, so its outcome is unknown: trigger it again",
        }
        with db.transaction() as session:
            session.execute(
                update(Run)
                .where(one_of(Run.id, ids), Run.status == "running")
                .values(status="failed", error=error, finished_at=now, owner=None, expires_at=None)
            )
    return len(gone) + len(late)
