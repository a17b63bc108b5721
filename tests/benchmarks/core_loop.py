"""Core-loop benchmark: push → serving latency, and cold install vs dependency-cache hit.

Run from the repository root::

    .venv/bin/python tests/benchmarks/core_loop.py            # 12 pushes, 3 cold installs
    .venv/bin/python tests/benchmarks/core_loop.py --pushes 30
    .venv/bin/python tests/benchmarks/core_loop.py --quick    # 3 pushes, 1 cold install

Everything is real: ``slipway serve`` subprocesses on random loopback ports with fresh
temp data dirs, real git repositories (``tests/support/repos.py``), real GitHub push
payloads from ``@octokit/webhooks-examples`` (``tests/support/payloads.py``; needs
``npm ci --prefix tests/node``), HMAC-signed deliveries, real ``pip install`` from the
configured index (PyPI by default) and real task runs through the environment's secret key.

Figures:

1. **Push → serving latency** — from the webhook POST until
   ``trigger("bench", "production", "hello")`` returns the new commit's message (polled
   every ~50 ms; every poll is a real run), plus the deployment's step durations.
2. **Cold install vs cache hit** — the ``install`` step of a first deployment with
   ``requests`` in ``requirements.txt`` (fresh data dir, so an empty dependency cache and
   an empty pip cache) against a second deployment with the same ``requirements.txt``.

Beside the latency, the **machine's floor** is measured in the same session, as
the median of a few samples each: fetching one new commit into a bare mirror (``git
fetch``), starting an interpreter (``python -I -c pass``) and one HTTP round trip to
the server (``GET /healthz``). A deploy cannot beat that sum, and on a shared, loaded
machine all three grow together, so ``p50 / floor`` is the figure to compare between
runs; the per-step means are shown as multiples of it too. The load average is printed
at the start and at the end.

Results are printed as a table with targets and written to
``tests/benchmarks/results/core_loop.json``.

Over 400 lines: a benchmark is one file, run by path, with its own measuring helpers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
for _p in (str(ROOT), str(TESTS)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from support import payloads  # noqa: E402
from support.repos import TaskRepo, git  # noqa: E402
from support.server import Server  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "core_loop.json"
PROJECT = "bench"
REPO_NAME = "octo-org/slipway-bench"
REQUIREMENTS = "requests\n"
POLL_INTERVAL = 0.05
PUSH_TIMEOUT = 120.0
DEPLOY_TIMEOUT = 600.0

TARGET_P50_S = 0.35
FLOOR_SAMPLES = 7
TARGET_CACHE_SPEEDUP = 5.0


# --- small helpers -------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100), as numpy's default."""
    data = sorted(values)
    if not data:
        return float("nan")
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Interrupt(Exception):
    pass


_INTERRUPTED: list[int] = []


def _on_signal(signum: int, _frame: Any) -> None:
    # A terminal's Ctrl-C also reaches the servers (same process group), so a request may
    # fail with a connection error before this handler runs: remember that it happened.
    _INTERRUPTED.append(signum)
    raise Interrupt(f"signal {signum}")


class Bench:
    """Owns every server and temp dir it made; ``close()`` stops them all."""

    def __init__(self, keep: bool) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="slipway-bench-"))
        self.keep = keep
        self.servers: list[Server] = []

    def server(self, name: str) -> Server:
        server = Server(self.tmp / name / "data")
        self.servers.append(server)
        try:
            server.start()
        except Exception:
            self._close(server)
            raise
        return server

    def _close(self, server: Server) -> None:
        try:
            server.close()
        except Exception as exc:  # keep closing the others
            say(f"warning: closing the server on port {server.port} failed: {exc}")
        if server in self.servers:
            self.servers.remove(server)

    def close_server(self, server: Server) -> None:
        self._close(server)

    def close(self) -> list[str]:
        for server in list(self.servers):
            self._close(server)
        leaked = self.leaked_processes()
        for pid, _cmd in leaked:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                with suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        if not self.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return [f"{pid}: {cmd}" for pid, cmd in leaked]

    def leaked_processes(self) -> list[tuple[int, str]]:
        """Processes still running whose command line or cwd points into our temp dir."""
        found = []
        me = os.getpid()
        marker = str(self.tmp)
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                try:
                    cwd = os.readlink(entry / "cwd")
                except OSError:
                    cwd = ""
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state == "Z":
                continue
            if marker in cmd or cwd.startswith(marker):
                found.append((int(entry.name), cmd.strip()[:200]))
        return found


