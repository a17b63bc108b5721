"""Domain rules on projects, environments and deployments: keys per environment, input
checks, newest wins, archived branches and disconnected projects take no work."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from controller.domain.deployments import DeployRequest, request_deployment
from controller.domain.environments import (
    archive_branch,
    ensure_environment,
    env_key,
    find_environment,
)
from controller.domain.projects import (
    create_project,
    deployment_not_deploying_reason,
    disconnect_project,
    project_not_deploying_reason,
)
from controller.errors import Conflict, InvalidInput
from controller.secretstore.crypto import Cipher, key_hash
from controller.store.db import Database
from controller.store.deployments import DeploymentState, deployment_state
from controller.store.tables import (
    Deployment,
    Environment,
    Event,
    Installation,
    Job,
    Project,
    Repository,
)


def sha(n: int) -> str:
    return f"{n:040x}"


def deploy(
    database: Database, project_id: int, name: str, branch: str | None = None, *, n: int = 1
) -> str:
    """Request a deployment of commit ``sha(n)`` in its own transaction."""
    with database.transaction() as session:
        project = session.get(Project, project_id)
        assert project is not None
        env = find_environment(session, project, name, branch)
        return request_deployment(
            session,
            project=project,
            environment=env,
            request=DeployRequest(sha=sha(n), ref="refs/heads/main", source="push"),
        ).id


def deployment(database: Database, deployment_id: str) -> Deployment:
    with database.read() as session:
        row = session.get(Deployment, deployment_id)
        assert row is not None
        return row


def jobs_of(database: Database, environment_id: int) -> list[Job]:
    with database.read() as session:
        return list(
            session.execute(
                select(Job).where(Job.key == env_key(environment_id)).order_by(Job.id)
            ).scalars()
        )


def environment_id(
    database: Database, project_id: int, name: str, branch: str | None = None
) -> int:
    with database.read() as session:
        project = session.get(Project, project_id)
        assert project is not None
        return find_environment(session, project, name, branch).id


def add_preview(database: Database, cipher: Cipher, project_id: int, branch: str) -> int:
    with database.transaction() as session:
        project = session.get(Project, project_id)
        assert project is not None
        return ensure_environment(
            session, cipher, project=project, name="preview", branch=branch, pr_number=7
        ).id


# -- projects ----------------------------------------------------------------------------


def test_create_project_makes_three_environments_each_with_its_own_key(
    database: Database, cipher: Cipher, project_id: int
) -> None:
    with database.read() as session:
        project = session.get(Project, project_id)
        envs = (
            session.execute(
                select(Environment)
                .where(Environment.project_id == project_id)
                .order_by(Environment.id)
            )
            .scalars()
            .all()
        )

    assert project is not None
    assert (project.ref, project.repo, project.repo_lower) == (
        "demo",
        "octo-org/demo",
        "octo-org/demo",
    )
    assert [(e.name, e.branch, e.branch_key, e.status) for e in envs] == [
        ("production", None, "", "active"),
        ("staging", None, "", "active"),
        ("preview", None, "", "active"),
    ]
    keys = [cipher.decrypt(e.secret_key_encrypted) for e in envs]
    assert all(key.startswith("sk_") and len(key) > 20 for key in keys)
    assert len(set(keys)) == 3, "every environment has its own key"
    assert [e.secret_key_hash for e in envs] == [key_hash(key) for key in keys]
    assert all(key not in e.secret_key_encrypted for key, e in zip(keys, envs, strict=True))


def test_ensure_environment_returns_the_existing_one(
    database: Database, cipher: Cipher, project_id: int
) -> None:
    first = add_preview(database, cipher, project_id, "feature/login")
    again = add_preview(database, cipher, project_id, "feature/login")
    other = add_preview(database, cipher, project_id, "feature/signup")

    assert first == again
    assert other != first
    with database.read() as session:
        assert (
            session.execute(
                select(func.count()).where(Environment.project_id == project_id)
            ).scalar_one()
            == 5
        )


INVALID_PROJECTS = [
    ("Demo", {"repo": "octo-org/demo"}),  # uppercase ref
    ("-demo", {"repo": "octo-org/demo"}),  # leading dash
    ("de mo", {"repo": "octo-org/demo"}),
    ("x" * 64, {"repo": "octo-org/demo"}),  # longer than 63
    ("demo", {}),  # no repo
    ("demo", {"repo": "octo-org"}),
    ("demo", {"repo": "octo-org/demo/extra"}),
    ("demo", {"repo": "/demo"}),
    ("demo", {"repo": "octo-org/"}),
    ("demo", {"repo": "octo-org/demo", "production_branch": "a b"}),
    ("demo", {"repo": "octo-org/demo", "config_path": "../x.toml"}),
    ("demo", {"repo": "octo-org/demo", "colour": "red"}),  # unknown field
]


def test_invalid_project_input_is_rejected(database: Database, cipher: Cipher) -> None:
    accepted = []
    for ref, values in INVALID_PROJECTS:
        try:
            with database.transaction() as session:
                create_project(session, cipher, ref=ref, **values)
        except InvalidInput:
            continue
        accepted.append((ref, values))
    assert accepted == []
    with database.read() as session:
        assert session.execute(select(func.count()).select_from(Project)).scalar_one() == 0
        assert session.execute(select(func.count()).select_from(Environment)).scalar_one() == 0
    with database.transaction() as session:  # a valid project still goes through
        create_project(session, cipher, ref="demo-2", repo="octo-org/demo")


def test_a_duplicate_ref_is_a_conflict(database: Database, cipher: Cipher, project_id: int) -> None:
    with pytest.raises(Conflict, match="demo"), database.transaction() as session:
        create_project(session, cipher, ref="demo", repo="octo-org/other")
    with database.read() as session:
        assert session.execute(select(Project.repo)).scalars().all() == ["octo-org/demo"]


# -- newest wins -------------------------------------------------------------------------


def test_the_newest_request_supersedes_queued_ones(database: Database, project_id: int) -> None:
    staging = deploy(database, project_id, "staging", n=9)
    first = deploy(database, project_id, "production", n=1)
    second = deploy(database, project_id, "production", n=2)
    third = deploy(database, project_id, "production", n=3)
    env_id = environment_id(database, project_id, "production")

    older, newer, newest = (deployment(database, d) for d in (first, second, third))
    assert (older.status, newer.status, newest.status) == ("superseded", "superseded", "queued")
    assert older.error is not None and second in older.error
    assert newer.error is not None and third in newer.error
    assert older.finished_at is not None and newer.finished_at is not None
    assert newest.error is None and newest.finished_at is None

    jobs = jobs_of(database, env_id)
    assert [(j.kind, j.deployment_id, j.status) for j in jobs] == [
        ("deploy", first, "superseded"),
        ("deploy", second, "superseded"),
        ("deploy", third, "queued"),
    ]
    assert deployment(database, staging).status == "queued", "newest wins per environment"


# -- preview branches --------------------------------------------------------------------


def test_archiving_a_branch_cancels_its_queued_work_and_records_an_event(
    database: Database, cipher: Cipher, project_id: int
) -> None:
    branch_env = add_preview(database, cipher, project_id, "feature/login")
    queued = deploy(database, project_id, "preview", "feature/login", n=1)
    production = deploy(database, project_id, "production", n=2)

    with database.transaction() as session:
        project = session.get(Project, project_id)
        assert project is not None
        env = archive_branch(session, project, "feature/login", "pull request #7 was closed")
        assert env is not None and env.id == branch_env

    with database.read() as session:
        env = session.get(Environment, branch_env)
        events = (
            session.execute(select(Event).where(Event.project_id == project_id)).scalars().all()
        )
    assert env is not None
    assert (env.status, env.status_reason) == ("archived", "pull request #7 was closed")
    assert env.archived_at is not None
    canceled = deployment(database, queued)
    assert canceled.status == "canceled"
    assert canceled.error is not None and "pull request #7 was closed" in canceled.error
    assert [j.status for j in jobs_of(database, branch_env)] == ["canceled"]
    assert deployment(database, production).status == "queued", "other environments keep theirs"
    assert [(e.kind, "feature/login" in e.message) for e in events] == [("archived", True)]


def test_an_archived_branch_takes_no_deployment(
    database: Database, cipher: Cipher, project_id: int
) -> None:
    add_preview(database, cipher, project_id, "feature/login")
    for reason in ("pull request #7 was merged", "branch feature/login was deleted"):
        with database.transaction() as session:
            project = session.get(Project, project_id)
            assert project is not None
            archive_branch(session, project, "feature/login", reason)

    with pytest.raises(Conflict, match="archived"):
        deploy(database, project_id, "preview", "feature/login")
    with database.read() as session:
        assert session.execute(select(func.count()).select_from(Deployment)).scalar_one() == 0
        reasons = (
            session.execute(
                select(Environment.status_reason).where(Environment.branch == "feature/login")
            )
            .scalars()
            .all()
        )
        events = session.execute(select(func.count()).select_from(Event)).scalar_one()
    assert reasons == ["pull request #7 was merged"], "archiving again changes nothing"
    assert events == 1


# -- projects that stop deploying --------------------------------------------------------


def test_disconnecting_cancels_queued_work_and_stops_deploying(
    database: Database, project_id: int
) -> None:
    production = deploy(database, project_id, "production", n=1)
    staging = deploy(database, project_id, "staging", n=2)

    with database.transaction() as session:
        project = session.get(Project, project_id)
        assert project is not None
        canceled = disconnect_project(session, project)

    assert sorted(canceled) == sorted([production, staging])
    for deployment_id in (production, staging):
        row = deployment(database, deployment_id)
        assert row.status == "canceled"
        assert row.error == "the project was disconnected"
    with database.read() as session:
        project = session.get(Project, project_id)
        assert project is not None and project.disconnected_at is not None
        reason = project_not_deploying_reason(session, project)
        assert session.execute(select(func.count()).where(Job.status == "queued")).scalar_one() == 0
        kinds = session.execute(select(Event.kind)).scalars().all()
    assert reason is not None and "disconnected" in reason
    assert kinds == ["disconnected"]
    with pytest.raises(Conflict, match="not deploying"):
        deploy(database, project_id, "production", n=3)


def set_reachable(database: Database, reachable: bool) -> None:
    with database.transaction() as session:
        repo = session.execute(
            select(Repository).where(Repository.full_name_lower == "octo-org/demo")
        ).scalar_one_or_none()
        if repo is None:
            repo = Repository(
                full_name="Octo-Org/Demo", full_name_lower="octo-org/demo", installation_id=4242
            )
            session.add(repo)
        repo.reachable = reachable


def not_deploying_reason(database: Database, project_id: int) -> str | None:
    with database.read() as session:
        project = session.get(Project, project_id)
        assert project is not None
        return project_not_deploying_reason(session, project)


def test_an_unreachable_repository_stops_deploying(database: Database, project_id: int) -> None:
    set_reachable(database, True)
    assert not_deploying_reason(database, project_id) is None
    reachable = deploy(database, project_id, "production", n=1)
    assert deployment(database, reachable).status == "queued"

    set_reachable(database, False)

    reason = not_deploying_reason(database, project_id)
    assert reason is not None and "octo-org/demo" in reason and "no longer reach" in reason
    with pytest.raises(Conflict, match="no longer reach"):
        deploy(database, project_id, "production", n=2)
    with database.read() as session:
        assert session.execute(select(Deployment.id)).scalars().all() == [reachable]


def test_a_deployment_under_way_reads_the_same_reasons_in_one_query(
    database: Database, cipher: Cipher, project_id: int
) -> None:
    """The pipeline re-checks between phases with :func:`deployment_state` (one query);
    it must stop for exactly the reasons the project's own check gives."""
    dep_id = deploy(database, project_id, "production", n=1)

    def state_of(deployment_id: str) -> DeploymentState:
        with database.read() as session:
            state = deployment_state(session, deployment_id)
        assert state is not None
        return state

    def both() -> tuple[str | None, str | None]:
        mine = deployment_not_deploying_reason(state_of(dep_id))
        return mine, not_deploying_reason(database, project_id)

    state = state_of(dep_id)
    assert (state.status, state.environment_status, state.branch) == ("queued", "active", None)
    assert both() == (None, None)  # no repository record: not a GitHub App project
    set_reachable(database, True)
    assert both() == (None, None)  # reachable; installation 4242 has no record
    with database.transaction() as session:
        session.add(Installation(id=4242, account="octo-org", suspended=True))
    mine, theirs = both()
    assert mine == theirs and mine is not None and "octo-org is suspended" in mine
    set_reachable(database, False)
    mine, theirs = both()
    assert mine == theirs and mine is not None and "no longer reach" in mine
    with database.transaction() as session:
        project = session.get(Project, project_id)
        assert project is not None
        disconnect_project(session, project)
    mine, theirs = both()
    assert mine == theirs and mine is not None and "disconnected" in mine
    assert state_of(dep_id).status == "canceled"  # what disconnecting does to queued work
    with database.read() as session:
        assert deployment_state(session, "dep_none") is None


def test_a_deployment_under_way_sees_its_branch_archived(
    database: Database, cipher: Cipher, project_id: int
) -> None:
    add_preview(database, cipher, project_id, "feature/x")
    dep_id = deploy(database, project_id, "preview", "feature/x", n=2)
    with database.transaction() as session:
        project = session.get(Project, project_id)
        assert project is not None
        archive_branch(session, project, "feature/x", reason="closed")
    with database.read() as session:
        state = deployment_state(session, dep_id)
    assert state is not None
    assert (state.environment_status, state.branch) == ("archived", "feature/x")
