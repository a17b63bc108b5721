"""Issue 7 item 3: preview branches named with any UTF-8 git allows, through the CLI and API.

The header is percent-encoded UTF-8 (``controller.branchnames``); these names come in
through a real ``pull_request`` delivery and go out through the real CLI.
"""

from __future__ import annotations

import json

import pytest
from conftest import Flow, cli, last_json

from controller.branchnames import encode_branch

BRANCHES = ["feat/ünï/cödé", "fix/🚀/100%-done"]


@pytest.mark.parametrize("branch", BRANCHES)
def test_a_non_ascii_preview_branch_works_in_the_cli_and_the_api(flow: Flow, branch: str) -> None:
    flow.repo.checkout(branch, create=True)
    head = flow.repo.set_message("hello unicode")
    flow.pull_request("opened", branch=branch, sha=head)
    preview = flow.deployed(head, env="preview")
    assert preview["branch"] == branch
    server = flow.server

    versions = json.loads(
        cli(
            server,
            "--json",  # before the command, so this test does not rely on item 2
            "versions",
            "--project",
            "demo",
            "--env",
            "preview",
            "--branch",
            branch,
        ).stdout
    )
    assert [v["version"] for v in versions] == [preview["version"]]
    assert versions[0]["branch"] == branch

    run = last_json(
        cli(
            server,
            "tasks",
            "run",
            "hello",
            "--project",
            "demo",
            "--env",
            "preview",
            "--branch",
            branch,
        ).stdout
    )
    assert (run["status"], run["output"]["message"]) == ("completed", "hello unicode")

    # The API itself: the preview-wide key plus the encoded header reaches the branch.
    key = server.secret_key("demo", "preview")
    trigger = server.client.post(
        "/api/v1/tasks/hello/trigger",
        json={"payload": None},
        headers={"Authorization": f"Bearer {key}", "x-slipway-branch": encode_branch(branch)},
    )
    assert trigger.status_code == 200, trigger.text
    assert trigger.json()["output"]["message"] == "hello unicode"

    archived = json.loads(
        cli(server, "--json", "preview", "archive", "--project", "demo", "--branch", branch).stdout
    )
    assert (archived["branch"], archived["status"]) == (branch, "archived")


def test_a_header_that_is_not_percent_encoded_utf8_is_a_400(flow: Flow) -> None:
    response = flow.server.api(
        "GET",
        "/api/v1/projects/demo/environments/preview/versions",
        headers={"x-slipway-branch": "feat/%FF"},
    )
    assert response.status_code == 400
    assert "percent" in response.json()["error"]
