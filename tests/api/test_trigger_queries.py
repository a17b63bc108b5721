"""Issue 8: a trigger reads what it needs in few round trips (each costs ~0.3 ms of a
run that should take a few): the environment, its project and current version in one
query, then only what the run adds (its row, its outcome)."""

from __future__ import annotations

from typing import Any

from conftest import Deployed
from sqlalchemy import event
from test_run_bounds import ScriptedRuntime

from controller.runs import trigger


def test_a_trigger_reads_environment_project_and_version_in_one_query(
    deployed: Deployed,
) -> None:
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    answer = {"status": "completed", "output": 1, "error": None, "logs": ""}
    event.listen(deployed.database.engine, "before_cursor_execute", count)
    try:
        run = trigger(
            deployed.database,
            ScriptedRuntime(answer),  # type: ignore[arg-type]
            key=deployed.production_key,
            branch=None,
            task_id="hello",
            payload=None,
            version=None,
        )
    finally:
        event.remove(deployed.database.engine, "before_cursor_execute", count)
    assert run["status"] == "completed"
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 1, "\n\n".join(selects)
