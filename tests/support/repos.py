"""Real git repositories with task files, made in a temp dir for tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

HELLO = """description = "Say hello"

def run(payload, ctx):
    print("hello from", ctx.environment)
    return {"message": MESSAGE, "version": ctx.version, "payload": payload}

MESSAGE = "{message}"
"""

MIGRATE = """def run(payload, ctx):
    return "migrated"
"""


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(repo), *args],
        check=True,
        capture_output=True,
        text=True,
        env={
            "GIT_AUTHOR_NAME": "Test",
            "GIT_AUTHOR_EMAIL": "t@example.com",
            "GIT_COMMITTER_NAME": "Test",
            "GIT_COMMITTER_EMAIL": "t@example.com",
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(repo),
        },
    )
    return out.stdout.strip()


class TaskRepo:
    """A repository on the ``main`` branch with ``tasks/hello.py`` and friends."""

    def __init__(self, path: Path, message: str = "hello v1") -> None:
        self.path = path
        path.mkdir(parents=True)
        git(path, "init", "-q", "-b", "main")
        self.write("tasks/hello.py", HELLO.replace("{message}", message))
        self.write("tasks/db/migrate.py", MIGRATE)
        self.write("tasks/_helpers.py", "HELPER = 1\n")
        self.write("tasks/test_hello.py", "def test_it():\n    pass\n")
        self.write("tasks/hello_test.py", "def test_it():\n    pass\n")
        self.commit("initial tasks")

    def write(self, rel: str, content: str) -> None:
        target = self.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)

    def commit(self, message: str) -> str:
        git(self.path, "add", "-A")
        git(self.path, "commit", "-q", "-m", message)
        return self.head()

    def head(self) -> str:
        return git(self.path, "rev-parse", "HEAD")

    def set_message(self, message: str) -> str:
        self.write("tasks/hello.py", HELLO.replace("{message}", message))
        return self.commit(f"say {message}")

    def checkout(self, branch: str, *, create: bool = False) -> None:
        git(self.path, "checkout", "-q", *(["-b"] if create else []), branch)


def empty_repository(path: Path) -> Path:
    """An empty bare repository: a clone URL that exists, whose deployments fail fast
    (no such commit)."""
    subprocess.run(["git", "init", "-q", "--bare", str(path)], check=True)
    return path
