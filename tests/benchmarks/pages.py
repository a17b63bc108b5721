"""Pages benchmark: a project page with 1,000 deployments and 200 preview branches.

Run from the repository root::

    .venv/bin/python tests/benchmarks/pages.py               # 1,000 deployments, 200 previews
    .venv/bin/python tests/benchmarks/pages.py --quick       # 100 deployments, 20 previews

A real ``slipway serve`` (SQLite, fresh temp data dir) gets one project; while it is
stopped, the benchmark writes the preview branches, deployments (with their steps) and
versions straight into its database through the store's own functions, then starts it
again, signs in through the login form like a browser, and times ``GET /projects/demo``
(and one environment page) over loopback. The p50 target (< 100 ms) is printed, not
asserted; results go to ``tests/benchmarks/results/pages.json``.

``--baseline DIR`` times another checkout's code side by side in the same run (a second
server, same seed, requests interleaved one by one so both see the same load), e.g.::

    git archive main controller webhooks | tar -x -C /tmp/main
    .venv/bin/python tests/benchmarks/pages.py --baseline /tmp/main
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))

from support.server import Server  # noqa: E402

from controller.domain.environments import ensure_environment  # noqa: E402
from controller.domain.projects import get_project  # noqa: E402
from controller.ids import new_id  # noqa: E402
from controller.secretstore.crypto import Cipher  # noqa: E402
from controller.store.db import Database  # noqa: E402
from controller.store.tables import Deployment, DeploymentStep, Version, utcnow  # noqa: E402

STEPS = ("fetch", "checkout", "install", "build", "version", "health", "promote")


def seed(data_dir: Path, *, deployments: int, previews: int) -> None:
    db = Database(f"sqlite:///{data_dir / 'slipway.db'}")
    cipher = Cipher([(data_dir / "encryption.key").read_text().strip()])
    try:
        seed_database(db, cipher, deployments=deployments, previews=previews)
    finally:
        db.dispose()


def seed_database(db: Database, cipher: Cipher, *, deployments: int, previews: int) -> None:
    """Project ``demo`` (it must exist) gets production, ``previews`` preview branches and
    ``deployments`` deployments, half of them production's, each with steps and a version."""
    start = utcnow() - timedelta(days=1)
    with db.transaction() as session:
        project = get_project(session, "demo")
        envs = [
            ensure_environment(session, cipher, project=project, name="production", branch=None)
        ]
        for i in range(previews):
            envs.append(
                ensure_environment(
                    session,
                    cipher,
                    project=project,
                    name="preview",
                    branch=f"feature/{i:03d}",
                    pr_number=i + 1,
                )
            )
        for i in range(deployments):
            env = envs[i % len(envs)] if i % 2 else envs[0]
            at = start + timedelta(seconds=i * 30)
            dep = Deployment(
                id=new_id("dep"),
                project_id=project.id,
                environment_id=env.id,
                sha=f"{i:040x}",
                ref="refs/heads/main",
                source="push",
                status="deployed",
                created_at=at,
                started_at=at,
                finished_at=at + timedelta(seconds=20),
            )
            session.add(dep)
            session.flush()
            for name in STEPS:
                session.add(
                    DeploymentStep(
                        deployment_id=dep.id,
                        name=name,
                        status="done",
                        attempts=1,
                        duration_ms=1234.5,
                        finished_at=at,
                    )
                )
            day = at.strftime("%Y%m%d")
            version = Version(
                project_id=project.id,
                environment_id=env.id,
                deployment_id=dep.id,
                version=f"{day}.{i + 1}",
                day=day,
                seq=i + 1,
                sha=dep.sha,
                tasks=[{"id": "hello"}],
                source_path="/nonexistent",
                venv_path="/nonexistent",
            )
            session.add(version)
            session.flush()
            dep.version_id = version.id
            env.current_version_id = version.id


def sign_in(server: Server) -> None:
    response = server.client.post(
        "/login", data={"token": server.token}, headers={"Origin": server.url}
    )
    assert response.status_code == 303, response.text


def measure(servers: list[Server], path: str, rounds: int) -> list[dict[str, float]]:
    """Time ``path`` on each server, interleaved request by request so that every server
    sees the same machine load."""
    times: list[list[float]] = [[] for _ in servers]
    sizes = [0 for _ in servers]
    for server in servers:
        server.client.get(path)  # warm up
    for _ in range(rounds):
        for i, server in enumerate(servers):
            began = time.perf_counter()
            page = server.client.get(path)
            times[i].append((time.perf_counter() - began) * 1000)
            assert page.status_code == 200, page.text[:500]
            sizes[i] = len(page.content)
    rows = []
    for taken, size in zip(times, sizes, strict=True):
        taken.sort()
        rows.append(
            {
                "p50_ms": statistics.median(taken),
                "p95_ms": taken[max(0, int(len(taken) * 0.95) - 1)],
                "max_ms": taken[-1],
                "bytes": size,
            }
        )
    return rows


def start_seeded(data_dir: Path, args: argparse.Namespace, source: Path | None) -> Server:
    extra = {"PYTHONPATH": str(source.resolve())} if source else None
    server = Server(data_dir, extra_env=extra)
    server.start()
    server.create_project("demo", repo="octo-org/demo")
    server.stop()
    seed(server.data_dir, deployments=args.deployments, previews=args.previews)
    server.start()
    sign_in(server)
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deployments", type=int, default=1000)
    parser.add_argument("--previews", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a directory holding another checkout's controller/ and webhooks/ packages, "
        "timed side by side with this tree (same schema assumed)",
    )
    parser.add_argument("--output", type=Path, default=HERE / "results" / "pages.json")
    args = parser.parse_args()
    if args.quick:
        args.deployments, args.previews, args.rounds = 100, 20, 10
    sides = [("this tree", None)] + ([("baseline", args.baseline)] if args.baseline else [])
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="slipway-pages-") as tmp:
        try:
            for i, (_, source) in enumerate(sides):
                servers.append(start_seeded(Path(tmp) / f"data{i}", args, source))
            project = measure(servers, "/projects/demo", args.rounds)
            environment = measure(servers, "/projects/demo/environments/production", args.rounds)
        finally:
            for server in servers:
                server.close()
    report: dict[str, Any] = {
        "deployments": args.deployments,
        "previews": args.previews,
        "rounds": args.rounds,
        "project_page": project[0],
        "environment_page": environment[0],
        "target": {"project_page_p50_ms": 100, "met": project[0]["p50_ms"] < 100},
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    if args.baseline:
        report["baseline"] = {
            "source": str(args.baseline),
            "project_page": project[1],
            "environment_page": environment[1],
        }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(f"{'page':<26}{'p50 ms':>10}{'p95 ms':>10}{'max ms':>10}{'KiB':>8}")
    for i, (side, _) in enumerate(sides):
        for name, rows in (("project", project), ("environment", environment)):
            row = rows[i]
            print(
                f"{name + ' (' + side + ')':<26}{row['p50_ms']:>10.1f}{row['p95_ms']:>10.1f}"
                f"{row['max_ms']:>10.1f}{row['bytes'] / 1024:>8.0f}"
            )
    load = report["load_average"][0]
    print(f"machine: {report['cpus']} CPUs, load average {load:.1f} (figures scale with it)")
    verdict = "met" if report["target"]["met"] else "NOT met"
    print(
        f"target: project page with {args.deployments} deployments and {args.previews} "
        f"previews, p50 < 100 ms: {verdict}"
    )


if __name__ == "__main__":
    main()
