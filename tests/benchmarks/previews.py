"""Preview benchmark (issue 8): many previews, their memory, scale to zero, run latency.

Run from the repository root::

    .venv/bin/python tests/benchmarks/previews.py            # 200 previews
    .venv/bin/python tests/benchmarks/previews.py --n 50
    .venv/bin/python tests/benchmarks/previews.py --quick    # smoke run, 4 previews
    .venv/bin/python tests/benchmarks/previews.py --n 1000 --controller-cpus auto

One real ``slipway serve`` (SQLite, fresh temp data dir, resync every 2 s) and a task
repository with one branch per preview. All ``--n`` pull requests are delivered in a
burst (signed webhooks); the cap (``SLIPWAY_MAX_LIVE_PREVIEW_WORKERS``) is ``--cap``
(default 50, the product's default), the idle timeout ``--idle`` seconds.

Figures, printed and written to ``tests/benchmarks/results/previews.json``:
- the burst: every preview ends deployed, and how long that took; the webhook ack p99
  during the burst beside the same deliveries to an empty server (no project: verify,
  record, 202) started first, as a ratio (target <= 1.2);
- peak memory of all workers (PSS and RSS summed over every process of every worker's
  session, sampled through the burst), per worker, and processes per worker;
- the controller's RSS (the serve process tree less the workers);
- one resync pass over them (the whole pass, from the controller's debug log; target
  < 1 s), and its health checks of live workers (parallel, bounded);
- a trivial task's run through the trigger API: warm p50 (target < 10 ms) and, after the
  idle timeout stopped every preview worker (0 left is checked), cold p50 (< 400 ms);
- idle wake-ups per worker per second (context switches over 10 s, all threads; the
  resync's health check every 2 s accounts for about 0.5 a second).

The exit code is non-zero when a preview does not deploy, a run fails, or preview
workers outlive the idle timeout. The load average is part of the report.

Over 400 lines: a benchmark is one file, run by path, with its own measuring helpers.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
for _p in (str(ROOT), str(TESTS)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from support import payloads  # noqa: E402
from support.repos import TaskRepo  # noqa: E402
from support.server import Server  # noqa: E402

from controller.branchnames import branch_headers  # noqa: E402
from controller.runtimes.local import WORKER_MAIN  # noqa: E402
from controller.runtimes.procs import session_of, workers_marked  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "previews.json"
REPO = "octo-org/bench"
WARM_TARGET_MS = 10.0
COLD_TARGET_MS = 400.0
TARGETS = {
    "warm_p50_ms": WARM_TARGET_MS,
    "cold_p50_ms": COLD_TARGET_MS,
    "peak_worker_pss_mb": 2048,
    "controller_rss_mb": 250,
    "resync_pass_ms": 1000,
    "ack_p99_ratio": 1.2,
    "preview_workers_after_idle": 0,
}


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _memory_kb(pid: int) -> tuple[int, int]:
    """(PSS, RSS) in KiB from smaps_rollup; (0, 0) for a process that is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0, 0
    fields = dict(re.findall(r"^(\w+):\s+(\d+) kB", text, re.M))
    return int(fields.get("Pss", 0)), int(fields.get("Rss", 0))


