"""The Lease adapter on the wire: the official client against kmock's emulated API server.

kmock serves reads and creates of a Lease (and 409 for a duplicate create) but not PUT,
so the replace path, the renewals and the takeover are covered against the fake
boundary in test_leadership.py; here we check what we send and read back is what the
API server speaks (field names, times, the 404 → no Lease, the 409 → conflict).
"""

from __future__ import annotations

import asyncio
import threading
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import kmock
import pytest
from kubernetes import client

from controller.leadership.lease import KubernetesLeaseApi, LeaseClaim, LeaseConflict, LeaseRecord


@pytest.fixture
def api_client() -> Iterator[Any]:
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        try:
            box["stop"] = asyncio.Event()
            emulator = kmock.KubernetesEmulator()
            with warnings.catch_warnings():  # kmock 0.8 reads its bundle the old way
                warnings.filterwarnings("ignore", "read_binary is deprecated", DeprecationWarning)
                emulator.resources.load_bundled()
            async with emulator, kmock.Server(emulator) as server:
                box["url"] = str(server.url).rstrip("/")
                ready.set()
                await box["stop"].wait()
        except BaseException as exc:
            box["error"] = exc
            ready.set()
            raise

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), name="kmock")
    thread.start()
    assert ready.wait(30), "kmock did not start"
    assert "error" not in box, f"kmock did not start: {box.get('error')!r}"
    api = client.ApiClient(client.Configuration(host=box["url"]))
    try:
        yield api
    finally:
        api.close()
        loop.call_soon_threadsafe(box["stop"].set)
        thread.join(30)
        loop.close()
        assert not thread.is_alive()


def test_missing_lease_reads_as_none_and_a_claim_creates_it(api_client: Any) -> None:
    api = KubernetesLeaseApi(name="rel-slipway-leader", namespace="ops", api_client=api_client)
    assert api.read() is None
    claim = LeaseClaim(api, identity="rel-slipway-7f9-abc")
    assert claim.acquire() is True
    stored = api.read()
    assert stored is not None
    assert stored.holder == "rel-slipway-7f9-abc"
    assert stored.duration == 15
    assert stored.transitions == 0
    assert stored.renewed is not None and stored.renewed.tzinfo is not None
    assert abs((datetime.now(UTC) - stored.renewed).total_seconds()) < 300
    raw = client.CoordinationV1Api(api_client).read_namespaced_lease("rel-slipway-leader", "ops")
    assert raw.spec.holder_identity == "rel-slipway-7f9-abc"
    assert raw.metadata.labels == {"app.kubernetes.io/managed-by": "slipway"}


def test_a_second_create_is_a_conflict(api_client: Any) -> None:
    api = KubernetesLeaseApi(name="lead", namespace="ops", api_client=api_client)
    now = datetime.now(UTC)
    api.create(LeaseRecord("pod-a", 15, now, now, 0))
    with pytest.raises(LeaseConflict):
        api.create(LeaseRecord("pod-b", 15, now, now, 0))
    rival = LeaseClaim(api, identity="pod-b")
    assert rival.acquire() is False  # pod-a's Lease is fresh
    stored = api.read()
    assert stored is not None and stored.holder == "pod-a"
