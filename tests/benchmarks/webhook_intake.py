"""Webhook intake benchmark: how fast ``POST /webhooks/github`` answers, and how many
deliveries per second it makes durable, next to a minimal Node receiver.

    .venv/bin/python tests/benchmarks/webhook_intake.py              # 30 s per run
    .venv/bin/python tests/benchmarks/webhook_intake.py --quick      # smoke run (CI)

For each scenario (a fixed 200/s, a fixed 500/s, then no rate cap) it starts a fresh
``slipway serve`` (new data dir, so no backlog carries over) and a fresh
``node_receiver.mjs`` (@octokit/webhooks ``verify`` then 202), drives each with the same
``load.mjs`` (autocannon) and the same signed ~7 KB push delivery — a real GitHub payload
from @octokit/webhooks-examples — with a new ``X-GitHub-Delivery`` per request, then prints
a table and writes ``tests/benchmarks/results/webhook_intake.json``.

"durable/s" is the number of deliveries the run committed — rows added to Slipway's
``deliveries`` table or still waiting in its inbox file (read with sqlite3 once the run is
over) divided by the run's duration; it is cross-checked
against the 202s: an acknowledged delivery missing from the table fails the benchmark.

Everything listens on and talks to 127.0.0.1 only. All processes started here are stopped
on exit, Ctrl-C and SIGTERM included.

Over 400 lines: a benchmark is one file, run by path, with its own measuring helpers
(servers of both kinds, the load generator's driver, the report).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "tests" / "benchmarks"
NODE_DIR = ROOT / "tests" / "node"
EXAMPLES = (
    NODE_DIR / "node_modules" / "@octokit" / "webhooks-examples" / "api.github.com" / "index.json"
)
RESULTS = HERE / "results" / "webhook_intake.json"

sys.path.insert(0, str(ROOT))
from webhooks.signatures import sign  # noqa: E402  (the repo's own signer)

TARGET_BODY_BYTES = 7 * 1024
TARGET_P99_MS_AT_200 = 25.0
TARGET_DURABLE_PER_S = 1000.0
HOST = "127.0.0.1"

# Never go through a proxy: every request here is to 127.0.0.1.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Scenario:
    name: str
    rate: int  # requests per second; 0 = no cap
    connections: int


class BenchmarkError(Exception):
    pass


# -- the delivery ------------------------------------------------------------------------


def build_push_delivery(target: int = TARGET_BODY_BYTES) -> tuple[bytes, dict[str, Any]]:
    """A real push payload (a branch push with commits), its ``commits`` padded or trimmed
    so the compact JSON body is as close to ``target`` bytes as it gets (at least one)."""
    if not EXAMPLES.exists():
        raise BenchmarkError(f"{EXAMPLES} is missing: run `npm ci --prefix tests/node`")
    examples = json.loads(EXAMPLES.read_text(encoding="utf-8"))
    pushes = next(group for group in examples if group["name"] == "push")["examples"]
    base = next(
        p
        for p in pushes
        if p["ref"].startswith("refs/heads/") and not p.get("deleted") and p.get("commits")
    )
    template = base["commits"][0]

    def body_with(n: int) -> bytes:
        commits = [template] + [
            dict(template, id=hashlib.sha1(f"slipway-bench-{i}".encode()).hexdigest())
            for i in range(1, n)
        ]
        payload = dict(base, commits=commits)
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    best = min(range(1, 65), key=lambda n: abs(len(body_with(n)) - target))
    body = body_with(best)
    info = {
        "example": f"push ({base['ref']}, {base['repository']['full_name']})",
        "repo": base["repository"]["full_name"],
        "ref": base["ref"],
        "commits": best,
        "bytes": len(body),
    }
    return body, info


# -- processes ---------------------------------------------------------------------------


class Processes:
    """Every process this benchmark starts, each in its own process group, stopped in
    ``stop_all`` (the ``finally`` of ``main``)."""

    def __init__(self) -> None:
        self.live: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, start_new_session=True, **kwargs)
        self.live.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
        if proc in self.live:
            self.live.remove(proc)
        # The group id is the child's own pid (start_new_session): this reaches the
        # server and anything it started (git, workers), and nothing else.
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # Leftovers of the group (a child that outlived its parent) go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

    def stop_all(self) -> None:
        for proc in list(reversed(self.live)):
            self.stop(proc, grace=5.0)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def http(
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with _HTTP.open(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _proc_stats() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds: user + system, with its waited-for children)."""
    stats: dict[int, tuple[int, float]] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry)] = (int(fields[1]), sum(int(x) for x in fields[11:15]) / tick)
    return stats


