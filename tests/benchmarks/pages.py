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

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))

from support.server import Server  # noqa: E402

from controller.deployments import ensure_environment, get_project  # noqa: E402
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


def measure(server: Server, path: str, rounds: int) -> dict[str, float]:
    client = server.client
    response = client.post("/login", data={"token": server.token}, headers={"Origin": server.url})
    assert response.status_code == 303, response.text
    client.get(path)  # warm up
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        page = client.get(path)
        times.append((time.perf_counter() - began) * 1000)
        assert page.status_code == 200, page.text[:500]
    times.sort()
    return {
        "p50_ms": statistics.median(times),
        "p95_ms": times[int(len(times) * 0.95) - 1],
        "max_ms": times[-1],
        "bytes": len(page.content),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deployments", type=int, default=1000)
    parser.add_argument("--previews", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "pages.json")
    args = parser.parse_args()
    if args.quick:
        args.deployments, args.previews, args.rounds = 100, 20, 10
    with tempfile.TemporaryDirectory(prefix="slipway-pages-") as tmp:
        server = Server(Path(tmp) / "data")
        try:
            server.start()
            server.create_project("demo", repo="octo-org/demo")
            server.stop()
            seed(server.data_dir, deployments=args.deployments, previews=args.previews)
            server.start()
            project = measure(server, "/projects/demo", args.rounds)
            environment = measure(server, "/projects/demo/environments/production", args.rounds)
        finally:
            server.close()
    report = {
        "deployments": args.deployments,
        "previews": args.previews,
        "rounds": args.rounds,
        "project_page": project,
        "environment_page": environment,
        "target": {"project_page_p50_ms": 100, "met": project["p50_ms"] < 100},
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(f"{'page':<22}{'p50 ms':>10}{'p95 ms':>10}{'max ms':>10}{'KiB':>8}")
    for name, row in (("project", project), ("environment", environment)):
        print(
            f"{name:<22}{row['p50_ms']:>10.1f}{row['p95_ms']:>10.1f}{row['max_ms']:>10.1f}"
            f"{row['bytes'] / 1024:>8.0f}"
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
