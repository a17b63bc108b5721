"""Resolving in parallel: bounded, each call with its own deadline; a hung source holds up
neither the pass nor the other projects, and leaves no thread behind."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import pytest
from conftest import SHA_A, SHA_B, Sources
from sqlalchemy import select

from controller.errors import SourceUnavailable
from controller.reconcile.branches import BranchPass, resolve_all
from controller.secretstore.crypto import Cipher
from controller.sources.base import Resolved
from controller.store.db import Database
from controller.store.tables import Deployment


def deployments(db: Database) -> list[Deployment]:
    with db.read() as session:
        return list(session.execute(select(Deployment)).scalars())


def test_a_source_that_hangs_times_out_and_changes_nothing(
    database: Database,
    cipher: Cipher,
    make_project: Callable[..., int],
    sources: Sources,
    caplog: pytest.LogCaptureFixture,
) -> None:
    make_project("stuck")
    make_project("fine", repo="octo-org/fine")
    release = threading.Event()
    sources["stuck"].hang = release
    sources["stuck"].point("main", SHA_A, default=True)
    sources["fine"].point("main", SHA_B, default=True)
    branch_pass = BranchPass(db=database, cipher=cipher, source_for=sources, timeout=0.5)
    try:
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="controller.reconcile"):
            requested = branch_pass.run()
        assert time.monotonic() - started < 30  # bounded by the timeout, not by the source
        (dep,) = deployments(database)
        assert requested == [dep.id] and dep.sha == SHA_B  # the other project is not held up
        (line,) = [r.getMessage() for r in caplog.records]
        assert "HEAD of project stuck timed out after 0.5s" in line
    finally:
        release.set()
    deadline = time.monotonic() + 30
    while any(t.name.startswith("resolve") for t in threading.enumerate()):
        assert time.monotonic() < deadline, "a resolve thread outlived its source"
        time.sleep(0.05)
    assert len(deployments(database)) == 1  # the late answer was dropped


def test_heads_resolve_in_parallel_within_the_bound(
    database: Database, cipher: Cipher, make_project: Callable[..., int], sources: Sources
) -> None:
    lock = threading.Condition()
    in_flight, peak = 0, 0

    class Crowded:
        """Waits (with a generous deadline) until the pool is full, then answers."""

        name = "crowded"

        def __init__(self, sha: str) -> None:
            self.sha = sha

        def resolve(self, ref: str) -> Resolved | None:
            nonlocal in_flight, peak
            with lock:
                in_flight += 1
                peak = max(peak, in_flight)
                lock.notify_all()
                lock.wait_for(lambda: in_flight >= 3, timeout=10)
            with lock:
                in_flight -= 1
            return Resolved(ref="refs/heads/main", sha=self.sha)

    for n in range(9):
        make_project(f"p{n}", repo=f"octo-org/p{n}")
    passes = BranchPass(
        db=database,
        cipher=cipher,
        source_for=lambda repo: Crowded(f"{int(repo.ref[1:]) + 1:040x}"),
        workers=3,
        timeout=30,
    )
    started = time.monotonic()
    assert len(passes.run()) == 9
    assert peak == 3  # parallel, and never more than the bound
    assert time.monotonic() - started < 25  # no call waited out its deadline


def test_resolve_all_drops_failures_and_keeps_answers() -> None:
    def boom() -> Resolved | None:
        raise SourceUnavailable("down")

    answers = resolve_all(
        {"ok": lambda: Resolved("refs/heads/main", SHA_A), "none": lambda: None, "bad": boom},
        workers=2,
        timeout=5,
    )
    assert answers == {"ok": Resolved("refs/heads/main", SHA_A), "none": None}
