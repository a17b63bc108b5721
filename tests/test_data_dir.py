"""What ``slipway serve`` creates is for the server's user only: the data dir (made 0700
even when it existed), the generated token and key, the database and the webhook inbox
(payloads), worker logs and registries, caches and artifacts (see ``controller.datadir``
for what is private down to each file and what only by its 0700 directory)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import payloads
from support.repos import TaskRepo
from support.server import Server

from controller.datadir import open_private, private_dir, write_private
from controller.settings import load_settings, prepare
from controller.store.db import Database
from controller.store.inbox import Inbox


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    """Set the process umask for the test (children inherit it); restored afterwards."""
    before = os.umask(0o022)
    os.umask(before)

    def set_umask(value: int) -> None:
        os.umask(value)

    try:
        yield set_umask
    finally:
        os.umask(before)


@pytest.fixture(autouse=True)
def no_inherited_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("SLIPWAY_")]:
        monkeypatch.delenv(name)


def test_first_start_creates_a_private_data_dir_with_generated_secrets(tmp_path: Path) -> None:
    data = tmp_path / "fresh" / "data"

    settings, notices = prepare(load_settings(data_dir=data))

    assert settings.data_dir == data
    assert mode(data) == 0o700
    assert mode(data / "admin_token") == 0o600
    assert mode(data / "encryption.key") == 0o600
    key = (data / "encryption.key").read_text().strip()
    assert any("encryption.key" in notice for notice in notices)
    assert not any(key in notice for notice in notices), "the key itself is never printed"


def test_an_existing_data_dir_is_made_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o755)

    prepare(load_settings(data_dir=data))

    assert mode(data) == 0o700


def test_the_sqlite_database_and_its_inbox_are_created_private(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'slipway.db'}")
    db.migrate()
    inbox = Inbox.beside(db.url)
    assert inbox is not None
    try:
        files = ["slipway.db", "slipway.db-wal", "slipway.inbox.db", "slipway.inbox.db-wal"]
        for name in files:
            assert mode(tmp_path / name) == 0o600, name
    finally:
        inbox.close()
        db.dispose()


def test_private_helpers_ignore_the_umask_and_tighten_what_exists(
    tmp_path: Path, umask: Callable[[int], None]
) -> None:
    umask(0)  # anything the umask would let through
    old_dir, old_file = tmp_path / "old", tmp_path / "old" / "worker.log"
    old_dir.mkdir(mode=0o755)
    old_file.write_text("from before\n")
    old_file.chmod(0o644)

    new = private_dir(tmp_path / "new" / "nested")
    with open_private(old_file, "ab") as out:
        out.write(b"appended\n")
    write_private(new / "registry.json", "{}")
    private_dir(old_dir)

    assert (mode(tmp_path / "new"), mode(new)) == (0o700, 0o700), "missing parents too"
    assert mode(new / "registry.json") == 0o600
    assert (mode(old_dir), mode(old_file)) == (0o700, 0o600)
    assert old_file.read_text() == "from before\nappended\n"


# Below these, what git, virtualenv and the build write keeps its own modes: the
# directories are 0700, so no other user can reach it (see controller.datadir).
FILES_IN = ["logs", "logs/workers", "workers", "commands"]
LOCKS_IN = ["envs", "git"]


def exposed(data: Path) -> list[str]:
    """Paths Slipway made in ``data`` that its group or other users could read or enter."""
    paths = [data, *data.iterdir()]
    for rel in FILES_IN:
        paths += (data / rel).iterdir()
    for rel in LOCKS_IN:
        paths += (data / rel).glob("*.lock")
    return [f"{p.relative_to(data.parent)} {oct(mode(p))}" for p in paths if mode(p) & 0o077]


@pytest.mark.node
def test_a_deploy_in_an_existing_0755_data_dir_leaves_nothing_readable_by_others(
    tmp_path: Path, umask: Callable[[int], None]
) -> None:
    payloads.require_node_modules()
    umask(0o022)
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o755)
    repo = TaskRepo(tmp_path / "repo")
    server = Server(data)
    try:
        server.start()
        server.create_project("demo", repo="octo-org/demo", clone_url=str(repo.path))
        push = payloads.push(repo="octo-org/demo", before="0" * 40, after=repo.head())
        assert server.deliver("push", push).status_code == 202
        dep = server.wait_for(lambda: next(iter(server.deployments()), None))
        final = server.wait_deployment(dep["id"])
        assert final["status"] == "deployed", final["error"]
        assert list((data / "logs" / "workers").glob("*.log")), "a worker ran and logged"
        assert list((data / "workers").glob("*.json"))

        assert exposed(data) == []
    finally:
        server.close()
