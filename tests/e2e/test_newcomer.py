"""Issue 7 item 9: what a newcomer trips over — build error summaries, clone URLs that do
not exist, upload deploys without a commit, and the ``--skip-promotion`` hint."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

from conftest import REPO, Flow, cli
from support.server import Server


def test_broken_task_files_are_named_in_the_cli_error_and_the_table(flow: Flow) -> None:
    flow.repo.write("tasks/broken.py", "def run(payload, ctx)\n    return 1\n")
    flow.repo.commit("broken task")
    server = flow.server
    failed = cli(server, "deploy", str(flow.repo.path), "--project", "demo", check=False)
    assert failed.returncode == 1
    error = failed.stderr.strip().splitlines()[-1]
    assert error.startswith("error: deployment dep_")
    assert "a task file failed to load: tasks/broken.py, line 1: SyntaxError" in error, error
    assert "how to fix: fix the task files" in error

    table = cli(server, "deployments", "--project", "demo").stdout
    assert "tasks/broken.py" in table and "SyntaxError" in table, table

    flow.repo.write("tasks/missing.py", "import no_such_module_here\n")
    flow.repo.commit("two broken tasks")
    failed = cli(server, "deploy", str(flow.repo.path), "--project", "demo", check=False)
    assert "2 task files failed to load: tasks/broken.py" in failed.stderr
    listed = server.deployments()[0]["error"].splitlines()
    assert listed[1].startswith("tasks/broken.py, line 1: SyntaxError")
    assert listed[2].startswith("tasks/missing.py") and "ModuleNotFoundError" in listed[2]


def test_project_clone_urls_are_checked_at_creation(server: Server, tmp_path: Path) -> None:
    missing = cli(
        server,
        "projects",
        "create",
        "gone",
        "--repo",
        REPO,
        "--clone-url",
        str(tmp_path / "gone"),
        check=False,
    )
    assert missing.returncode == 1
    assert "is not a directory" in missing.stderr and "[HTTP 404]" in missing.stderr

    plain = tmp_path / "plain"
    plain.mkdir()
    refused = cli(
        server,
        "projects",
        "create",
        "plain",
        "--repo",
        REPO,
        "--clone-url",
        str(plain),
        check=False,
    )
    assert "is not a git repository" in refused.stderr and "[HTTP 404]" in refused.stderr
    for url in (str(tmp_path / "gone"), f"file://{plain}"):
        answer = server.api(
            "POST", "/api/v1/projects", json={"ref": "x", "repo": REPO, "clone_url": url}
        )
        assert answer.status_code == 404, answer.text
    assert server.ok("GET", "/api/v1/projects") == []

    unreachable = "https://x-access-token:s3cr3t-value@127.0.0.1:9/acme/shop.git"
    created = cli(
        server,
        "projects",
        "create",
        "shop",
        "--repo",
        REPO,
        "--clone-url",
        unreachable,
    )
    assert "warning: the clone URL was not usable just now" in created.stderr
    assert "s3cr3t" not in created.stderr + created.stdout
    assert "Created project shop" in created.stdout

    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    updated = json.loads(
        cli(server, "projects", "update", "shop", "--clone-url", str(repo), "--json").stdout
    )
    assert updated["warnings"] == []
    refused = cli(server, "projects", "update", "shop", "--clone-url", str(plain), check=False)
    assert "[HTTP 404]" in refused.stderr


def test_an_upload_from_a_git_repository_records_its_commit(flow: Flow, tmp_path: Path) -> None:
    server, repo = flow.server, flow.repo
    clean = json.loads(cli(server, "deploy", str(repo.path), "--project", "demo", "--json").stdout)
    assert clean["status"] == "deployed"
    assert (clean["sha"], clean["options"]["dirty"]) == (repo.head(), False)
    versions = server.ok("GET", "/api/v1/projects/demo/environments/production/versions")
    assert versions[0]["sha"] == repo.head()

    repo.write("tasks/hello.py", (repo.path / "tasks/hello.py").read_text() + "\n# edited\n")
    dirty = cli(server, "deploy", str(repo.path), "--project", "demo")
    assert f"of {repo.head()[:12]} with uncommitted changes" in dirty.stdout
    dep = server.deployments()[0]
    assert (dep["sha"], dep["options"]["dirty"]) == (repo.head(), True)

    outside = tmp_path / "not-in-git"
    (outside / "tasks").mkdir(parents=True)
    (outside / "tasks" / "hello.py").write_text("def run(payload, ctx):\n    return 1\n")
    plain = json.loads(cli(server, "deploy", str(outside), "--project", "demo", "--json").stdout)
    assert plain["sha"] is None and "dirty" not in plain["options"]


def test_the_skip_promotion_hint_works_as_printed(flow: Flow) -> None:
    server = flow.server
    cli(server, "deploy", str(flow.repo.path), "--project", "demo")
    flow.repo.set_message("hello v2")
    held = cli(
        server,
        "deploy",
        str(flow.repo.path),
        "--project",
        "demo",
        "--env",
        "prod",
        "--skip-promotion",
    )
    version = held.stdout.strip().splitlines()[-1]
    hint = next(line for line in held.stdout.splitlines() if line.startswith("Make it current"))
    command = hint.partition(": ")[2]
    assert command.endswith(f"promote {version} --project demo --env production"), command
    logs = server.ok("GET", f"/api/v1/deployments/{server.deployments()[0]['id']}/logs")
    assert any(
        f"`slipway promote {version} --project demo --env production`" in line["message"]
        for line in logs["lines"]
    )
    assert flow.environments()["production"]["current_version"] != version

    promoted = subprocess.run(
        shlex.split(command), env=server.env, capture_output=True, text=True, timeout=120
    )
    assert promoted.returncode == 0, promoted.stderr
    assert flow.environments()["production"]["current_version"] == version
