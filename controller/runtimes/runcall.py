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

The request itself goes over :class:`WorkerConnections`: kept-alive HTTP/1.1 connections
of the standard library's ``http.client``, one request per connection at a time. For a
trivial run the web process's own CPU is most of the latency, and httpx (its request
model, connection pool and the pure-Python h11 parser) cost ~1 ms of it per run, three
times what ``http.client`` costs for the same exchange (measured side by side). Headers
and body leave in one write with TCP_NODELAY (:class:`_WorkerConnection`: the standard
library's ``http.client`` writes them separately, which strace showed as two sendto
calls per run). An idle connection the worker closed meanwhile is noticed before it is
reused (readable with nothing asked means closed, as urllib3 and httpcore check); if
the close races the check, writing the request fails, and a request that could not be
written to a closed socket was read by no one, so it goes once more on a new connection.
A failure once the request is out is never retried here: the run may have started.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import select
import socket
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from controller.errors import PermanentError, RuntimeUnavailable, SlipwayError
from controller.runtimes.base import VersionSpec

CONNECT_TIMEOUT = 5.0
MAX_IDLE = 32  # kept-alive connections in all; the least recently used go first


class WorkerUnreachable(Exception):
    """The exchange with a worker failed. ``connecting``: before a connection existed,
    so nothing reached the worker and the run cannot have started."""

    def __init__(self, message: str, *, connecting: bool) -> None:
        super().__init__(message)
        self.connecting = connecting


@dataclass(frozen=True)
class WorkerResponse:
    status_code: int
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