def _name(pid: int) -> str:
    """A process's command line, shortened: ``python -m controller.child --log-level …``."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [Path(a.decode(errors="replace")).name for a in args if a][:4]
    return " ".join(words)[:60]


def _switches(pid: int) -> int:
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            for line in (task / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
    except OSError:
        pass
    return total


def _worker_processes(data_dir: Path) -> dict[int, list[int]]:
    leaders = workers_marked(WORKER_MAIN, owner=data_dir / "workers")
    groups: dict[int, list[int]] = {sid: [] for sid in leaders}
    for pid in _pids():
        sid = session_of(pid)
        if sid in groups:
            groups[sid].append(pid)
    return groups


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for pid in _pids():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[pid] = int(stat[1])
    found, frontier = [root], [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def _percentile(values: list[float], q: float) -> float:
    data = sorted(values)
    pos = (len(data) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def _trigger(server: Server, key: str, branch: str) -> float:
    headers = {"Authorization": f"Bearer {key}", **branch_headers(branch)}
    started = time.perf_counter()
    response = server.client.post(
        "/api/v1/tasks/hello/trigger", json={"payload": None}, headers=headers
    )
    elapsed = time.perf_counter() - started
    if response.status_code != 200 or response.json().get("status") != "completed":
        raise SystemExit(f"a run on {branch} failed: {response.status_code} {response.text[:300]}")
    return elapsed * 1000


def _sample(data_dir: Path) -> dict[str, Any]:
    groups = _worker_processes(data_dir)
    pss = rss = 0
    for pids in groups.values():
        for pid in pids:
            p, r = _memory_kb(pid)
            pss, rss = pss + p, rss + r
    return {
        "workers": len(groups),
        "processes": sum(len(p) for p in groups.values()),
        "pss_kb": pss,
        "rss_kb": rss,
    }


def _sample_until_told(data_dir: Path, conn: Connection) -> None:
    """The sampler process: one sample a second until asked, then the peak."""
    peak: dict[str, Any] = {"pss_kb": 0}
    while not conn.poll(1.0):
        now = _sample(data_dir)
        if now["pss_kb"] > peak["pss_kb"]:
            peak = now
    conn.send(peak)


class _Sampler:
    """Samples worker memory through the burst, in a process of its own: a sampling
    thread in this process held its interpreter lock for tens of milliseconds a second
    (walking /proc), and a delivery whose answer came meanwhile was timed late."""

    def __init__(self, server: Server) -> None:
        self._conn, child = multiprocessing.Pipe()
        context = multiprocessing.get_context("spawn")
        self._process = context.Process(
            target=_sample_until_told, args=(server.data_dir, child), daemon=True
        )

    def start(self) -> None:
        self._process.start()

    def peak(self) -> dict[str, Any]:
        """Stop sampling; the peak it saw."""
        self._conn.send("stop")
        peak: dict[str, Any] = self._conn.recv()
        self._process.join()
        return peak

    def stop(self) -> None:
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


def _resync_ms(server: Server, since: int) -> tuple[float, float] | None:
    """The last whole resync pass logged after byte ``since`` of the log, and the last
    health-check round before it (ms)."""
    text = server.log_path.read_text(errors="replace")[since:]
    passes = re.findall(r"resync pass done in ([\d.]+) ms", text)
    checks = re.findall(r"resync: \d+ worker\(s\) checked in ([\d.]+) ms", text)
    if not passes:
        return None
    return float(passes[-1]), float(checks[-1]) if checks else 0.0


def _pr(number: int, branch: str, sha: str) -> dict[str, Any]:
    return payloads.pull_request(
        action="opened", number=number, repo=REPO, head_ref=branch, head_sha=sha
    )


def _bodies(heads: dict[str, str]) -> list[bytes]:
    """Every pull request's delivery body, built before the burst: building one from
    GitHub's example payload takes the client ~20 ms of CPU, which is not the server's."""
    return [
        json.dumps(_pr(number, branch, sha)).encode()
        for number, (branch, sha) in enumerate(heads.items(), start=1)
    ]


def _deliver_all(server: Server, bodies: list[bytes]) -> list[float]:
    """Every delivery, one after another; each ack's latency in ms (signing, sending and
    the server's answer)."""
    acks = []
    for body in bodies:
        started = time.perf_counter()
        response = server.deliver("pull_request", body)
        acks.append((time.perf_counter() - started) * 1000)
        if response.status_code != 202:
            raise SystemExit(f"delivery refused: {response.status_code} {response.text}")
    return acks


def _empty_server_acks(base: Path, bodies: list[bytes], env: dict[str, str]) -> list[float]:
    server = Server(base / "empty-data", extra_env=env)
    try:
        server.start()
        return _deliver_all(server, bodies)
    finally:
        server.close()


