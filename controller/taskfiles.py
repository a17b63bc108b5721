"""The task-file convention: which files are tasks, what their ids are, how they load.

``tasks/hello.py`` is task ``hello``; ``tasks/db/migrate.py`` is ``db:migrate``. Files
whose name starts with ``_`` or ``test_`` or ends with ``_test.py`` are not tasks, nor is
anything under a folder whose name starts with ``_`` or ``.`` (``__pycache__``, ``.git``).
A task module defines ``run(payload, ctx)`` and may define ``description``,
``input_schema``, ``output_schema``, ``schedulable`` and ``max_duration``.

Three callers live in two worlds. The controller imports this module as
``controller.taskfiles``; ``builders/discover_main.py`` and ``runtimes/worker_main.py`` run
under the *user's* virtualenv, where Slipway is not installed, and load this file by path
under the private name ``_slipway_taskfiles``. Hence: standard library only, no imports
from ``controller``, and nothing happens at import time.

The tasks directory comes from the repository (``slipway.toml``), so it is untrusted:
:func:`find_task_files` refuses a directory outside the source tree and skips symlinks
that lead out of it.

Each task is imported under its own module name (``slipway_tasks.db.migrate``), with the
source root first on ``sys.path`` as when running ``python`` from the repository root, so
a task can ``import lib`` or ``from tasks._helpers import x``. The ``slipway_tasks``
packages are registered with the task folders as their search path, so relative imports
(``from ._helpers import x``) work too.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import inspect
import json
import math
import os
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import ModuleType, TracebackType
from typing import Any, TextIO

TASK_PACKAGE = "slipway_tasks"
TRACEBACK_LINES = 20


class TaskDefinitionError(Exception):
    """A task module does not follow the convention (no ``run``, a mistyped attribute)."""


@dataclass(frozen=True)
class LoadedTask:
    id: str
    path: Path
    file: str
    module: ModuleType
    info: dict[str, Any]


def task_id_for(relpath: str) -> str | None:
    """The task id of a path relative to the tasks directory, or None if it is no task."""
    path = PurePosixPath(relpath)
    if path.is_absolute() or not path.parts:
        return None
    *folders, name = path.parts
    if any(folder.startswith(("_", ".")) for folder in folders):
        return None
    if not name.endswith(".py") or name.endswith("_test.py"):
        return None
    if name.startswith(("_", "test_", ".")):
        return None
    segments = [*folders, name[: -len(".py")]]
    if any(not segment or ":" in segment for segment in segments):
        return None
    return ":".join(segments)


def find_task_files(source: Path, tasks_dir: str) -> list[tuple[str, Path]]:
    """``(task_id, path)`` for every task file under ``source / tasks_dir``, sorted by id.

    Raises ValueError when ``tasks_dir`` leads outside ``source`` and FileNotFoundError
    when it is not a directory.
    """
    root = Path(source).resolve(strict=True)
    if Path(tasks_dir).is_absolute():
        raise ValueError(f"tasks_dir {tasks_dir!r} must be a path relative to the repository")
    tasks_root = (root / tasks_dir).resolve()
    if not tasks_root.is_relative_to(root):
        raise ValueError(f"tasks_dir {tasks_dir!r} points outside the repository")
    if not tasks_root.is_dir():
        raise FileNotFoundError(f"tasks directory {tasks_dir!r} does not exist in the repository")

    found: list[tuple[str, Path]] = []
    visited: set[Path] = set()
    pending: list[tuple[Path, PurePosixPath]] = [(tasks_root, PurePosixPath())]
    while pending:
        directory, relative = pending.pop()
        real = directory.resolve()
        if real in visited or not real.is_relative_to(root):
            continue
        visited.add(real)
        with os.scandir(directory) as entries:
            for entry in entries:
                relpath = relative / entry.name
                if entry.is_dir():
                    if not entry.name.startswith(("_", ".")):
                        pending.append((Path(entry.path), relpath))
                elif entry.is_file():
                    task_id = task_id_for(relpath.as_posix())
                    path = Path(entry.path)
                    if task_id is not None and path.resolve().is_relative_to(root):
                        found.append((task_id, path))
    return sorted(found)


def module_name_for(task_id: str) -> str:
    """A dotted module name for a task, unique per task id."""
    parts = []
    for segment in task_id.split(":"):
        name = re.sub(r"\W", "_", segment)
        if not name.isidentifier():
            name = f"_{name}"
        if name != segment:
            name = f"{name}_{hashlib.sha1(segment.encode(), usedforsecurity=False).hexdigest()[:8]}"
        parts.append(name)
    return ".".join([TASK_PACKAGE, *parts])


def load_task(source: Path, task_id: str, path: Path) -> ModuleType:
    """Import one task file under its own module name, with ``source`` on ``sys.path``."""
    root = str(Path(source).resolve())
    if root not in sys.path:
        sys.path.insert(0, root)
    name = module_name_for(task_id)
    _register_packages(name, Path(path))
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}", name=name, path=str(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    parent, _, child = name.rpartition(".")
    setattr(sys.modules[parent], child, module)
    return module


def _register_packages(module_name: str, path: Path) -> None:
    """Make ``slipway_tasks`` and its sub-packages namespace packages over the task folders."""
    packages = module_name.split(".")[:-1]
    folders = path.parents
    for depth in range(len(packages)):
        package = ".".join(packages[: depth + 1])
        folder = str(folders[len(packages) - 1 - depth])
        module = sys.modules.get(package)
        if module is None:
            spec = importlib.machinery.ModuleSpec(package, None, is_package=True)
            spec.submodule_search_locations = [folder]
            module = importlib.util.module_from_spec(spec)
            sys.modules[package] = module
            if depth:
                parent, _, child = package.rpartition(".")
                setattr(sys.modules[parent], child, module)
        elif folder not in module.__path__:
            module.__path__.append(folder)


def describe(module: ModuleType) -> dict[str, Any]:
    """The task's declared metadata; raises TaskDefinitionError when it breaks the convention."""
    run = getattr(module, "run", None)
    if run is None:
        raise TaskDefinitionError("the module does not define run(payload, ctx)")
    if not callable(run):
        raise TaskDefinitionError(
            f"`run` must be a function run(payload, ctx), not {type(run).__name__}"
        )
    try:
        signature = inspect.signature(run)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        try:
            signature.bind(None, None)
        except TypeError as exc:
            raise TaskDefinitionError(
                f"`run` must accept two arguments, run(payload, ctx): {exc}"
            ) from exc

    description = _attribute(module, "description", str, "a string")
    input_schema = _schema(module, "input_schema")
    output_schema = _schema(module, "output_schema")
    schedulable = _attribute(module, "schedulable", bool, "True or False")
    max_duration = getattr(module, "max_duration", None)
    if max_duration is not None:
        if (
            isinstance(max_duration, bool)
            or not isinstance(max_duration, (int, float))
            or not math.isfinite(max_duration)
            or max_duration <= 0
        ):
            raise TaskDefinitionError(
                f"`max_duration` must be a positive number of seconds, not {max_duration!r}"
            )
        max_duration = float(max_duration)
    is_async = inspect.iscoroutinefunction(run) or inspect.iscoroutinefunction(type(run).__call__)
    return {
        "description": description,
        "input_schema": input_schema,
        "output_schema": output_schema,
        "schedulable": bool(schedulable),
        "max_duration": max_duration,
        "is_async": is_async,
    }