def make_repo(path: Path) -> TaskRepo:
    repo = TaskRepo(path, message="v0")
    repo.write("requirements.txt", REQUIREMENTS)
    repo.commit("add requirements.txt")
    return repo


def repo_parent(repo: TaskRepo) -> str:
    return git(repo.path, "rev-parse", "HEAD~1")


def push_payload(before: str, after: str) -> dict[str, Any]:
    return payloads.push(
        repo=REPO_NAME, ref="refs/heads/main", before=before, after=after, default_branch="main"
    )


def deliver(server: Server, payload: dict[str, Any]) -> None:
    response = server.deliver("push", payload)
    if response.status_code != 202:
        raise RuntimeError(f"webhook answered {response.status_code}: {response.text}")


def find_deployment(server: Server, sha: str, timeout: float = 30.0) -> dict[str, Any]:
    def look() -> dict[str, Any] | None:
        for dep in server.deployments(PROJECT, env="production"):
            if dep.get("sha") == sha:
                return dep
        return None

    return dict(server.wait_for(look, timeout=timeout, interval=0.05))


def finished(server: Server, sha: str, timeout: float = DEPLOY_TIMEOUT) -> dict[str, Any]:
    dep = find_deployment(server, sha)
    done = server.wait_deployment(dep["id"], timeout=timeout)
    if done["status"] != "deployed":
        logs = server.ok("GET", f"/api/v1/deployments/{dep['id']}/logs")
        tail = "\n".join(f"  [{ln['step']}] {ln['message']}" for ln in logs["lines"][-40:])
        raise RuntimeError(
            f"deployment {dep['id']} of {sha[:12]} ended {done['status']}: "
            f"{done.get('error')}\n{tail}"
        )
    return done


def step_ms(dep: dict[str, Any], name: str) -> float | None:
    for step in dep.get("steps") or []:
        if step["name"] == name:
            return step["duration_ms"]
    return None


def log_lines(server: Server, deployment_id: str) -> list[dict[str, Any]]:
    return list(server.ok("GET", f"/api/v1/deployments/{deployment_id}/logs")["lines"])


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# --- 0. the machine's floor ------------------------------------------------------------


def median_time(fn: Any, samples: int = FLOOR_SAMPLES) -> float:
    times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_floor(bench: Bench, server: Server) -> dict[str, float]:
    """Fetch one commit + interpreter start + one health round trip, medians in ms."""
    where = Path(tempfile.mkdtemp(prefix="floor-", dir=bench.tmp))
    source = make_repo(where / "repo")
    mirror = where / "mirror.git"
    git(source.path.parent, "clone", "--quiet", "--bare", str(source.path), str(mirror))
    commits = iter(source.set_message(f"floor {i}") for i in range(FLOOR_SAMPLES))
    fetch = median_time(lambda: git(mirror, "fetch", "--quiet", str(source.path), next(commits)))
    python = [sys.executable, "-I", "-c", "pass"]
    start = median_time(lambda: subprocess.run(python, check=True))
    health = median_time(lambda: server.client.get("/healthz").raise_for_status())
    parts = {"fetch_one_commit_ms": fetch, "interpreter_start_ms": start, "health_round_trip_ms": health}  # fmt: skip
    floor = {name: value * 1000 for name, value in parts.items()}
    floor["total_ms"] = sum(floor.values())
    return floor


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


# --- 1. push → serving ---------------------------------------------------------------