def measure(
    *,
    n: int,
    cap: int,
    idle: float,
    warm_runs: int,
    window: float,
    controller_cpus: str | None = None,
) -> dict[str, Any]:
    cpus = {"SLIPWAY_CONTROLLER_CPUS": controller_cpus} if controller_cpus else {}
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="slipway-bench-previews-") as tmp:
        base = Path(tmp)
        repo = TaskRepo(base / "repo")
        branches = [f"pr-{i}" for i in range(n)]
        heads = {}
        for branch in branches:
            repo.checkout("main")
            repo.checkout(branch, create=True)
            heads[branch] = repo.set_message(f"hello {branch}")
        repo.checkout("main")
        bodies = _bodies(heads)
        empty_acks = _empty_server_acks(base, bodies, cpus)
        server = Server(
            base / "data",
            log_level="debug",
            extra_env={
                "SLIPWAY_PREVIEW_IDLE_TIMEOUT": str(idle),
                "SLIPWAY_MAX_LIVE_PREVIEW_WORKERS": str(cap),
                **cpus,
            },
        )
        sampler = _Sampler(server)
        try:
            server.start()
            server.create_project(
                "bench", repo=REPO, clone_url=str(repo.path), preview_limit=max(n, 10)
            )
            started = time.monotonic()
            sampler.start()
            acks = _deliver_all(server, bodies)

            shown = [0.0]

            def deployed() -> bool:
                envs = server.ok("GET", "/api/v1/projects/bench/environments")
                live = [e for e in envs if e["branch"] in heads and e.get("current_version")]
                if time.monotonic() - shown[0] > 30:  # progress, for a run cut short
                    shown[0] = time.monotonic()
                    elapsed = time.monotonic() - started
                    print(f"[{elapsed:.0f} s] {len(live)} of {n} deployed", file=sys.stderr)
                return len(live) == n

            server.wait_for(deployed, timeout=120 + 10 * n, interval=1.0)
            burst_s = time.monotonic() - started
            settled = _sample(server.data_dir)
            peak = max(sampler.peak(), settled, key=lambda s: s["pss_kb"])

            keys = {b: server.secret_key("bench", "preview", b) for b in branches}
            for branch in branches[-min(n, cap) :]:  # the live ones answer, warm
                _trigger(server, keys[branch], branch)
            since = server.log_path.stat().st_size
            resync = server.wait_for(lambda: _resync_ms(server, since), timeout=60)

            groups = _worker_processes(server.data_dir)
            before = {pid: _switches(pid) for pids in groups.values() for pid in pids}
            time.sleep(window)  # the measurement window for idle wake-ups
            after = {pid: _switches(pid) for pid in before}
            wakeups = sum(after[p] - before[p] for p in before) / max(len(groups), 1) / window

            warm_branch = branches[-1]
            warm = [_trigger(server, keys[warm_branch], warm_branch) for _ in range(warm_runs)]

            assert server.proc is not None
            worker_pids = {
                pid for pids in _worker_processes(server.data_dir).values() for pid in pids
            }
            controller_processes = {
                f"{pid} {_name(pid)}": _memory_kb(pid)[1]
                for pid in _descendants(server.proc.pid)
                if pid not in worker_pids
            }
            controller_rss = sum(controller_processes.values())

            server.wait_for(
                lambda: not _worker_processes(server.data_dir), timeout=idle + 60, interval=0.5
            )
            stopped_after_idle = len(_worker_processes(server.data_dir))
            if stopped_after_idle:
                problems.append(f"{stopped_after_idle} preview worker(s) outlived the idle timeout")
            cold = [_trigger(server, keys[b], b) for b in branches[: min(n, 20)]]
        finally:
            sampler.stop()
            server.close()
    if peak["workers"] > cap:
        problems.append(f"{peak['workers']} preview workers were live with a cap of {cap}")
    workers = max(peak["workers"], 1)
    return {
        "benchmark": "previews",
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
        },
        "previews": n,
        "controller_cpus": controller_cpus or "default",
        "cap": cap,
        "idle_timeout_s": idle,
        "burst_deployed_s": round(burst_s, 1),
        "peak_workers": peak["workers"],
        "peak_worker_pss_mb": round(peak["pss_kb"] / 1024, 1),
        "peak_worker_rss_mb": round(peak["rss_kb"] / 1024, 1),
        "pss_per_worker_mb": round(peak["pss_kb"] / 1024 / workers, 2),
        "processes_per_worker": round(peak["processes"] / workers, 2),
        "idle_wakeups_per_worker_per_s": round(wakeups, 3),
        "controller_rss_mb": round(controller_rss / 1024, 1),
        "controller_processes_rss_mb": {
            name: round(kb / 1024, 1) for name, kb in controller_processes.items()
        },
        "ack_p99_ms": round(_percentile(acks, 99), 2),
        "empty_server_ack_p99_ms": round(_percentile(empty_acks, 99), 2),
        "ack_p99_ratio": round(_percentile(acks, 99) / _percentile(empty_acks, 99), 2),
        # The rest of both distributions, to tell a shifted tail from a few outliers.
        "ack_p50_p90_max_ms": [round(_percentile(acks, q), 2) for q in (50, 90, 100)],
        "empty_server_ack_p50_p90_max_ms": [
            round(_percentile(empty_acks, q), 2) for q in (50, 90, 100)
        ],
        "resync_pass_ms": resync[0],
        "resync_health_checks_ms": resync[1],
        "preview_workers_after_idle": stopped_after_idle,
        "warm_p50_ms": round(statistics.median(warm), 2),
        "warm_p99_ms": round(_percentile(warm, 99), 2),
        "cold_p50_ms": round(statistics.median(cold), 1),
        "cold_max_ms": round(max(cold), 1),
        "problems": problems,
    }


def _met(key: str, value: float, target: float) -> bool:
    if key == "preview_workers_after_idle":
        return value == target
    return value <= target if key.endswith("ratio") else value < target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200, help="previews opened in the burst")
    parser.add_argument("--cap", type=int, default=50, help="SLIPWAY_MAX_LIVE_PREVIEW_WORKERS")
    parser.add_argument("--idle", type=float, default=60.0, help="SLIPWAY_PREVIEW_IDLE_TIMEOUT")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 previews, short")
    parser.add_argument(
        "--controller-cpus",
        default=None,
        help="SLIPWAY_CONTROLLER_CPUS for both servers (default: the product's default)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    n, warm_runs, idle, window = (4, 20, 5.0, 3.0) if args.quick else (args.n, 200, args.idle, 10.0)
    report = measure(
        n=n,
        cap=args.cap,
        idle=idle,
        warm_runs=warm_runs,
        window=window,
        controller_cpus=args.controller_cpus,
    )
    report["targets"] = {
        key: {"target": target, "met": _met(key, report[key], target)}
        for key, target in TARGETS.items()
    }
    width = max(len(k) for k in report)
    for key, value in report.items():
        if key not in ("machine", "targets"):
            verdict = ""
            if key in TARGETS:
                met = report["targets"][key]["met"]
                sign = "<=" if key.endswith("ratio") else "==" if key.endswith("idle") else "<"
                verdict = f"  (target {sign} {TARGETS[key]}: "
                verdict += ("met" if met else "MISSED") + ")"
            print(f"{key:<{width}}  {value}{verdict}")
    print(f"{'load_average':<{width}}  {report['machine']['load_average']}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
