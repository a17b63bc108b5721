"""Issue 9: env vars and secrets, through the real server, CLI, builder and worker."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, Flow, cli
from cryptography.fernet import Fernet
from support.repos import TaskRepo
from support.server import Server

ENVCHECK = """import os
import sys


def run(payload, ctx):
    payload = payload or {}
    leak = payload.get("leak")
    if leak:
        value = os.environ[leak]
        sys.stdout.write("leaking " + value[:5])
        sys.stdout.flush()
        sys.stdout.write(value[5:] + " done\\n")
        return {"leaked": value}
    names = payload.get("names", [])
    return {
        "os": {n: os.environ.get(n) for n in names},
        "ctx": {n: ctx.env.get(n) for n in names},
    }
"""
SECRET = "sk_live_Zq8xWv3Nm2Kp7Rt5"


def _repo(tmp_path: Path) -> TaskRepo:
    repo = TaskRepo(tmp_path / "repo")
    repo.write("tasks/envcheck.py", ENVCHECK)
    repo.commit("envcheck task")
    return repo


def _deploy(server: Server, repo: TaskRepo, env: str, *extra: str, check: bool = True) -> Any:
    result = cli(
        server,
        "--json",
        "deploy",
        str(repo.path),
        "--project",
        "demo",
        "--env",
        env,
        *extra,
        check=check,
    )
    return json.loads(result.stdout[result.stdout.index("{") :]) if "{" in result.stdout else None


def _seen(server: Server, env: str, names: list[str], branch: str | None = None) -> dict[str, Any]:
    response = server.trigger("demo", env, "envcheck", {"names": names}, branch=branch)
    assert response.status_code == 200, response.text
    run = response.json()
    assert run["status"] == "completed", run
    assert run["output"]["os"] == run["output"]["ctx"], run["output"]
    return dict(run["output"]["os"])


def _set(server: Server, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", "env", "set", *args],
        env=server.env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_set_value_reaches_the_next_run_without_a_redeploy(
    server: Server, tmp_path: Path
) -> None:
    repo = _repo(tmp_path)
    server.create_project("demo", repo=REPO, clone_url=str(repo.path))
    assert _deploy(server, repo, "production")["status"] == "deployed"
    names = ["API_URL", "SLIPWAY_PROJECT", "SLIPWAY_ENVIRONMENT", "SLIPWAY_TASK_ID"]
    assert _seen(server, "production", names)["API_URL"] is None

    cli(server, "env", "set", "API_URL=https://x", "--project", "demo", "--env", "prod")
    seen = _seen(server, "production", [*names, "SLIPWAY_RUN_ID", "SLIPWAY_VERSION"])
    assert seen["API_URL"] == "https://x"
    assert seen["SLIPWAY_PROJECT"] == "demo" and seen["SLIPWAY_ENVIRONMENT"] == "production"
    assert seen["SLIPWAY_TASK_ID"] == "envcheck" and seen["SLIPWAY_RUN_ID"].startswith("run")

    cli(server, "env", "set", "API_URL=https://y", "OTHER=2", "--project", "demo", "--env", "prod")
    assert _seen(server, "production", ["API_URL", "OTHER"]) == {
        "API_URL": "https://y",
        "OTHER": "2",
    }

    got = cli(server, "env", "get", "API_URL", "--project", "demo", "--env", "prod")
    assert got.stdout.strip() == "https://y"
    cli(server, "env", "unset", "OTHER", "--project", "demo", "--env", "prod")
    assert _seen(server, "production", ["OTHER"]) == {"OTHER": None}

    history = json.loads(
        cli(server, "--json", "env", "history", "--project", "demo", "--env", "prod").stdout
    )
    assert [(h["name"], h["action"], h["actor"]) for h in history][:2] == [
        ("OTHER", "unset", "admin token"),
        ("OTHER", "set", "admin token"),
    ]

    for bad in ("1BAD=x", "SLIPWAY_PROJECT=x", "A-B=x"):
        result = _set(server, bad, "--project", "demo", "--env", "prod")
        assert result.returncode != 0
        assert len(result.stderr.strip().splitlines()) == 1 and "error:" in result.stderr
    response = server.api(
        "POST", "/api/v1/projects/demo/envvars/production", json={"name": "SLIPWAY_X", "value": "1"}
    )
    assert response.status_code == 422 and "reserved" in response.json()["error"]

    imported = subprocess.run(
        [
            sys.executable,
            "-m",
            "controller.cli",
            "env",
            "import",
            "-",
            "--project",
            "demo",
            "--env",
            "prod",
        ],
        env=server.env,
        input='# exported\nexport API_URL=https://z\nQUOTED="a b"\n',
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert imported.returncode == 0, imported.stderr
    assert "Kept 1" in imported.stdout  # API_URL is set: no --override
    assert _seen(server, "production", ["API_URL", "QUOTED"]) == {
        "API_URL": "https://y",
        "QUOTED": "a b",
    }
    server.ok(
        "POST",
        "/api/v1/projects/demo/envvars/production/import",
        json={"variables": {"API_URL": "https://z"}, "override": True},
    )
    assert _seen(server, "production", ["API_URL"]) == {"API_URL": "https://z"}


def test_a_secret_appears_nowhere_but_in_the_runtime(server: Server, tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    server.create_project("demo", repo=REPO, clone_url=str(repo.path))
    result = _set(
        server, "API_KEY", "--secret", "--project", "demo", "--env", "prod", stdin=SECRET + "\n"
    )
    assert result.returncode == 0, result.stderr
    dep = _deploy(server, repo, "production")
    assert dep["status"] == "deployed"

    answers: list[str] = []
    run = server.trigger("demo", "production", "envcheck", {"leak": "API_KEY"}).json()
    answers.append(json.dumps(run))
    assert run["status"] == "completed"
    assert "leaking *** done" in run["logs"]  # printed in two writes, masked as one
    assert run["output"] == {"leaked": "***"}
    answers.append(json.dumps(server.ok("GET", f"/api/v1/runs/{run['id']}")))
    seen = server.trigger("demo", "production", "envcheck", {"names": ["API_KEY"]}).json()
    assert seen["status"] == "completed"  # the value reaches the run (then masked out)

    listed = server.ok("GET", "/api/v1/projects/demo/envvars/production")
    answers.append(json.dumps(listed))
    assert listed[0]["name"] == "API_KEY" and listed[0]["secret"] and listed[0]["value"] is None
    assert listed[0]["updated_by"] == "admin token" and listed[0]["updated_at"]
    answers.append(json.dumps(server.ok("GET", "/api/v1/projects/demo/envvars/production/API_KEY")))
    got = cli(server, "env", "get", "API_KEY", "--project", "demo", "--env", "prod", check=False)
    assert got.returncode != 0 and "write-only" in got.stderr
    answers += [got.stdout, got.stderr]
    answers.append(cli(server, "env", "list", "--project", "demo", "--env", "prod").stdout)
    answers.append(json.dumps(server.ok("GET", f"/api/v1/deployments/{dep['id']}/logs")))
    answers.append(json.dumps(server.ok("GET", "/api/v1/projects/demo/envvar-history/production")))

    for text in answers:
        assert SECRET not in text
    assert SECRET not in server.log()
    needle = SECRET.encode()
    for path in server.data_dir.rglob("*"):
        if path.is_file():
            assert needle not in path.read_bytes(), f"the secret is in {path}"


def test_previews_inherit_the_preview_layer_and_never_see_production(
    server: Server, tmp_path: Path
) -> None:
    repo = _repo(tmp_path)
    server.create_project("demo", repo=REPO, clone_url=str(repo.path))
    base = ["--project", "demo"]
    cli(server, "env", "set", "X=parent", "PV=1", *base, "--env", "preview")
    cli(server, "env", "set", "X=child", *base, "--env", "preview", "--branch", "feature")
    cli(server, "env", "set", "P=prod", *base, "--env", "prod")
    for env, branch in (("preview", "feature"), ("preview", "other"), ("production", None)):
        dep = _deploy(server, repo, env, *(["--branch", branch] if branch else []))
        assert dep["status"] == "deployed", dep
    names = ["X", "PV", "P"]
    assert _seen(server, "preview", names, "feature") == {"X": "child", "PV": "1", "P": None}
    assert _seen(server, "preview", names, "other") == {"X": "parent", "PV": "1", "P": None}
    assert _seen(server, "production", names) == {"X": None, "PV": None, "P": "prod"}
    listed = json.loads(
        cli(
            server, "--json", "env", "list", *base, "--env", "preview", "--branch", "feature"
        ).stdout
    )
    assert [v["name"] for v in listed] == ["X"]


SYNC = """import json
import os
import sys
from pathlib import Path