def bench_push_latency(bench: Bench, pushes: int) -> dict[str, Any]:
    say(f"[1/2] push → serving latency: {pushes} pushes (+1 warm-up)")
    server = bench.server("latency")
    repo = make_repo(bench.tmp / "latency" / "repo")
    server.create_project(PROJECT, repo=REPO_NAME, clone_url=str(repo.path))
    load_before = load_average()
    floor = measure_floor(bench, server)
    say(
        f"  floor {floor['total_ms']:.0f} ms (fetch {floor['fetch_one_commit_ms']:.0f}, "
        f"interpreter {floor['interpreter_start_ms']:.0f}, health {floor['health_round_trip_ms']:.0f}); "
        f"load average {load_before}"
    )

    first = repo.head()
    warm_started = time.monotonic()
    deliver(server, push_payload(repo_parent(repo), first))
    warm = finished(server, first)
    warm_s = time.monotonic() - warm_started
    say(
        f"  warm-up (cold install) deployed in {warm_s:.1f}s "
        f"(install step {step_ms(warm, 'install') or 0:.0f} ms)"
    )
    check = server.trigger(PROJECT, "production", "hello")
    if check.status_code != 200 or check.json()["output"]["message"] != "v0":
        raise RuntimeError(f"warm-up version does not serve v0: {check.status_code} {check.text}")

    samples: list[dict[str, Any]] = []
    before = first
    for i in range(1, pushes + 1):
        want = f"v{i}"
        sha = repo.set_message(want)
        payload = push_payload(before, sha)  # built (and schema-validated) before the clock
        polls = 0
        poll_times: list[float] = []
        t0 = time.monotonic()
        wall0 = datetime.now(UTC)
        deliver(server, payload)
        posted = time.monotonic() - t0
        deadline = t0 + PUSH_TIMEOUT
        served_at = None
        served_version = None
        while time.monotonic() < deadline:
            p0 = time.monotonic()
            response = server.trigger(PROJECT, "production", "hello")
            poll_times.append(time.monotonic() - p0)
            polls += 1
            if response.status_code == 200:
                run = response.json()
                if run.get("status") != "completed":
                    raise RuntimeError(f"poll run did not complete: {run}")
                if (run.get("output") or {}).get("message") == want:
                    served_at = time.monotonic()
                    served_version = run.get("version")
                    break
            else:
                raise RuntimeError(f"trigger answered {response.status_code}: {response.text}")
            time.sleep(POLL_INTERVAL)
        if served_at is None:
            raise RuntimeError(
                f"push {i} ({sha[:12]}) did not serve {want!r} within {PUSH_TIMEOUT:.0f}s"
            )
        latency = served_at - t0
        dep = finished(server, sha)
        steps = {s["name"]: s["duration_ms"] for s in dep.get("steps") or []}
        created, started = parse_time(dep.get("created_at")), parse_time(dep.get("started_at"))
        ended = parse_time(dep.get("finished_at"))
        served_wall = wall0 + timedelta(seconds=latency)
        steps_total = sum(v for v in steps.values() if v is not None)
        run_s = (ended - started).total_seconds() if ended and started else None
        sample = {
            "push": i,
            "sha": sha,
            "deployment": dep["id"],
            "version": served_version,
            "latency_s": latency,
            "webhook_post_s": posted,
            "polls": polls,
            "poll_mean_s": statistics.fmean(poll_times),
            "steps_ms": steps,
            "steps_total_ms": steps_total,
            "install_cached": any(
                "reusing cached environment" in ln["message"] for ln in log_lines(server, dep["id"])
            ),
            "queued_s": (started - created).total_seconds() if created and started else None,
            # Wall-clock timeline (same host clock): POST → deployment row → pipeline start
            # → deployment finished; "served" may come before "finished" (promote is the
            # last step, the status write follows it).
            "timeline_s": {
                "post_to_created": (created - wall0).total_seconds() if created else None,
                "created_to_started": (started - created).total_seconds()
                if created and started
                else None,
                "started_to_finished": run_s,
                # The pipeline's own time outside its steps: guards, status writes, the
                # journal's reads, the final status transaction.
                "between_steps": run_s - steps_total / 1000 if run_s is not None else None,
                "finished_to_served": (served_wall - ended).total_seconds() if ended else None,
            },
        }
        samples.append(sample)
        say(
            f"  push {i:>2}: {latency:6.2f}s  ({polls} polls, version {served_version}, "
            f"steps {sample['steps_total_ms']:.0f} ms)"
        )
        before = sha

    latencies = [s["latency_s"] for s in samples]
    names: list[str] = []
    for s in samples:
        for name in s["steps_ms"]:
            if name not in names:
                names.append(name)
    phases = {
        name: statistics.fmean(
            s["steps_ms"][name] for s in samples if s["steps_ms"].get(name) is not None
        )
        for name in names
    }
    queued = [s["queued_s"] for s in samples if s["queued_s"] is not None]
    timeline = {
        key: statistics.fmean(v for s in samples if (v := s["timeline_s"][key]) is not None)
        for key in samples[0]["timeline_s"]
        if any(s["timeline_s"][key] is not None for s in samples)
    }
    floor_after = measure_floor(bench, server)
    bench.close_server(server)
    return {
        "pushes": pushes,
        "floor_ms": floor,
        "floor_after_ms": floor_after,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "warmup_s": warm_s,
        "warmup_install_ms": step_ms(warm, "install"),
        "p50_s": percentile(latencies, 50),
        "p95_s": percentile(latencies, 95),
        "min_s": min(latencies),
        "max_s": max(latencies),
        "mean_s": statistics.fmean(latencies),
        "phases_mean_ms": phases,
        "steps_total_mean_ms": statistics.fmean(s["steps_total_ms"] for s in samples),
        "queued_mean_s": statistics.fmean(queued) if queued else None,
        "timeline_mean_s": timeline,
        "poll_mean_s": statistics.fmean(s["poll_mean_s"] for s in samples),
        "all_install_cached": all(s["install_cached"] for s in samples),
        "samples": samples,
    }


