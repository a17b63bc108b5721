"""The preview cap under concurrent starts: never more live preview workers than the cap.

The race (seen as 12 live workers with a cap of 10 in the e2e test under xdist): the cap
was checked after a start, per version, and evicted in the background, so N concurrent
starts of different previews meant cap + N processes. These tests start many previews at
once, through both paths that start workers (``ensure``, the deploy's health step and the
resync; ``acquire``, a run over the control channel), and count at every start: workers
alive (marked processes, draining ones included) as each start ends. Counting there makes
the check deterministic: the old code exceeded the cap at the end of the fourth start
even when the starts happened one after another (it evicted after starting).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from test_control import handlers
from test_idle_previews import preview, wait_for

from controller.errors import RuntimeUnavailable
from controller.runtimes.base import VersionSpec
from controller.runtimes.control import ControlClient, ControlServer, RemoteRuntime
from controller.runtimes.local import WORKER_MAIN, LocalRuntime
from controller.runtimes.procs import workers_marked

CAP = 3
PREVIEWS = 9


class CountingRuntime(LocalRuntime):
    """Records the peak of live worker processes (draining ones included), counted as
    each start ends: every process alive then, its own included, must hold a slot."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.peak = 0
        self._count = threading.Lock()

    def _start(self, spec: VersionSpec) -> Any:
        worker = super()._start(spec)
        with self._count:
            live = workers_marked(WORKER_MAIN, owner=self.registry)
            self.peak = max(self.peak, len(live))
        return worker


@pytest.fixture
def counting(tmp_path: Path) -> Iterator[CountingRuntime]:
    data = tmp_path / "data"
    data.mkdir()
    runtime = CountingRuntime(data_dir=data, max_live_previews=CAP)
    try:
        yield runtime
    finally:
        runtime.close(timeout=2)
        assert not workers_marked(WORKER_MAIN, owner=runtime.registry)


def all_at_once(calls: list[Callable[[], Any]]) -> list[Any]:
    barrier = threading.Barrier(len(calls), timeout=60)

    def call(fn: Callable[[], Any]) -> Any:
        barrier.wait()
        return fn()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(call, calls))


def test_concurrent_starts_never_pass_the_cap(counting: CountingRuntime, tmp_path: Path) -> None:
    specs = [preview(tmp_path / f"p{i}", i) for i in range(1, PREVIEWS + 1)]
    all_at_once([lambda spec=spec: counting.ensure(spec) for spec in specs])  # type: ignore[misc]
    assert counting.peak <= CAP, f"{counting.peak} preview workers live with a cap of {CAP}"
    assert len(counting.live_previews()) == CAP
    assert len(workers_marked(WORKER_MAIN, owner=counting.registry)) == CAP  # evicted = gone


def test_runs_over_the_channel_and_deploy_starts_share_the_cap(
    counting: CountingRuntime, tmp_path: Path
) -> None:
    server = ControlServer(counting.registry.parent, handlers(counting))
    server.start()
    web = RemoteRuntime(ControlClient(counting.registry.parent), grace=5)
    try:
        specs = [preview(tmp_path / f"p{i}", i) for i in range(1, PREVIEWS + 1)]
        calls: list[Callable[[], Any]] = []
        for n, spec in enumerate(specs):
            if n % 2:
                calls.append(lambda spec=spec: counting.ensure(spec))  # type: ignore[misc]
            else:
                calls.append(
                    lambda spec=spec: web.run(  # type: ignore[misc]
                        spec,
                        run_id=f"run_{spec.version_id}",
                        task_id="hello",
                        payload=None,
                        timeout=60,
                    )
                )
        answers = [a for a in all_at_once(calls) if a is not None]
        assert [a["status"] for a in answers] == ["completed"] * len(answers)
        assert counting.peak <= CAP, f"{counting.peak} preview workers live with a cap of {CAP}"
    finally:
        web.close()
        server.stop()


def test_a_start_waits_for_a_busy_preview_rather_than_cut_its_run_off(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    runtime = LocalRuntime(data_dir=data, max_live_previews=1, start_timeout=5)
    busy, other = preview(tmp_path / "p1", 1), preview(tmp_path / "p2", 2)
    marker = tmp_path / "started"
    cut_off: list[Exception] = []

    def nap() -> None:
        try:
            runtime.run(
                busy, run_id="r", task_id="nap", payload={"marker": str(marker)}, timeout=60
            )
        except RuntimeUnavailable as exc:
            cut_off.append(exc)

    runner = threading.Thread(target=nap)
    try:
        runner.start()
        wait_for(marker.exists)
        with pytest.raises(RuntimeUnavailable, match="have runs in flight"):
            runtime.run(other, run_id="r2", task_id="hello", payload=None, timeout=60)
        assert runtime.serving() == {1}
    finally:
        runtime.close(timeout=2)
        runner.join(60)
    assert len(cut_off) == 1  # by the close at the end, not by the cap
    assert not workers_marked(WORKER_MAIN, owner=runtime.registry)
