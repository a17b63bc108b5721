"""The worker's HTTP server: ``GET /health``, ``GET /tasks``, ``POST /runs``.

Part of the worker (see ``worker_main.py``, which loads this file by path; standard
library only). One thread per connection (``ThreadingHTTPServer``); the accept loop
blocks on the listening socket and a stop pipe, never on a timeout, so an idle worker is
not scheduled. Every answer is one write with TCP_NODELAY: headers and body split over
two writes on a keep-alive connection waited ~40 ms on Nagle against delayed ACK.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import selectors
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from controller.runtimes.worker_serve import Worker

MAX_REQUEST_BYTES = 32 * 1024 * 1024


def _log(message: str) -> None:
    sys.stderr.write(f"slipway-worker[{os.getpid()}]: {message}\n")
    sys.stderr.flush()


class Server(ThreadingHTTPServer):
    """``serve_forever`` wakes every ``poll_interval`` to look at a flag (10 wake-ups a
    second per idle worker at 0.1 s); this loop blocks on the listening socket and a
    stop pipe with no timeout, so an idle worker does not run at all."""

    daemon_threads = True
    worker: Worker

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._stop_r, self._stop_w = os.pipe()

    def serve_until_stopped(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            selector.register(self._stop_r, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    if key.fileobj is not self:
                        return
                self.handle_request()

    def stop(self) -> None:
        os.write(self._stop_w, b"x")

    def server_close(self) -> None:
        super().server_close()
        for fd in (self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)


class Server6(Server):
    address_family = socket.AF_INET6


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"
    _body = b""  # the last request's body as received: a run's child parses it itself
    server_version = "slipway-worker"

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        worker = self.server.worker
        if path == "/health":
            self._send(*worker.health())
        elif path == "/tasks":
            tasks = [
                {"id": task.id, "file": task.file, **task.info} for task in worker.tasks.values()
            ]
            self._send(200, tasks)
        else:
            self._send(404, {"error": f"no such path: {path}"})

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        if path != "/runs":
            self._send(404, {"error": f"no such path: {path}"})
            return
        request = self._read_json()
        if request is None:
            return
        worker = self.server.worker
        if worker.draining:
            self._send(503, {"error": "the worker is draining and accepts no new runs"})
            return
        task_id = request.get("task_id")
        run_id = request.get("run_id") or f"run_{secrets.token_hex(8)}"
        timeout = request.get("timeout")
        if not isinstance(task_id, str) or not isinstance(run_id, str):
            self._send(400, {"error": "task_id and run_id must be strings"})
            return
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
        ):
            self._send(400, {"error": "timeout must be a positive number of seconds or null"})
            return
        env = request.get("env") or {}
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            self._send(400, {"error": "env must be an object of strings"})
            return
        expected = request.get("version_id")
        if expected is not None and expected != worker.context.get("version_id"):
            self._send(503, {"error": f"this worker does not serve version id {expected}"})
            return
        task = worker.tasks.get(task_id)
        if task is None:
            self._send(404, {"error": f"unknown task {task_id!r} in this version"})
            return
        if not worker.admit():
            self._send(503, {"error": "the worker is draining and accepts no new runs"})
            return
        as_sent = self._body if request.get("run_id") == run_id else None
        try:
            result = worker.run(
                task=task,
                run_id=run_id,
                payload=request.get("payload"),
                timeout=timeout,
                env=env,
                body=as_sent,
            )
            self._send(200, result)
        finally:
            worker.release()

    def _read_json(self) -> dict[str, Any] | None:
        length_header = self.headers.get("Content-Length")
        if length_header is None or not length_header.isdigit():
            self._send(411, {"error": "a Content-Length header is required"}, close=True)
            return None
        length = int(length_header)
        if length > MAX_REQUEST_BYTES:
            self._send(413, {"error": f"body over {MAX_REQUEST_BYTES} bytes"}, close=True)
            return None
        self._body = self.rfile.read(length)
        try:
            body = json.loads(self._body)
        except ValueError:
            self._send(400, {"error": "the body is not JSON"})
            return None
        if not isinstance(body, dict):
            self._send(400, {"error": "the body must be a JSON object"})
            return None
        return body

    def setup(self) -> None:
        super().setup()
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _send(self, status: int, body: Any, *, close: bool = False) -> None:
        """One write per answer: headers and body in a single segment, so a reused
        connection never waits on Nagle against the client's delayed ACK."""
        data = json.dumps(body).encode()
        closing = close or self.server.worker.draining
        head = [
            f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}",
            f"Server: {self.server_version}",
            "Content-Type: application/json",
            f"Content-Length: {len(data)}",
        ]
        if closing:
            head.append("Connection: close")
            self.close_connection = True
        try:
            self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data)
            self.wfile.flush()
        except ConnectionError:
            self.close_connection = True
            _log(f"{self.command} {self.path}: the client went away before the {status} answer")

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass

    def log_message(self, format: str, *args: Any) -> None:
        _log(format % args)
