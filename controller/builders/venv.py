"""The virtualenv builder: dependency cache, install, pre-build and task discovery.

**Install command detection** (when neither the project nor ``slipway.toml`` sets one),
first match wins:

1. ``requirements.txt`` → ``pip install -r requirements.txt``
2. ``uv.lock`` with ``uv`` on the PATH → ``uv sync --frozen --no-install-project`` into the
   version's environment; without ``uv``, fall through to 4 and say so in the log
3. ``poetry.lock`` with ``poetry`` on the PATH → ``poetry install --no-root`` into the
   environment; without ``poetry``, fall through to 4 and say so
4. ``pyproject.toml`` with ``[project].dependencies`` → ``pip install <those requirements>``
   (the project itself is not installed: tasks are imported from the checkout)
5. nothing → no dependencies

**Dependency cache**: an environment is keyed by the Python version, the install command
and the content of the dependency files at the project root (``requirements*.txt``,
``constraints*.txt``, ``pyproject.toml``, ``uv.lock``, ``poetry.lock``, ``setup.py``,
``setup.cfg``). An unchanged key reuses the environment. Environments are built in place
(virtualenvs are not relocatable) under a per-key file lock, and a marker file written
last tells a complete environment from one a crash left half-built, which is rebuilt.
Environments are never modified once complete, so versions sharing one stay immutable.

**Build-time variables** (``SLIPWAY_BUILD_<NAME>``, given here as ``<NAME>``) are added to
the minimal environment of install, pre-build and sync, below what the builder itself
needs (``PATH``, ``HOME``, ``VIRTUAL_ENV``, the caches), so a variable cannot point a
build at another environment. They change the dependency-cache key only through a
SHA-256 of all of them: a new token rebuilds the environment, and no value is written
into a key or a path. ``PIP_CONF`` (base64) is decoded into a pip configuration file in
a private temporary directory outside the data dir and the checkout, named by
``PIP_CONFIG_FILE``, and removed when the command ends, whatever the outcome.

**Task discovery** (its reuse for an unchanged tree, its interpreters started ahead of
need) is in :mod:`controller.builders.discovery` and :mod:`controller.builders.standby`; the commands run through
:mod:`controller.builders.commands`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from controller.builders.base import Log
from controller.builders.commands import (
    CommandRegistry,
    CommandResult,
    capture_command,
    minimal_env,
    run_command,
)
from controller.builders.discovery import DISCOVER, discover_tasks
from controller.builders.standby import DiscoveryStandby
from controller.datadir import open_private, private_dir
from controller.errors import BuildFailed

DEPENDENCY_FILES = ("pyproject.toml", "uv.lock", "poetry.lock", "setup.py", "setup.cfg")
DEPENDENCY_GLOBS = ("requirements*.txt", "constraints*.txt")
MARKER = ".slipway-complete"
VIRTUALENV = ("-m", "virtualenv", "--quiet", "--no-download", "--no-periodic-update")
PIP_CONF = "PIP_CONF"
PROTECTED = frozenset(
    {
        "PATH",
        "HOME",
        "VIRTUAL_ENV",
        "PIP_CACHE_DIR",
        "PIP_CONFIG_FILE",
        "UV_PROJECT_ENVIRONMENT",
        "POETRY_VIRTUALENVS_CREATE",
    }
)


def detect_install(root: Path) -> tuple[str | None, str]:
    """Return ``(command, why)`` for a project without an explicit install command."""
    if (root / "requirements.txt").is_file():
        return "pip install -r requirements.txt", "found requirements.txt"
    notes = []
    if (root / "uv.lock").is_file():
        if shutil.which("uv"):
            return "uv sync --frozen --no-install-project --active", "found uv.lock"
        notes.append("uv.lock found but uv is not installed on the controller")
    if (root / "poetry.lock").is_file():
        if shutil.which("poetry"):
            return "poetry install --no-root --no-interaction", "found poetry.lock"
        notes.append("poetry.lock found but poetry is not installed on the controller")
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        try:
            deps = tomllib.loads(pyproject.read_text()).get("project", {}).get("dependencies", [])
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise BuildFailed(f"pyproject.toml is not valid TOML: {exc}") from exc
        if deps:
            why = "; ".join([*notes, "installing [project].dependencies from pyproject.toml"])
            return "pip install " + shlex.join(deps), why
    why = "; ".join([*notes, "no dependency file found: no dependencies to install"])
    return None, why


def command_failed(label: str, result: CommandResult, *, hint: str) -> BuildFailed:
    return BuildFailed(
        f"{label} exited with code {result.exit_code}. "
        "Last lines of its output:\n" + "\n".join(result.tail[-20:]),
        hint=hint,
    )


def dependency_files(root: Path) -> list[Path]:
    files = [root / name for name in DEPENDENCY_FILES if (root / name).is_file()]
    for pattern in DEPENDENCY_GLOBS:
        files += sorted(p for p in root.glob(pattern) if p.is_file())
    return files


def build_env_hash(build_env: dict[str, str] | None) -> str:
    """One SHA-256 over every build-time variable: what the cache key sees of them."""
    if not build_env:
        return ""
    return hashlib.sha256(json.dumps(sorted(build_env.items())).encode()).hexdigest()


@contextlib.contextmanager
def pip_config(build_env: dict[str, str] | None) -> Iterator[dict[str, str]]:
    """The build variables as the command's environment, ``PIP_CONF`` as a file."""
    variables = {k: v for k, v in (build_env or {}).items() if k not in PROTECTED}
    encoded = variables.pop(PIP_CONF, None)
    if encoded is None:
        yield variables
        return
    try:
        content = base64.b64decode(encoded.encode(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BuildFailed(
            "SLIPWAY_BUILD_PIP_CONF is not valid base64",
            hint="set it to the base64 of a pip.conf: `base64 -w0 pip.conf`",
        ) from exc
    directory = Path(tempfile.mkdtemp(prefix="slipway-pip-"))
    try:
        path = directory / "pip.conf"
        path.write_bytes(content)
        path.chmod(0o600)
        yield {**variables, "PIP_CONFIG_FILE": str(path)}
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def python_version(python: str) -> str:
    if python == sys.executable:
        return sys.version
    out = subprocess.run(
        [python, "-c", "import sys; print(sys.version)"], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


class VirtualenvBuilder:
    name = "virtualenv"

    def __init__(
        self,
        *,
        cache_dir: Path,
        home_dir: Path,
        python: str = sys.executable,
        commands: CommandRegistry | None = None,
        keep_warm: bool = False,
    ) -> None:
        self.cache_dir = cache_dir
        self.home_dir = home_dir
        self.commands = commands
        self.python = python
        self._python_version = python_version(python)
        private_dir(self.cache_dir)
        private_dir(self.home_dir)
        self.standby = DiscoveryStandby(script=DISCOVER, cwd=self.home_dir) if keep_warm else None

    def close(self) -> None:
        if self.standby is not None:
            self.standby.close()

    def cache_key(
        self, root: Path, command: str | None, build_env: dict[str, str] | None = None
    ) -> str:
        digest = hashlib.sha256()
        digest.update(self._python_version.encode())
        digest.update(b"\0" + (command or "").encode() + b"\0")
        if build_env:
            digest.update(b"build-env\0" + build_env_hash(build_env).encode() + b"\0")
        for path in dependency_files(root):
            digest.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
        return digest.hexdigest()[:32]

    def _env(self, venv: Path | None, variables: dict[str, str] | None = None) -> dict[str, str]:
        env = minimal_env(
            venv=venv,
            home=self.home_dir,
            extra={
                "PIP_CACHE_DIR": str(self.cache_dir / "_pip-cache"),
                "UV_PROJECT_ENVIRONMENT": str(venv) if venv else "",
                "POETRY_VIRTUALENVS_CREATE": "false",
            },
        )
        for name, value in (variables or {}).items():
            if name not in PROTECTED or name == "PIP_CONFIG_FILE":
                env[name] = value
        return env

    def prepare(
        self,
        root: Path,
        *,
        install: str | None,
        log: Log,
        cancel: threading.Event,
        timeout: float,
        build_env: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        command: str | None
        if install:
            command, why = install, "install command from the project's settings"
        else:
            command, why = detect_install(root)
        log(f"Install command: {command or '(none)'} — {why}")
        key = self.cache_key(root, command, build_env)
        venv = self.cache_dir / key
        with open_private(self.cache_dir / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if (venv / MARKER).is_file():
                log(f"Dependencies unchanged: reusing cached environment {key[:12]}")
                return {"venv": str(venv), "key": key, "cached": True, "command": command}
            if venv.exists():
                log("Removing an incomplete environment left by an interrupted build")
                shutil.rmtree(venv)
            log(f"Creating a virtual environment ({self._python_version.split()[0]})")
            result = run_command(
                [self.python, *VIRTUALENV, str(venv)],
                cwd=root,
                env=self._env(None),
                timeout=min(timeout, 300),
                log=log,
                label="creating the virtual environment",
                cancel=cancel,
                registry=self.commands,
            )
            if result.exit_code != 0:
                shutil.rmtree(venv, ignore_errors=True)
                raise BuildFailed(
                    "could not create the virtual environment: " + " | ".join(result.tail[-5:])
                )
            if command:
                try:
                    result, _ = self._run_in_env(
                        root,
                        venv=venv,
                        command=command,
                        label=f"install command `{command}`",
                        hint="fix the dependencies or set --install-command / install in slipway.toml",
                        log=log,
                        cancel=cancel,
                        timeout=timeout,
                        build_env=build_env,
                    )
                except BuildFailed:
                    shutil.rmtree(venv, ignore_errors=True)
                    raise
                log(f"Installed dependencies in {result.duration:.1f}s")
            (venv / MARKER).write_text(json.dumps({"command": command}))
            return {"venv": str(venv), "key": key, "cached": False, "command": command}

    def pre_build(
        self,
        root: Path,
        *,
        venv: Path,
        command: str,
        log: Log,
        cancel: threading.Event,
        timeout: float,
        build_env: dict[str, str] | None = None,
    ) -> None:
        self._run_in_env(
            root,
            venv=venv,
            command=command,
            label=f"pre-build command `{command}`",
            hint="fix the command or set pre_build in slipway.toml",
            log=log,
            cancel=cancel,
            timeout=timeout,
            build_env=build_env,
        )

    def _run_in_env(
        self,
        root: Path,
        *,
        venv: Path,
        command: str,
        label: str,
        hint: str,
        log: Log,
        cancel: threading.Event,
        timeout: float,
        build_env: dict[str, str] | None,
        extra_env: dict[str, str] | None = None,
        capture: bool = False,
    ) -> tuple[CommandResult, bytes | None]:
        """Run a user's command in ``venv`` with the build variables; a non-zero exit
        raises :class:`BuildFailed` with its last lines and ``hint``. ``capture``: stdout
        is returned (``None`` when over 1 MiB), not logged."""
        log(f"$ {command}")
        with pip_config(build_env) as variables:
            env = {**self._env(venv, variables), **(extra_env or {})}
            runner = capture_command if capture else run_command
            done = runner(
                command,
                cwd=root,
                env=env,
                timeout=timeout,
                log=log,
                label=label,
                cancel=cancel,
                registry=self.commands,
            )
        result, out = done if isinstance(done, tuple) else (done, None)
        if result.exit_code != 0:
            raise command_failed(label, result, hint=hint)
        return result, out

    def sync_env_vars(
        self,
        root: Path,
        *,
        venv: Path,
        command: str,
        log: Log,
        cancel: threading.Event,
        timeout: float,
        build_env: dict[str, str] | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> str:
        """Run ``sync_env_vars`` in the built environment; returns what it printed.
        Its stderr goes to the log, its stdout (the variables) never does."""
        _, out = self._run_in_env(
            root,
            venv=venv,
            command=command,
            label=f"sync_env_vars command `{command}`",
            hint="fix the command; no variable was changed",
            log=log,
            cancel=cancel,
            timeout=timeout,
            build_env=build_env,
            extra_env=extra_env,
            capture=True,
        )
        if out is None:
            raise BuildFailed(
                "sync_env_vars printed more than 1 MiB", hint="no variable was changed"
            )
        try:
            return out.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BuildFailed(
                "sync_env_vars printed output that is not UTF-8", hint="no variable was changed"
            ) from exc

    def discover(
        self,
        root: Path,
        *,
        venv: Path,
        tasks_dir: str,
        timeout: float,
        tree: str | None = None,
        log: Log | None = None,
    ) -> list[dict[str, Any]]:
        return discover_tasks(
            root, venv=venv, env=self._env(venv), cache_dir=self.cache_dir, tasks_dir=tasks_dir,
            timeout=timeout, tree=tree, log=log, standby=self.standby,
        )  # fmt: skip
