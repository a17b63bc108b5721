"""Run latency benchmark (issue 8): a trivial task's run through the trigger API.

Run from the repository root::

    .venv/bin/python tests/benchmarks/runs.py
    .venv/bin/python tests/benchmarks/runs.py --baseline /tmp/slipway-main   # side by side

Each tree gets a real ``slipway serve`` (SQLite, fresh temp data dir) with a production
environment and ``--previews`` preview branches, all deployed. ``--baseline`` names
another checkout of Slipway (e.g. ``git archive main | tar -x -C DIR``); its server runs
with ``PYTHONPATH`` pointing there. Both servers are up at once and the samples
alternate between them, so the load on this shared machine falls on both alike (the load
average is printed):

- warm: ``POST /api/v1/tasks/hello/trigger`` on production, ``--runs`` times (target p50
  < 10 ms);
- cold: a preview whose worker the idle timeout stopped (checked: no worker process
  left), then one run that starts it (target p50 < 400 ms).
"""

from __future__ import annotations

import argparse
import os
import statistics
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

from support import payloads  # noqa: E402
from support.repos import TaskRepo  # noqa: E402
from support.server import Server  # noqa: E402

from controller.branchnames import branch_headers  # noqa: E402
from controller.runtimes.local import WORKER_MAIN  # noqa: E402
from controller.runtimes.procs import workers_marked  # noqa: E402

REPO = "octo-org/bench"
IDLE = 1.0


class Tree:
    """One Slipway checkout under test, with its server and keys."""

    def __init__(self, name: str, base: Path, source: Path | None) -> None:
        self.name = name
        self.repo = TaskRepo(base / "repo")
        self.server = Server(base / "data", extra_env={"SLIPWAY_PREVIEW_IDLE_TIMEOUT": str(IDLE)})
        self.worker_main = WORKER_MAIN
        if source is not None:
            self.server.env["PYTHONPATH"] = str(source)
            self.worker_main = source / WORKER_MAIN.relative_to(ROOT)
        self.keys: dict[str, str] = {}
        self.warm: list[float] = []
        self.cold: list[float] = []

    def deploy(self, previews: list[str]) -> None:
        heads = {}
        for branch in previews:
            self.repo.checkout("main")
            self.repo.checkout(branch, create=True)
            heads[branch] = self.repo.set_message(f"hello {branch}")
        self.repo.checkout("main")
        server = self.server
        server.start()
        server.create_project("bench", repo=REPO, clone_url=str(self.repo.path))
        head = self.repo.head()
        server.deliver("push", payloads.push(repo=REPO, before="0" * 40, after=head))
        for number, (branch, sha) in enumerate(heads.items(), start=1):
            server.deliver(
                "pull_request",
                payloads.pull_request(
                    action="opened", number=number, repo=REPO, head_ref=branch, head_sha=sha
                ),
            )

        def deployed() -> bool:
            envs = server.ok("GET", "/api/v1/projects/bench/environments")
            live = {e["branch"] or e["name"] for e in envs if e.get("current_version")}
            return {"production", *previews} <= live

        server.wait_for(deployed, timeout=600, interval=0.5)
        self.keys["production"] = server.secret_key("bench", "production")
        for branch in previews:
            self.keys[branch] = server.secret_key("bench", "preview", branch)

    def trigger(self, branch: str | None) -> float:
        headers = {"Authorization": f"Bearer {self.keys[branch or 'production']}"}
        if branch:
            headers.update(branch_headers(branch))
        started = time.perf_counter()
        response = self.server.client.post(
            "/api/v1/tasks/hello/trigger", json={"payload": None}, headers=headers
        )
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 200 or response.json().get("status") != "completed":
            raise SystemExit(f"{self.name}: a run failed: {response.status_code} {response.text}")
        return elapsed

    def preview_workers(self) -> int:
        live = workers_marked(self.worker_main, owner=self.server.data_dir / "workers")
        return len(live) - 1  # production stays warm

    def close(self) -> None:
        self.server.close()


def figures(tree: Tree) -> dict[str, Any]:
    warm = sorted(tree.warm)
    return {
        "tree": tree.name,
        "warm_p50_ms": round(statistics.median(warm), 2),
        "warm_p90_ms": round(warm[int(len(warm) * 0.9)], 2),
        "cold_p50_ms": round(statistics.median(tree.cold), 1) if tree.cold else None,
        "cold_max_ms": round(max(tree.cold), 1) if tree.cold else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", type=Path, help="another Slipway checkout to compare")
    parser.add_argument("--runs", type=int, default=200, help="warm runs per tree")
    parser.add_argument("--previews", type=int, default=5, help="cold runs per tree")
    args = parser.parse_args()
    previews = [f"pr-{i}" for i in range(args.previews)]
    with tempfile.TemporaryDirectory(prefix="slipway-bench-runs-") as tmp:
        trees = [Tree("this tree", Path(tmp) / "this", None)]
        if args.baseline is not None:
            trees.insert(0, Tree(f"baseline {args.baseline}", Path(tmp) / "base", args.baseline))
        try:
            for tree in trees:
                tree.deploy(previews)
            for tree in trees:
                tree.trigger(None)  # the first run forks; the spare comes after it
            print(f"load average before: {os.getloadavg()}", file=sys.stderr)
            for _ in range(args.runs):
                for tree in trees:
                    tree.warm.append(tree.trigger(None))
            for branch in previews:
                for tree in trees:
                    tree.server.wait_for(lambda t=tree: t.preview_workers() == 0, timeout=120)
                    tree.cold.append(tree.trigger(branch))
            print(f"load average after: {os.getloadavg()}", file=sys.stderr)
        finally:
            for tree in trees:
                tree.close()
    for tree in trees:
        print(figures(tree))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
