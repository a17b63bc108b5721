"""A deployment resumed in another replica's data dir redoes the steps whose effects are
on disk, and only those (controller.pipeline.handover)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select

from controller.pipeline.handover import node_id, on_node, redo_foreign_steps
from controller.pipeline.journal import Journal
from controller.store.db import Database
from controller.store.tables import DeploymentStep


class Steps:
    """The local steps, counting how often each ran and with which attempt."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def run(self, journal: Journal, node: str | None, names: list[str]) -> dict[str, Any]:
        results = {}
        for name in names:

            def fn(attempt: int, name: str = name) -> dict[str, Any]:
                self.calls.append((name, attempt))
                return {"path": f"/data/{name}"}

            results[name] = journal.step(name, on_node(node, fn) if node else fn)
        return results


def test_resume_on_another_node_redoes_the_local_steps_that_were_done(
    database: Database, deployment_id: str
) -> None:
    first = Steps()
    journal = Journal(database, deployment_id)
    assert redo_foreign_steps(journal, "node-a") == []
    first.run(journal, "node-a", ["fetch", "checkout"])  # then node a dies mid-install
    journal.flush()

    second = Steps()
    resumed = Journal(database, deployment_id)
    assert redo_foreign_steps(resumed, "node-b") == ["fetch", "checkout"]
    results = second.run(resumed, "node-b", ["fetch", "checkout", "install"])
    assert second.calls == [("fetch", 2), ("checkout", 2), ("install", 1)]
    assert {r["node"] for r in results.values()} == {"node-b"}
    resumed.flush()
    with database.read() as session:
        rows = session.execute(
            select(DeploymentStep).where(DeploymentStep.deployment_id == deployment_id)
        ).scalars()
        stored = {row.name: (row.status, row.attempts, row.result["node"]) for row in rows}
    assert stored == {
        "fetch": ("done", 2, "node-b"),
        "checkout": ("done", 2, "node-b"),
        "install": ("done", 1, "node-b"),
    }
    # a third start on node b itself reuses everything
    again = Steps()
    third = Journal(database, deployment_id)
    assert redo_foreign_steps(third, "node-b") == []
    again.run(third, "node-b", ["fetch", "checkout", "install"])
    assert again.calls == []


def test_nothing_is_redone_once_the_version_is_numbered(
    database: Database, deployment_id: str
) -> None:
    journal = Journal(database, deployment_id)
    Steps().run(journal, "node-a", ["fetch", "checkout", "install", "build"])
    journal.step("version", lambda _attempt: {"version_id": 1})
    journal.flush()
    assert redo_foreign_steps(Journal(database, deployment_id), "node-b") == []


def test_results_from_before_node_ids_count_as_this_replicas(
    database: Database, deployment_id: str
) -> None:
    journal = Journal(database, deployment_id)
    Steps().run(journal, None, ["fetch", "checkout"])
    journal.flush()
    assert redo_foreign_steps(Journal(database, deployment_id), "node-b") == []


def test_node_id_is_made_once_per_data_dir(tmp_path: Path) -> None:
    first = node_id(tmp_path)
    assert first == node_id(tmp_path)
    assert len(first) == 16
    assert (tmp_path / "node-id").stat().st_mode & 0o777 == 0o600
    other = tmp_path / "other"
    other.mkdir()
    assert node_id(other) != first