# --- 2. cold install vs cache hit ----------------------------------------------------


def bench_install_cache(bench: Bench, repetitions: int) -> dict[str, Any]:
    say(f"[2/2] cold install vs cache hit: {repetitions} repetition(s), fresh data dir each")
    reps = []
    for r in range(1, repetitions + 1):
        name = f"install-{r}"
        server = bench.server(name)
        data_dir = server.data_dir
        pip_cache = data_dir / "envs" / "_pip-cache"
        if pip_cache.exists() or any((data_dir / "envs").glob("*/.slipway-complete")):
            raise RuntimeError(f"{data_dir} is not fresh: the dependency cache is not empty")
        repo = make_repo(bench.tmp / name / "repo")
        server.create_project(PROJECT, repo=REPO_NAME, clone_url=str(repo.path))

        cold_sha = repo.head()
        deliver(server, push_payload(repo_parent(repo), cold_sha))
        cold = finished(server, cold_sha)
        cold_logs = log_lines(server, cold["id"])
        cold_messages = [ln["message"] for ln in cold_logs]
        if any("reusing cached environment" in m for m in cold_messages):
            raise RuntimeError("the cold deployment reused a cached environment")
        downloaded = [m for m in cold_messages if m.lstrip().startswith("Downloading ")]
        pip_cached = [m for m in cold_messages if "Using cached" in m]
        pip_seconds = next(
            (
                float(m.split()[-1].rstrip("s"))
                for m in cold_messages
                if m.startswith("Installed dependencies in")
            ),
            None,
        )

        hit_sha = repo.set_message("cache-hit")  # requirements.txt unchanged
        deliver(server, push_payload(cold_sha, hit_sha))
        hit = finished(server, hit_sha)
        hit_messages = [ln["message"] for ln in log_lines(server, hit["id"])]
        reused = [m for m in hit_messages if "reusing cached environment" in m]
        if not reused:
            raise RuntimeError(
                "the second deployment did not reuse the cached environment:\n"
                + "\n".join(hit_messages[-20:])
            )
        cold_ms, hit_ms = step_ms(cold, "install"), step_ms(hit, "install")
        assert cold_ms is not None and hit_ms is not None
        rep = {
            "repetition": r,
            "cold_install_ms": cold_ms,
            "cold_pip_install_s": pip_seconds,
            "cold_downloaded": downloaded,
            "cold_pip_cache_hits": len(pip_cached),
            "cache_hit_install_ms": hit_ms,
            "cache_hit_log": reused[0],
            "speedup": cold_ms / hit_ms if hit_ms else float("inf"),
            "cold_steps_ms": {s["name"]: s["duration_ms"] for s in cold.get("steps") or []},
            "hit_steps_ms": {s["name"]: s["duration_ms"] for s in hit.get("steps") or []},
        }
        reps.append(rep)
        say(
            f"  rep {r}: cold install {cold_ms:.0f} ms ({len(downloaded)} downloads, "
            f"{len(pip_cached)} pip-cache hits), cache hit {hit_ms:.0f} ms, "
            f"{rep['speedup']:.0f}x"
        )
        bench.close_server(server)

    cold_median = statistics.median(r["cold_install_ms"] for r in reps)
    hit_median = statistics.median(r["cache_hit_install_ms"] for r in reps)
    return {
        "repetitions": repetitions,
        "cold_install_ms_median": cold_median,
        "cache_hit_install_ms_median": hit_median,
        "speedup": cold_median / hit_median if hit_median else float("inf"),
        "cold_truly_cold": all(r["cold_downloaded"] and not r["cold_pip_cache_hits"] for r in reps),
        "reps": reps,
    }


