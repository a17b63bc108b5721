"""The Lease adapter on the wire: the official client against kmock's emulated API server.

kmock serves reads and creates of a Lease (and 409 for a duplicate create) but not PUT,
so the replace path, the renewals and the takeover are covered against the fake
boundary in test_leadership.py; here we check what we send and read back is what the
API server speaks (field names, times, the 404 → no Lease, the 409 → conflict).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client
from support.kmock_server import Emulated

from controller.leadership.lease import KubernetesLeaseApi, LeaseClaim, LeaseConflict, LeaseRecord


@pytest.fixture
def api_client(kmock_emulated: Emulated) -> Iterator[Any]:
    api = client.ApiClient(client.Configuration(host=kmock_emulated.url))
    try:
        yield api
    finally:
        api.close()


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


def test_a_lease_name_elects_through_the_kubernetes_lease(
    kmock_emulated: Emulated, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SLIPWAY_KUBERNETES_LEASE_NAME picks the Lease over PostgreSQL's advisory lock, with
    the configured name, namespace and identity, on the cluster SLIPWAY_KUBERNETES_KUBECONFIG
    names (the runtime's: before, the Lease read only KUBECONFIG and ignored that setting)."""
    from controller.leadership import make_elector
    from controller.settings import load_settings

    kubeconfig = kmock_emulated.kubeconfig(tmp_path / "kubeconfig")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    settings = load_settings(
        data_dir=tmp_path / "data",
        database_url="postgresql://u@127.0.0.1:1/x",
        kubernetes_kubeconfig=kubeconfig,  # the cluster the runtime uses
        kubernetes_lease_name="rel-slipway-leader",
        kubernetes_lease_namespace="ops",
        kubernetes_lease_identity="rel-slipway-0",
    )
    campaign = make_elector(settings)
    assert campaign is not None and isinstance(campaign.claim, LeaseClaim)
    assert campaign.claim.identity == "rel-slipway-0"
    assert campaign.claim.acquire() is True
    stored = KubernetesLeaseApi(
        name="rel-slipway-leader",
        namespace="ops",
        api_client=client.ApiClient(client.Configuration(host=kmock_emulated.url)),
    ).read()
    assert stored is not None and stored.holder == "rel-slipway-0"


def test_a_lease_name_without_any_kubernetes_configuration_is_a_clear_error(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from controller.errors import PermanentError
    from controller.leadership import make_elector
    from controller.settings import load_settings

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    settings = load_settings(
        data_dir=tmp_path / "data",
        database_url="postgresql://u@127.0.0.1:1/x",
        kubernetes_kubeconfig=tmp_path / "no-such-kubeconfig",
        kubernetes_lease_name="rel-slipway-leader",
    )
    with pytest.raises(PermanentError, match="SLIPWAY_KUBERNETES_LEASE_NAME is set") as raised:
        make_elector(settings)
    assert raised.value.hint and "SLIPWAY_KUBERNETES_KUBECONFIG" in raised.value.hint