mode = Path("sync-mode.txt").read_text().strip()
print("sync for", os.environ["SLIPWAY_ENVIRONMENT"], file=sys.stderr)
if mode == "fail":
    print(json.dumps({"SYNCED": "bad"}))
    sys.exit(3)
if mode == "malformed":
    print("{not json")
else:
    print(json.dumps([{"name": "SYNCED", "value": "from-" + os.environ["SLIPWAY_ENVIRONMENT"]}]))
"""
PRE_BUILD = (
    "python -c \"import os; print('token=' + os.environ.get('TOKEN', '-'), "
    "'webhook=' + os.environ.get('SLIPWAY_WEBHOOK_SECRET', '-'), "
    "'build=' + os.environ.get('SLIPWAY_BUILD_TOKEN', '-'))\" && pip config list"
)


def test_sync_and_build_time_variables(server: Server, tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    repo.write("sync.py", SYNC)
    repo.write("sync-mode.txt", "fail\n")
    repo.write(
        "slipway.toml",
        f'pre_build = {json.dumps(PRE_BUILD)}\nsync_env_vars = "python sync.py"\n',
    )
    repo.commit("sync")
    server.create_project("demo", repo=REPO, clone_url=str(repo.path))
    base = ["--project", "demo", "--env", "staging"]
    pip_conf = base64.b64encode(b"[global]\nindex-url = https://pypi.example/simple\n").decode()
    cli(server, "env", "set", "SLIPWAY_BUILD_TOKEN=t", f"SLIPWAY_BUILD_PIP_CONF={pip_conf}", *base)
    cli(server, "env", "set", "SYNCED=before", *base)

    failed = _deploy(server, repo, "staging", check=False)
    assert failed["status"] == "failed" and "sync_env_vars" in failed["error"], failed
    repo.write("sync-mode.txt", "malformed\n")
    repo.commit("malformed")
    failed = _deploy(server, repo, "staging", check=False)
    assert failed["status"] == "failed" and "invalid JSON" in failed["error"], failed
    assert cli(server, "env", "get", "SYNCED", *base).stdout.strip() == "before"

    repo.write("sync-mode.txt", "good\n")
    repo.commit("good")
    dep = _deploy(server, repo, "staging")
    assert dep["status"] == "deployed", dep
    logs = [
        line["message"]
        for line in server.ok("GET", f"/api/v1/deployments/{dep['id']}/logs")["lines"]
    ]
    assert "token=t webhook=- build=-" in logs, logs
    assert any("pypi.example" in line for line in logs), "PIP_CONF is pip's configuration"
    assert not list(Path(server.data_dir).rglob("pip.conf")), "removed from the build's files"
    assert _seen(server, "staging", ["SYNCED", "TOKEN", "SLIPWAY_BUILD_TOKEN"]) == {
        "SYNCED": "from-staging",
        "TOKEN": None,
        "SLIPWAY_BUILD_TOKEN": None,
    }
    history = server.ok("GET", "/api/v1/projects/demo/envvar-history/staging")
    assert history[0]["actor"] == f"sync of deployment {dep['id']}"
    assert server.ok("GET", "/api/v1/projects/demo/envvars/production") == []

    cli(server, "env", "set", "SYNCED=manual", *base)
    skipped = _deploy(server, repo, "staging", "--skip-sync-env-vars")
    assert skipped["status"] == "deployed"
    assert cli(server, "env", "get", "SYNCED", *base).stdout.strip() == "manual"


def test_rotation_keeps_every_value_reaching_runs(tmp_path: Path) -> None:
    k1, k2 = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    repo = _repo(tmp_path)
    server = Server(tmp_path / "data", extra_env={"SLIPWAY_ENCRYPTION_KEY": k1})
    try:
        server.start()
        server.create_project("demo", repo=REPO, clone_url=str(repo.path))
        cli(server, "env", "set", "A=1", "--project", "demo", "--env", "prod")
        assert (
            _set(
                server, "S", "--secret", "--project", "demo", "--env", "prod", stdin="sv-123"
            ).returncode
            == 0
        )
        assert _deploy(server, repo, "production")["status"] == "deployed"
        server.stop()
        server.env["SLIPWAY_ENCRYPTION_KEY"] = f"{k2},{k1}"
        server.start()
        rotated = json.loads(cli(server, "--json", "keys", "rotate").stdout)
        assert rotated["env_vars"] == 2 and rotated["secret_keys"] == 3, rotated
        text = cli(server, "keys", "rotate").stdout
        assert "Re-encrypted 0 env var(s) and 0 secret key(s)" in text
        server.stop()
        server.env["SLIPWAY_ENCRYPTION_KEY"] = k2
        server.start()
        # "***": the run got exactly the secret's value, and masking hid it on the way out.
        assert _seen(server, "production", ["A", "S"]) == {"A": "1", "S": "***"}
        assert server.secret_key("demo", "production").startswith("sk_")
    finally:
        server.close()


FORK_PRE_BUILD = (
    "python -c \"import os; print('fork-build', 'open=' + os.environ.get('OPENTOK', '-'), "
    "'token=' + os.environ.get('TOKEN', '-'))\""
)


@pytest.mark.node
def test_a_fork_preview_sees_only_fork_safe_variables(server: Server, tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    repo.write("slipway.toml", f"pre_build = {json.dumps(FORK_PRE_BUILD)}\n")
    repo.commit("pre-build prints build vars")
    flow = Flow(server, repo)
    flow.connect(fork_previews=True)
    preview = ["--project", "demo", "--env", "preview"]
    cli(server, "env", "set", "OPEN=o", "SLIPWAY_BUILD_OPENTOK=x", "--fork-safe", *preview)
    cli(server, "env", "set", "HIDDEN=h", "SLIPWAY_BUILD_TOKEN=t", *preview)
    cli(server, "env", "set", "BRANCH_OWN=b", *preview, "--branch", "outsider-patch")

    repo.checkout("outsider-patch", create=True)
    sha = repo.set_message("from a fork")
    flow.pull_request("opened", branch="outsider-patch", sha=sha, fork_owner="outsider")
    dep = flow.deployed(sha, env="preview")
    logs = [
        m["message"] for m in server.ok("GET", f"/api/v1/deployments/{dep['id']}/logs")["lines"]
    ]
    assert "fork-build open=x token=-" in logs, logs
    seen = _seen(server, "preview", ["OPEN", "HIDDEN", "BRANCH_OWN"], branch="outsider-patch")
    assert seen == {"OPEN": "o", "HIDDEN": None, "BRANCH_OWN": None}
