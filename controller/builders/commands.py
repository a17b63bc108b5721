"""Running a user's command (install, pre-build): minimal environment, timeout, bounded
output.

The command runs through ``/bin/sh -c`` in its own process group, with ``PATH`` led by the
version's virtualenv and none of the controller's settings or secrets: only a short list
of variables that package tools need (locale, proxies, pip's index and certificates). Its
output streams line by line into the deployment log, at most ``max_log_lines`` lines (a
notice says when lines were dropped); the last ``tail_lines`` are kept for the error
message. On timeout or cancellation the whole process group is killed.

A command outlives a controller that is SIGKILLed (or killed by the OOM killer): it runs
in a session of its own. So each running command is also written down in a
:class:`CommandRegistry` on disk, and the next controller kills what is left before it
resumes the deployments — a rerun of a step never races the interrupted run of it.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from controller.datadir import private_dir, write_private
from controller.errors import BuildFailed

PASSTHROUGH = (
    "LANG",
    "LC_ALL",
    "TZ",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_TRUSTED_HOST",
    "PIP_FIND_LINKS",
    "PIP_CONSTRAINT",
    "UV_INDEX_URL",
    "UV_EXTRA_INDEX_URL",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
)
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def minimal_env(
    *, venv: Path | None, home: Path, extra: dict[str, str] | None = None
) -> dict[str, str]:
    env = {k: os.environ[k] for k in PASSTHROUGH if k in os.environ}
    env.setdefault("LANG", "C.UTF-8")
    path = SYSTEM_PATH
    if venv is not None:
        path = f"{venv / 'bin'}:{path}"
        env["VIRTUAL_ENV"] = str(venv)
    env.update(
        PATH=path,
        HOME=str(home),
        PYTHONUNBUFFERED="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
    )
    env.update(extra or {})
    return env


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (``/proc/PID/stat`` field 22):
    with the pid, it names one process, never a later one that reused the pid."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[19] if len(fields) > 19 else None


class CommandRegistry:
    """The process groups of running user commands, one file each in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        private_dir(self.directory)

    def add(self, pid: int) -> None:
        started = _start_time(pid)
        if started is not None:
            write_private(self.directory / str(pid), started)

    def remove(self, pid: int) -> None:
        (self.directory / str(pid)).unlink(missing_ok=True)

    def reap(self) -> int:
        """Kill the process groups that a previous controller left running; returns how
        many. Only a group whose leader is still the very process written down (same pid,
        same start time) is signalled."""
        killed = 0
        for entry in self.directory.iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            with contextlib.suppress(OSError):
                if _start_time(pid) == entry.read_text().strip():
                    os.killpg(pid, signal.SIGKILL)
                    killed += 1
            entry.unlink(missing_ok=True)
        return killed


@dataclass(frozen=True)
class CommandResult:
    exit_code: int
    tail: list[str]
    duration: float


def run_command(
    command: str | list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    timeout: float,
    log: Callable[[str], None],
    label: str,
    cancel: threading.Event | None = None,
    registry: CommandRegistry | None = None,
    max_log_lines: int = 5000,
    tail_lines: int = 40,
    max_line: int = 4000,
) -> CommandResult:
    """Run ``command``; raise :class:`BuildFailed` if it cannot start, times out or is
    canceled. A non-zero exit is returned, not raised: the caller words the failure."""
    started = time.monotonic()
    proc = _start(
        command, cwd=cwd, env=env, stderr=subprocess.STDOUT, label=label, registry=registry
    )
    tail: deque[str] = deque(maxlen=tail_lines)
    logged = dropped = 0
    buffer = b""
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    reason = None
    try:
        while True:
            if cancel is not None and cancel.is_set():
                reason = "canceled"
                break
            if time.monotonic() - started > timeout:
                reason = "timeout"
                break
            if not selector.select(timeout=0.2):
                if proc.poll() is not None:
                    break
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            if len(buffer) > max_line:
                lines.append(buffer)
                buffer = b""
            for raw in lines:
                line = raw.decode("utf-8", "replace").rstrip("\r")[:max_line]
                tail.append(line)
                if logged < max_log_lines:
                    log(line)
                    logged += 1
                else:
                    dropped += 1
        if buffer:
            line = buffer.decode("utf-8", "replace")[:max_line]
            tail.append(line)
            if logged < max_log_lines:
                log(line)
        if reason is None:
            proc.wait(timeout=max(1.0, timeout - (time.monotonic() - started)))
    except subprocess.TimeoutExpired:
        reason = "timeout"
    finally:
        selector.close()
        _finish(proc, killed=reason is not None, registry=registry)
    if dropped:
        log(f"[slipway] {dropped} more lines of output were not stored")
    duration = time.monotonic() - started
    if reason == "timeout":
        raise BuildFailed(
            f"{label} timed out after {timeout:.0f}s",
            hint="make it faster or raise the build timeout (SLIPWAY_BUILD_TIMEOUT)",
        )
    if reason == "canceled":
        raise BuildFailed(f"{label} was canceled")
    return CommandResult(proc.returncode, list(tail), duration)


