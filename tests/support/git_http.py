"""A private git host for tests: ``git http-backend`` behind HTTP basic auth.

GitHub's smart-HTTP accepts an installation token as the password of user
``x-access-token``; this server does the same with the tokens ``accept`` returns at
each request (e.g. :attr:`FakeGitHub.issued_tokens`), answers ``401`` otherwise, and
pipes accepted requests through git's own CGI program (``GIT_PROJECT_ROOT`` = ``root``).
It records each request's credentials and whether they were accepted, so a test can
prove a clone was authenticated, and that a wrong token was refused.
"""

from __future__ import annotations

import base64
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    user: str | None
    accepted: bool


class GitHttpServer:
    def __init__(self, root: Path, *, accept: Callable[[], set[str]]) -> None:
        self.root = root
        self.accept = accept
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def clone_url(self, name: str) -> str:
        return f"{self.url}/{name}.git"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> GitHttpServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check(self, authorization: str | None) -> tuple[str | None, bool]:
        if not authorization or not authorization.lower().startswith("basic "):
            return None, False
        try:
            user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
        except ValueError:
            return None, False
        return user, user == "x-access-token" and password in self.accept()

    def record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)


def _handler(server: GitHttpServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            user, accepted = server.check(self.headers.get("Authorization"))
            server.record(Seen(self.command, parts.path, user, accepted))
            if not accepted:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="test git"')
                self.send_header("Content-Length", "0")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                return
            env = {
                "PATH": "/usr/bin:/bin:/usr/local/bin",
                "GIT_PROJECT_ROOT": str(server.root),
                "GIT_HTTP_EXPORT_ALL": "1",
                "PATH_INFO": parts.path,
                "QUERY_STRING": parts.query,
                "REQUEST_METHOD": self.command,
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(len(body)),
                "REMOTE_USER": user or "",
                "REMOTE_ADDR": "127.0.0.1",
                "HTTP_GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
            }
            done = subprocess.run(
                ["git", "http-backend"], input=body, env=env, capture_output=True, timeout=60
            )
            head, _, content = done.stdout.partition(b"\r\n\r\n")
            status, headers = 200, []
            for line in head.decode("latin-1").split("\r\n"):
                name, _, value = line.partition(":")
                if name.lower() == "status":
                    status = int(value.split()[0])
                elif name:
                    headers.append((name, value.strip()))
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(content)))
            self.send_header("Connection", "close")  # no handler thread outlives a test
            self.close_connection = True
            self.end_headers()
            self.wfile.write(content)

        do_GET = do_POST = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
