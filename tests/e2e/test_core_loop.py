"""Issue: core loop — build, version, deploy, promote and run tasks on the local runtime."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from conftest import Flow, cli, last_json, today
from support.procs import alive
from support.server import Server


def test_push_deploys_version_1_and_tasks_run(flow: Flow) -> None:
    dep = flow.push()
    final = flow.deployed()
    assert final["version"] == f"{today()}.1"
    assert flow.environments()["production"]["current_version"] == f"{today()}.1"

    result = cli(
        flow.server,
        "tasks",
        "run",
        "hello",
        "--project",
        "demo",
        "--env",
        "prod",
        "--payload",
        '{"n": 1}',
    )
    lines = result.stdout.strip().splitlines()
    assert "hello from production" in lines[0]  # the run's logs come first
    run = last_json(result.stdout)
    assert run["status"] == "completed"
    assert run["output"] == {"message": "hello v1", "version": f"{today()}.1", "payload": {"n": 1}}
    assert run["version"] == f"{today()}.1"

    nested = last_json(
        cli(
            flow.server, "tasks", "run", "db:migrate", "--project", "demo", "--env", "production"
        ).stdout
    )
    assert nested["output"] == "migrated"

    import json

    listed = json.loads(
        cli(flow.server, "--json", "tasks", "list", "--project", "demo", "--env", "prod").stdout
    )
    assert sorted(t["id"] for t in listed["tasks"]) == [
        "db:migrate",
        "hello",
    ]  # no _helpers, test_*, *_test

    logs = flow.server.ok("GET", f"/api/v1/deployments/{dep['id']}/logs")["lines"]
    messages = [line["message"] for line in logs]
    assert f"Version {today()}.1 deployed with 2 detected tasks" in messages
    assert any(m.startswith("Step install done in") for m in messages)
    steps = flow.server.ok("GET", f"/api/v1/deployments/{dep['id']}")["steps"]
    assert [s["name"] for s in steps] == [
        "fetch",
        "checkout",
        "install",
        "build",
        "version",
        "health",
        "promote",
    ]
    assert all(s["duration_ms"] is not None for s in steps)


def test_each_push_becomes_current_and_old_versions_can_be_pinned(flow: Flow) -> None:
    flow.push()
    flow.deployed()
    flow.repo.set_message("hello v2")
    flow.push()
    second = flow.deployed()
    assert second["version"] == f"{today()}.2"
    assert flow.run()["output"]["message"] == "hello v2"
    pinned = flow.run(version=f"{today()}.1")
    assert pinned["output"]["message"] == "hello v1"
    assert pinned["version"] == f"{today()}.1"
    # the unchanged dependencies were reused, not reinstalled
    logs = flow.server.ok("GET", f"/api/v1/deployments/{second['id']}/logs")["lines"]
    assert any("reusing cached environment" in line["message"] for line in logs)


def test_preview_branch_serves_pr_code_with_its_own_count(flow: Flow) -> None:
    flow.push()
    flow.deployed()
    flow.repo.checkout("feature/x", create=True)
    head = flow.repo.set_message("hello preview")
    flow.pull_request("opened", branch="feature/x", sha=head)
    preview = flow.deployed(head, env="preview")
    assert preview["branch"] == "feature/x"
    assert preview["version"] == f"{today()}.1"
    assert flow.run(env="preview", branch="feature/x")["output"]["message"] == "hello preview"
    assert flow.run()["output"]["message"] == "hello v1"  # production untouched
    assert flow.environments()["production"]["current_version"] == f"{today()}.1"

    flow.pull_request("closed", branch="feature/x", sha=head, merged=True)
    flow.server.wait_for(lambda: flow.environments()["feature/x"]["status"] == "archived")
    refused = flow.server.trigger("demo", "preview", "hello", branch="feature/x")
    assert refused.status_code == 409
    assert "archived" in refused.json()["error"]


def test_broken_task_file_fails_and_current_version_stays(flow: Flow) -> None:
    flow.push()
    flow.deployed()
    flow.repo.write("tasks/broken.py", "def run(payload, ctx)\n    return 1\n")
    sha = flow.repo.commit("broken task")
    dep = flow.push(sha)
    final = flow.server.wait_deployment(dep["id"])
    assert final["status"] == "failed"
    assert "tasks/broken.py" in final["error"] and "line 1" in final["error"]
    assert final["version"] is None
    assert flow.environments()["production"]["current_version"] == f"{today()}.1"
    assert flow.run()["output"]["message"] == "hello v1"


def test_failing_install_fails_with_command_and_output(server: Server, task_repo) -> None:  # type: ignore[no-untyped-def]
    flow = Flow(server, task_repo)
    flow.connect(
        install_command="echo resolving deps && echo 'no such package: nope' >&2 && exit 3"
    )
    dep = flow.push()
    final = server.wait_deployment(dep["id"])
    assert final["status"] == "failed"
    assert "exited with code 3" in final["error"]
    assert "no such package: nope" in final["error"]
    assert final["version"] is None
    assert flow.environments()["production"]["current_version"] is None
    logs = [
        line["message"]
        for line in server.ok("GET", f"/api/v1/deployments/{dep['id']}/logs")["lines"]
    ]
    assert any("$ echo resolving deps" in m for m in logs)
    assert "resolving deps" in logs


def test_skip_promotion_promote_and_rollback(flow: Flow) -> None:
    flow.push()
    flow.deployed()
    flow.repo.set_message("hello upload")
    result = cli(
        flow.server,
        "deploy",
        str(flow.repo.path),
        "--project",
        "demo",
        "--env",
        "prod",
        "--skip-promotion",
    )
    version = result.stdout.strip().splitlines()[-1]
    assert version == f"{today()}.2"
    assert flow.environments()["production"]["current_version"] == f"{today()}.1"
    assert flow.run()["output"]["message"] == "hello v1"

    cli(flow.server, "promote", version, "--project", "demo", "--env", "prod")
    assert flow.environments()["production"]["current_version"] == version
    assert flow.run()["output"]["message"] == "hello upload"

    cli(flow.server, "rollback", "--project", "demo", "--env", "prod")
    assert flow.environments()["production"]["current_version"] == f"{today()}.1"
    assert flow.run()["output"]["message"] == "hello v1"

    refused = cli(
        flow.server, "promote", "20200101.9", "--project", "demo", "--env", "prod", check=False
    )
    assert refused.returncode != 0
    assert refused.stderr.startswith("error: version 20200101.9 does not exist")
    assert len(refused.stderr.strip().splitlines()) == 1


def test_input_schema_and_max_duration(flow: Flow) -> None:
    flow.repo.write(
        "tasks/strict.py",
        (
            "input_schema = {'type': 'object', 'required': ['n'], 'properties': {'n': {'type': 'integer'}}}\n"
            "def run(payload, ctx):\n    return payload['n'] * 2\n"
        ),
    )
    flow.repo.write(
        "tasks/slow.py",
        "import time\nmax_duration = 0.5\ndef run(payload, ctx):\n    time.sleep(30)\n",
    )
    flow.repo.commit("more tasks")
    flow.push()
    flow.deployed()
    assert flow.run("strict", {"n": 21})["output"] == 42
    bad = flow.server.trigger("demo", "production", "strict", {"n": "x"})
    assert bad.status_code == 422
    assert "input_schema" in bad.json()["error"]
    slow = flow.run("slow", {})  # it would sleep 30 s
    assert slow["status"] == "timed_out"


def test_sigkill_during_building_resumes_exactly_once(
    server: Server, task_repo, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    flow = Flow(server, task_repo)
    # The pre-build holds until the test lets go: the kill lands inside the build step
    # however slowly the machine runs (a "sleep 4" could be over before the kill).
    hold, started = tmp_path / "hold", tmp_path / "prebuild.started"
    hold.touch()
    flow.connect(
        pre_build_command=(
            f"echo prebuild-start && touch {started} && "
            f"while [ -e {hold} ]; do sleep 0.05; done && echo generated > generated.txt"
        )
    )
    try:
        dep = flow.push()
        server.wait_for(started.exists)
        assert server.ok("GET", f"/api/v1/deployments/{dep['id']}")["status"] == "building"
        server.kill()
    finally:
        hold.unlink(missing_ok=True)  # the rerun (and the orphan, if still there) go through
    server.start()
    final = server.wait_deployment(dep["id"])
    assert final["status"] == "deployed", final["error"]
    assert final["version"] == f"{today()}.1"
    versions = server.ok("GET", "/api/v1/projects/demo/environments/production/versions")
    assert [v["version"] for v in versions] == [f"{today()}.1"]
    steps = {s["name"]: s for s in server.ok("GET", f"/api/v1/deployments/{dep['id']}")["steps"]}
    assert steps["fetch"]["attempts"] == 1  # not fetched again
    assert steps["install"]["attempts"] == 1  # not installed again
    assert steps["build"]["attempts"] == 2  # the interrupted step ran again, from a clean checkout
    assert steps["promote"]["attempts"] == 1
    artifact = Path(server.data_dir) / "artifacts" / dep["id"] / "generated.txt"
    assert artifact.read_text().strip() == "generated"
    assert flow.run()["output"]["message"] == "hello v1"


def test_restart_serves_current_versions_again(flow: Flow) -> None:
    flow.push()
    flow.deployed()
    flow.server.stop()  # graceful: workers stop too
    flow.server.start()
    assert flow.run()["output"]["message"] == "hello v1"
    flow.server.kill()  # workers survive a SIGKILL and are adopted
    flow.server.start()
    assert flow.run()["output"]["message"] == "hello v1"


def test_a_build_command_left_running_by_a_killed_controller_is_stopped(
    server: Server, task_repo, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    flow = Flow(server, task_repo)
    slow, pids = tmp_path / "slow", tmp_path / "prebuild.pids"
    slow.touch()  # the first run of the pre-build hangs; the rerun does not
    flow.connect(pre_build_command=f"echo $$ >> {pids}; if [ -e {slow} ]; then sleep 120; fi")
    dep = flow.push()
    server.wait_for(lambda: pids.exists() and pids.read_text().strip())
    (first,) = [int(p) for p in pids.read_text().split()]

    server.kill()  # the pre-build, in a session of its own, outlives the controller
    slow.unlink()
    try:
        assert alive(first)
        server.start()

        final = server.wait_deployment(dep["id"])
        assert final["status"] == "deployed", final["error"]
        assert not alive(first), "the next controller stopped the orphaned pre-build"
        # By the command registry, or, when the kill came between the command's start and
        # its registry entry (seen under load), by the sweep of the data dir's untracked
        # sessions; both run before any deployment resumes.
        log = server.log()
        assert (
            "stopped 1 build command(s)" in log or "of this data dir that nothing tracks" in log
        ), log
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first, signal.SIGKILL)  # a failed test leaves nothing behind
