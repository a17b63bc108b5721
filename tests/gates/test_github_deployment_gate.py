"""Acceptance (issue 11): ``--promote-after production=github-deployment:Production``.

One real ``slipway serve`` whose GitHub App is the fake GitHub; deliveries are real
payloads from ``@octokit/webhooks-examples``, edited and signed. In order: an
environment without a gate promotes at once; with the gate a push ends ``waiting`` with
a version while the current one keeps serving; a status for another commit or another
environment (Slipway's own ``slipway/production`` included) changes nothing; ``success``
for the commit (environment name in another case) promotes; ``failure`` fails without
promoting; a second push supersedes a waiting one; a lost delivery is repaired by the
resync asking GitHub; nothing at all ends ``timed_out``, and that version can still be
promoted by hand.
"""

from __future__ import annotations

import json
import time

from conftest import REPO, Gated, cli, signals_and_decisions
from support import payloads
from support.fake_github import FakeGitHub
from support.waiting import scaled

TIMEOUT = int(scaled(40))


def status(sha: str, environment: str, state: str) -> dict:
    return payloads.deployment_status(repo=REPO, sha=sha, environment=environment, state=state)


def test_github_deployment_gate(gated: Gated, fake_github: FakeGitHub) -> None:
    gated.connect()
    first = gated.push("v1")
    v1 = gated.status_of(first, "deployed")["version"]
    assert gated.current() == v1  # no gate: promoted at once, as before

    cli(gated.server, "projects", "update", "demo", "--promote-after", "prod=github-deployment:Production", "--promotion-timeout", f"{TIMEOUT}s")  # fmt: skip
    shown = cli(gated.server, "projects", "show", "demo").stdout
    assert "production=github-deployment:Production" in shown, shown
    project = json.loads(cli(gated.server, "projects", "show", "demo", "--json").stdout)
    assert project["promotion_gates"] == {"production": "github-deployment:Production"}

    # A push waits with its version; the current version is untouched and serves.
    second = gated.push("v2")
    waiting = gated.status_of(second, "waiting")
    assert waiting["version"] and waiting["version"] != v1
    assert waiting["gate"] == "github-deployment:Production"
    assert gated.current() == v1 and gated.says() == "v1"
    logs = gated.logs(waiting["id"])
    assert "GitHub environment Production" in logs and "since" in logs and "until" in logs
    listed = cli(gated.server, "deployments", "--project", "demo").stdout
    assert "waiting" in listed, listed

    # Another commit, another environment, Slipway's own environment: nothing decides.
    gated.deliver("deployment_status", status(first, "Production", "success"))
    gated.deliver("deployment_status", status(second, "Staging", "success"))
    gated.deliver("deployment_status", status(second, "slipway/production", "success"))
    # Recording a signal and deciding from it are one transaction: once all three are
    # recorded, no decision was queued.
    gated.server.wait_for(lambda: signals_and_decisions(gated)[0] >= 3, timeout=60)
    assert signals_and_decisions(gated) == (3, 0)
    assert gated.deployment(second)["status"] == "waiting"

    # success for the commit in the gate's environment, named in another case: promoted.
    gated.deliver("deployment_status", status(second, "production", "success"))
    assert gated.status_of(second, "deployed")["version"] == waiting["version"]
    assert gated.current() == waiting["version"] and gated.says() == "v2"
    v2 = waiting["version"]

    # failure: failed, naming the environment, the app's deployment and its log URL.
    third = gated.push("v3")
    gated.status_of(third, "waiting")
    gated.deliver("deployment_status", status(third, "Production", "failure"))
    failed = gated.status_of(third, "failed")
    assert "GitHub environment Production" in failed["error"]
    assert "deployment " in failed["error"] and "http" in failed["error"], failed["error"]
    assert gated.current() == v2 and gated.says() == "v2"

    # Two pushes while waiting: the first is superseded.
    fourth = gated.push("v4")
    gated.status_of(fourth, "waiting")
    fifth = gated.push("v5")
    assert "superseded by" in gated.status_of(fourth, "superseded")["error"]
    v5 = gated.status_of(fifth, "waiting")["version"]

    # The delivery is lost, GitHub has the status: the resync promotes.
    fake_github.add_deployment(REPO, sha=fifth, environment="slipway/production", states=["failure"])  # fmt: skip
    fake_github.add_deployment(REPO, sha=fifth, environment="PRODUCTION", states=["in_progress", "success"])  # fmt: skip
    gated.status_of(fifth, "deployed", timeout=120)
    assert gated.current() == v5 and gated.says() == "v5"

    # Nothing arrives: timed_out after the timeout, current unchanged; promotable by hand.
    pushed_at = time.monotonic()
    sixth = gated.push("v6")
    v6 = gated.status_of(sixth, "waiting")["version"]
    timed_out = gated.status_of(sixth, "timed_out", timeout=TIMEOUT + 180)
    # Not before the timeout: it began to wait after the push, so the deadline is later.
    assert time.monotonic() - pushed_at >= TIMEOUT
    assert "slipway promote" in timed_out["error"]
    assert gated.current() == v5
    cli(gated.server, "promote", v6, "--project", "demo", "--env", "production")
    assert gated.current() == v6 and gated.says() == "v6"