def _attribute(module: ModuleType, name: str, kind: type, wanted: str) -> Any:
    value = getattr(module, name, None)
    if value is not None and not isinstance(value, kind):
        raise TaskDefinitionError(f"`{name}` must be {wanted}, not {type(value).__name__}")
    return value


def _schema(module: ModuleType, name: str) -> dict[str, Any] | None:
    schema: dict[str, Any] | None = _attribute(module, name, dict, "a dict (a JSON Schema)")
    if schema is not None:
        try:
            json.dumps(schema, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TaskDefinitionError(f"`{name}` must be plain JSON: {exc}") from exc
    return schema


def load_tasks(source: Path, tasks_dir: str) -> tuple[list[LoadedTask], list[dict[str, Any]]]:
    """Import and describe every task; failures become error entries, one per file."""
    try:
        files = find_task_files(source, tasks_dir)
    except (OSError, ValueError) as exc:
        return [], [
            {
                "file": tasks_dir,
                "type": type(exc).__name__,
                "message": str(exc),
                "line": None,
                "traceback": None,
            }
        ]
    root = Path(source).resolve()
    tasks: list[LoadedTask] = []
    errors: list[dict[str, Any]] = []
    for task_id, path in files:
        file = path.relative_to(root).as_posix()
        try:
            module = load_task(root, task_id, path)
            info = describe(module)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            errors.append(error_entry(exc, source=root, path=path))
            continue
        tasks.append(LoadedTask(id=task_id, path=path, file=file, module=module, info=info))
    return tasks, errors


def error_entry(exc: BaseException, *, source: Path, path: Path) -> dict[str, Any]:
    """Describe a task file's failure: the file, the error, its line and the user's frames."""
    root = Path(source).resolve()
    file = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
    message = str(exc) or type(exc).__name__
    if isinstance(exc, TaskDefinitionError):
        return {
            "file": file,
            "type": type(exc).__name__,
            "message": message,
            "line": None,
            "traceback": None,
        }

    line: int | None = None
    if isinstance(exc, SyntaxError):
        if exc.filename and _same_file(exc.filename, path):
            line = exc.lineno
        shown: TracebackType | None = None
    else:
        for frame in traceback.extract_tb(exc.__traceback__):
            if _same_file(frame.filename, path):
                line = frame.lineno
        shown = _user_frames(exc.__traceback__, root)
    lines = "".join(traceback.format_exception(type(exc), exc, shown)).splitlines()
    return {
        "file": file,
        "type": type(exc).__name__,
        "message": message,
        "line": line,
        "traceback": "\n".join(lines[-TRACEBACK_LINES:]),
    }


def _user_frames(tb: TracebackType | None, root: Path) -> TracebackType | None:
    """The traceback from the first frame in the user's source on, skipping our loader."""
    first = tb
    while first is not None:
        filename = first.tb_frame.f_code.co_filename
        if not filename.startswith("<") and Path(filename).resolve().is_relative_to(root):
            return first
        first = first.tb_next
    return tb


def _same_file(filename: str, path: Path) -> bool:
    try:
        return os.path.samefile(filename, path)
    except OSError:
        return False


def divert_stdout() -> TextIO:
    """Send everything written to fd 1 to stderr; return a file on the original stdout.

    The scripts speak JSON on stdout while importing user code that may ``print`` or run
    subprocesses; redirecting at the descriptor level keeps both away from the protocol.
    """
    sys.stdout.flush()
    protocol = os.dup(1)
    os.dup2(2, 1)
    return open(protocol, "w", encoding="utf-8")
