"""Acceptance (issue 11): ``.github/actions/deploy/action.yml`` against a real server.

The composite action's ``run:`` steps are executed the way the runner would: each
step's ``if`` and ``env`` evaluated from the inputs (the few expression forms the
action uses), ``GITHUB_ACTION_PATH`` and ``GITHUB_OUTPUT`` set, ``bash`` running the
script. Trigger.dev's pattern: deploy the tasks without promoting, pin runs to the
version (``options.version``, what the app does with ``SLIPWAY_VERSION``), promote.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from support.repos import TaskRepo
from support.server import Server
from support.waiting import scaled

ACTION = Path(__file__).resolve().parents[2] / ".github/actions/deploy"
EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def evaluate(expr: str, scope: dict[str, Any]) -> Any:
    """``a || b``, ``x == 'v'``, ``x != 'v'``, ``inputs.NAME``, ``steps.ID.outputs.NAME``."""
    if "||" in expr:
        for part in expr.split("||"):
            value = evaluate(part.strip(), scope)
            if value:
                return value
        return value
    for op in ("==", "!="):
        if op in expr:
            left, right = (p.strip() for p in expr.split(op, 1))
            equal = str(evaluate(left, scope)) == right.strip("'")
            return equal if op == "==" else not equal
    value: Any = scope
    for part in expr.split("."):
        value = value.get(part, "") if isinstance(value, dict) else ""
    return value


def substitute(text: str, scope: dict[str, Any]) -> str:
    return EXPRESSION.sub(lambda m: str(evaluate(m.group(1), scope)), text)


def run_action(inputs: dict[str, str], tmp: Path) -> dict[str, str]:
    """Run the action's steps; return its outputs."""
    action = yaml.safe_load((ACTION / "action.yml").read_text())
    values = {name: spec.get("default", "") for name, spec in action["inputs"].items()}
    missing = [n for n, s in action["inputs"].items() if s.get("required") and n not in inputs]
    assert not missing, missing
    values.update(inputs)
    scope: dict[str, Any] = {"inputs": values, "steps": {}}
    for n, step in enumerate(action["runs"]["steps"]):
        condition = step.get("if")
        if condition and not evaluate(condition, scope):
            continue
        output = tmp / f"output-{n}"
        output.write_text("")
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLIPWAY_")}
        env.update({k: substitute(str(v), scope) for k, v in (step.get("env") or {}).items()})
        env.update(GITHUB_ACTION_PATH=str(ACTION), GITHUB_OUTPUT=str(output))
        result = subprocess.run(
            ["bash", "-c", substitute(step["run"], scope)],
            env=env,
            capture_output=True,
            text=True,
            timeout=scaled(300),
        )
        assert result.returncode == 0, f"step {step.get('name')}:\n{result.stdout}\n{result.stderr}"
        outputs = dict(
            line.split("=", 1) for line in output.read_text().splitlines() if "=" in line
        )
        if "id" in step:
            scope["steps"][step["id"]] = {"outputs": outputs}
    return {
        name: str(evaluate(EXPRESSION.search(spec["value"]).group(1), scope))  # type: ignore[union-attr]
        for name, spec in action["outputs"].items()
    }


def test_the_deploy_action_deploys_pins_and_promotes(
    server: Server, task_repo: TaskRepo, tmp_path: Path
) -> None:
    server.create_project("demo", repo="octo-org/demo", clone_url=str(task_repo.path))
    common = {
        "server-url": server.url,
        "token": server.token,
        "project": "demo",
        "env": "production",
        "path": str(task_repo.path),
        "install-command": "",
        "slipway-command": shlex.join([sys.executable, "-m", "controller.cli"]),
    }

    deployed = run_action(common, tmp_path)
    version = deployed["deploymentVersion"]
    assert re.fullmatch(r"\d{8}\.\d+", version), deployed
    assert _current(server) is None  # deployed, not promoted

    # The app pins its runs to the version (options.version) before it is current.
    response = server.trigger("demo", "production", "hello", version=version)
    assert response.status_code == 200, response.text
    assert response.json()["version"] == version

    promoted = run_action({**common, "promote": "true", "version": version}, tmp_path)
    assert promoted["deploymentVersion"] == ""  # the promote-only run deploys nothing
    assert _current(server) == version
    assert len(server.deployments()) == 1


def _current(server: Server) -> str | None:
    envs = server.ok("GET", "/api/v1/projects/demo/environments")
    return next(e["current_version"] for e in envs if e["name"] == "production")
