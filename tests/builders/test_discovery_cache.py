"""Discovery reuse, run for real: a virtualenv, ``discover_main.py`` in it, and a task
file that counts how often it is imported (each import is one discovery subprocess)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from controller.builders import discovery as discovery_module
from controller.builders.venv import VirtualenvBuilder
from controller.errors import BuildFailed

COUNTING_TASK = """
from pathlib import Path

counter = Path(__file__).resolve().parents[1] / "imports.txt"
counter.write_text(counter.read_text() + "x" if counter.exists() else "x")
description = "counted"

def run(payload, ctx):
    return "ok"
"""


@pytest.fixture(scope="module")
def environment(tmp_path_factory: pytest.TempPathFactory) -> tuple[VirtualenvBuilder, Path]:
    data = tmp_path_factory.mktemp("data")
    builder = VirtualenvBuilder(cache_dir=data / "envs", home_dir=data / "home", python=sys.executable)  # fmt: skip
    empty = tmp_path_factory.mktemp("project")
    prepared = builder.prepare(
        empty, install=None, log=lambda _line: None, cancel=threading.Event(), timeout=300
    )
    return builder, Path(prepared["venv"])


def tree(tmp_path: Path, task: str = COUNTING_TASK) -> Path:
    (tmp_path / "tasks").mkdir(parents=True, exist_ok=True)
    (tmp_path / "tasks" / "counted.py").write_text(task)
    return tmp_path


def imports(root: Path) -> int:
    counter = root / "imports.txt"
    return len(counter.read_text()) if counter.exists() else 0


def test_an_unchanged_tree_and_environment_reuse_the_discovery(
    environment: tuple[VirtualenvBuilder, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builder, venv = environment
    root = tree(tmp_path)
    lines: list[str] = []

    def discover(digest: str | None) -> list[str]:
        tasks = builder.discover(
            root, venv=venv, tasks_dir="tasks", timeout=120, tree=digest, log=lines.append
        )
        return [t["id"] for t in tasks]

    assert discover("sha256:one") == ["counted"]
    assert imports(root) == 1
    assert discover("sha256:one") == ["counted"]
    assert imports(root) == 1, "the same tree and environment ran discovery again"
    assert any(line.startswith("Tree and environment unchanged: reusing task discovery") for line in lines)  # fmt: skip

    assert discover("sha256:two") == ["counted"]  # another tree
    assert imports(root) == 2
    assert discover(None) == ["counted"]  # no digest (a pre-build ran): never reused
    assert imports(root) == 3

    monkeypatch.setattr(discovery_module, "discovery_code_version", lambda: "a newer slipway")
    assert discover("sha256:one") == ["counted"]
    assert imports(root) == 4


def test_another_environment_discovers_again(
    environment: tuple[VirtualenvBuilder, Path], tmp_path: Path
) -> None:
    builder, venv = environment
    root = tree(tmp_path / "src")
    other = tmp_path / "envs" / "another-key"
    other.parent.mkdir()
    other.symlink_to(venv)  # same interpreter, another dependency-cache key
    builder.discover(root, venv=venv, tasks_dir="tasks", timeout=120, tree="sha256:same")
    builder.discover(root, venv=other, tasks_dir="tasks", timeout=120, tree="sha256:same")
    assert imports(root) == 2


def test_a_failed_discovery_is_not_kept(
    environment: tuple[VirtualenvBuilder, Path], tmp_path: Path
) -> None:
    builder, venv = environment
    root = tree(tmp_path, COUNTING_TASK + "\nraise RuntimeError('broken at import')\n")
    for _ in range(2):
        with pytest.raises(BuildFailed, match="broken at import"):
            builder.discover(root, venv=venv, tasks_dir="tasks", timeout=120, tree="sha256:bad")
    assert imports(root) == 2
