"""``slipway demo``: the main job, end to end, offline.

1. Copies a sample repository with tasks into a temp dir and makes it a git repository.
2. Starts ``slipway serve`` on a free loopback port with a fresh data dir and a random
   webhook secret (SQLite, local worker processes: the embedded defaults).
3. Connects a project to the sample, with the repository path as its clone URL.
4. Sends GitHub's own push payload (from ``@octokit/webhooks-examples``), signed, for the
   default branch → a production version; runs ``hello`` in production.
5. Commits a change on ``feature/greeting`` and sends a ``pull_request.opened`` delivery →
   a preview branch with its own version; runs ``hello`` there; production is untouched.
6. Sends ``pull_request.closed`` → the preview is archived and refuses runs (409).

It prints what happened. At a terminal (or with ``--keep-running``) the server then
keeps running until Ctrl-C, and the demo prints commands to explore it that work as
printed: ``slipway`` is spelled as this program was started (``.venv/bin/slipway`` after
the README's install, which does not put it on PATH). Otherwise (``--no-keep-running``,
or no terminal: scripts, CI) it stops the server at once. Either way the temp dir (sample
repository, data dir, server log) is removed at the end, also after a failure or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from controller.branchnames import branch_headers
from controller.cli import own_invocation
from webhooks.signatures import sign

HERE = Path(__file__).parent
REPO = "octo-org/demo"
console = Console()


def _git(repo: Path, *args: str) -> str:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(repo),
        "GIT_AUTHOR_NAME": "Demo",
        "GIT_AUTHOR_EMAIL": "demo@example.com",
        "GIT_COMMITTER_NAME": "Demo",
        "GIT_COMMITTER_EMAIL": "demo@example.com",
    }
    out = subprocess.run(
        ["git", "-C", str(repo), *args], env=env, check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _payload(name: str) -> dict[str, Any]:
    return copy.deepcopy(json.loads((HERE / "payloads" / f"{name}.json").read_text()))


def push_payload(*, before: str, after: str, clone_url: str) -> dict[str, Any]:
    payload = _payload("push")
    payload.update(ref="refs/heads/main", before=before, after=after, created=False, deleted=False)
    payload["repository"]["clone_url"] = clone_url
    if payload.get("head_commit"):
        payload["head_commit"]["id"] = after
    for commit in payload.get("commits") or []:
        commit["id"] = after
    return payload


def pull_request_payload(action: str, *, number: int, branch: str, sha: str) -> dict[str, Any]:
    payload = _payload(f"pull_request.{'closed' if action == 'closed' else 'opened'}")
    payload["action"] = action
    payload["number"] = number
    pr = payload["pull_request"]
    pr["number"] = number
    pr["head"]["ref"] = branch
    pr["head"]["sha"] = sha
    pr["head"]["label"] = f"octo-org:{branch}"
    pr["head"]["repo"] = copy.deepcopy(payload["repository"])
    pr["draft"] = False
    return payload


class Demo:
    def __init__(self, port: int) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="slipway-demo-"))
        self.data = self.root / "data"
        self.repo = self.root / "sample-repo"
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.secret = secrets.token_hex(16)
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=120, trust_env=False)
        self.delivery = 0
        self.prod_id = ""
        self.log_file = self.root / "serve.log"

    # -- plumbing -------------------------------------------------------------------------

    def start_server(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLIPWAY_")}
        env.update(
            SLIPWAY_DATA_DIR=str(self.data),
            SLIPWAY_PORT=str(self.port),
            SLIPWAY_HOST="127.0.0.1",
            SLIPWAY_WEBHOOK_SECRET=self.secret,
        )
        with open(self.log_file, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "controller.cli", "serve", "--log-level", "warning"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("slipway serve exited:\n" + self.log_file.read_text())
            try:
                if self.http.get("/readyz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("slipway serve did not become ready:\n" + self.log_file.read_text())

    def stop_server(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.http.close()

    @property
    def token(self) -> str:
        return (self.data / "admin_token").read_text().strip()

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        response = self.http.request(method, path, headers=headers, **kwargs)
        response.raise_for_status()
        return response.json()

    def deliver(self, event: str, payload: dict[str, Any]) -> str:
        self.delivery += 1
        body = json.dumps(payload).encode()
        delivery = f"demo-{self.delivery}-{secrets.token_hex(4)}"
        response = self.http.post(
            "/webhooks/github",
            content=body,
            headers={
                "X-GitHub-Event": event,
                "X-GitHub-Delivery": delivery,
                "X-Hub-Signature-256": sign(self.secret, body),
                "Content-Type": "application/json",
            },
        )
        console.print(f"  POST /webhooks/github ({event}) → [bold]{response.status_code}[/bold]")
        response.raise_for_status()
        return delivery

    def wait_deployed(self, predicate: Any, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + 300
        with console.status(f"waiting for {what}…"):
            while time.monotonic() < deadline:
                for dep in self.api("GET", "/api/v1/projects/demo/deployments"):
                    if predicate(dep) and dep["status"] in (
                        "deployed",
                        "failed",
                        "canceled",
                        "timed_out",
                    ):
                        if dep["status"] != "deployed":
                            raise RuntimeError(f"{what} {dep['status']}: {dep['error']}")
                        return dict(dep)
                time.sleep(0.2)
        raise RuntimeError(f"{what} did not finish in time")

    def run_task(
        self, env: str, task: str, payload: Any, branch: str | None = None
    ) -> httpx.Response:
        headers = branch_headers(branch)
        key = self.api(
            "GET", f"/api/v1/projects/demo/environments/{env}/secret-key", headers=headers
        )["secret_key"]
        return self.http.post(
            f"/api/v1/tasks/{task}/trigger",
            json={"payload": payload},
            headers={"Authorization": f"Bearer {key}", **headers},
        )

    # -- the story ------------------------------------------------------------------------

    def run(self) -> None:
        console.rule(
            "[bold]Slipway demo[/bold] — offline, embedded defaults (SQLite, local workers)"
        )
        shutil.copytree(HERE / "sample", self.repo)
        _git(self.repo, "init", "-q", "-b", "main")
        _git(self.repo, "add", "-A")
        _git(self.repo, "commit", "-q", "-m", "Add tasks")
        first = _git(self.repo, "rev-parse", "HEAD")
        console.print(f"1. Sample repository with tasks: {self.repo}")

        self.start_server()
        console.print(f"2. [bold]slipway serve[/bold] is up at {self.url} (data dir {self.data})")

        self.api(
            "POST",
            "/api/v1/projects",
            json={"ref": "demo", "repo": REPO, "clone_url": str(self.repo)},
        )
        console.print(
            f"3. Project [bold]demo[/bold] connected to {REPO} (clone URL: the local repository)"
        )

        console.print("4. A push to main, in GitHub's exact webhook format, signed:")
        self.deliver("push", push_payload(before="0" * 40, after=first, clone_url=str(self.repo)))
        prod = self.wait_deployed(lambda d: d["sha"] == first, "the production deployment")
        self.prod_id = prod["id"]
        console.print(
            f"   production deployed version [bold green]{prod['version']}[/bold green] ({prod['id']})"
        )
        result = self.run_task("production", "hello", {"name": "Ada"}).json()
        console.print(
            f"   run hello in production → {result['status']}: {json.dumps(result['output'])}"
        )

        console.print("5. A pull request from feature/greeting changes the greeting:")
        _git(self.repo, "checkout", "-q", "-b", "feature/greeting")
        hello = self.repo / "tasks" / "hello.py"
        hello.write_text(hello.read_text().replace('GREETING = "Hello"', 'GREETING = "Ahoy"'))
        _git(self.repo, "commit", "-qam", "Say ahoy")
        head = _git(self.repo, "rev-parse", "HEAD")
        self.deliver(
            "pull_request",
            pull_request_payload("opened", number=1, branch="feature/greeting", sha=head),
        )
        preview = self.wait_deployed(
            lambda d: d["branch"] == "feature/greeting", "the preview deployment"
        )
        console.print(
            f"   preview branch feature/greeting deployed version "
            f"[bold green]{preview['version']}[/bold green] (its own count)"
        )
        result = self.run_task(
            "preview", "hello", {"name": "Ada"}, branch="feature/greeting"
        ).json()
        console.print(
            f"   run hello in the preview → {result['status']}: {json.dumps(result['output'])}"
        )
        result = self.run_task("production", "hello", {"name": "Ada"}).json()
        console.print(f"   production is untouched → {json.dumps(result['output'])}")

        console.print("6. The pull request is closed:")
        self.deliver(
            "pull_request",
            pull_request_payload("closed", number=1, branch="feature/greeting", sha=head),
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            envs = self.api("GET", "/api/v1/projects/demo/environments")
            if any(e["branch"] == "feature/greeting" and e["status"] == "archived" for e in envs):
                break
            time.sleep(0.2)
        response = self.run_task("preview", "hello", {}, branch="feature/greeting")
        console.print(
            f"   preview archived; a new run there → [bold]{response.status_code}[/bold] "
            f"{response.json().get('error')}"
        )

        console.rule("[bold green]It works[/bold green]")

    def print_where_to_look(self) -> None:
        """Commands to explore the running demo, exactly as they can be pasted (printed
        without markup or wrapping; ``slipway`` as this very program was started)."""
        slipway = own_invocation()
        env = f"SLIPWAY_API_URL={self.url} SLIPWAY_DATA_DIR={shlex.quote(str(self.data))}"
        payload = shlex.quote(json.dumps({"name": "you"}))
        console.print("Where to look, while the server runs (in another shell):", style="bold")
        for label, line in (
            ("API docs", f"{self.url}/docs"),
            ("deployments", f"{env} {slipway} deployments --project demo"),
            ("logs", f"{env} {slipway} logs {self.prod_id}"),
            ("versions", f"{env} {slipway} versions --project demo --env prod"),
            (
                "run a task",
                f"{env} {slipway} tasks run hello --project demo --env prod --payload {payload}",
            ),
            ("server log", str(self.log_file)),
        ):
            print(f"  {label:<12}  {line}", flush=True)

    def sweep(self) -> None:
        """Remove the temp dir, after stopping any worker a forced server stop left behind."""
        for record in (self.data / "workers").glob("*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                os.killpg(int(json.loads(record.read_text())["pid"]), signal.SIGTERM)
        shutil.rmtree(self.root, ignore_errors=True)


def _stop_like_ctrl_c(signum: int, frame: object) -> None:
    """``kill <pid>`` stops the demo as Ctrl-C does: its server stopped, its temp dir
    removed (the server runs in a session of its own, so nothing else would stop it)."""
    raise KeyboardInterrupt


def run_demo(*, keep_running: bool | None = None, port: int = 0) -> int:
    """Run the story; ``keep_running`` (default: when a person is at a terminal) keeps the
    server up until Ctrl-C so the printed commands work. The temp dir goes on every path."""
    if keep_running is None:
        keep_running = sys.stdin.isatty() and sys.stdout.isatty()
    demo = Demo(port)
    with contextlib.suppress(ValueError):  # not the main thread: no signal handler of ours
        signal.signal(signal.SIGTERM, _stop_like_ctrl_c)
    try:
        try:
            demo.run()
        except Exception as exc:
            console.print(f"[red]demo failed:[/red] {exc}")
            if demo.proc is not None:
                tail = demo.log_file.read_text(errors="replace").splitlines()[-30:]
                console.print("last lines of the server log:\n" + "\n".join(tail), markup=False)
            return 1
        if not keep_running:
            console.print(
                f"The server has stopped and {demo.root} is removed. To explore the API and "
                "the CLI afterwards, keep it running:",
                highlight=False,
            )
            print(f"  {own_invocation()} demo --keep-running", flush=True)
            return 0
        demo.print_where_to_look()
        console.print(
            f"\nThe server keeps running at {demo.url} (pid {demo.proc.pid if demo.proc else '?'}). "
            "Ctrl-C stops it and removes the demo's temp dir.",
            highlight=False,
        )
        if demo.proc is not None:
            demo.proc.wait()
        console.print("[red]the server stopped on its own[/red]")
        return 1
    except KeyboardInterrupt:
        console.print("\nStopping the demo server.")
        return 0
    finally:
        demo.stop_server()
        demo.sweep()
