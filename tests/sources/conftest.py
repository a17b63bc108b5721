"""Fixtures for the sources: real git repositories made with the git CLI, a GitSource on a
temporary cache, and a small HTTP server that answers git's first request with an error."""

from __future__ import annotations

import http.server
import subprocess
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from controller.sources.git import GitSource


@pytest.fixture(autouse=True)
def _hermetic_git(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    """Neither the developer's git config nor a surrounding git hook changes the outcome."""
    empty = tmp_path_factory.mktemp("gitconfig") / "config"
    empty.touch()
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(empty))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_CONFIG_COUNT"):
        monkeypatch.delenv(name, raising=False)


class Repo:
    """A non-bare repository on disk that tests commit to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True)
        self.git("init", "--quiet", "--initial-branch=main")
        self.git("config", "user.name", "Test")
        self.git("config", "user.email", "test@example.com")

    def git(self, *args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=self.path, check=True, capture_output=True, text=True
        )
        return done.stdout.strip()

    def write(
        self,
        files: Mapping[str, str | bytes | None] = {},
        *,
        executable: tuple[str, ...] = (),
        symlinks: Mapping[str, str] = {},
    ) -> None:
        for name, content in files.items():
            target = self.path / name
            if content is None:
                target.unlink()
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, str):
                target.write_text(content)
            else:
                target.write_bytes(content)
        for name in executable:
            (self.path / name).chmod(0o755)
        for name, link_target in symlinks.items():
            (self.path / name).parent.mkdir(parents=True, exist_ok=True)
            (self.path / name).symlink_to(link_target)

    def commit(
        self,
        files: Mapping[str, str | bytes | None] = {},
        *,
        executable: tuple[str, ...] = (),
        symlinks: Mapping[str, str] = {},
        message: str = "change",
    ) -> str:
        self.write(files, executable=executable, symlinks=symlinks)
        self.git("add", "--all")
        self.git("commit", "--quiet", "--allow-empty", "--message", message)
        return self.git("rev-parse", "HEAD")


@pytest.fixture
def make_repo() -> type[Repo]:
    return Repo


@pytest.fixture
def upstream(tmp_path: Path) -> Repo:
    repo = Repo(tmp_path / "octo-org" / "demo")
    repo.commit(
        {
            "README.md": "# demo\n",
            "tasks/hello.py": "def run(payload, ctx):\n    return 'hello'\n",
            "bin/start.sh": "#!/bin/sh\necho start\n",
        },
        executable=("bin/start.sh",),
        symlinks={"tasks/greet.py": "hello.py"},
        message="initial",
    )
    return repo


@pytest.fixture
def source(tmp_path: Path) -> GitSource:
    return GitSource(tmp_path / "cache", timeout=60)


class ErrorServer:
    """Answers every request with ``status`` and remembers the headers it was sent.

    With ``status = None`` it never answers (until closed): a server that hangs.
    """

    def __init__(self) -> None:
        self.status: int | None = 404
        self.headers: list[dict[str, str]] = []
        self._closing = threading.Event()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.headers.append({k.lower(): v for k, v in self.headers.items()})
                if owner.status is None:
                    owner._closing.wait(timeout=60)
                    return
                self.send_response(owner.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()  # joins the request threads
        self._thread.join(timeout=10)


@pytest.fixture
def error_server() -> Iterator[ErrorServer]:
    server = ErrorServer()
    yield server
    server.close()