def cpu_seconds(pid: int) -> float | None:
    """CPU time of a process and of all its live descendants (``slipway serve`` runs the
    controller as a child process, and the controller runs git and builds), each with
    the children it has waited for."""
    stats = _proc_stats()
    if pid not in stats:
        return None
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, _cpu) in stats.items():
            if ppid == parent and child not in tree:
                tree.add(child)
                frontier.append(child)
    return sum(stats[p][1] for p in tree)


def machine_busy_seconds() -> float:
    """CPU-seconds the whole machine has spent busy (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(max_wait: float, threshold: float) -> float:
    """Wait (up to ``max_wait`` s) until the machine's own load — nothing of ours runs
    between two runs — is under ``threshold`` % of one core. Returns the last reading."""
    deadline = time.monotonic() + max_wait
    told = False
    while True:
        before, start = machine_busy_seconds(), time.monotonic()
        time.sleep(1.0)
        busy = 100 * (machine_busy_seconds() - before) / (time.monotonic() - start)
        if busy < threshold or time.monotonic() >= deadline:
            if told:
                print(f" {busy:.0f}%", end="", flush=True)
            return busy
        if not told:
            print(
                f" [others use {busy:.0f}% CPU: waiting up to {max_wait:.0f} s for quiet]",
                end="",
                flush=True,
            )
            told = True


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class Server:
    kind: str  # "slipway" | "node"
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    data_dir: Path | None = None
    database_url: str | None = None  # PostgreSQL (--postgres); None: SQLite in data_dir
    notes: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def webhook_url(self) -> str:
        return f"{self.url}/webhooks/github"

    def fail(self, message: str) -> BenchmarkError:
        return BenchmarkError(
            f"{self.kind}: {message}\n--- {self.log} (last lines) ---\n{tail(self.log)}"
        )


def slipway_executable() -> str:
    beside = Path(sys.executable).with_name("slipway")
    found = str(beside) if beside.exists() else shutil.which("slipway")
    if not found:
        raise BenchmarkError("`slipway` not found: run with the project's venv (.venv/bin/python)")
    return found


def clean_env() -> dict[str, str]:
    # Nothing inherited may point the server elsewhere (another database, a GitHub App).
    return {k: v for k, v in os.environ.items() if not k.startswith("SLIPWAY_")}


def _pg(url: str) -> str:
    """A libpq URL for psycopg (SQLAlchemy's ``+psycopg`` suffix removed)."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


CREATED_DATABASES: list[str] = []  # dropped on exit, unless --keep-data


def create_pg_database(server_url: str, label: str) -> str:
    """A new, empty database on the PostgreSQL server of ``server_url``; returns its URL."""
    import psycopg

    name = f"slipway_bench_{label.replace('/', '_').replace('-', '_')}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(_pg(server_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = server_url.rpartition("/")
    CREATED_DATABASES.append(f"{base}/{name}")
    return CREATED_DATABASES[-1]


def drop_pg_database(url: str) -> None:
    import psycopg

    base, _, name = url.rpartition("/")
    with psycopg.connect(_pg(f"{base}/postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_slipway(
    procs: Processes, workdir: Path, secret: str, label: str, postgres: str | None = None
) -> Server:
    data_dir = Path(tempfile.mkdtemp(prefix=f"slipway-{label}-", dir=workdir))
    port = free_port()
    env = clean_env() | {
        "SLIPWAY_DATA_DIR": str(data_dir),
        "SLIPWAY_WEBHOOK_SECRET": secret,
        "SLIPWAY_HOST": HOST,
        "SLIPWAY_PORT": str(port),
    }
    database_url = create_pg_database(postgres, label) if postgres else None
    if database_url:
        env["SLIPWAY_DATABASE_URL"] = database_url
    log = data_dir / "serve.log"
    with log.open("wb") as out:
        # cwd = the data dir: no stray .env from wherever the benchmark was started.
        proc = procs.start(
            [slipway_executable(), "serve", "--log-level", "warning"],
            env=env,
            cwd=data_dir,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = Server("slipway", proc, port, log, data_dir, database_url)
    # /readyz includes the controller process, which a busy machine starts slowly (nice +10).
    wait_until(server, lambda: http("GET", f"{server.url}/readyz", timeout=10)[0] == 200, 180)
    return server


def start_node(procs: Processes, workdir: Path, secret: str, label: str) -> Server:
    port = free_port()
    log = workdir / f"node-{label}.log"
    with log.open("wb") as out:
        proc = procs.start(
            ["node", str(HERE / "node_receiver.mjs"), "--port", str(port)],
            env=os.environ | {"BENCH_WEBHOOK_SECRET": secret},
            cwd=HERE,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = Server("node", proc, port, log)
    wait_until(server, lambda: "listening" in log.read_text(errors="replace"), 30)
    return server


def wait_until(server: Server, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise server.fail(f"exited with {server.proc.returncode} while starting")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise server.fail(f"not ready after {timeout:.0f} s")


def start_server(
    kind: str,
    procs: Processes,
    workdir: Path,
    secret: str,
    label: str,
    args: argparse.Namespace,
    payload_info: dict[str, Any],
) -> Server:
    if kind == "node":
        return start_node(procs, workdir, secret, label)
    server = start_slipway(procs, workdir, secret, label, args.postgres)
    if not args.no_project:
        create_project(server, payload_info["repo"])
    return server


def summary(result: dict[str, Any]) -> str:
    lat = result["latency_ms"]
    durable = result.get("durable_per_s")
    return (
        f"p50 {fmt(lat['p50'], 2)} ms, p99 {fmt(lat['p99'], 2)} ms, {fmt(result['ok_rate'])} 2xx/s"
        + (f", {fmt(durable)} durable/s" if durable is not None else "")
        + f" (others: {fmt(result.get('others_cpu_pct'), 0, '% CPU')})"
    )


def create_project(server: Server, repo: str) -> None:
    assert server.data_dir is not None
    token = (server.data_dir / "admin_token").read_text().strip()
    empty = server.data_dir / "empty-repo.git"  # a repository without the pushed commits
    subprocess.run(["git", "init", "-q", "--bare", str(empty)], check=True)
    status, body = http(
        "POST",
        f"{server.url}/api/v1/projects",
        body=json.dumps({"ref": "bench", "repo": repo, "clone_url": str(empty)}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    if status != 201:
        raise server.fail(f"creating the project answered {status}: {body[:300]!r}")


def preflight(server: Server, body: bytes, headers: dict[str, str]) -> None:
    """The delivery is accepted as signed and refused with a wrong signature."""
    good = headers | {"Content-Type": "application/json", "X-GitHub-Delivery": str(uuid.uuid4())}
    status, answer = http("POST", server.webhook_url, body=body, headers=good)
    if status != 202:
        raise server.fail(f"a correctly signed delivery answered {status}: {answer[:300]!r}")
    bad = good | {
        "X-Hub-Signature-256": "sha256=" + "0" * 64,
        "X-GitHub-Delivery": str(uuid.uuid4()),
    }
    status, answer = http("POST", server.webhook_url, body=body, headers=bad)
    if status != 401:
        raise server.fail(f"a wrongly signed delivery answered {status}, not 401")


_COUNTS = {
    "route_jobs_queued": "SELECT count(*) FROM jobs WHERE kind = 'route' AND status = 'queued'",
    "deliveries_processed": "SELECT count(*) FROM deliveries WHERE processed_at IS NOT NULL",
    "deployments": "SELECT count(*) FROM deployments",
}


def db_counts(server: Server) -> dict[str, int]:
    """Durable deliveries are the rows of ``deliveries`` plus, on SQLite, those still in
    the inbox (SQLite intake commits there; the router moves them on)."""
    if server.database_url:
        import psycopg

        with psycopg.connect(_pg(server.database_url)) as conn:
            one = lambda sql: int(conn.execute(sql).fetchone()[0])  # type: ignore[index]  # noqa: E731
            counts = {"deliveries": one("SELECT count(*) FROM deliveries"), "inbox_waiting": 0}
            return counts | {name: one(sql) for name, sql in _COUNTS.items()}
    assert server.data_dir is not None
    data_dir = server.data_dir
    db = sqlite3.connect(f"file:{data_dir / 'slipway.db'}?mode=ro", uri=True, timeout=30)
    inbox = data_dir / "slipway.inbox.db"
    try:
        one = lambda sql: int(db.execute(sql).fetchone()[0])  # noqa: E731
        if inbox.exists():
            db.execute("ATTACH DATABASE ? AS inbox", (f"file:{inbox}?mode=ro",))
            durable = one(
                "SELECT count(*) FROM (SELECT delivery_id FROM deliveries"
                " UNION SELECT delivery_id FROM inbox.inbox)"
            )
            waiting = one("SELECT count(*) FROM inbox.inbox")
        else:
            durable, waiting = one("SELECT count(*) FROM deliveries"), 0
        counts = {"deliveries": durable, "inbox_waiting": waiting}
        return counts | {name: one(sql) for name, sql in _COUNTS.items()}
    finally:
        db.close()


# -- the load generator ------------------------------------------------------------------


class LineReader:
    """Lines from a child's stdout, with a timeout (no thread)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.proc, self.fd, self.buffer = proc, proc.stdout.fileno(), b""

    def readline(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchmarkError(f"load generator: no answer within {timeout:.0f} s")
            ready, _, _ = select.select([self.fd], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    raise BenchmarkError(
                        f"load generator exited ({self.proc.wait()}) without a result"
                    )
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()


def drive(
    procs: Processes,
    server: Server,
    scenario: Scenario,
    args: argparse.Namespace,
    body_file: Path,
    headers: dict[str, str],
    workdir: Path,
) -> dict[str, Any]:
    """Warm up, take the "before" readings, run the measured load, take the "after" ones."""
    config = {
        "url": server.webhook_url,
        "bodyFile": str(body_file),
        "headers": {k.lower(): v for k, v in headers.items()},
        "duration": args.duration,
        "rate": scenario.rate,
        "connections": scenario.connections,
        "pacing": args.pacing,
        "warmup": args.warmup,
        "handshake": True,
    }
    err_path = workdir / f"load-{scenario.name.replace('/', '_')}-{server.kind}.err"
    errors = err_path.open("wb")
    load = procs.start(
        ["node", str(HERE / "load.mjs"), json.dumps(config)],
        cwd=HERE,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=errors,
        bufsize=0,
    )
    errors.close()
    try:
        lines = LineReader(load)
        ready = json.loads(lines.readline(args.warmup + 60))
        if ready.get("phase") != "ready":
            raise BenchmarkError(f"load generator: unexpected {ready!r}")
        if server.data_dir:
            time.sleep(0.5)  # warm-up requests still in flight are committed before counting
        before = db_counts(server) if server.data_dir else None
        cpu_before, machine_before = cpu_seconds(server.proc.pid), machine_busy_seconds()
        assert load.stdin is not None
        load.stdin.write(b"go\n")
        result: dict[str, Any] = json.loads(lines.readline(args.duration + 60))
        cpu_after, machine_after = cpu_seconds(server.proc.pid), machine_busy_seconds()
        load.wait(timeout=10)
    except BenchmarkError as exc:
        raise BenchmarkError(f"{exc}\n--- load generator stderr ---\n{tail(err_path)}") from None
    finally:
        procs.stop(load, grace=2.0)
    if server.proc.poll() is not None:
        raise server.fail(f"exited with {server.proc.returncode} during the run")
    seconds = result["duration_s"]
    if cpu_before is not None and cpu_after is not None:
        result["server_cpu_pct"] = round(100 * (cpu_after - cpu_before) / seconds, 1)
        # What the rest of the machine used meanwhile: the 2 cores are shared with it.
        machine = 100 * (machine_after - machine_before) / seconds
        result["machine_cpu_pct"] = round(machine, 1)
        result["loadgen_cpu_pct"] = round(100 * result["loadgen_cpu_s"] / seconds, 1)
        result["others_cpu_pct"] = round(
            max(0.0, machine - result["server_cpu_pct"] - result["loadgen_cpu_pct"]), 1
        )
    if server.data_dir is not None and before is not None:
        time.sleep(1.0)  # requests still in flight when the load stopped get committed
        after = db_counts(server)
        added = after["deliveries"] - before["deliveries"]
        result["db_before"], result["db_after"] = before, after
        result["durable_added"] = added
        result["durable_per_s"] = round(added / seconds, 1)
        if added < result["ok_2xx"]:
            result.setdefault("problems", []).append(
                f"only {added} rows added for {result['ok_2xx']} acknowledged deliveries"
            )
    return result


# -- report ------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 1, suffix: str = "") -> str:
    return "-" if value is None else f"{value:,.{digits}f}{suffix}"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:,.2f}x"


COLUMNS = [
    ("scenario", 9, "<"),
    ("server", 8, "<"),
    ("p50 ms", 8, ">"),
    ("p99 ms", 8, ">"),
    ("p99* ms", 8, ">"),
    ("rate/s", 9, ">"),
    ("2xx/total", 15, ">"),
    ("durable/s", 10, ">"),
    ("srv CPU", 8, ">"),
    ("bg CPU", 7, ">"),
]


def row(cells: list[str]) -> str:
    return "  ".join(
        f"{c:{align}{width}}" for c, (_, width, align) in zip(cells, COLUMNS, strict=False)
    )


def report(
    runs: list[dict[str, Any]], meta: dict[str, Any], quick: bool
) -> tuple[str, list[dict[str, Any]]]:
    out = [
        f"Webhook intake: {meta['payload']['bytes']:,} B signed push delivery "
        f"({meta['payload']['example']}, {meta['payload']['commits']} commit(s)), "
        f"{meta['duration_s']:g} s per run after {meta['warmup_s']:g} s warm-up"
        + (
            " (servers reused across scenarios)"
            if meta["reuse_servers"]
            else " (fresh servers per run)"
        )
        + ", "
        f"load: {meta['load_tool']} (pacing: {meta['pacing']}), {meta['cpus']} CPUs, "
        f"Slipway on {meta.get('database', 'sqlite')}",
        f"Slipway project for {meta['payload']['repo']}: "
        + (
            "CREATED (clone_url: an empty repository: each delivery is routed to a "
            "production deployment that fails to fetch — realistic background work)"
            if meta["project_created"]
            else "NOT created (--no-project: deliveries are recorded and routed to nothing)"
        ),
        "",
        row([c for c, _, _ in COLUMNS]),
        row(["-" * w for _, w, _ in COLUMNS]),
    ]
    by_key = {(r["scenario"], r["server"]): r for r in runs}
    scenarios = list(dict.fromkeys(r["scenario"] for r in runs))
    for name in scenarios:
        for server in ("slipway", "node"):
            r = by_key.get((name, server))
            if r is None:
                continue
            out.append(
                row(
                    [
                        name,
                        server,
                        fmt(r["latency_ms"]["p50"], 2),
                        fmt(r["latency_ms"]["p99"], 2),
                        fmt(r["schedule_latency_ms"]["p99"], 2),
                        fmt(r["ok_rate"]),
                        f"{r['ok_2xx']:,}/{r['sent']:,}",
                        fmt(r.get("durable_per_s")) if server == "slipway" else "-",
                        fmt(r.get("server_cpu_pct"), 0, "%"),
                        fmt(r.get("others_cpu_pct"), 0, "%")
                        + (
                            "!"
                            if (r.get("others_cpu_pct") or 0) > meta["quiet_threshold_pct"]
                            else ""
                        ),
                    ]
                )
            )
        s, n = by_key.get((name, "slipway")), by_key.get((name, "node"))
        if s and n:
            out.append(
                row(
                    [
                        name,
                        "slip/node",
                        ratio(s["latency_ms"]["p50"], n["latency_ms"]["p50"]),
                        ratio(s["latency_ms"]["p99"], n["latency_ms"]["p99"]),
                        ratio(s["schedule_latency_ms"]["p99"], n["schedule_latency_ms"]["p99"]),
                        ratio(s["ok_rate"], n["ok_rate"]),
                        ratio(s["ok_2xx"] / max(1, s["sent"]), n["ok_2xx"] / max(1, n["sent"])),
                        ratio(s.get("durable_per_s"), n["ok_rate"]),
                        ratio(s.get("server_cpu_pct"), n.get("server_cpu_pct")),
                        "",
                    ]
                )
            )
    out += [
        "",
        "p50/p99: 2xx latency from the moment the request was written; p99*: from the moment "
        "it was due (fixed-rate runs: includes waiting when the server fell behind).",
        "rate/s: 2xx answers per second. durable/s: deliveries committed per second — rows "
        "added to Slipway's deliveries table or still waiting in its inbox file (ratio row: "
        "against Node's 2xx/s — Node stores nothing).",
        "srv CPU: the server's CPU time / wall time, its controller process and their "
        "children included (200% = both cores; the load generator shares them). bg CPU: "
        "what everything else on the machine used meanwhile "
        f"('!' = over {meta['quiet_threshold_pct']:g}%: the run was disturbed).",
    ]
    backlog = [r for r in runs if r["server"] == "slipway" and r.get("db_after")]
    if backlog:
        out.append(
            "Slipway routing after each run (in the inbox / queued route jobs / deliveries "
            "processed): "
            + ", ".join(
                f"{r['scenario']}: {r['db_after'].get('inbox_waiting', 0):,} / "
                f"{r['db_after']['route_jobs_queued']:,} / "
                f"{r['db_after']['deliveries_processed']:,}"
                for r in backlog
            )
        )

    targets: list[dict[str, Any]] = []
    at200 = by_key.get(("200/s", "slipway"))
    if at200:
        measured = [
            v
            for v in (at200["latency_ms"]["p99"], at200["schedule_latency_ms"]["p99"])
            if v is not None
        ]
        p99 = max(measured) if measured else None  # None: not one 2xx answer
        targets.append(
            {
                "target": f"p99 < {TARGET_P99_MS_AT_200:g} ms at 200/s (the larger of "
                "p99 and p99*)",
                "value": p99,
                "unit": "ms",
                "pass": p99 is not None and p99 < TARGET_P99_MS_AT_200,
            }
        )
    top = by_key.get(("max", "slipway"))
    if top and top.get("durable_per_s") is not None:
        targets.append(
            {
                "target": f">= {TARGET_DURABLE_PER_S:,.0f} durable deliveries/s "
                f"on {meta['cpus']} cores",
                "value": top["durable_per_s"],
                "unit": "/s",
                "pass": top["durable_per_s"] >= TARGET_DURABLE_PER_S,
            }
        )
    if targets:
        out += ["", "Targets (Slipway)" + (" — quick run, indicative only" if quick else "") + ":"]
        for t in targets:
            value = "no 2xx answer" if t["value"] is None else f"{t['value']:,.1f} {t['unit']}"
            out.append(f"  {'PASS' if t['pass'] else 'MISS'}  {t['target']}: {value}")
    for title, key in (("PROBLEMS", "problems"), ("Warnings", "warnings")):
        found = [f"{r['scenario']} {r['server']}: {p}" for r in runs for p in r.get(key, [])]
        if found:
            out += ["", f"{title}:"] + [f"  {p}" for p in found]
    return "\n".join(out), targets


def sanity(result: dict[str, Any], quick: bool) -> None:
    """Wrong answers, dropped connections and acknowledged-but-missing deliveries fail the
    benchmark. So does a run without a single 2xx — except a quick run on a busy machine,
    where that is slowness, not a bug (the preflight has already seen a 202)."""
    problems = result.setdefault("problems", [])
    if result["ok_2xx"] == 0:
        (result.setdefault("warnings", []) if quick else problems).append("no 2xx answer at all")
    if result["non_2xx"]:
        problems.append(f"{result['non_2xx']} non-2xx answers: {result['status_counts']}")
    if result["errors"]:
        problems.append(f"{result['errors']} connection errors / timeouts")
    if not problems:
        del result["problems"]


def git_describe() -> str | None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            text=True,
            capture_output=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            text=True,
            capture_output=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "") if head else None


# -- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=30.0,
        help="seconds of measured load per scenario and server (default 30)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="unmeasured seconds of load before each run (default 3; quick 0)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run for CI: 1 s per run, no warm-up, one server of each "
        "kind for all runs, no waiting for quiet (10-20 s in all)",
    )
    parser.add_argument(
        "--reuse-servers",
        action="store_true",
        help="start each server once, not once per scenario (implied by --quick)",
    )
    parser.add_argument(
        "--scenarios",
        default="200,500,max",
        help="comma-separated: 200, 500 (fixed rates), max (default: all)",
    )
    parser.add_argument("--servers", default="slipway,node", help="default: slipway,node")
    parser.add_argument(
        "--max-connections",
        type=int,
        default=32,
        help="connections for the uncapped run (default 32)",
    )
    parser.add_argument(
        "--rate-connections",
        type=int,
        default=50,
        help="connections for the fixed-rate runs (default 50)",
    )
    parser.add_argument(
        "--pacing",
        choices=["even", "autocannon"],
        default="even",
        help="fixed-rate pacing (see load.mjs; default even)",
    )
    parser.add_argument(
        "--no-project",
        action="store_true",
        help="do not create a Slipway project for the payload's repository",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=None,
        help="before each run, wait up to this many seconds for the rest of the "
        "machine to use less than --quiet-threshold CPU (default 120; quick 0)",
    )
    parser.add_argument(
        "--quiet-threshold", type=float, default=25.0, help="%% of one core (default 25)"
    )
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="run Slipway on PostgreSQL: a fresh database per server on the server of this "
        "URL (e.g. postgresql://slipway@127.0.0.1:55432/postgres), dropped afterwards",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"default {RESULTS}")
    parser.add_argument("--keep-data", action="store_true", help="keep the temporary data dirs")
    parser.add_argument(
        "--fail-on-miss",
        action="store_true",
        help="exit 1 when Slipway misses a target (default: only on errors)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        # autocannon ends a run on its 1 s tick: shorter runs would still last 1 s.
        args.duration = min(args.duration, 1.0)
        args.reuse_servers = True
    if args.warmup is None:
        args.warmup = 0.0 if args.quick else 3.0
    if args.quiet_wait is None:
        args.quiet_wait = 0.0 if args.quick else 120.0
    return args


def scenarios_from(args: argparse.Namespace) -> list[Scenario]:
    chosen = []
    for name in (s.strip() for s in args.scenarios.split(",") if s.strip()):
        if name == "max":
            chosen.append(Scenario("max", 0, args.max_connections))
        elif name.isdigit():
            chosen.append(Scenario(f"{name}/s", int(name), args.rate_connections))
        else:
            raise BenchmarkError(f"unknown scenario {name!r}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def on_sigterm(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    # Also when started with SIGINT ignored (a background job of a script): Ctrl-C must stop us.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if shutil.which("node") is None:
        print("node is not on PATH", file=sys.stderr)
        return 2
    if not (NODE_DIR / "node_modules" / "autocannon").exists():
        print(
            "tests/node/node_modules is missing: run `npm ci --prefix tests/node`", file=sys.stderr
        )
        return 2

    procs = Processes()
    workdir = Path(tempfile.mkdtemp(prefix="slipway-intake-bench-"))
    started = time.monotonic()
    runs: list[dict[str, Any]] = []
    try:
        body, payload_info = build_push_delivery()
        secret = "bench-" + uuid.uuid4().hex
        headers = {"X-GitHub-Event": "push", "X-Hub-Signature-256": sign(secret, body)}
        body_file = workdir / "push.json"
        body_file.write_bytes(body)
        servers = [s.strip() for s in args.servers.split(",") if s.strip()]
        unknown = set(servers) - {"slipway", "node"}
        if unknown:
            raise BenchmarkError(f"unknown server(s): {', '.join(sorted(unknown))}")
        scenario_order = [scenario.name for scenario in scenarios_from(args)]
        node_version = subprocess.run(
            ["node", "--version"], capture_output=True, text=True
        ).stdout.strip()
        meta = {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "commit": git_describe(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "node": node_version,
            "load_tool": "autocannon "
            + json.loads((NODE_DIR / "node_modules" / "autocannon" / "package.json").read_text())[
                "version"
            ],
            "pacing": args.pacing,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "quick": args.quick,
            "payload": payload_info,
            "project_created": not args.no_project,
            "database": "postgresql" if args.postgres else "sqlite",
            "quiet_threshold_pct": args.quiet_threshold,
            "reuse_servers": args.reuse_servers,
        }
        print(
            f"payload: {payload_info['bytes']:,} B, {payload_info['example']}; Slipway project "
            + (
                "created (routing creates deployments that fail to fetch: realistic background work)"
                if not args.no_project
                else "not created (--no-project)"
            ),
            flush=True,
        )
        # Fresh servers: scenario by scenario, each server in turn. Reused servers (quick):
        # all runs of one server, then the next, so a server working off its backlog
        # (Slipway routes what it received) never runs beside the other's measurement.
        plan = [(scenario, kind) for scenario in scenarios_from(args) for kind in servers]
        if args.reuse_servers:
            plan.sort(key=lambda item: servers.index(item[1]))
        reused: Server | None = None
        for scenario, kind in plan:
            if reused is not None and reused.kind != kind:
                procs.stop(reused.proc)
                reused = None
            label = f"{scenario.name.replace('/', '_')}-{kind}"
            print(f"  {scenario.name:>6} {kind:<8} ...", end="", flush=True)
            if args.quiet_wait > 0:
                wait_for_quiet(args.quiet_wait, args.quiet_threshold)
            server = reused or start_server(kind, procs, workdir, secret, label, args, payload_info)
            if args.reuse_servers:
                reused = server
            try:
                preflight(server, body, headers)
                result = drive(procs, server, scenario, args, body_file, headers, workdir)
            finally:
                if not args.reuse_servers:
                    procs.stop(server.proc)
            result |= {"scenario": scenario.name, "server": kind}
            sanity(result, args.quick)
            runs.append(result)
            print(" " + summary(result), flush=True)
        if reused is not None:
            procs.stop(reused.proc)
        runs.sort(key=lambda r: (scenario_order.index(r["scenario"]), servers.index(r["server"])))
        text, targets = report(runs, meta, args.quick)
        print()
        print(text)
        meta["wall_s"] = round(time.monotonic() - started, 1)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(
            json.dumps({"meta": meta, "runs": runs, "targets": targets, "table": text}, indent=2)
            + "\n"
        )
        print(f"\nresults: {args.output} ({meta['wall_s']:g} s in all)")
        if any(r.get("problems") for r in runs):
            return 1
        if args.fail_on_miss and not all(t["pass"] for t in targets):
            return 1
        return 0
    except BenchmarkError as exc:
        print(f"\nbenchmark failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        if args.keep_data:
            print(f"data kept in {workdir} {' '.join(CREATED_DATABASES)}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            for url in CREATED_DATABASES:
                with contextlib.suppress(Exception):
                    drop_pg_database(url)


if __name__ == "__main__":
    sys.exit(main())
