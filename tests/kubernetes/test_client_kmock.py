"""The client adapter (ApiCluster) on the wire, against kmock's emulated API server.

kmock serves a Kubernetes-like HTTP API that the official client talks to. It supports
Deployment and Secret create/read/list/delete, merge patches and status patches; it
does not do namespaces, server-side apply that creates, label selectors or rollouts
(see /work/shared/TESTING.md), so those are covered against the fake cluster instead.
Objects are created here with the client itself, as a controller of the cluster would.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from support.kmock_server import Emulated

from controller.errors import RuntimeUnavailable
from controller.runtimes.kubernetes.client import ApiCluster
from controller.settings import KubernetesSettings

NS = "slipway-acme-production"
LABELS = {"app.kubernetes.io/managed-by": "slipway", "slipway.dev/version-id": "1"}


@pytest.fixture
def api_url(kmock_emulated: Emulated) -> str:
    return kmock_emulated.url


@pytest.fixture
def cluster(api_url: str) -> Iterator[ApiCluster]:
    made = ApiCluster(client.Configuration(host=api_url))
    yield made
    made.close()


def deployment(name: str = "worker-20261201-1") -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS, "labels": LABELS},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"slipway.dev/version": "20261201.1"}},
            "template": {
                "metadata": {"labels": {"slipway.dev/version": "20261201.1"}},
                "spec": {"containers": [{"name": "worker", "image": "slipway:test"}]},
            },
        },
    }


def test_rollout_state_is_read_from_the_deployments_status(cluster: ApiCluster) -> None:
    cluster.apps.create_namespaced_deployment(NS, deployment())
    before = cluster.rollout(NS, "worker-20261201-1")
    assert before is not None and before.replicas == 2 and before.available == 0
    cluster.apps.patch_namespaced_deployment_status(
        "worker-20261201-1",
        NS,
        {
            "status": {
                "observedGeneration": 1,
                "updatedReplicas": 2,
                "availableReplicas": 1,
                "conditions": [
                    {
                        "type": "Progressing",
                        "status": "False",
                        "reason": "ProgressDeadlineExceeded",
                        "message": "ReplicaSet has timed out progressing.",
                    }
                ],
            }
        },
        _content_type="application/merge-patch+json",
    )
    after = cluster.rollout(NS, "worker-20261201-1")
    assert after is not None
    assert (after.observed_generation, after.updated, after.available) == (1, 2, 1)
    assert after.failed_conditions == [
        ("ProgressDeadlineExceeded", "ReplicaSet has timed out progressing.")
    ]
    assert after.labels == LABELS


def test_missing_objects_read_as_none(cluster: ApiCluster) -> None:
    assert cluster.rollout(NS, "nope") is None
    assert cluster.labels_of("Deployment", NS, "nope") is None
    cluster.delete("Deployment", NS, "nope")  # deleting what is gone is done


def test_scale_annotate_list_and_delete_on_the_wire(cluster: ApiCluster) -> None:
    cluster.apps.create_namespaced_deployment(NS, deployment())
    cluster.annotate(NS, "worker-20261201-1", {"slipway.dev/last-used": "1700000000"})
    cluster.scale(NS, "worker-20261201-1", 0)
    [listed] = cluster.deployments(NS, {"app.kubernetes.io/managed-by": "slipway"})
    assert (listed.namespace, listed.name, listed.replicas) == (NS, "worker-20261201-1", 0)
    assert listed.annotations["slipway.dev/last-used"] == "1700000000"
    assert listed.labels == LABELS
    assert [w.name for w in cluster.deployments(None, LABELS)] == ["worker-20261201-1"]
    cluster.delete("Deployment", NS, "worker-20261201-1")
    assert cluster.rollout(NS, "worker-20261201-1") is None


def test_an_apply_over_an_existing_secret_goes_through(
    cluster: ApiCluster, kmock_emulated: Emulated
) -> None:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "slipway-env", "namespace": NS, "labels": LABELS},
        "data": {"API_URL": "aHR0cHM6Ly9vbmU="},
    }
    cluster.core.create_namespaced_secret(NS, secret)
    cluster.apply({**secret, "data": {"API_URL": "aHR0cHM6Ly90d28="}})
    stored = cluster.core.read_namespaced_secret("slipway-env", NS)
    assert stored.data["API_URL"] == "aHR0cHM6Ly90d28="
    [patch] = [r for r in list(kmock_emulated.emulator) if str(r.method).upper().endswith("PATCH")]
    assert patch.params["fieldManager"] == "slipway" and patch.params["force"] == "true"
    assert patch.headers["Content-Type"].startswith("application/apply-patch+yaml")


def test_an_unreachable_api_server_is_a_temporary_error() -> None:
    from support.server import free_port

    dead = ApiCluster(client.Configuration(host=f"http://127.0.0.1:{free_port()}"))
    dead.configuration.retries = 0
    try:
        with pytest.raises(RuntimeUnavailable):
            dead.rollout(NS, "worker-20261201-1")
    finally:
        dead.close()


def test_kubeconfig_settings_reach_the_emulated_server(
    kmock_emulated: Emulated, tmp_path: Any
) -> None:
    kubeconfig = kmock_emulated.kubeconfig(tmp_path / "kubeconfig")
    made = ApiCluster.from_settings(KubernetesSettings(kubeconfig=kubeconfig))
    try:
        assert made.configuration.host == kmock_emulated.url
        assert made.rollout(NS, "nothing") is None
    finally:
        made.close()


def test_slipway_runtime_kubernetes_wires_the_runtime_and_a_wakeup_only_channel(
    kmock_emulated: Emulated, tmp_path: Any
) -> None:
    from controller.runtimes.kubernetes.runtime import KubernetesRuntime
    from controller.services import Services
    from controller.settings import load_settings, prepare

    kubeconfig = kmock_emulated.kubeconfig(tmp_path / "kubeconfig")
    settings, _ = prepare(
        load_settings(
            data_dir=tmp_path / "data", runtime="kubernetes", kubernetes_kubeconfig=kubeconfig
        )
    )
    services = Services(settings, role="controller")
    try:
        assert isinstance(services.runtime, KubernetesRuntime)
        assert services.local is None and services.remote is None
        assert services.control is not None
        assert services.runtime.serving() == set()
    finally:
        services.runtime.close()
        services.db.dispose()
        if services.inbox is not None:
            services.inbox.close()


def pod(name: str, status: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {"slipway.dev/version": "20261201.1"},
        },
        "spec": {"containers": [{"name": "worker", "image": "slipway:test"}]},
        "status": status,
    }


def status(name: str, state: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {
        "name": name,
        "state": state,
        "image": "slipway:test",
        "imageID": "",
        "ready": False,
        "restartCount": 3,
        **more,
    }


def test_pod_statuses_and_warning_events_read_back_as_the_failure_reason(
    cluster: ApiCluster,
) -> None:
    """What a failed rollout reports comes from the pods the API server lists: waiting
    reasons (not the normal ContainerCreating), a crashed container's last words, and the
    Warning events of those pods only, oldest first."""
    crashing = pod(
        "worker-a",
        {
            "initContainerStatuses": [status("fetch", {"waiting": {"reason": "PodInitializing"}})],
            "containerStatuses": [
                status(
                    "worker",
                    {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                    lastState={
                        "terminated": {"exitCode": 1, "message": "ModuleNotFoundError: no httpx\n"}
                    },
                )
            ],
            "conditions": [{"type": "Ready", "status": "False"}],
        },
    )
    pulling = pod(
        "worker-b",
        {"containerStatuses": [status("worker", {"waiting": {"reason": "ErrImagePull"}})]},
    )
    ready = pod("worker-c", {"conditions": [{"type": "Ready", "status": "True"}]})
    for made in (crashing, pulling, ready):
        created = cluster.core.create_namespaced_pod(
            NS, {k: made[k] for k in made if k != "status"}
        )
        assert created.metadata.name == made["metadata"]["name"]
        cluster.core.patch_namespaced_pod_status(
            made["metadata"]["name"],
            NS,
            {"status": made["status"]},
            _content_type="application/merge-patch+json",
        )

    def event(name: str, pod_name: str, reason: str, message: str, at: str) -> None:
        cluster.core.create_namespaced_event(
            NS,
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": name, "namespace": NS},
                "type": "Warning",
                "reason": reason,
                "message": message,
                "lastTimestamp": at,
                "involvedObject": {"kind": "Pod", "name": pod_name, "namespace": NS},
            },
        )

    event("e2", "worker-b", "Failed", "pull access denied for slipway", "2026-12-01T10:00:02Z")
    event(
        "e1", "worker-a", "BackOff", "Back-off restarting failed container", "2026-12-01T10:00:01Z"
    )
    event("e3", "someone-elses-pod", "Failed", "not ours", "2026-12-01T10:00:00Z")

    problems = cluster.pod_problems(NS, {"slipway.dev/version": "20261201.1"})
    assert problems == [
        "worker: CrashLoopBackOff: back-off 40s",
        "worker exited 1: ModuleNotFoundError: no httpx",
        "worker: ErrImagePull",
        "BackOff: Back-off restarting failed container",
        "Failed: pull access denied for slipway",
    ]
    assert cluster.ready_pods(NS, {"slipway.dev/version": "20261201.1"}) == ["worker-c"]
