"""A real ``slipway serve`` subprocess on a random loopback port, for tests and benchmarks."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from controller.branchnames import branch_headers
from support.waiting import poll_until, scaled
from webhooks.signatures import sign

SLIPWAY = [sys.executable, "-m", "controller.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """Start, stop, SIGKILL and restart a controller with a fixed data dir and port."""

    def __init__(
        self,
        data_dir: Path,
        *,
        secret: str | None = "test-secret",
        database_url: str | None = None,
        extra_env: dict[str, str] | None = None,
        log_level: str = "warning",
    ) -> None:
        self.data_dir = data_dir
        self.log_level = log_level
        self.secret = secret
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SLIPWAY_")}
        self.env.update(
            SLIPWAY_DATA_DIR=str(data_dir),
            SLIPWAY_HOST="127.0.0.1",
            SLIPWAY_PORT=str(self.port),
            SLIPWAY_API_URL=self.url,
            SLIPWAY_RESYNC_INTERVAL="2",
            # Tests that count what deliveries deploy would race the branch pass (it
            # deploys the test repo's head on its own); tests/e2e/test_reconcile.py turns
            # it on.
            SLIPWAY_RESYNC_BRANCHES="false",
        )
        if secret:
            self.env["SLIPWAY_WEBHOOK_SECRET"] = secret
        if database_url:
            self.env["SLIPWAY_DATABASE_URL"] = database_url
        self.env.update(extra_env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None  # of the last stop()/interrupt()
        self.log_path = data_dir.parent / f"serve-{self.port}.log"
        self.client = httpx.Client(base_url=self.url, timeout=scaled(60), trust_env=False)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, timeout: float = 180.0) -> Server:
        """Start and wait until ``/readyz`` says ready, which includes the controller
        process: at ``nice`` +10 on a busy machine it can take tens of seconds to start."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*SLIPWAY, "serve", "--log-level", self.log_level],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.data_dir.parent,
            process_group=0,  # as from a shell: Ctrl-C (interrupt()) reaches its group
        )
        log.close()
        proc = self.proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"slipway serve exited:\n{self.log()}")
            try:
                return self.client.get("/readyz").status_code == 200
            except httpx.HTTPError:
                return False

        poll_until(ready, timeout=timeout, what="/readyz", context=self._log_section)
        return self

    def stop(self, timeout: float = 60.0, *, signum: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            if signum == signal.SIGINT:
                os.killpg(self.proc.pid, signum)
            else:
                self.proc.send_signal(signum)
            try:
                self.proc.wait(scaled(timeout))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.returncode = self.proc.returncode
        self.proc = None

    def interrupt(self, timeout: float = 90.0) -> None:
        """Ctrl-C in the terminal: SIGINT to the server's whole process group."""
        self.stop(timeout, signum=signal.SIGINT)

    def kill(self) -> None:
        """SIGKILL the controller (its workers, in their own sessions, survive)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def close(self) -> None:
        self.stop()
        self.client.close()
        kill_workers(self.data_dir)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-20000:]
        except OSError:
            return ""

    # -- API helpers ----------------------------------------------------------------------

    @property
    def token(self) -> str:
        return (self.data_dir / "admin_token").read_text().strip()

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        return self.client.request(method, path, headers=headers, **kwargs)

    def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.api(method, path, **kwargs)
        assert response.status_code < 400, (
            f"{method} {path}: {response.status_code} {response.text}"
        )
        return response.json()

    def deliver(
        self,
        event: str,
        payload: dict[str, Any] | bytes,
        *,
        delivery: str | None = None,
        secret: str | None = None,
        signature: str | None = None,
    ) -> httpx.Response:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        headers = {
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
            "Content-Type": "application/json",
        }
        key = secret if secret is not None else self.secret
        if signature is not None:
            headers["X-Hub-Signature-256"] = signature
        elif key:
            headers["X-Hub-Signature-256"] = sign(key, body)
        return self.client.post("/webhooks/github", content=body, headers=headers)

    def create_project(self, ref: str = "demo", **fields: Any) -> dict[str, Any]:
        return dict(self.ok("POST", "/api/v1/projects", json={"ref": ref, **fields}))

    def deployments(self, ref: str = "demo", **params: Any) -> list[dict[str, Any]]:
        return list(self.ok("GET", f"/api/v1/projects/{ref}/deployments", params=params))

    def _log_section(self) -> str:
        return f"--- server log ---\n{self.log()}"

    def wait_for(
        self,
        predicate: Any,
        timeout: float = 60.0,
        interval: float = 0.1,
        *,
        what: str = "",
        context: Callable[[], str] | None = None,
    ) -> Any:
        """:func:`~support.waiting.poll_until` with the server log in the failure, after
        the caller's own ``context`` (how far it got, say)."""

        def described() -> str:
            mine = f"{context()}\n" if context is not None else ""
            return mine + self._log_section()

        return poll_until(
            predicate, timeout=timeout, interval=interval, what=what, context=described
        )

    def wait_deployment(self, deployment_id: str, timeout: float = 240.0) -> dict[str, Any]:
        final = {"deployed", "failed", "canceled", "superseded", "timed_out"}

        def done() -> dict[str, Any] | None:
            dep = self.ok("GET", f"/api/v1/deployments/{deployment_id}")
            return dep if dep["status"] in final else None

        return dict(self.wait_for(done, timeout))

    def secret_key(self, ref: str, env: str, branch: str | None = None) -> str:
        headers = branch_headers(branch)
        return str(
            self.ok(
                "GET", f"/api/v1/projects/{ref}/environments/{env}/secret-key", headers=headers
            )["secret_key"]
        )

    def trigger(
        self,
        ref: str,
        env: str,
        task: str,
        payload: Any = None,
        *,
        branch: str | None = None,
        version: str | None = None,
    ) -> httpx.Response:
        key = self.secret_key(ref, env, branch)
        body: dict[str, Any] = {"payload": payload}
        if version:
            body["options"] = {"version": version}
        headers = {"Authorization": f"Bearer {key}", **branch_headers(branch)}
        return self.client.post(f"/api/v1/tasks/{task}/trigger", json=body, headers=headers)


def kill_workers(data_dir: Path) -> None:
    """Stop worker processes a test left behind (recorded in the data dir)."""
    registry = data_dir / "workers"
    if not registry.is_dir():
        return
    for path in registry.glob("*.json"):
        try:
            pid = int(json.loads(path.read_text())["pid"])
            os.killpg(pid, signal.SIGKILL)
        except (OSError, ValueError, KeyError):
            pass
