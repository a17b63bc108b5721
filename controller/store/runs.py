"""Run records, written on the trigger's hot path.

Two precompiled Core statements on the session's connection: the ORM's unit of work
(``session.add`` then ``merge`` and flush) cost about twice the CPU for the same two
rows (1.5-2.0 ms against 0.9-1.0 ms per run, measured side by side), and a trivial run
spends most of its time in the web process.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Table, bindparam
from sqlalchemy.orm import Session

from controller.store.tables import Run

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
        },
    )
    return bool(done.rowcount)
