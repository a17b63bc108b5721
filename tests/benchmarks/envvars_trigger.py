"""Env var benchmark: trigger latency with 0 and with 500 variables in the environment.

Run from the repository root::

    .venv/bin/python tests/benchmarks/envvars_trigger.py           # 300 runs per side
    .venv/bin/python tests/benchmarks/envvars_trigger.py --quick   # smoke run, 20 per side

One real ``slipway serve`` (SQLite, fresh temp data dir) and one uploaded project with a
task that returns at once. ``production`` has no variables; ``staging`` has 500 (50 of
them secret, values of 40-200 characters), set through the import API. Both are deployed
from the same source, so they share one dependency environment and their workers are
alike. Triggers alternate between the two (A, B, A, B, …) after a warm-up, so a drift of
the machine falls on both sides alike; each trigger is timed from the request to the
answer, sequentially, through the environment's secret key (``POST
/api/v1/tasks/hello/trigger``). Every variable is resolved and decrypted on every run
(that is what makes a changed value reach the next run without a redeploy), so the
difference is the cost of doing that 500 times per run.

Figures: p50 and p99 per side and their ratios; the target is a p50 ratio ≤ 1.1.
Printed as a table and written to ``tests/benchmarks/results/envvars_trigger.json``
(``--output`` elsewhere). The exit code is non-zero only when a run fails.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
for _p in (str(ROOT), str(TESTS)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from support.repos import TaskRepo  # noqa: E402
from support.server import Server  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "envvars_trigger.json"
CLI = [sys.executable, "-m", "controller.cli"]
TARGET_RATIO = 1.1
VARIABLES = 500
SECRETS = 50


def percentile(values: list[float], q: float) -> float:
    data = sorted(values)
    if not data:
        return float("nan")
    pos = (len(data) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def _deploy(server: Server, repo: TaskRepo, env: str) -> None:
    result = subprocess.run(
        [*CLI, "deploy", str(repo.path), "--project", "bench", "--env", env],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        raise SystemExit(f"deploying {env} failed:\n{result.stdout}\n{result.stderr}")


def _variables(rng: random.Random) -> tuple[dict[str, str], dict[str, str]]:
    alphabet = string.ascii_letters + string.digits
    values = {
        f"VAR_{i:03d}": "".join(rng.choices(alphabet, k=rng.randint(40, 200)))
        for i in range(VARIABLES)
    }
    names = list(values)
    secrets = {n: values.pop(n) for n in names[:SECRETS]}
    return values, secrets


def _timed_trigger(server: Server, key: str) -> float:
    started = time.perf_counter()
    response = server.client.post(
        "/api/v1/tasks/hello/trigger",
        json={"payload": None},
        headers={"Authorization": f"Bearer {key}"},
    )
    elapsed = time.perf_counter() - started
    if response.status_code != 200 or response.json().get("status") != "completed":
        raise SystemExit(f"a run failed: {response.status_code} {response.text[:500]}")
    return elapsed


def measure(*, runs: int, warmup: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="slipway-bench-envvars-") as tmp:
        base = Path(tmp)
        repo = TaskRepo(base / "repo")
        server = Server(base / "data")
        try:
            server.start()
            server.create_project("bench", repo="octo-org/bench", clone_url=str(repo.path))
            plain, secret = _variables(random.Random(9))
            server.ok(
                "POST",
                "/api/v1/projects/bench/envvars/staging/import",
                json={"variables": plain, "override": True},
            )
            server.ok(
                "POST",
                "/api/v1/projects/bench/envvars/staging",
                json={"variables": secret, "secret": True},
            )
            _deploy(server, repo, "production")
            _deploy(server, repo, "staging")
            keys = {
                0: server.secret_key("bench", "production"),
                VARIABLES: server.secret_key("bench", "staging"),
            }
            for _ in range(warmup):
                for key in keys.values():
                    _timed_trigger(server, key)
            samples: dict[int, list[float]] = {n: [] for n in keys}
            for _ in range(runs):
                for n, key in keys.items():
                    samples[n].append(_timed_trigger(server, key))
        finally:
            server.close()
    sides = {
        str(n): {
            "variables": n,
            "runs": len(values),
            "p50_ms": percentile(values, 50) * 1000,
            "p99_ms": percentile(values, 99) * 1000,
        }
        for n, values in samples.items()
    }
    zero, many = sides["0"], sides[str(VARIABLES)]
    return {
        "benchmark": "envvars_trigger",
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "sides": sides,
        "p50_ratio": many["p50_ms"] / zero["p50_ms"],
        "p99_ratio": many["p99_ms"] / zero["p99_ms"],
        "target_p50_ratio": TARGET_RATIO,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=300, help="triggers per side")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 triggers per side")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    runs, warmup = (20, 3) if args.quick else (args.runs, 20)
    report = measure(runs=runs, warmup=warmup)
    print(f"{'variables':>10} {'runs':>6} {'p50 ms':>9} {'p99 ms':>9}")
    for side in report["sides"].values():
        print(
            f"{side['variables']:>10} {side['runs']:>6} {side['p50_ms']:>9.2f} "
            f"{side['p99_ms']:>9.2f}"
        )
    verdict = "met" if report["p50_ratio"] <= TARGET_RATIO else "MISSED"
    print(
        f"p50 ratio {report['p50_ratio']:.3f} (target ≤ {TARGET_RATIO}: {verdict}); "
        f"p99 ratio {report['p99_ratio']:.3f}"
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