class WorkerConnections:
    """Kept-alive connections to workers, by address, shared by the threads of a process."""

    def __init__(self, *, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.connect_timeout = connect_timeout
        self._idle: OrderedDict[tuple[str, int], list[http.client.HTTPConnection]]
        self._idle = OrderedDict()
        self._count = 0
        self._lock = threading.Lock()
        self._closed = False

    def post_json(
        self, url: str, path: str, body: dict[str, Any], *, read_timeout: float
    ) -> WorkerResponse:
        return self._request(url, "POST", path, json.dumps(body).encode(), read_timeout)

    def get(self, url: str, path: str, *, read_timeout: float) -> WorkerResponse:
        return self._request(url, "GET", path, None, read_timeout)

    def _request(
        self, url: str, method: str, path: str, data: bytes | None, read_timeout: float
    ) -> WorkerResponse:
        parts = urlsplit(url)
        address = (parts.hostname or "127.0.0.1", parts.port or 80)
        conn = self._take(address)
        try:
            if conn is not None:
                try:
                    _send(conn, method, path, data, read_timeout)
                except OSError:
                    # The worker closed this idle connection just now: a closed socket
                    # read none of the request, so it goes once more on a new one.
                    conn.close()
                    conn = None
            if conn is None:
                conn = self._connect(address)
                _send(conn, method, path, data, read_timeout)
            response = conn.getresponse()
            content = response.read()
        except (OSError, http.client.HTTPException) as exc:
            if conn is not None:
                conn.close()
            raise WorkerUnreachable(_describe(exc), connecting=False) from exc
        if response.will_close:
            conn.close()
        else:
            self._give_back(address, conn)
        return WorkerResponse(response.status, content)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle = [conn for conns in self._idle.values() for conn in conns]
            self._idle.clear()
            self._count = 0
        for conn in idle:
            conn.close()

    def _take(self, address: tuple[str, int]) -> http.client.HTTPConnection | None:
        while True:
            with self._lock:
                conns = self._idle.get(address)
                if not conns:
                    return None
                conn = conns.pop()
                self._count -= 1
                if not conns:
                    del self._idle[address]
            if conn.sock is not None and not _dropped(conn.sock):
                return conn
            conn.close()

    def _connect(self, address: tuple[str, int]) -> http.client.HTTPConnection:
        conn = _WorkerConnection(*address, timeout=self.connect_timeout)
        try:
            conn.connect()
            assert conn.sock is not None
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            conn.close()
            raise WorkerUnreachable(_describe(exc), connecting=True) from exc
        return conn

    def _give_back(self, address: tuple[str, int], conn: http.client.HTTPConnection) -> None:
        """Keep ``conn`` for the next run; bounded in all, so connections to workers that
        stopped (previews scaled to zero) do not pile up."""
        evicted: list[http.client.HTTPConnection] = []
        with self._lock:
            if self._closed:
                evicted.append(conn)
            else:
                self._idle.setdefault(address, []).append(conn)
                self._idle.move_to_end(address)
                self._count += 1
            while self._count > MAX_IDLE:
                oldest, conns = next(iter(self._idle.items()))
                evicted.append(conns.pop(0))
                self._count -= 1
                if not conns:
                    del self._idle[oldest]
        for stale in evicted:
            stale.close()


class _WorkerConnection(http.client.HTTPConnection):
    """An ``HTTPConnection`` that sends a request's headers and bytes body in one write.

    ``http.client`` (3.11: read in its source, and seen under strace) sends the header
    block, then the body, in two ``send`` calls. With TCP_NODELAY that is two segments
    and two reads on the worker's side for every run; joined, a run's request is one
    segment. Other bodies (files, iterables) keep the standard path."""

    def _send_output(self, message_body: Any = None, encode_chunked: bool = False) -> None:
        if not isinstance(message_body, bytes) or encode_chunked:
            super()._send_output(message_body, encode_chunked)  # type: ignore[misc]
            return
        self._buffer.extend((b"", b""))  # type: ignore[attr-defined]
        head = b"\r\n".join(self._buffer)  # type: ignore[attr-defined]
        del self._buffer[:]  # type: ignore[attr-defined]
        self.send(head + message_body)


_JSON_HEADERS = {"Content-Type": "application/json"}


def _send(
    conn: http.client.HTTPConnection, method: str, path: str, data: bytes | None, timeout: float
) -> None:
    assert conn.sock is not None
    conn.sock.settimeout(timeout)
    headers = _JSON_HEADERS if data is not None else {}
    conn.request(method, path, body=data, headers=headers)


def _dropped(sock: socket.socket) -> bool:
    """An idle connection is readable only if the worker closed it (or broke protocol)."""
    poller = select.poll()  # not select(): no limit on the descriptor's number
    poller.register(sock, select.POLLIN)
    try:
        return bool(poller.poll(0))
    except OSError:
        return True


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class Leases(Protocol):
    def acquire(self, spec: VersionSpec) -> dict[str, Any]:
        """``{"url", "port"}`` of the version's worker, the run counted in flight."""
        ...

    def release(self, version_id: int, port: int) -> None: ...

    def refused(self, version_id: int, port: int) -> None:
        """The worker on ``port`` could not take the run: replace it."""
        ...


def post_run(
    client: WorkerConnections,
    url: str,
    *,
    run_id: str,
    task_id: str,
    payload: Any,
    timeout: float | None,
    env: dict[str, str] | None = None,
    version_id: int | None = None,
) -> WorkerResponse:
    """``version_id``: the worker answers 503 (the run not started) if it serves another
    version, e.g. a stale registry record whose port a newer worker took."""
    request = {"run_id": run_id, "task_id": task_id, "payload": payload, "timeout": timeout}
    if version_id is not None:
        request["version_id"] = version_id
    if env:
        request["env"] = env
    return client.post_json(url, "/runs", request, read_timeout=(timeout or 24 * 3600) + 60)


def answer_of(response: WorkerResponse, *, spec: VersionSpec, task_id: str) -> dict[str, Any]:
    if response.status_code == 404:
        raise PermanentError(f"task {task_id!r} does not exist in version {spec.version}")
    if response.status_code != 200:
        raise RuntimeUnavailable(
            f"the worker answered {response.status_code}: {response.text[:300]}"
        )
    return dict(response.json())


def run_leased(
    leases: Leases,
    client: WorkerConnections,
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

    def unreachable(exc: WorkerUnreachable) -> RuntimeUnavailable:
        stopped = stopping is not None and stopping.is_set() and stopped_message
        if stopped and not exc.connecting:
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
        except WorkerUnreachable as exc:
            _quietly(leases.release, spec.version_id, port)
            retry = attempt == 1 and not (stopping is not None and stopping.is_set())
            if exc.connecting and retry:
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
