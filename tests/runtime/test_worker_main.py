"""The per-version worker, run for real: ``python -I -B worker_main.py`` on a sample repo.

No test here relies on timing: a run that must still be in flight waits on a gate file
(``tasks/gated.py``), concurrency is shown by two runs that each wait for the other, and
deadlines only bound how long a broken test takes to fail (``support.waiting``).

Over 400 lines: the cases of one program, all against the same sample repository and
worker fixtures.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import marshal
import os
import selectors
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.waiting import poll_until, scaled

import controller.runtimes
from controller.runtimes.worker_main import cached_name
from controller.runtimes.workers import compile_worker

WORKER_MAIN = Path(controller.runtimes.__file__).parent / "worker_main.py"
CONTEXT = {
    "project": "acme/widgets",
    "environment": "preview",
    "branch": "feature-x",
    "version": "20261123.1",
    "version_id": 12,
    "deployment_id": "dep_x",
}

SAMPLE_TASKS = {
    "lib.py": """
        def answer():
            return 42
    """,
    "tasks/_helpers.py": """
        def shout(text):
            return text.upper() + "!"
    """,
    "tasks/hello.py": """
        description = "Say hello"

        def run(payload, ctx):
            return {
                "greeting": "hello " + payload["name"],
                "task_id": ctx.task_id,
                "run_id": ctx["run_id"],
                "project": ctx.project,
                "environment": ctx.environment,
                "branch": ctx.branch,
                "version": ctx.version,
                "deployment_id": ctx["deployment_id"],
                "sees_env": ctx.env.get("SLIPWAY_SAMPLE"),
            }
    """,
    "tasks/test_hello.py": "def test_nothing():\n    pass\n",
    "tasks/hello_test.py": "raise RuntimeError('not a task, must not be imported')\n",
    "tasks/db/migrate.py": """
        from tasks._helpers import shout

        def run(payload, ctx):
            return shout("migrated " + ctx.task_id)
    """,
    "tasks/relative.py": """
        import lib
        from ._helpers import shout

        def run(payload, ctx):
            return {"answer": lib.answer(), "shout": shout("hi")}
    """,
    "tasks/asleep.py": """
        import asyncio

        async def run(payload, ctx):
            await asyncio.sleep(0.01)
            return {"async": True, "payload": payload}
    """,
    "tasks/slow.py": """
        import time

        max_duration = 0.5

        def run(payload, ctx):
            print("starting slowly", flush=True)
            time.sleep(30)
    """,
    "tasks/sleepy.py": """
        import time

        def run(payload, ctx):
            time.sleep(payload["seconds"])
            return "rested"
    """,
    "tasks/gated.py": """
        import os
        import time

        def run(payload, ctx):
            # Until the test opens the gate (or, with "meet", until the other run arrived).
            deadline = time.monotonic() + payload["deadline"]
            if payload.get("meet"):
                open(payload["meet"] + "." + payload["me"], "w").close()
                wanted = payload["meet"] + "." + payload["other"]
                while not os.path.exists(wanted) and time.monotonic() < deadline:
                    time.sleep(0.01)
                return "met" if os.path.exists(wanted) else "alone"
            while not os.path.exists(payload["gate"]) and time.monotonic() < deadline:
                time.sleep(0.01)
            return "through"
    """,
    "tasks/chatty.py": """
        import os
        import subprocess
        import sys

        def run(payload, ctx):
            print("via print")
            print("via stderr", file=sys.stderr)
            os.write(1, b"via fd 1\\n")
            subprocess.run(["sh", "-c", "echo via a subprocess"], check=True)
            print("x" * payload.get("bulk", 0))
            return "said it"
    """,
    "tasks/exits.py": """
        import os

        def run(payload, ctx):
            print("about to leave", flush=True)
            os._exit(3)
    """,
    "tasks/segfault.py": """
        import os
        import resource
        import signal

        def run(payload, ctx):
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            os.kill(os.getpid(), signal.SIGSEGV)
    """,
    "tasks/fails.py": """
        def run(payload, ctx):
            raise ValueError("boom")
    """,
    "tasks/not_json.py": """
        def run(payload, ctx):
            return {1, 2}
    """,
    "tasks/forks.py": """
        import subprocess

        def run(payload, ctx):
            child = subprocess.Popen(["sleep", "60"])
            return child.pid
    """,
    "tasks/counter.py": """
        calls = []

        def run(payload, ctx):
            calls.append(1)
            return len(calls)
    """,
    "tasks/__pycache__/stale.py": "raise RuntimeError('must not be imported')\n",
}


def write_repo(root: Path, files: dict[str, str]) -> Path:
    for relpath, text in files.items():
        path = root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    return root


def processes_for(source: Path) -> list[int]:
    """Live processes whose command line names ``source``: the worker and its forks."""
    needle = b"\0" + str(source).encode() + b"\0"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def is_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


@dataclass
class RunningWorker:
    proc: subprocess.Popen[bytes]
    source: Path
    ready: dict[str, Any]
    stderr_path: Path
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(
            base_url=f"http://127.0.0.1:{self.ready['port']}", timeout=scaled(60)
        )

    def run(self, task_id: str, payload: Any = None, **extra: Any) -> httpx.Response:
        body = {"run_id": f"run_{task_id}", "task_id": task_id, "payload": payload, **extra}
        return self.client.post("/runs", json=body)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def close(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=scaled(60))
        leftovers = processes_for(self.source)
        for pid in leftovers:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        assert not leftovers, f"processes left behind: {leftovers}"


def read_line(proc: subprocess.Popen[bytes], timeout: float = 60) -> bytes:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(scaled(timeout)):
            raise TimeoutError("the worker printed nothing on stdout")
    return proc.stdout.readline()


def spawn_worker(
    source: Path, stderr_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with stderr_path.open("wb") as stderr:
        return subprocess.Popen(
            [
                sys.executable,
                "-I",
                "-B",
                str(WORKER_MAIN),
                "--source",
                str(source),
                "--tasks-dir",
                "tasks",
                "--context-json",
                json.dumps(CONTEXT),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env={**os.environ, "SLIPWAY_SAMPLE": "visible", **(env or {})},
        )


@contextlib.contextmanager
def running_worker(source: Path, env: dict[str, str] | None = None) -> Iterator[RunningWorker]:
    stderr_path = source.parent / f"{source.name}-worker.stderr"
    proc = spawn_worker(source, stderr_path, env)
    worker: RunningWorker | None = None
    try:
        line = read_line(proc)
        ready = json.loads(line)
        assert ready["event"] == "ready", (ready, stderr_path.read_text())
        worker = RunningWorker(proc=proc, source=source, ready=ready, stderr_path=stderr_path)
        yield worker
    finally:
        if worker is not None:
            worker.close()
        else:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


@pytest.fixture(scope="module")
def sample_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_repo(tmp_path_factory.mktemp("repo") / "source", SAMPLE_TASKS)


@pytest.fixture(scope="module")
def worker(sample_repo: Path) -> Iterator[RunningWorker]:
    with running_worker(sample_repo) as running:
        yield running


EXPECTED_TASKS = [
    "asleep",
    "chatty",
    "counter",
    "db:migrate",
    "exits",
    "fails",
    "forks",
    "gated",
    "hello",
    "not_json",
    "relative",
    "segfault",
    "sleepy",
    "slow",
]


def test_ready_line_lists_the_tasks_then_stdout_closes(worker: RunningWorker) -> None:
    assert worker.ready["tasks"] == EXPECTED_TASKS
    assert worker.ready["pid"] == worker.proc.pid
    assert worker.ready["port"] > 0
    assert worker.proc.stdout is not None
    assert worker.proc.stdout.read() == b""


def test_health_and_tasks(worker: RunningWorker) -> None:
    health = worker.client.get("/health")
    assert health.status_code == 200
    assert health.json() == {
        "status": "ok",
        "version": "20261123.1",
        "version_id": 12,
        "pid": worker.proc.pid,
        "in_flight": 0,
    }

    tasks = {task["id"]: task for task in worker.client.get("/tasks").json()}
    assert sorted(tasks) == EXPECTED_TASKS
    assert tasks["hello"]["description"] == "Say hello"
    assert tasks["slow"]["max_duration"] == 0.5
    assert tasks["asleep"]["is_async"] is True
    assert tasks["db:migrate"]["file"] == "tasks/db/migrate.py"


def test_completed_run_sees_payload_and_context(worker: RunningWorker) -> None:
    response = worker.run("hello", {"name": "slipway"})
    assert response.status_code == 200
    result = response.json()
    assert result["status"] == "completed", result
    assert result["error"] is None
    assert result["duration_ms"] > 0
    assert result["output"] == {
        "greeting": "hello slipway",
        "task_id": "hello",
        "run_id": "run_hello",
        "project": CONTEXT["project"],
        "environment": CONTEXT["environment"],
        "branch": CONTEXT["branch"],
        "version": CONTEXT["version"],
        "deployment_id": CONTEXT["deployment_id"],
        "sees_env": "visible",
    }


def test_tasks_import_the_repository_helpers(worker: RunningWorker) -> None:
    assert worker.run("db:migrate").json()["output"] == "MIGRATED DB:MIGRATE!"
    assert worker.run("relative").json()["output"] == {"answer": 42, "shout": "HI!"}


def test_async_run(worker: RunningWorker) -> None:
    result = worker.run("asleep", [1, "two"]).json()
    assert result["status"] == "completed"
    assert result["output"] == {"async": True, "payload": [1, "two"]}


def test_every_run_starts_from_fresh_module_state(worker: RunningWorker) -> None:
    assert [worker.run("counter").json()["output"] for _ in range(3)] == [1, 1, 1]


def test_logs_are_captured_at_the_descriptor_level(worker: RunningWorker) -> None:
    result = worker.run("chatty", {}).json()
    assert result["status"] == "completed"
    for line in ("via print", "via stderr", "via fd 1", "via a subprocess"):
        assert line in result["logs"]
    assert "via print" not in worker.stderr()


def test_logs_keep_the_last_256_kib(worker: RunningWorker) -> None:
    result = worker.run("chatty", {"bulk": 400 * 1024}).json()
    assert result["status"] == "completed"
    logs = result["logs"]
    assert logs.startswith("[slipway: logs truncated, showing the last 262144 of ")
    assert len(logs) < 256 * 1024 + 200
    assert "via print" not in logs


def test_an_exception_fails_the_run_with_its_stack(worker: RunningWorker) -> None:
    result = worker.run("fails").json()
    assert result["status"] == "failed"
    assert result["error"]["type"] == "ValueError"
    assert result["error"]["message"] == "boom"
    assert "tasks/fails.py" in result["error"]["stack"]


def test_output_must_be_json(worker: RunningWorker) -> None:
    result = worker.run("not_json").json()
    assert result["status"] == "failed"
    assert "not JSON-serialisable" in result["error"]["message"]


def test_a_dying_run_does_not_take_the_worker_down(worker: RunningWorker) -> None:
    exited = worker.run("exits").json()
    assert exited["status"] == "failed"
    assert "exited with code 3" in exited["error"]["message"]
    assert "about to leave" in exited["logs"]

    crashed = worker.run("segfault").json()
    assert crashed["status"] == "failed"
    assert "SIGSEGV" in crashed["error"]["message"]

    assert worker.client.get("/health").status_code == 200
    assert worker.run("hello", {"name": "again"}).json()["status"] == "completed"


def test_max_duration_times_out_the_run(worker: RunningWorker) -> None:
    result = worker.run("slow").json()  # it would sleep 30 s
    assert result["status"] == "timed_out"
    assert "0.5s" in result["error"]["message"]
    assert "starting slowly" in result["logs"]
    assert result["duration_ms"] >= 500


def test_request_timeout_is_honoured(worker: RunningWorker) -> None:
    result = worker.run("sleepy", {"seconds": 60}, timeout=0.3).json()
    assert result["status"] == "timed_out"
    assert 300 <= result["duration_ms"] < 60_000, "cut at the request's timeout"


def test_subprocesses_left_behind_are_killed(worker: RunningWorker) -> None:
    result = worker.run("forks").json()
    assert result["status"] == "completed"
    poll_until(lambda: is_gone(result["output"]))


def test_runs_execute_concurrently(worker: RunningWorker, tmp_path: Path) -> None:
    """Each run waits for the other to have started: run one after the other, the first
    would give up alone at its deadline."""
    meet = str(tmp_path / "meet")

    def run(me: str, other: str) -> Any:
        payload = {"meet": meet, "me": me, "other": other, "deadline": scaled(60)}
        return worker.run("gated", payload).json()

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run, ["a", "b"], ["b", "a"]))
    assert [r["output"] for r in results] == ["met", "met"]


def test_bad_requests(worker: RunningWorker) -> None:
    unknown = worker.run("nope")
    assert unknown.status_code == 404
    assert "nope" in unknown.json()["error"]
    assert worker.client.post("/runs", content=b"{not json").status_code == 400
    assert worker.client.post("/runs", json={"task_id": "hello", "timeout": "1"}).status_code == 400
    assert worker.client.get("/elsewhere").status_code == 404


def test_import_errors_are_reported_and_exit_3(tmp_path: Path) -> None:
    source = write_repo(
        tmp_path / "broken",
        {"tasks/ok.py": "def run(payload, ctx):\n    return 1\n", "tasks/bad.py": "def run(:\n"},
    )
    with (tmp_path / "stderr").open("wb") as stderr:
        proc = subprocess.run(
            [sys.executable, "-I", "-B", str(WORKER_MAIN), "--source", str(source)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            timeout=30,
            check=False,
        )
    assert proc.returncode == 3
    lines = proc.stdout.decode().splitlines()
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert event["event"] == "error"
    [error] = event["errors"]
    assert error["file"] == "tasks/bad.py"
    assert error["type"] == "SyntaxError"
    assert error["line"] == 1


def test_sigterm_drains_in_flight_runs_then_exits_0(tmp_path: Path) -> None:
    source = write_repo(tmp_path / "source", SAMPLE_TASKS)
    with running_worker(source) as worker:
        results: dict[str, Any] = {}

        gate = tmp_path / "gate"
        payload = {"gate": str(gate), "deadline": scaled(120)}

        def in_flight() -> None:
            with httpx.Client(base_url=str(worker.client.base_url), timeout=scaled(180)) as client:
                body = {"run_id": "run_long", "task_id": "gated", "payload": payload}
                results["long"] = client.post("/runs", json=body)

        thread = threading.Thread(target=in_flight)
        thread.start()
        try:
            poll_until(lambda: worker.client.get("/health").json()["in_flight"] == 1)
            worker.proc.send_signal(signal.SIGTERM)
            poll_until(lambda: worker.client.get("/health").status_code == 503)
            assert worker.client.get("/health").json()["status"] == "draining"
            refused = worker.run("hello", {"name": "late"})
            assert refused.status_code == 503
        finally:
            gate.touch()
            thread.join(timeout=scaled(180))
        assert results["long"].status_code == 200
        assert results["long"].json()["status"] == "completed"
        assert results["long"].json()["output"] == "through"
        assert worker.proc.wait(timeout=scaled(60)) == 0
        poll_until(lambda: not processes_for(source))


def test_a_killed_worker_leaves_no_runs_behind(tmp_path: Path) -> None:
    source = write_repo(tmp_path / "source", SAMPLE_TASKS)
    proc = spawn_worker(source, tmp_path / "stderr")
    try:
        ready = json.loads(read_line(proc))
        with httpx.Client(
            base_url=f"http://127.0.0.1:{ready['port']}", timeout=scaled(60)
        ) as client:
            body = {"run_id": "run_orphan", "task_id": "sleepy", "payload": {"seconds": 300}}
            thread = threading.Thread(target=_post_ignoring_errors, args=(client, body))
            thread.start()
            poll_until(lambda: client.get("/health").json()["in_flight"] == 1)
            # the worker, its spawner, the run and the spare child forked for the next
            poll_until(lambda: len(processes_for(source)) == 4)
            proc.kill()
            proc.wait(timeout=scaled(60))
            thread.join(timeout=scaled(60))
        poll_until(lambda: not processes_for(source))
    finally:
        for pid in processes_for(source):
            subprocess.run(["kill", "-9", str(pid)], check=False)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def _post_ignoring_errors(client: httpx.Client, body: dict[str, Any]) -> None:
    with contextlib.suppress(httpx.HTTPError):
        client.post("/runs", json=body)


def test_a_run_is_answered_without_waiting_for_the_spawner_to_reap_it(tmp_path: Path) -> None:
    """The task stops its parent (the spawner) before returning: the spawner can then
    neither reap the run nor report its exit code, and the answer must not wait for it
    (those were two more wake-ups per run on a loaded machine)."""
    tasks = {
        "tasks/stops.py": """
            import os
            import signal
            import time

            def run(payload, ctx):
                # Once the spawner waits again (it has written this run's pid line).
                spawner = os.getppid()
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    with open(f"/proc/{spawner}/wchan") as wchan:
                        if wchan.read() == "do_epoll_wait":
                            break
                    time.sleep(0.01)
                os.kill(spawner, signal.SIGSTOP)
                return {"spawner": spawner}
        """,
    }
    source = write_repo(tmp_path / "source", tasks)
    with running_worker(source) as running:
        spawners = [p for p in processes_for(source) if p != running.proc.pid]
        try:
            response = running.client.post(
                "/runs",
                json={"run_id": "r", "task_id": "stops", "payload": None},
                timeout=scaled(20),
            )
            result = response.json()
            assert result["status"] == "completed", result
            assert result["output"]["spawner"] in spawners
        finally:
            for pid in spawners:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGCONT)


def test_the_worker_runs_its_files_from_the_controllers_bytecode_cache(tmp_path: Path) -> None:
    """The cache holds a marked build of worker_http.py under the real file's header
    (mtime, size): the worker must run it rather than compile the source again."""
    cache = compile_worker(tmp_path / "cache")
    assert cache is not None
    http_py = WORKER_MAIN.with_name("worker_http.py")
    source_bytes = http_py.read_bytes()
    marked = source_bytes.replace(b'"slipway-worker"', b'"slipway-worker-cached"')
    assert marked != source_bytes
    header = (
        importlib.util.MAGIC_NUMBER
        + (0).to_bytes(4, "little")
        + (int(http_py.stat().st_mtime) & 0xFFFFFFFF).to_bytes(4, "little")
        + len(source_bytes).to_bytes(4, "little")
    )
    code = compile(marked, str(http_py), "exec", dont_inherit=True)
    (cache / cached_name(http_py)).write_bytes(header + marshal.dumps(code))
    tasks = {"tasks/env.py": "import os\ndef run(p, ctx):\n    return sorted(os.environ)\n"}
    source = write_repo(tmp_path / "source", tasks)
    with running_worker(source, env={"SLIPWAY_WORKER_PYCACHE": str(cache)}) as running:
        assert running.client.get("/health").headers["server"] == "slipway-worker-cached"
        result = running.run("env").json()
        assert result["status"] == "completed"
        assert "SLIPWAY_WORKER_PYCACHE" not in result["output"]  # not the tasks' business
