"""Worker standbys (issue 8, push to serving), run for real: a worker started from an
interpreter that loaded the worker's files ahead of need behaves as a cold start (same
tasks, same log, same arguments, no tie to the controller), is replaced at once, is never
used for another environment, costs a cold start when it died, and never outlives
``close()``."""

from __future__ import annotations

import dataclasses
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_control import make_spec
from test_idle_previews import wait_for

from controller.errors import PermanentError
from controller.runtimes.base import VersionSpec
from controller.runtimes.local import WORKER_MAIN, LocalRuntime
from controller.runtimes.procs import session_of, workers_marked

SEEN = (
    "import os, sys\n"
    "print('imported by', os.getpid(), file=sys.stderr)\n"
    "ARGV = sys.argv[1:]\n"
    "def run(payload, ctx):\n"
    "    return {'pid': os.getsid(0), 'argv': ARGV, 'env': os.environ.get('TEAM_SETTING')}\n"
)


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[LocalRuntime]:
    data = tmp_path / "data"
    data.mkdir()
    made = LocalRuntime(data_dir=data, keep_warm=True)
    yield made
    made.close(timeout=5)
    assert made.standby is not None and made.standby.ready() == []
    assert not workers_marked(WORKER_MAIN, owner=made.registry)
    assert not any(
        "--standby" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        for pid in _pids_with(str(made.registry))
    ), "a standby outlived close()"


def _pids_with(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def spec_of(root: Path, version_id: int, **env: str) -> VersionSpec:
    spec = make_spec(root, version_id)
    (root / "tasks" / "seen.py").write_text(SEEN)
    return dataclasses.replace(spec, env={"TEAM_SETTING": "blue", **env})


def seen(runtime: LocalRuntime, spec: VersionSpec) -> dict:
    result = runtime.run(spec, run_id="run_s", task_id="seen", payload=None, timeout=60)
    assert result["status"] == "completed", result
    return result["output"]


def test_the_next_version_starts_from_the_standby_as_a_cold_start_would(
    runtime: LocalRuntime, tmp_path: Path
) -> None:
    assert runtime.standby is not None
    assert runtime.standby.ready() == []  # nothing runs before a first start
    first = spec_of(tmp_path / "v1", 1)
    cold = seen(runtime, first)
    [standby] = runtime.standby.ready()
    assert standby not in workers_marked(WORKER_MAIN, owner=runtime.registry)
    assert session_of(standby) == standby  # a session of its own, like a worker

    second = spec_of(tmp_path / "v2", 2)
    warm = seen(runtime, second)
    assert warm["pid"] == standby, "the ready interpreter was not the one used"
    assert standby in workers_marked(WORKER_MAIN, owner=runtime.registry)
    [replacement] = runtime.standby.ready()
    assert replacement != standby

    assert cold["env"] == warm["env"] == "blue"
    assert os.readlink(f"/proc/{standby}/fd/0") == os.devnull  # no pipe to the controller
    # The same arguments but the version's own: what task code reading sys.argv sees.
    assert warm["argv"][warm["argv"].index("--source") + 1] == str(tmp_path / "v2")
    assert [a for a in cold["argv"] if "v1" not in a and "20261201" not in a] == [
        a for a in warm["argv"] if "v2" not in a and "20261201" not in a
    ]
    log = (runtime.logs / "2.log").read_text()
    assert f"imported by {standby}" in log, "the standby's stderr did not go to its version's log"


def test_a_standby_worker_no_longer_depends_on_the_pool(
    runtime: LocalRuntime, tmp_path: Path
) -> None:
    seen(runtime, spec_of(tmp_path / "v1", 1))
    assert runtime.standby is not None
    [standby] = runtime.standby.ready()
    second = spec_of(tmp_path / "v2", 2)
    assert seen(runtime, second)["pid"] == standby
    runtime.standby.close()  # closes the pipes of the ones waiting, not of the taken one
    wait_for(lambda: runtime.standby is not None and runtime.standby.ready() == [])
    assert seen(runtime, second)["pid"] == standby


def test_broken_task_files_fail_a_standby_start_as_they_fail_a_cold_one(
    runtime: LocalRuntime, tmp_path: Path
) -> None:
    seen(runtime, spec_of(tmp_path / "v1", 1))
    broken = spec_of(tmp_path / "v2", 2)
    (tmp_path / "v2" / "tasks" / "bad.py").write_text("def run(payload, ctx)\n")
    with pytest.raises(PermanentError, match=r"bad\.py: SyntaxError"):
        runtime.ensure(broken)
    assert runtime.standby is not None and len(runtime.standby.ready()) == 1  # replaced


def test_another_environment_never_gets_a_standby_started_for_one(
    runtime: LocalRuntime, tmp_path: Path
) -> None:
    seen(runtime, spec_of(tmp_path / "v1", 1))
    assert runtime.standby is not None
    [standby] = runtime.standby.ready()
    other = spec_of(tmp_path / "v2", 2, TEAM_SETTING="green")
    output = seen(runtime, other)
    assert output["env"] == "green"
    assert output["pid"] != standby
    assert standby in runtime.standby.ready()


def test_a_dead_standby_costs_a_cold_start_not_the_worker(
    runtime: LocalRuntime, tmp_path: Path
) -> None:
    seen(runtime, spec_of(tmp_path / "v1", 1))
    assert runtime.standby is not None
    [standby] = runtime.standby.ready()
    os.kill(standby, signal.SIGKILL)
    wait_for(lambda: session_of(standby) is None)
    output = seen(runtime, spec_of(tmp_path / "v2", 2))
    assert output["pid"] != standby
    assert len(runtime.standby.ready()) == 1
