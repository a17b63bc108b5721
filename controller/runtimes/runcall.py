"""One run sent to a leased worker over HTTP, retried once when it cannot have started.

Both runtimes (the controller's :class:`~controller.runtimes.local.LocalRuntime` and the
web process's :class:`~controller.runtimes.control.RemoteRuntime`) run a task the same
way: take a lease (the worker is started if needed and counts the run in flight), send
``POST /runs`` to the worker's port, give the lease back. No health check precedes a run;
a failed request is the health signal. When the run cannot have started (the connection
was refused: nothing reached the worker; or the worker answered 503: it is draining and
refused the run before starting it), the lease holder is told (``refused``), which
replaces the worker, and the run is sent once more. Any other failure after the request
left is not retried: the run may have started.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Protocol

import httpx

from controller.errors import PermanentError, RuntimeUnavailable, SlipwayError
from controller.runtimes.base import VersionSpec


class Leases(Protocol):
    def acquire(self, spec: VersionSpec) -> dict[str, Any]:
        """``{"url", "port"}`` of the version's worker, the run counted in flight."""
        ...

    def release(self, version_id: int, port: int) -> None: ...

    def refused(self, version_id: int, port: int) -> None:
        """The worker on ``port`` could not take the run: replace it."""
        ...


def post_run(
    client: httpx.Client,
    url: str,
    *,
    run_id: str,
    task_id: str,
    payload: Any,
    timeout: float | None,
    env: dict[str, str] | None = None,
    version_id: int | None = None,
) -> httpx.Response:
    """``version_id``: the worker answers 503 (the run not started) if it serves another
    version, e.g. a stale registry record whose port a newer worker took."""
    request = {"run_id": run_id, "task_id": task_id, "payload": payload, "timeout": timeout}
    if version_id is not None:
        request["version_id"] = version_id
    if env:
        request["env"] = env
    return client.post(
        url + "/runs",
        json=request,
        timeout=httpx.Timeout(5.0, read=(timeout or 24 * 3600) + 60),
    )


def answer_of(response: httpx.Response, *, spec: VersionSpec, task_id: str) -> dict[str, Any]:
    if response.status_code == 404:
        raise PermanentError(f"task {task_id!r} does not exist in version {spec.version}")
    if response.status_code != 200:
        raise RuntimeUnavailable(
            f"the worker answered {response.status_code}: {response.text[:300]}"
        )
    return dict(response.json())


def run_leased(
    leases: Leases,
    client: httpx.Client,
    spec: VersionSpec,
    *,
    run_id: str,
    task_id: str,
    payload: Any,
    timeout: float | None,
    env: dict[str, str] | None = None,
    stopping: threading.Event | None = None,
    stopped_message: str = "",
) -> dict[str, Any]:
    """The run's answer. ``stopping``: once set (the process is shutting down), a refused
    connection is not retried and a request cut off says ``stopped_message``."""

    def unreachable(exc: httpx.HTTPError) -> RuntimeUnavailable:
        stopped = stopping is not None and stopping.is_set() and stopped_message
        if stopped and not isinstance(exc, httpx.ConnectError):
            return RuntimeUnavailable(stopped_message)
        return RuntimeUnavailable(f"the worker of version {spec.version} is unreachable: {exc}")

    attempt = 0
    while True:
        attempt += 1
        lease = leases.acquire(spec)
        port = int(lease["port"])
        try:
            response = post_run(
                client,
                lease["url"],
                run_id=run_id,
                task_id=task_id,
                payload=payload,
                timeout=timeout,
                env=env,
                version_id=spec.version_id,
            )
        except httpx.HTTPError as exc:
            _quietly(leases.release, spec.version_id, port)
            retry = attempt == 1 and not (stopping is not None and stopping.is_set())
            if isinstance(exc, httpx.ConnectError) and retry:
                _quietly(leases.refused, spec.version_id, port)
                continue
            raise unreachable(exc) from exc
        _quietly(leases.release, spec.version_id, port)
        if response.status_code == 503:
            _quietly(leases.refused, spec.version_id, port)
            if attempt == 1:
                continue
        return answer_of(response, spec=spec, task_id=task_id)


def _quietly(call: Any, version_id: int, port: int) -> None:
    """Bookkeeping after the run was sent: losing it (the controller restarting) must not
    turn a run's answer into an error."""
    with contextlib.suppress(SlipwayError):
        call(version_id, port)
