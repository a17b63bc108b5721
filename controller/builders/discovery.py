"""Task discovery: ``discover_main.py`` imports the task files in the version's
environment, in a subprocess of its own, and reports what it found as JSON.

**Discovery reuse**: importing the task files costs an interpreter start and every
import they make (~0.1 s), and its result depends only on the tree, the environment
and the discovery code. Given the tree's digest, a successful result is kept under
``<cache>/_discovery/<key>`` (key: tree digest + dependency-cache key of the
environment + tasks dir + a digest of ``discover_main.py`` and ``taskfiles.py``) and
reused: a redeploy, a rollback-by-push or a second environment of the same commit skips
the subprocess. Failures are never kept. The pipeline passes no digest when a pre-build
ran (it may have changed the tree after the digest was taken).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

from controller.builders.base import Log
from controller.builders.standby import DiscoveryStandby
from controller.errors import BuildFailed

DISCOVER = Path(__file__).with_name("discover_main.py")
DISCOVERY_CACHE = "_discovery"
DISCOVERY_CODE = (DISCOVER, Path(__file__).parent.parent / "taskfiles.py")


@functools.cache
def discovery_code_version() -> str:
    """A digest of the code that discovers tasks: a new Slipway never reuses old results."""
    digest = hashlib.sha256()
    for path in DISCOVERY_CODE:
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def discovery_key(*, tree: str, venv: Path, tasks_dir: str) -> str:
    """Tree digest + environment (its dependency-cache key: complete environments are
    never modified) + tasks dir + discovery code version."""
    parts = (tree, venv.name, tasks_dir, discovery_code_version())
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def discover_tasks(
    root: Path,
    *,
    venv: Path,
    env: dict[str, str],
    cache_dir: Path,
    tasks_dir: str,
    timeout: float,
    tree: str | None = None,
    log: Log | None = None,
    standby: DiscoveryStandby | None = None,
) -> list[dict[str, Any]]:
    """The tasks under ``root / tasks_dir``, reused from ``cache_dir`` for a known tree."""
    if tree is None:
        return run_discovery(
            root, venv=venv, env=env, tasks_dir=tasks_dir, timeout=timeout, standby=standby
        )
    key = discovery_key(tree=tree, venv=venv, tasks_dir=tasks_dir)
    stored = cache_dir / DISCOVERY_CACHE / f"{key}.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        tasks = list(json.loads(stored.read_text())["tasks"])
        if log is not None:
            log(f"Tree and environment unchanged: reusing task discovery {key[:12]}")
        return tasks
    tasks = run_discovery(
        root, venv=venv, env=env, tasks_dir=tasks_dir, timeout=timeout, standby=standby
    )
    stored.parent.mkdir(exist_ok=True)
    partial = stored.with_name(f"{key}.{uuid.uuid4().hex}.tmp")
    partial.write_text(json.dumps({"tasks": tasks}))
    partial.replace(stored)
    return tasks


def run_discovery(
    root: Path,
    *,
    venv: Path,
    env: dict[str, str],
    tasks_dir: str,
    timeout: float,
    standby: DiscoveryStandby | None = None,
) -> list[dict[str, Any]]:
    python = venv / "bin" / "python"
    argv = ["--source", str(root), "--tasks-dir", tasks_dir]
    proc = standby.take(python, env) if standby is not None else None
    request: bytes | None = None
    if proc is not None:
        request = json.dumps({"argv": argv}).encode() + b"\n"
    else:
        proc = subprocess.Popen(
            [str(python), "-I", "-B", str(DISCOVER), *argv],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    try:
        stdout, stderr = _communicate(proc, request, timeout=timeout)
    finally:
        if standby is not None:
            standby.refill(python, env)
    return _tasks_of(stdout, stderr, code=proc.returncode, tasks_dir=tasks_dir)


def _communicate(
    proc: subprocess.Popen[bytes], request: bytes | None, *, timeout: float
) -> tuple[bytes, bytes]:
    try:
        return proc.communicate(request, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        proc.communicate()
        raise BuildFailed(
            f"importing the task files took longer than {timeout:.0f}s",
            hint="task modules should not do slow work at import time",
        ) from exc
    except BaseException:
        proc.kill()
        proc.communicate()
        raise


def _tasks_of(stdout: bytes, stderr: bytes, *, code: int, tasks_dir: str) -> list[dict[str, Any]]:
    try:
        report = json.loads(stdout[-(8 << 20) :] or b"{}")
    except ValueError as exc:
        tail = stderr.decode("utf-8", "replace")[-2000:]
        raise BuildFailed(f"task discovery crashed (exit {code}): {tail}") from exc
    errors = report.get("errors") or []
    if errors:
        raise BuildFailed(
            _discovery_summary(errors, tasks_dir),
            hint="fix the task files; the current version keeps serving",
        )
    if code != 0:
        tail = stderr.decode("utf-8", "replace")[-2000:]
        raise BuildFailed(f"task discovery failed (exit {code}): {tail}")
    return list(report.get("tasks") or [])


def _discovery_summary(errors: list[dict[str, Any]], tasks_dir: str) -> str:
    """The first line names the first broken file and why, because tables, the CLI and
    GitHub show only the first line; every broken file (up to 20) follows on its own."""
    lines = []
    for err in errors[:20]:
        where = str(err.get("file") or tasks_dir)
        if err.get("line"):
            where += f", line {err['line']}"
        lines.append(f"{where}: {err.get('type')}: {err.get('message')}")
    count = f"{len(errors)} task files failed" if len(errors) > 1 else "a task file failed"
    first = f"{count} to load: {lines[0]}"
    return first if len(errors) == 1 else first + "\n" + "\n".join(lines)