def _start(
    command: str | list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    stderr: int,
    label: str,
    registry: CommandRegistry | None,
) -> subprocess.Popen[bytes]:
    """Start ``command`` (a string runs through the shell) in a session of its own,
    written down in ``registry``; stdout is a pipe, stderr ``stderr``."""
    try:
        proc = subprocess.Popen(
            command,
            shell=isinstance(command, str),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
        )
    except OSError as exc:
        raise BuildFailed(f"{label} could not start: {exc.strerror or exc}") from exc
    if registry is not None:
        registry.add(proc.pid)
    return proc


def _finish(
    proc: subprocess.Popen[bytes], *, killed: bool, registry: CommandRegistry | None
) -> None:
    """Kill the group when the command was stopped or is still running; close its pipes."""
    if killed or proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    if registry is not None:
        registry.remove(proc.pid)


def capture_command(
    command: str,
    *,
    cwd: Path,
    env: dict[str, str],
    timeout: float,
    log: Callable[[str], None],
    label: str,
    cancel: threading.Event | None = None,
    registry: CommandRegistry | None = None,
    max_stdout: int = 1 << 20,
    max_log_lines: int = 1000,
) -> tuple[CommandResult, bytes | None]:
    """Like :func:`run_command`, but stdout is captured (at most ``max_stdout`` bytes;
    ``None`` when there was more) and only stderr goes to the log. For commands whose
    output is data (``sync_env_vars`` prints variables: they must not reach the log)."""
    started = time.monotonic()
    proc = _start(command, cwd=cwd, env=env, stderr=subprocess.PIPE, label=label, registry=registry)
    assert proc.stdout is not None and proc.stderr is not None
    out = bytearray()
    too_large = False
    tail: deque[str] = deque(maxlen=40)
    errors = b""
    logged = 0
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ, "out")
    selector.register(proc.stderr, selectors.EVENT_READ, "err")
    open_streams = 2
    reason = None
    try:
        while open_streams:
            if cancel is not None and cancel.is_set():
                reason = "canceled"
                break
            if time.monotonic() - started > timeout:
                reason = "timeout"
                break
            for key, _ in selector.select(timeout=0.2):
                chunk = os.read(key.fileobj.fileno(), 65536)  # type: ignore[union-attr]
                if not chunk:
                    selector.unregister(key.fileobj)
                    open_streams -= 1
                elif key.data == "out":
                    if len(out) + len(chunk) > max_stdout:
                        too_large = True
                    else:
                        out += chunk
                else:
                    errors += chunk
                    *lines, errors = errors.split(b"\n")
                    for raw in lines:
                        line = raw.decode("utf-8", "replace")[:4000]
                        tail.append(line)
                        if logged < max_log_lines:
                            log(line)
                            logged += 1
        if errors:
            tail.append(errors.decode("utf-8", "replace")[:4000])
            log(tail[-1])
        if reason is None:
            proc.wait(timeout=max(1.0, timeout - (time.monotonic() - started)))
    except subprocess.TimeoutExpired:
        reason = "timeout"
    finally:
        selector.close()
        _finish(proc, killed=reason is not None, registry=registry)
    if reason == "timeout":
        raise BuildFailed(f"{label} timed out after {timeout:.0f}s", hint="make it faster")
    if reason == "canceled":
        raise BuildFailed(f"{label} was canceled")
    result = CommandResult(proc.returncode, list(tail), time.monotonic() - started)
    return result, None if too_large else bytes(out)
