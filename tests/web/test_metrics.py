"""Issue 13: ``/metrics`` (Prometheus text) and JSON logs, on a real ``slipway serve``."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from conftest import REPO, deploy
from prometheus_client.parser import text_string_to_metric_families
from support import payloads
from support.repos import TaskRepo
from support.server import Server

pytestmark = pytest.mark.node

EXPECTED = {
    "slipway_webhook_deliveries",
    "slipway_routing_lag_seconds",
    "slipway_deliveries_pending",
    "slipway_queue_depth",
    "slipway_builds_running",
    "slipway_deployments",
    "slipway_deployments_active",
    "slipway_deployment_step_duration_seconds",
    "slipway_promotions",
    "slipway_runs",
    "slipway_runs_running",
    "slipway_run_duration_seconds",
    "slipway_workers_live",
    "slipway_github_api_calls",
    "slipway_github_rate_limit_remaining",
}


def scrape(server: Server) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    response = server.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    names = set()
    for family in text_string_to_metric_families(response.text):
        names.add(family.name)
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    missing = EXPECTED - names
    assert not missing, f"missing metrics: {missing}"
    assert all(n.startswith("slipway_") for n in names)
    return response.text, samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def json_server(tmp_path: Path):
    srv = Server(tmp_path / "data", extra_env={"SLIPWAY_LOG_FORMAT": "json"}, log_level="info")
    try:
        yield srv.start()
    finally:
        srv.close()


def test_counters_move_with_deliveries_and_deployments_and_nothing_secret_shows(
    json_server: Server, task_repo: TaskRepo
) -> None:
    payloads.require_node_modules()
    server = json_server
    server.create_project("demo", repo=REPO, clone_url=str(task_repo.path))
    _, before = scrape(server)

    sha = task_repo.head()
    push = payloads.push(repo=REPO, ref="refs/heads/main", before="0" * 40, after=sha)
    delivery = str(uuid.uuid4())
    assert server.deliver("push", push, delivery=delivery).status_code == 202
    assert server.deliver("push", push, delivery=delivery).status_code == 202  # repeat
    refused_id = str(uuid.uuid4())
    assert server.deliver("push", push, delivery=refused_id, secret="wrong").status_code == 401
    dep = deploy(server, sha=sha)
    assert server.trigger("demo", "production", "hello").status_code == 200
    assert (
        server.api("POST", "/api/v1/projects/demo/environments/production/rollback").status_code
        == 409
    )

    text, after = scrape(server)
    delta = lambda name, **labels: value(after, name, **labels) - value(before, name, **labels)  # noqa: E731
    assert delta("slipway_webhook_deliveries_total", event="push", status="accepted") == 1
    assert delta("slipway_webhook_deliveries_total", event="push", status="duplicate") == 1
    assert delta("slipway_webhook_deliveries_total", event="push", status="unauthorized") == 1
    assert delta("slipway_deployments_total", status="deployed") == 1
    for step in ("fetch", "install", "build", "health", "promote"):
        assert delta("slipway_deployment_step_duration_seconds_count", step=step) == 1
        assert (
            value(after, "slipway_deployment_step_duration_seconds_bucket", step=step, le="+Inf")
            >= 1
        )
    assert delta("slipway_runs_total", status="completed") == 1
    assert delta("slipway_run_duration_seconds_count", status="completed") == 1
    assert delta("slipway_promotions_total", action="rollback", status="refused") == 1
    assert value(after, "slipway_queue_depth", kind="deploy") == 0
    assert value(after, "slipway_builds_running") == 0
    assert value(after, "slipway_workers_live") >= 1
    assert value(after, "slipway_store_up") == 1

    for secret in (server.token, "test-secret", server.secret_key("demo", "production")):
        assert secret not in text

    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    assert lines, server.log()
    finished = [e for e in lines if e["message"] == f"deployment {dep['id']} finished: deployed"]
    assert finished, lines
    assert finished[0]["deployment"] == dep["id"]
    assert finished[0]["project"] == "demo" and finished[0]["environment"] == "production"
    assert finished[0]["delivery"] == delivery and finished[0]["process"] == "controller"
    refused = [e for e in lines if "refused webhook delivery" in e["message"]]
    assert refused and refused[0]["delivery"] == refused_id and refused[0]["process"] == "web"
    for secret in (server.token, "test-secret"):
        assert secret not in server.log()


def test_metrics_token_makes_metrics_need_a_bearer(tmp_path: Path) -> None:
    token = "metrics-" + uuid.uuid4().hex
    server = Server(tmp_path / "data", extra_env={"SLIPWAY_METRICS_TOKEN": token})
    try:
        server.start()
        assert server.client.get("/metrics").status_code == 401
        wrong = server.client.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and token not in wrong.text
        admin = server.client.get("/metrics", headers={"Authorization": f"Bearer {server.token}"})
        assert admin.status_code == 401
        ok = server.client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and "slipway_deployments_total" in ok.text
        assert token not in ok.text
    finally:
        server.close()
