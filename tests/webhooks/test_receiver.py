"""``POST /webhooks/github`` on a real ``slipway serve``, per SPEC.md's HTTP section.

Deliveries are GitHub's real example payloads (edited and schema-checked by
``support.payloads``), signed for real and posted over the loopback. The projects' clone
URLs lead nowhere, so deployments fail to fetch later: these tests only look at what the
delivery asked for (environment, branch, sha), never at a build.

"Nothing happened" is proven without sleeping: deliveries of one repository are routed in
arrival order, so once a later *barrier* delivery has been routed (its ``skipped`` event is
visible), every delivery recorded before it has been routed too. Waits use the server's
default deadline (60 s, scaled): routing is done by the controller process at ``nice``
+10, which a busy machine serves last.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import payloads
from support.payloads import ZERO_SHA, body_of, octokit_sign
from support.repos import empty_repository
from support.server import Server

from webhooks.receiver import MAX_BODY
from webhooks.signatures import sign

pytestmark = pytest.mark.node

REPO = "octo-org/demo"
SHA_A = "9b2c7e4f0a1d3c5e7f9b2c7e4f0a1d3c5e7f9b2c"
SHA_B = "1f3e5d7c9b1a2f3e5d7c9b1a2f3e5d7c9b1a2f3e"
SHA_C = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00"

_barrier_numbers = itertools.count(9000)


@pytest.fixture(autouse=True)
def _node_modules() -> None:
    payloads.require_node_modules()


@pytest.fixture
def demo(server: Server, tmp_path: Path) -> Server:
    """The server with project ``demo`` connected to ``octo-org/demo``, whose clone URL is
    an empty repository: the deployments deliveries cause fail fast (no such commit)."""
    empty = empty_repository(tmp_path / "empty-repo.git")
    server.create_project("demo", repo=REPO, clone_url=str(empty))
    return server


def push_main(after: str = SHA_B, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("ref", "refs/heads/main")
    return payloads.push(before=SHA_A, after=after, **kwargs)


def headers(event: str, body: bytes, *, secret: str | None = "test-secret") -> dict[str, str]:
    out = {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "Content-Type": "application/json",
    }
    if secret:
        out["X-Hub-Signature-256"] = sign(secret, body)
    return out


def post(server: Server, body: Any, hdrs: dict[str, str]) -> httpx.Response:
    return server.client.post("/webhooks/github", content=body, headers=hdrs)


def events(server: Server) -> list[dict[str, Any]]:
    return list(server.ok("GET", "/api/v1/projects/demo/events"))


def environments(server: Server) -> list[dict[str, Any]]:
    return list(server.ok("GET", "/api/v1/projects/demo/environments"))


def deployment_with(server: Server, sha: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        return next((d for d in server.deployments() if d["sha"] == sha), None)

    return dict(server.wait_for(found))


def settle(server: Server) -> None:
    """Wait until every delivery for ``octo-org/demo`` recorded so far has been routed."""
    number = next(_barrier_numbers)
    payload = payloads.pull_request(
        action="opened", number=number, head_sha=SHA_C, fork_owner="barrier-bot"
    )
    delivery = f"barrier-{number}"
    assert server.deliver("pull_request", payload, delivery=delivery).status_code == 202
    server.wait_for(lambda: any(e["delivery"] == delivery for e in events(server)))


def assert_refused_and_not_recorded(
    server: Server, response: httpx.Response, delivery: str, status: int
) -> None:
    """``status``, and the id was never recorded: a later valid delivery of it is new."""
    assert response.status_code == status, response.text
    again = server.deliver("push", push_main(SHA_C), delivery=delivery)
    assert again.status_code == 202
    assert again.json()["duplicate"] is False


# --- accepted deliveries ------------------------------------------------------------------


def test_signed_push_to_default_branch_deploys_production(demo: Server) -> None:
    response = demo.deliver("push", push_main(SHA_B), delivery="push-1")
    assert response.status_code == 202, response.text
    assert response.json() == {"delivery": "push-1", "duplicate": False}
    deployment = deployment_with(demo, SHA_B)
    assert deployment["environment"] == "production"
    assert deployment["branch"] is None
    assert deployment["project"] == "demo"
    assert deployment["ref"] == "refs/heads/main"
    assert deployment["delivery"] == "push-1"


def test_repository_name_matches_case_insensitively(demo: Server) -> None:
    payload = push_main(SHA_B, repo="Octo-Org/Demo")
    assert payload["repository"]["full_name"] == "Octo-Org/Demo"
    assert demo.deliver("push", payload).status_code == 202
    assert deployment_with(demo, SHA_B)["environment"] == "production"


def test_octokit_signature_is_accepted(demo: Server) -> None:
    body = body_of(push_main(SHA_B))
    signature = octokit_sign(demo.secret or "", body)
    assert signature == sign(demo.secret or "", body)
    response = demo.deliver("push", body, signature=signature)
    assert response.status_code == 202, response.text
    assert deployment_with(demo, SHA_B)["environment"] == "production"


def test_repeated_delivery_id_is_recorded_once(demo: Server) -> None:
    first = demo.deliver("push", push_main(SHA_B), delivery="dup-1")
    second = demo.deliver("push", push_main(SHA_B), delivery="dup-1")
    assert (first.status_code, second.status_code) == (202, 202)
    assert first.json()["duplicate"] is False
    assert second.json() == {"delivery": "dup-1", "duplicate": True}
    deployment_with(demo, SHA_B)
    settle(demo)
    assert [d["sha"] for d in demo.deployments()] == [SHA_B]


def test_tag_push_is_accepted_and_deploys_nothing(demo: Server) -> None:
    payload = payloads.push(ref="refs/tags/v1.0.0", before=ZERO_SHA, after=SHA_B, created=True)
    assert demo.deliver("push", payload).status_code == 202
    settle(demo)
    assert demo.deployments() == []


def test_ping_is_accepted(demo: Server) -> None:
    response = demo.deliver("ping", payloads.ping(), delivery="ping-1")
    assert response.status_code == 202
    assert response.json()["duplicate"] is False


def test_pull_request_lifecycle_creates_and_archives_its_preview(demo: Server) -> None:
    opened = payloads.pull_request(action="opened", head_ref="feature/x", head_sha=SHA_B)
    assert demo.deliver("pull_request", opened).status_code == 202
    deployment = deployment_with(demo, SHA_B)
    assert (deployment["environment"], deployment["branch"]) == ("preview", "feature/x")
    assert deployment["pull_request"] == 7

    def preview() -> dict[str, Any] | None:
        return next((e for e in environments(demo) if e["branch"] == "feature/x"), None)

    env = demo.wait_for(preview)
    assert (env["name"], env["status"], env["pull_request"]) == ("preview", "active", 7)
    assert [d["sha"] for d in demo.deployments(env="preview", branch="feature/x")] == [SHA_B]

    closed = payloads.pull_request(action="closed", head_ref="feature/x", head_sha=SHA_B)
    assert demo.deliver("pull_request", closed).status_code == 202
    archived = demo.wait_for(
        lambda: (e := preview()) is not None and e["status"] == "archived" and e
    )
    assert "closed" in (archived["status_reason"] or "")
    assert any(e["kind"] == "archived" and "feature/x" in e["message"] for e in events(demo))


def test_fork_pull_request_deploys_nothing_and_says_why(demo: Server) -> None:
    payload = payloads.pull_request(
        action="opened", head_ref="patch-1", head_sha=SHA_B, fork_owner="contributor"
    )
    assert demo.deliver("pull_request", payload, delivery="fork-1").status_code == 202
    event = demo.wait_for(
        lambda: next((e for e in events(demo) if e["delivery"] == "fork-1"), None)
    )
    assert event["kind"] == "skipped"
    assert "contributor/demo" in event["message"]
    assert "--fork-previews" in event["message"]
    assert demo.deployments() == []
    assert not any(e["branch"] == "patch-1" for e in environments(demo))


# --- refused deliveries -------------------------------------------------------------------


def test_unsigned_delivery_is_401_and_not_recorded(demo: Server) -> None:
    response = demo.deliver("push", push_main(SHA_B), delivery="unsigned", secret="")
    assert "X-Hub-Signature-256" not in response.request.headers
    assert_refused_and_not_recorded(demo, response, "unsigned", 401)
    deployment_with(demo, SHA_C)
    settle(demo)
    assert [d["sha"] for d in demo.deployments()] == [SHA_C]


def test_wrong_signature_is_401(demo: Server) -> None:
    response = demo.deliver("push", push_main(SHA_B), delivery="wrong", secret="not-the-secret")
    assert_refused_and_not_recorded(demo, response, "wrong", 401)


def test_signature_of_another_body_is_401(demo: Server) -> None:
    other = sign(demo.secret or "", body_of(push_main(SHA_C)))
    response = demo.deliver("push", push_main(SHA_B), delivery="other", signature=other)
    assert_refused_and_not_recorded(demo, response, "other", 401)


def test_uppercase_signature_is_401(demo: Server) -> None:
    body = body_of(push_main(SHA_B))
    upper = "sha256=" + sign(demo.secret or "", body).removeprefix("sha256=").upper()
    response = demo.deliver("push", body, delivery="upper", signature=upper)
    assert_refused_and_not_recorded(demo, response, "upper", 401)


NOT_JSON = [b"this is not json", b'{"ref": "refs/heads/main"', b""]
NOT_AN_OBJECT = [b"[]", b'[{"ref": "refs/heads/main"}]', b'"push"', b"42", b"null"]


def test_signed_non_json_is_400(demo: Server) -> None:
    for index, body in enumerate(NOT_JSON):
        response = demo.deliver("push", body, delivery=f"not-json-{index}")
        assert response.json()["error"] == "body is not JSON"
        assert_refused_and_not_recorded(demo, response, f"not-json-{index}", 400)


def test_signed_json_array_or_scalar_is_400(demo: Server) -> None:
    for index, body in enumerate(NOT_AN_OBJECT):
        response = demo.deliver("push", body, delivery=f"array-{index}")
        assert_refused_and_not_recorded(demo, response, f"array-{index}", 400)


def test_missing_github_header_is_400(demo: Server) -> None:
    body = body_of(push_main(SHA_B))
    for missing in ("X-GitHub-Event", "X-GitHub-Delivery"):
        hdrs = headers("push", body, secret=demo.secret)
        delivery = hdrs["X-GitHub-Delivery"]
        del hdrs[missing]
        response = post(demo, body, hdrs)
        assert missing in response.json()["error"]
        assert_refused_and_not_recorded(demo, response, delivery, 400)


def _oversized(demo: Server, content: Any) -> httpx.Response:
    body_head = b'{"zen":"'
    hdrs = headers("push", body_head, secret=demo.secret)  # signature is never checked
    try:
        return post(demo, content, hdrs)
    except httpx.TransportError as exc:  # pragma: no cover - depends on socket timing
        pytest.fail(f"the server dropped the connection instead of answering 413: {exc!r}")


def test_body_over_25_mib_with_content_length_is_413(demo: Server) -> None:
    body = b"x" * (MAX_BODY + 1)
    assert MAX_BODY == 25 * 1024 * 1024
    response = _oversized(demo, body)
    assert response.request.headers["content-length"] == str(MAX_BODY + 1)
    assert response.status_code == 413, response.text


def test_chunked_body_over_25_mib_is_413(demo: Server) -> None:
    chunk = b"x" * (1024 * 1024)

    def stream() -> Iterator[bytes]:
        for _ in range(25):
            yield chunk
        yield b"x"

    response = _oversized(demo, stream())
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert response.status_code == 413, response.text


def test_body_of_exactly_25_mib_is_not_413(demo: Server) -> None:
    """The limit is inclusive: 25 MiB is read (and, being unsigned garbage, refused)."""
    response = _oversized(demo, b"x" * MAX_BODY)
    assert response.status_code == 401, response.text


# --- no secret ----------------------------------------------------------------------------


def test_server_without_secret_refuses_every_delivery(tmp_path: Path) -> None:
    server = Server(tmp_path / "d2", secret=None)
    try:
        server.start()
        body = body_of(push_main(SHA_B))
        signed = server.deliver("push", body, signature=sign("test-secret", body))
        unsigned = server.deliver("push", body)
        assert "X-Hub-Signature-256" not in unsigned.request.headers
        ping_body = body_of(payloads.ping())
        ping = server.deliver("ping", ping_body, signature=sign("test-secret", ping_body))
        for response in (signed, unsigned, ping):
            assert response.status_code == 503, response.text
            assert "SLIPWAY_WEBHOOK_SECRET" in response.json()["error"]
    finally:
        server.close()


def test_closing_a_fork_pull_request_leaves_a_same_named_preview_alone(demo: Server) -> None:
    """An outsider's fork PR from a branch called like ours must not archive our preview."""
    ours = payloads.pull_request(action="opened", number=7, head_ref="feature/x", head_sha=SHA_B)
    assert demo.deliver("pull_request", ours).status_code == 202
    deployment_with(demo, SHA_B)
    for action in ("opened", "closed"):
        theirs = payloads.pull_request(
            action=action, number=8, head_ref="feature/x", head_sha=SHA_C, fork_owner="outsider"
        )
        assert demo.deliver("pull_request", theirs).status_code == 202
    settle(demo)
    (env,) = [e for e in environments(demo) if e["branch"] == "feature/x"]
    assert (env["status"], env["pull_request"]) == ("active", 7)
    assert [d["sha"] for d in demo.deployments(env="preview", branch="feature/x")] == [SHA_B]
