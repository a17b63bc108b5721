"""One resync pass over many GitHub-connected repositories with no changes (issue 10).

A SQLite database gets ``--repos`` projects, each on its own repository of one of
``--installations`` App installations, without ``--clone-url`` (so their heads and pull
requests come from GitHub's API). The fake GitHub (``tests/support/fake_github.py``, every
request validated against GitHub's spec) answers each request after ``--latency`` seconds.
The branch pass and the pull request pass run as the controller's resync runs them, with
their bounded pools (``RESOLVE_WORKERS`` / ``WORKERS`` threads):

* a **cold** pass: no ETag known yet; the heads are new, so it requests one deployment each;
* the **measured** passes (``--passes``): nothing changed; every request should be a 304.

Prints wall time, GitHub requests per repository and how many were 304; writes JSON under
``tests/benchmarks/results/``. Checks nothing but that the measured passes requested and
archived nothing.

    .venv/bin/python tests/benchmarks/github_resync.py [--repos 200 --latency 0.05] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[1]))

from cryptography.fernet import Fernet  # noqa: E402
from support.fake_github import FakeGitHub  # noqa: E402

from controller.domain.projects import create_project  # noqa: E402
from controller.github.client import AppClient  # noqa: E402
from controller.reconcile import git_sources  # noqa: E402
from controller.reconcile.branches import RESOLVE_WORKERS, BranchPass  # noqa: E402
from controller.reconcile.github import WORKERS, ConditionalReads, PullRequestPass  # noqa: E402
from controller.secretstore.crypto import Cipher  # noqa: E402
from controller.store.db import Database  # noqa: E402
from controller.store.tables import Repository  # noqa: E402


class NoGit:
    def resolve(self, ref: str, **_: object) -> None:
        raise AssertionError("GitHub-connected projects are never resolved with git")


def populate(
    db: Database, cipher: Cipher, fake: FakeGitHub, *, repos: int, installations: int
) -> None:
    for n in range(installations):
        fake.add_installation(9000 + n, account=f"org{n}")
    with db.transaction() as session:
        for n in range(repos):
            full = f"org{n % installations}/repo{n}"
            create_project(session, cipher, ref=f"p{n}", repo=full, production_branch="main")
            session.add(
                Repository(
                    full_name=full,
                    full_name_lower=full.lower(),
                    installation_id=9000 + n % installations,
                    clone_url=f"https://example.invalid/{full}.git",
                )
            )
            fake.branches[full] = {"main": f"{n:040x}"}
            fake.pulls[full] = []


def one_pass(
    branches: BranchPass, pulls: PullRequestPass, reads: ConditionalReads
) -> dict[str, float]:
    before_requests, before_304 = reads.requests, reads.not_modified
    started = time.monotonic()
    requested = branches.run()
    more, archived = pulls.run()
    wall = time.monotonic() - started
    return {
        "wall_s": wall,
        "requests": reads.requests - before_requests,
        "not_modified": reads.not_modified - before_304,
        "deployments_requested": len(requested) + len(more),
        "archived": len(archived),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repos", type=int, default=200)
    parser.add_argument("--installations", type=int, default=10)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="20 repositories, 1 pass")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.repos, args.installations, args.passes = 20, 2, 1

    with tempfile.TemporaryDirectory() as tmp, FakeGitHub() as fake:
        db = Database(f"sqlite:///{Path(tmp) / 'slipway.db'}")
        db.migrate()
        cipher = Cipher([Fernet.generate_key().decode()])
        populate(db, cipher, fake, repos=args.repos, installations=args.installations)
        client = AppClient(app_id=fake.app_id, private_key=fake.private_key, api_url=fake.url)
        reads = ConditionalReads(lambda: client)
        branches = BranchPass(
            db=db,
            cipher=cipher,
            source_for=git_sources(NoGit(), github=reads),
            timeout=60,  # type: ignore[arg-type]
        )
        pulls = PullRequestPass(db=db, cipher=cipher, reads=reads, preview_ttl=0, timeout=60)
        fake.latency = args.latency
        cold = one_pass(branches, pulls, reads)
        measured = [one_pass(branches, pulls, reads) for _ in range(args.passes)]
        db.dispose()
        errors = list(fake.errors)

    rows = [("cold", cold)] + [(f"unchanged {i + 1}", m) for i, m in enumerate(measured)]
    print(
        f"{args.repos} repositories, {args.installations} installations, "
        f"{args.latency * 1000:.0f} ms per GitHub request, pools of {RESOLVE_WORKERS} "
        f"(branches) and {WORKERS} (pull requests) threads"
    )
    print(
        f"{'pass':<12} {'wall s':>8} {'req/repo':>9} {'304/repo':>9} {'deploys':>8} {'archived':>8}"
    )
    for name, r in rows:
        print(
            f"{name:<12} {r['wall_s']:>8.2f} {r['requests'] / args.repos:>9.2f} "
            f"{r['not_modified'] / args.repos:>9.2f} {r['deployments_requested']:>8} {r['archived']:>8}"
        )
    report = {
        "at": datetime.now(UTC).isoformat(),
        "repos": args.repos,
        "installations": args.installations,
        "latency_s": args.latency,
        "cold": cold,
        "unchanged": measured,
        "spec_errors": errors,
    }
    out = args.output or HERE / "results" / "github_resync.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    problems = [m for m in measured if m["deployments_requested"] or m["archived"]]
    if errors or problems:
        print("problems:", errors[:5], problems)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
