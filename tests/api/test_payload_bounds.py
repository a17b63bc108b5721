"""Issue 7: the trigger refuses a payload over its bound with 413, before parsing or storing.

A real server with a small bound (``SLIPWAY_MAX_PAYLOAD_BYTES``); the body is refused on
its ``Content-Length`` and, when streamed without one, while it is counted.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Flow
from support.repos import TaskRepo
from support.server import Server

BOUND = 64 * 1024


@pytest.fixture
def small_server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "data", extra_env={"SLIPWAY_MAX_PAYLOAD_BYTES": str(BOUND)})
    try:
        yield srv.start()
    finally:
        srv.close()


def test_a_payload_over_the_bound_is_refused_and_not_stored(
    small_server: Server, task_repo: TaskRepo
) -> None:
    flow = Flow(small_server, task_repo)
    flow.deploy_push()
    key = small_server.secret_key("demo", "production")
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    url = "/api/v1/tasks/hello/trigger"

    huge = b'{"payload": "' + b"x" * (30 * 1024 * 1024) + b'"}'
    refused = small_server.client.post(url, content=huge, headers=auth)
    assert refused.status_code == 413, refused.text[:300]
    assert "larger than 64 KiB" in refused.json()["error"]

    def chunks() -> Iterator[bytes]:
        yield b'{"payload": "'
        for _ in range(64):
            yield b"y" * (64 * 1024)
        yield b'"}'

    streamed = small_server.client.post(url, content=chunks(), headers=auth)
    assert streamed.status_code == 413, streamed.text[:300]

    just_over = small_server.client.post(url, json={"payload": "z" * (BOUND + 10)}, headers=auth)
    assert just_over.status_code == 413, just_over.text[:300]
    assert "payload is larger than" in just_over.json()["error"]

    fits = small_server.client.post(url, json={"payload": {"n": 1}}, headers=auth)
    assert fits.status_code == 200, fits.text
    assert fits.json()["output"]["payload"] == {"n": 1}
    db = small_server.data_dir / "slipway.db"
    assert db.stat().st_size < 5 * 1024 * 1024
