"""The pure rules of promotion gates: the grammar, decisions from signals, rollouts."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from support.fake_kubernetes import deployment

from controller.errors import Conflict, InvalidInput
from controller.gates.cluster import DeploymentState, rolled_out, state_from_object
from controller.gates.decide import decide
from controller.gates.spec import Gate, merge_gates, parse_duration, parse_gate

SHA = "3f2a9c1d" + "0" * 32


@dataclass
class Sig:
    kind: str
    name: str
    state: str
    github_id: int
    deployment_id: int | None = 77
    url: str | None = "https://ci.example.com/log/77"


def test_the_grammar() -> None:
    assert parse_gate("github-deployment:Production") == Gate("github-deployment", "Production")
    assert str(parse_gate(" Check-Run:deploy-app ")) == "check-run:deploy-app"
    assert parse_gate("kubernetes:apps/web").deployment == "web"
    assert parse_gate("manual") == Gate("manual")
    for bad in ("vercel", "check-run:", "kubernetes:Apps/web", "kubernetes:web"):
        with pytest.raises(InvalidInput):
            parse_gate(bad)
    with pytest.raises(Conflict):  # well-formed, but Slipway's own deployments never count
        parse_gate("github-deployment:slipway/production")
    assert [parse_duration(d) for d in ("90s", "30m", "2h", "40")] == [90, 1800, 7200, 40]
    for bad in ("1d", "5s", "soon", "-3m"):
        with pytest.raises(InvalidInput):
            parse_duration(bad)
    gates = merge_gates({}, {"prod": "github-deployment:Production", "staging": "manual"})
    assert gates == {"production": "github-deployment:Production", "staging": "manual"}
    assert merge_gates(gates, {"staging": "none", "preview": None}) == {"production": "github-deployment:Production"}  # fmt: skip


def test_a_github_deployment_gate_reads_its_environment_case_insensitively() -> None:
    gate = parse_gate("github-deployment:Production")
    assert decide(gate, [Sig("deployment_status", "production", "in_progress", 1)]) is None
    assert decide(gate, [Sig("deployment_status", "Staging", "success", 1)]) is None
    assert decide(gate, [Sig("check_run", "Production", "success", 1)]) is None
    passed = decide(gate, [Sig("deployment_status", "PRODUCTION", "success", 2)])
    assert passed is not None and passed.outcome == "pass"
    failed = decide(
        gate,
        [
            Sig("deployment_status", "Production", "success", 9),
            Sig("deployment_status", "Production", "error", 3),
        ],
    )
    assert failed is not None and failed.outcome == "fail"  # the first decisive status wins
    assert "GitHub environment Production" in failed.message
    assert "deployment 77" in failed.message and "https://ci.example.com/log/77" in failed.message


def test_a_check_run_gate_waits_for_the_named_check_to_complete() -> None:
    gate = parse_gate("check-run:deploy-app")
    assert decide(gate, [Sig("check_run", "deploy-app", "queued", 1)]) is None
    assert decide(gate, [Sig("check_run", "ci", "success", 1)]) is None
    assert decide(gate, [Sig("check_run", "deploy-app", "success", 1)]).outcome == "pass"  # type: ignore[union-attr]
    assert decide(gate, [Sig("check_run", "deploy-app", "cancelled", 1)]).outcome == "fail"  # type: ignore[union-attr]


def test_a_rollout_needs_the_generation_the_replicas_and_the_commit() -> None:
    ok = state_from_object(deployment("apps", "web", image=f"r.example.com/web:{SHA[:12]}"))
    assert rolled_out(ok, SHA)
    assert not rolled_out(ok, "f" * 40)
    assert not rolled_out(state_from_object(deployment("apps", "web", image=f"web:{SHA}", generation=3, observed=2)), SHA)  # fmt: skip
    assert not rolled_out(state_from_object(deployment("apps", "web", image=f"web:{SHA}", updated=1)), SHA)  # fmt: skip
    assert not rolled_out(state_from_object(deployment("apps", "web", image=f"web:{SHA}", available=1)), SHA)  # fmt: skip
    labelled = deployment("apps", "web", image="web:latest", labels={"slipway.dev/commit": SHA})
    assert rolled_out(state_from_object(labelled), SHA)
    assert rolled_out(state_from_object(deployment("apps", "web", image=f"web:v2-{SHA[:8]}")), SHA)
    assert not rolled_out(
        state_from_object(deployment("apps", "web", image="web:3f2a")), SHA
    )  # too short
    assert rolled_out(DeploymentState(1, 1, 0, 0, 0, commits=(SHA,)), SHA)  # scaled to zero


def test_a_rollout_of_the_commit_is_read_from_annotations_and_a_wrong_label_is_not_it() -> None:
    on_template = deployment("apps", "web", image="web:latest")
    on_template["spec"]["template"]["metadata"]["annotations"] = {"slipway.dev/commit": SHA[:7]}
    assert rolled_out(state_from_object(on_template), SHA)
    on_deployment = deployment("apps", "web", image="web:latest")
    on_deployment["metadata"]["annotations"] = {"slipway.dev/commit": SHA.upper()}
    assert rolled_out(state_from_object(on_deployment), SHA)
    other = deployment("apps", "web", image="web:latest", labels={"slipway.dev/commit": "f" * 40})
    assert not rolled_out(state_from_object(other), SHA)
    assert not rolled_out(state_from_object(deployment("apps", "web", image="web:latest")), SHA)
