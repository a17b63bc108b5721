"""The runtime half of the resync (``resync_runtime``) reads what should serve in a
constant number of queries, however many environments there are: at 1,000 previews a
lookup per environment was most of the controller's CPU between deploys."""

from __future__ import annotations

from collections.abc import Callable
from itertools import count

from sqlalchemy import select
from support.statements import statements

from controller.runtimes.base import VersionSpec
from controller.runtimes.upkeep import resync_runtime
from controller.store.db import Database
from controller.store.tables import Deployment, Environment, Version

_ids = count(1)


class RecordingRuntime:
    """The Runtime calls a resync makes, recorded; nothing serves."""

    name = "recording"

    def __init__(self) -> None:
        self.ensured: list[VersionSpec] = []

    def ensure(self, spec: VersionSpec) -> None:
        self.ensured.append(spec)

    def serving(self) -> set[int]:
        return set()

    def stop_unlisted(self, keep: set[int]) -> None:
        pass

    def idle_for(self, version_id: int) -> float:
        return 0.0

    def retire(self, version_id: int) -> None:
        pass


def _serve_current_versions(db: Database, project_id: int) -> None:
    """A current version in each of the project's production and staging."""
    with db.transaction() as session:
        envs = session.execute(
            select(Environment).where(
                Environment.project_id == project_id, Environment.name != "preview"
            )
        ).scalars()
        for env in envs:
            n = next(_ids)
            dep = Deployment(
                id=f"dep_{n}",
                project_id=project_id,
                environment_id=env.id,
                sha=f"{n:040x}",
                source="push",
                status="deployed",
            )
            session.add(dep)
            session.flush()
            version = Version(
                project_id=project_id,
                environment_id=env.id,
                deployment_id=dep.id,
                version=f"20260101.{n}",
                day="20260101",
                seq=n,
                source_path="/x",
                venv_path="/y",
            )
            session.add(version)
            session.flush()
            env.current_version_id = version.id


def test_the_runtime_resync_reads_in_the_same_queries_for_any_number_of_environments(
    database: Database, make_project: Callable[..., int]
) -> None:
    _serve_current_versions(database, make_project("one", repo="octo-org/one"))
    runtime = RecordingRuntime()
    with statements(database) as few:
        resync_runtime(database, runtime)  # type: ignore[arg-type]
    assert {s.context["project"] for s in runtime.ensured} == {"one"}

    for n in range(6):
        _serve_current_versions(database, make_project(f"p{n}", repo=f"octo-org/p{n}"))
    runtime = RecordingRuntime()
    with statements(database) as many:
        resync_runtime(database, runtime)  # type: ignore[arg-type]

    assert len(many) == len(few), many
    assert len(runtime.ensured) == 2 * 7
    by_project = {(s.context["project"], s.context["environment"]) for s in runtime.ensured}
    assert ("p5", "production") in by_project and ("p5", "staging") in by_project
