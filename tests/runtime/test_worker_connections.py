"""The web and controller processes' connections to workers (``WorkerConnections``):
kept alive, never reused once the worker closed them, and failures classified by whether
the run could have started."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from support.waiting import scaled

from controller.runtimes.runcall import MAX_IDLE, WorkerConnections, WorkerUnreachable


class _Worker(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict[str, Any]] = []
        self.connections = 0
        self.close_after_answer = False
        self.drop_before_answer = False
        self.closed = threading.Semaphore(0)  # released each time a connection is closed

    def get_request(self) -> tuple[socket.socket, Any]:
        accepted = super().get_request()
        self.connections += 1
        return accepted

    def shutdown_request(self, request: Any) -> None:
        super().shutdown_request(request)
        self.closed.release()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Worker

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(body)
        if self.server.drop_before_answer:
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        answer = json.dumps({"status": "completed", "echo": body["run_id"]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
        if self.server.close_after_answer:
            self.close_connection = True

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def worker() -> Iterator[_Worker]:
    server = _Worker()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _post(connections: WorkerConnections, url: str, run_id: str) -> Any:
    return connections.post_json(url, "/runs", {"run_id": run_id}, read_timeout=30).json()


def test_runs_reuse_one_kept_alive_connection(worker: _Worker) -> None:
    connections = WorkerConnections()
    try:
        answers = [_post(connections, worker.url, f"run_{i}") for i in range(5)]
    finally:
        connections.close()
    assert [a["echo"] for a in answers] == [f"run_{i}" for i in range(5)]
    assert worker.connections == 1


def test_a_connection_the_worker_closed_is_not_reused_and_nothing_is_sent_twice(
    worker: _Worker,
) -> None:
    worker.close_after_answer = True  # as a worker restarting between two runs would
    connections = WorkerConnections()
    try:
        assert _post(connections, worker.url, "run_a")["echo"] == "run_a"
        assert worker.closed.acquire(timeout=scaled(30))  # closed before the next run
        assert _post(connections, worker.url, "run_b")["echo"] == "run_b"
    finally:
        connections.close()
    assert [r["run_id"] for r in worker.requests] == ["run_a", "run_b"]
    assert worker.connections == 2


def test_a_refused_connection_says_the_run_cannot_have_started() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: connections are refused
        connections = WorkerConnections()
        with pytest.raises(WorkerUnreachable) as caught:
            _post(connections, f"http://127.0.0.1:{port}", "run_x")
    assert caught.value.connecting


def test_a_request_cut_off_after_it_left_says_the_run_may_have_started(
    worker: _Worker,
) -> None:
    worker.drop_before_answer = True
    connections = WorkerConnections()
    try:
        with pytest.raises(WorkerUnreachable) as caught:
            _post(connections, worker.url, "run_x")
    finally:
        connections.close()
    assert not caught.value.connecting
    assert [r["run_id"] for r in worker.requests] == ["run_x"]  # sent once, not retried


def test_kept_alive_connections_are_bounded_in_all() -> None:
    """Connections to workers that stopped (previews scaled to zero) must not pile up."""
    connections = WorkerConnections()
    others = [_Worker() for _ in range(MAX_IDLE + 3)]
    threads = [threading.Thread(target=w.serve_forever, daemon=True) for w in others]
    for thread in threads:
        thread.start()
    try:
        for other in others:
            _post(connections, other.url, "run_x")
        assert sum(len(c) for c in connections._idle.values()) == MAX_IDLE
        assert others[0].server_address not in connections._idle  # least recently used
    finally:
        connections.close()
        for other in others:
            other.shutdown()
            other.server_close()


class _CountingSocket:
    """A connected socket that records each write the connection makes."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.writes: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self._sock.sendall(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def test_a_request_leaves_in_one_write_headers_and_body_together(worker: _Worker) -> None:
    connections = WorkerConnections()
    conn = connections._connect(("127.0.0.1", worker.server_address[1]))
    counting = _CountingSocket(conn.sock)  # type: ignore[arg-type]
    conn.sock = counting  # type: ignore[assignment]
    connections._give_back(("127.0.0.1", worker.server_address[1]), conn)
    try:
        assert _post(connections, worker.url, "run_one")["echo"] == "run_one"
    finally:
        connections.close()
    assert len(counting.writes) == 1
    head, _, body = counting.writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /runs HTTP/1.1")
    assert json.loads(body) == {"run_id": "run_one"}
    assert worker.connections == 1