# --- report --------------------------------------------------------------------------


def report(
    latency: dict[str, Any], install: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    rows = [
        (
            "push → serving p50",
            f"{latency['p50_s'] * 1000:.0f} ms",
            f"< {TARGET_P50_S * 1000:.0f} ms",
            latency["p50_s"] < TARGET_P50_S,
        ),
        (
            "cache hit speedup (install step)",
            f"{install['speedup']:.1f}x",
            f"≥ {TARGET_CACHE_SPEEDUP:.0f}x",
            install["speedup"] >= TARGET_CACHE_SPEEDUP,
        ),
    ]
    out = []
    out.append("")
    out.append(
        f"Slipway core loop — {datetime.now(UTC):%Y-%m-%d %H:%M UTC}, "
        f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs"
    )
    out.append("")
    out.append(
        f"1. Push → serving latency ({latency['pushes']} pushes, after a warm-up push "
        f"whose cold install took {latency['warmup_s']:.1f} s)"
    )
    out.append(
        f'   measured: webhook POST → trigger("{PROJECT}", "production", "hello") '
        f"returns the new message; polled every {POLL_INTERVAL * 1000:.0f} ms, "
        f"each poll a real run (mean {latency['poll_mean_s'] * 1000:.0f} ms)"
    )
    out.append(
        f"   p50 {latency['p50_s']:.2f} s   p95 {latency['p95_s']:.2f} s   "
        f"min {latency['min_s']:.2f} s   max {latency['max_s']:.2f} s   "
        f"mean {latency['mean_s']:.2f} s"
    )
    floor, after = latency["floor_ms"], latency["floor_after_ms"]
    floor_ms = (floor["total_ms"] + after["total_ms"]) / 2
    out.append(
        f"   machine floor {floor_ms:.0f} ms (mean of before/after: fetch one commit "
        f"{floor['fetch_one_commit_ms']:.0f}/{after['fetch_one_commit_ms']:.0f}, interpreter "
        f"start {floor['interpreter_start_ms']:.0f}/{after['interpreter_start_ms']:.0f}, health "
        f"round trip {floor['health_round_trip_ms']:.1f}/{after['health_round_trip_ms']:.1f} ms)"
    )
    out.append(
        f"   p50 / floor = {latency['p50_s'] * 1000 / floor_ms:.1f}x   load average "
        f"{latency['load_average_before']} → {latency['load_average_after']}"
    )
    out.append("   per-phase mean (deployment steps, duration_ms, multiple of the floor):")
    for name, ms in latency["phases_mean_ms"].items():
        out.append(f"     {name:<12} {ms:8.0f} ms  {ms / floor_ms:5.2f}x")
    out.append(
        f"     {'(sum)':<12} {latency['steps_total_mean_ms']:8.0f} ms  "
        f"{latency['steps_total_mean_ms'] / floor_ms:5.2f}x"
    )
    overhead = latency["mean_s"] * 1000 - latency["steps_total_mean_ms"]
    out.append(
        f"     {'other':<12} {overhead:8.0f} ms   (webhook → route → queue → claim, "
        "step bookkeeping, poll granularity)"
    )
    labels = {
        "post_to_created": "webhook POST → deployment created",
        "created_to_started": "deployment created → pipeline started",
        "started_to_finished": "pipeline started → deployment finished",
        "between_steps": "  of which outside the steps",
        "finished_to_served": "deployment finished → new message seen",
    }
    out.append("   timeline mean (wall clock, from the deployment's timestamps):")
    for key, value in latency["timeline_mean_s"].items():
        out.append(f"     {labels.get(key, key):<40} {value * 1000:8.0f} ms")
    out.append(f"   every push reused the cached environment: {latency['all_install_cached']}")
    out.append("")
    out.append(
        f"2. Cold install vs cache hit (requirements.txt: requests; "
        f"{install['repetitions']} repetition(s), median)"
    )
    out.append(
        "   cold: fresh data dir each time, so the dependency cache AND pip's cache "
        "(<data>/envs/_pip-cache) start empty;"
    )
    out.append(
        "         pip downloads from the configured index (PyPI): "
        + (
            "verified (Downloading lines, no 'Using cached')"
            if install["cold_truly_cold"]
            else "NOT verified (see reps in the JSON)"
        )
    )
    for rep in install["reps"]:
        out.append(
            f"   rep {rep['repetition']}: cold {rep['cold_install_ms']:7.0f} ms "
            f"(pip {rep['cold_pip_install_s'] or 0:.1f} s, {len(rep['cold_downloaded'])} "
            f"downloads)   cache hit {rep['cache_hit_install_ms']:5.0f} ms   "
            f"{rep['speedup']:.0f}x"
        )
    out.append(f"   median cold install  {install['cold_install_ms_median']:8.0f} ms")
    out.append(
        f"   median cache hit     {install['cache_hit_install_ms_median']:8.0f} ms   "
        f'(log: "{install["reps"][0]["cache_hit_log"]}")'
    )
    out.append(f"   ratio                {install['speedup']:8.1f}x")
    out.append("")
    width = max(len(r[0]) for r in rows)
    out.append(f"   {'figure':<{width}}  {'measured':>10}  {'target':>8}  result")
    out.append(f"   {'-' * width}  {'-' * 10}  {'-' * 8}  ------")
    for name, measured, target, ok in rows:
        out.append(f"   {name:<{width}}  {measured:>10}  {target:>8}  {'PASS' if ok else 'MISS'}")
    print("\n".join(out), flush=True)
    return {
        "generated_at": datetime.now(UTC).isoformat(),
        "command": "tests/benchmarks/core_loop.py " + " ".join(sys.argv[1:]),
        "settings": {
            "pushes": args.pushes,
            "cold_repetitions": args.repetitions,
            "poll_interval_s": POLL_INTERVAL,
            "requirements": REQUIREMENTS.strip(),
        },
        "machine": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "targets": [{"figure": n, "measured": m, "target": t, "pass": ok} for n, m, t, ok in rows],
        "push_to_serving": latency,
        "install_cache": install,
    }


@contextmanager
def signals() -> Iterator[None]:
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pushes", type=int, default=12, help="timed pushes (default 12)")
    parser.add_argument(
        "--repetitions",
        type=int,
        default=3,
        help="cold-install repetitions, fresh data dir each (default 3)",
    )
    parser.add_argument("--quick", action="store_true", help="3 pushes, 1 cold install")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (server logs)")
    args = parser.parse_args(argv)
    if args.quick:
        args.pushes, args.repetitions = 3, 1
    if args.pushes < 1 or args.repetitions < 1:
        parser.error("--pushes and --repetitions must be at least 1")
    reason = payloads.missing_node_support()
    if reason:
        print(f"error: {reason}; {payloads.INSTALL_HINT}", file=sys.stderr)
        return 2

    bench = Bench(keep=args.keep)
    say(f"temp dir: {bench.tmp}")
    code = 0
    try:
        with signals():
            latency = bench_push_latency(bench, args.pushes)
            install = bench_install_cache(bench, args.repetitions)
            result = report(latency, install, args)
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(json.dumps(result, indent=2, default=str) + "\n")
            print(f"\nwrote {RESULTS.relative_to(ROOT)}", flush=True)
    except (KeyboardInterrupt, Interrupt):
        say("interrupted: stopping servers")
        code = 130
    except Exception as exc:
        if _INTERRUPTED:
            say(f"interrupted ({type(exc).__name__} while stopping): stopping servers")
            code = 130
        else:
            code = 1
            say(f"benchmark failed: {type(exc).__name__}: {exc}")
            for server in bench.servers:
                say(f"--- server log ({server.log_path}) ---\n{server.log()[-4000:]}")
    finally:
        # Ctrl-C during cleanup must not leave processes behind either.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        leaked = bench.close()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if leaked:
            say("warning: killed processes left behind by the servers:\n  " + "\n  ".join(leaked))
            code = code or 3
        if args.keep:
            say(f"kept {bench.tmp}")
    return code


if __name__ == "__main__":
    sys.exit(main())
