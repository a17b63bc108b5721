"""Task discovery, run for real: ``python -I -B discover_main.py`` on sample repositories."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from support.waiting import scaled

import controller.builders
from controller import taskfiles

DISCOVER_MAIN = Path(controller.builders.__file__).parent / "discover_main.py"

GOOD_TASKS = {
    "lib.py": """
        def answer():
            return 42
    """,
    "tasks/_helpers.py": """
        def shout(text):
            return text.upper()
    """,
    "tasks/hello.py": """
        import os
        import subprocess

        print("printed while importing")
        os.write(1, b"written to fd 1 while importing\\n")
        subprocess.run(["sh", "-c", "echo echoed by a subprocess while importing"], check=True)

        description = "Say hello"
        input_schema = {"type": "object", "properties": {"name": {"type": "string"}}}
        output_schema = {"type": "string"}
        schedulable = True
        max_duration = 60

        def run(payload, ctx):
            return "hello " + payload["name"]
    """,
    "tasks/db/migrate.py": """
        from tasks._helpers import shout

        def run(payload, ctx):
            return shout("migrated")
    """,
    "tasks/asleep.py": """
        async def run(payload, ctx):
            return None
    """,
    "tasks/uses_lib.py": """
        import lib
        from ._helpers import shout

        def run(payload, ctx):
            return shout(str(lib.answer()))
    """,
    "tasks/test_hello.py": "raise RuntimeError('test files are not tasks')\n",
    "tasks/hello_test.py": "raise RuntimeError('test files are not tasks')\n",
    "tasks/__pycache__/stale.py": "raise RuntimeError('caches are not tasks')\n",
    "tasks/.hidden/secret.py": "raise RuntimeError('hidden folders are not tasks')\n",
    "tasks/_private/thing.py": "raise RuntimeError('private folders are not tasks')\n",
    "tasks/README.md": "# not a task\n",
}

GOOD_IDS = ["asleep", "db:migrate", "hello", "uses_lib"]

BROKEN_TASKS = {
    "tasks/broken.py": """
        def run(payload, ctx):
            return (
        oops
    """,
    "tasks/norun.py": """
        description = "forgot run"
    """,
    "tasks/wrong_type.py": """
        max_duration = "soon"

        def run(payload, ctx):
            return None
    """,
    "tasks/not_callable.py": """
        run = 5
    """,
    "tasks/missing_dep.py": """
        import json
        import not_a_module_anyone_installed

        def run(payload, ctx):
            return None
    """,
}


def write_repo(root: Path, files: dict[str, str]) -> Path:
    for relpath, text in files.items():
        path = root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    return root


def discover(
    source: Path, tasks_dir: str = "tasks", python: str = sys.executable
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    proc = subprocess.run(
        [python, "-I", "-B", str(DISCOVER_MAIN), "--source", str(source), "--tasks-dir", tasks_dir],
        capture_output=True,
        text=True,
        timeout=scaled(60),
        check=False,
        cwd=source.parent,
    )
    return proc, json.loads(proc.stdout)


@pytest.mark.parametrize(
    ("relpath", "task_id"),
    [
        ("hello.py", "hello"),
        ("db/migrate.py", "db:migrate"),
        ("a/b/c.py", "a:b:c"),
        ("_helpers.py", None),
        ("test_hello.py", None),
        ("hello_test.py", None),
        ("db/_private.py", None),
        ("__pycache__/hello.py", None),
        (".hidden/hello.py", None),
        ("_internal/hello.py", None),
        ("hello.txt", None),
        ("hello.pyc", None),
        ("/abs/hello.py", None),
    ],
)
def test_task_id_for(relpath: str, task_id: str | None) -> None:
    assert taskfiles.task_id_for(relpath) == task_id


def test_find_task_files_refuses_paths_outside_the_source(tmp_path: Path) -> None:
    source = write_repo(tmp_path / "source", {"tasks/hello.py": "def run(p, c): pass\n"})
    (tmp_path / "elsewhere").mkdir()
    assert taskfiles.find_task_files(source, "tasks") == [
        ("hello", source.resolve() / "tasks" / "hello.py")
    ]
    for tasks_dir in ("../elsewhere", str(tmp_path / "elsewhere"), "tasks/../.."):
        with pytest.raises(ValueError, match="repository"):
            taskfiles.find_task_files(source, tasks_dir)


def test_lists_tasks_with_their_metadata(tmp_path: Path) -> None:
    source = write_repo(tmp_path / "source", GOOD_TASKS)
    proc, document = discover(source)
    assert proc.returncode == 0, proc.stderr
    assert document["errors"] == []
    tasks = {task["id"]: task for task in document["tasks"]}
    assert [task["id"] for task in document["tasks"]] == GOOD_IDS
    assert tasks["hello"] == {
        "id": "hello",
        "file": "tasks/hello.py",
        "description": "Say hello",
        "input_schema": {"type": "object", "properties": {"name": {"type": "string"}}},
        "output_schema": {"type": "string"},
        "schedulable": True,
        "max_duration": 60.0,
        "is_async": False,
    }
    assert tasks["db:migrate"]["file"] == "tasks/db/migrate.py"
    assert tasks["db:migrate"]["description"] is None
    assert tasks["db:migrate"]["schedulable"] is False
    assert tasks["db:migrate"]["max_duration"] is None
    assert tasks["asleep"]["is_async"] is True


def test_import_time_output_goes_to_stderr(tmp_path: Path) -> None:
    source = write_repo(tmp_path / "source", GOOD_TASKS)
    proc, _ = discover(source)
    assert len(proc.stdout.splitlines()) == 1
    for noise in ("printed while", "written to fd 1", "echoed by a subprocess"):
        assert noise not in proc.stdout
        assert noise in proc.stderr


def test_broken_files_are_reported_and_exit_2(tmp_path: Path) -> None:
    source = write_repo(tmp_path / "source", {**GOOD_TASKS, **BROKEN_TASKS})
    proc, document = discover(source)
    assert proc.returncode == 2
    assert [task["id"] for task in document["tasks"]] == GOOD_IDS
    errors = {error["file"]: error for error in document["errors"]}
    assert sorted(errors) == [
        "tasks/broken.py",
        "tasks/missing_dep.py",
        "tasks/norun.py",
        "tasks/not_callable.py",
        "tasks/wrong_type.py",
    ]

    syntax = errors["tasks/broken.py"]
    assert syntax["type"] == "SyntaxError"
    assert syntax["line"] == 2
    assert "broken.py" in syntax["traceback"]

    missing = errors["tasks/missing_dep.py"]
    assert missing["type"] == "ModuleNotFoundError"
    assert missing["line"] == 2
    assert "not_a_module_anyone_installed" in missing["message"]
    assert "tasks/missing_dep.py" in missing["traceback"]
    assert "importlib" not in missing["traceback"]

    assert "run(payload, ctx)" in errors["tasks/norun.py"]["message"]
    assert "`run` must be a function" in errors["tasks/not_callable.py"]["message"]
    assert "`max_duration` must be a positive number" in errors["tasks/wrong_type.py"]["message"]


def test_run_must_take_payload_and_ctx(tmp_path: Path) -> None:
    source = write_repo(tmp_path / "source", {"tasks/lonely.py": "def run():\n    pass\n"})
    proc, document = discover(source)
    assert proc.returncode == 2
    [error] = document["errors"]
    assert error["file"] == "tasks/lonely.py"
    assert "two arguments" in error["message"]


@pytest.mark.parametrize("tasks_dir", ["../elsewhere", "/etc", "missing"])
def test_a_bad_tasks_dir_is_an_error(tmp_path: Path, tasks_dir: str) -> None:
    source = write_repo(tmp_path / "source", GOOD_TASKS)
    write_repo(tmp_path / "elsewhere", {"evil.py": "def run(p, c): pass\n"})
    proc, document = discover(source, tasks_dir)
    assert proc.returncode == 2
    assert document["tasks"] == []
    [error] = document["errors"]
    assert error["file"] == tasks_dir
    assert tasks_dir in error["message"]


def test_symlinks_out_of_the_source_are_not_followed(tmp_path: Path) -> None:
    outside = write_repo(
        tmp_path / "outside",
        {"evil.py": "raise RuntimeError('imported from outside')\n", "pkg/task.py": "run = 1\n"},
    )
    source = write_repo(
        tmp_path / "source",
        {
            "tasks/hello.py": "def run(payload, ctx):\n    pass\n",
            "shared/impl.py": "def run(payload, ctx):\n    pass\n",
        },
    )
    os.symlink(outside / "evil.py", source / "tasks" / "evil.py")
    os.symlink(outside / "pkg", source / "tasks" / "pkg")
    os.symlink(source / "shared" / "impl.py", source / "tasks" / "alias.py")
    os.symlink(source / "tasks", source / "tasks" / "loop")
    proc, document = discover(source)
    assert proc.returncode == 0, document
    assert [task["id"] for task in document["tasks"]] == ["alias", "hello"]


def test_runs_without_slipway_installed(tmp_path: Path) -> None:
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    if not base.exists():
        pytest.skip(f"no base interpreter at {base}")
    probe = subprocess.run(
        [str(base), "-I", "-c", "import controller"], capture_output=True, cwd=tmp_path, check=False
    )
    if probe.returncode == 0:
        pytest.skip("the base interpreter can import controller")
    source = write_repo(tmp_path / "source", GOOD_TASKS)
    proc, document = discover(source, python=str(base))
    assert proc.returncode == 0, proc.stderr
    assert len(document["tasks"]) == 4


def test_discovery_imports_no_argument_parser(tmp_path: Path) -> None:
    """Every build starts this script: it imports what the task files need, not argparse."""
    root = write_repo(
        tmp_path / "repo",
        {
            "tasks/probe.py": """
                import sys
                loaded = sorted(m for m in ("argparse", "gettext") if m in sys.modules)
                sys.stderr.write(f"loaded={loaded}\\n")

                def run(payload, ctx):
                    return None
            """
        },
    )
    proc, document = discover(root)
    assert proc.returncode == 0 and [t["id"] for t in document["tasks"]] == ["probe"]
    assert "loaded=[]" in proc.stderr


def test_discovery_arguments() -> None:
    from controller.builders.discover_main import parse_args

    assert parse_args(["--source", "/x"]) == {"source": "/x", "tasks_dir": "tasks"}
    assert parse_args(["--tasks-dir=jobs", "--source=/x"]) == {"source": "/x", "tasks_dir": "jobs"}
    for wrong in ([], ["--tasks-dir", "t"], ["--source"], ["--verbose", "--source", "/x"]):
        with pytest.raises(SystemExit, match=r"usage: discover_main\.py"):
            parse_args(wrong)
