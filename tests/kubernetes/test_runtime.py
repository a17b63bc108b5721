"""The Kubernetes runtime's logic against a fake cluster at our boundary: rollout,
promotion in one request, rollback, failing rollouts, scale to zero, archive."""

from __future__ import annotations

import pytest
from k8s_fakes import FakeClock, FakeCluster, FakeInputs

from controller.errors import PermanentError
from controller.runtimes.base import ArtifactRef, VersionSpec
from controller.runtimes.kubernetes.runtime import KubernetesRuntime
from controller.settings import KubernetesSettings

PROD = "slipway-acme-production"


def spec(
    version_id: int, *, environment: str = "production", branch: str | None = None
) -> VersionSpec:
    return VersionSpec(
        version_id=version_id,
        version=f"20261201.{version_id}",
        artifact=ArtifactRef(
            digest="sha256:" + "a" * 64, location="file:///a", environment="file:///v"
        ),
        tasks_dir="tasks",
        context={
            "project": "acme",
            "environment": environment,
            "branch": branch,
            "deployment_id": f"dep_{version_id}",
            "environment_id": 3,
            "sha": f"{version_id:040d}",
        },
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster()


@pytest.fixture
def inputs() -> FakeInputs:
    return FakeInputs(variables_by_env={"production": {"API_URL": "https://one"}})


@pytest.fixture
def runtime(cluster: FakeCluster, inputs: FakeInputs, clock: FakeClock) -> KubernetesRuntime:
    return KubernetesRuntime(
        KubernetesSettings(rollout_timeout=120, keep_versions=2),
        cluster=cluster,
        inputs=inputs,
        preview_idle_timeout=600,
        clock=clock,
        sleep=clock.sleep,
    )


def promote(runtime: KubernetesRuntime, s: VersionSpec) -> None:
    """What controller.versions.promote does with a runtime: ensure, then activate."""
    runtime.ensure(s)
    runtime.activate(s)


def test_deploy_rolls_out_then_promotion_switches_the_selector_in_one_request(
    runtime: KubernetesRuntime, cluster: FakeCluster
) -> None:
    promote(runtime, spec(1))
    assert cluster.service_selector(PROD)["slipway.dev/version"] == "20261201.1"
    runtime.ensure(spec(2))
    assert ("rollout", PROD, "worker-20261201-2") in cluster.calls
    assert cluster.service_selector(PROD)["slipway.dev/version"] == "20261201.1"
    before = len(cluster.writes())
    runtime.activate(spec(2))
    switch = cluster.writes()[before:]
    assert switch == [("apply", "Service", PROD, "workers")]
    assert cluster.service_selector(PROD)["slipway.dev/version"] == "20261201.2"


def test_rollback_restores_the_previous_selector(
    runtime: KubernetesRuntime, cluster: FakeCluster
) -> None:
    promote(runtime, spec(1))
    promote(runtime, spec(2))
    runtime.retire(1)
    assert cluster.objects[("Deployment", PROD, "worker-20261201-1")]["spec"]["replicas"] == 0
    before = len(cluster.writes())
    promote(runtime, spec(1))  # rollback = promote the previous version
    assert cluster.service_selector(PROD)["slipway.dev/version"] == "20261201.1"
    writes = cluster.writes()[before:]
    assert [w for w in writes if w[1] == "Service"] == [("apply", "Service", PROD, "workers")]
    assert cluster.objects[("Deployment", PROD, "worker-20261201-1")]["spec"]["replicas"] == 1


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        ("crash", "CrashLoopBackOff"),
        ("pull", "ErrImagePull"),
        ("deadline", "ProgressDeadlineExceeded"),
        ("never", "Readiness probe failed"),
    ],
)
def test_a_rollout_that_never_becomes_available_fails_with_the_pods_reason_and_promotes_nothing(
    runtime: KubernetesRuntime, cluster: FakeCluster, clock: FakeClock, behaviour: str, reason: str
) -> None:
    promote(runtime, spec(1))
    cluster.behaviour["20261201.2"] = behaviour
    started = clock.now
    with pytest.raises(PermanentError) as failed:
        promote(runtime, spec(2))
    assert reason in failed.value.message
    assert "20261201.2" in failed.value.message and PROD in failed.value.message
    assert cluster.service_selector(PROD)["slipway.dev/version"] == "20261201.1"
    if behaviour == "never":
        assert "not available after 120s" in failed.value.message
        assert clock.now - started >= 120
    else:
        assert clock.now - started < 30  # fails at once, without waiting for the timeout


def test_the_crash_loop_message_carries_the_containers_last_words(
    runtime: KubernetesRuntime, cluster: FakeCluster
) -> None:
    cluster.behaviour["20261201.1"] = "crash"
    with pytest.raises(PermanentError, match="No module named 'requests'"):
        runtime.ensure(spec(1))


def test_archiving_a_preview_deletes_exactly_its_namespace(
    runtime: KubernetesRuntime, cluster: FakeCluster, inputs: FakeInputs
) -> None:
    promote(runtime, spec(1))
    promote(runtime, spec(2, environment="preview", branch="feature/a"))
    promote(runtime, spec(3, environment="preview", branch="feature/b"))
    namespaces = {k[1] for k in cluster.objects if k[0] == "Namespace"}
    assert len(namespaces) == 3
    inputs.archived_ids.add(2)
    runtime.retire(2)
    deleted = [c for c in cluster.calls if c[0] == "delete"]
    assert len(deleted) == 1 and deleted[0][1] == "Namespace"
    gone = deleted[0][3]
    assert gone.startswith("slipway-acme-preview-feature-a-")
    assert {k[1] for k in cluster.objects if k[0] == "Namespace"} == namespaces - {gone}


def test_production_is_never_deleted_even_when_told_it_is_archived(
    runtime: KubernetesRuntime, cluster: FakeCluster, inputs: FakeInputs
) -> None:
    promote(runtime, spec(1))
    inputs.archived_ids.add(1)
    runtime.retire(1)
    assert not [c for c in cluster.calls if c[0] == "delete"]


def test_a_namespace_that_is_not_slipways_is_left_alone(
    runtime: KubernetesRuntime, cluster: FakeCluster
) -> None:
    cluster.add_foreign("Namespace", PROD, PROD)
    with pytest.raises(PermanentError, match="not Slipway's"):
        runtime.ensure(spec(1))
    assert cluster.writes() == []
    runtime.archive_namespace(PROD)
    assert cluster.writes() == []


def test_old_versions_beyond_the_count_are_deleted_but_never_foreign_ones(
    runtime: KubernetesRuntime, cluster: FakeCluster
) -> None:
    promote(runtime, spec(1))
    cluster.add_foreign("Deployment", PROD, "someone-elses")
    for version_id in (2, 3, 4):
        promote(runtime, spec(version_id))
    names = {k[2] for k in cluster.objects if k[0] == "Deployment" and k[1] == PROD}
    assert names == {"someone-elses", "worker-20261201-3", "worker-20261201-4"}


def test_idle_previews_scale_to_zero_and_back_on_the_next_run(
    runtime: KubernetesRuntime, cluster: FakeCluster, clock: FakeClock
) -> None:
    preview = spec(5, environment="preview", branch="feature/idle")
    promote(runtime, spec(1))
    promote(runtime, preview)
    namespace = next(k[1] for k in cluster.objects if k[0] == "Namespace" and "idle" in k[1])
    key = ("Deployment", namespace, "worker-20261201-5")
    clock.sleep(599)
    runtime.stop_unlisted({1, 5})
    assert cluster.objects[key]["spec"]["replicas"] == 1
    clock.sleep(2)
    runtime.stop_unlisted({1, 5})
    assert cluster.objects[key]["spec"]["replicas"] == 0
    assert cluster.objects[("Deployment", PROD, "worker-20261201-1")]["spec"]["replicas"] == 1
    assert 5 not in runtime.serving()
    answer = runtime.run(preview, run_id="run_1", task_id="hello", payload={}, timeout=30)
    assert answer["status"] == "completed"
    assert cluster.objects[key]["spec"]["replicas"] == 1
    assert 5 in runtime.serving()


def test_runs_go_through_the_service_when_current_and_to_a_pod_when_pinned(
    runtime: KubernetesRuntime, cluster: FakeCluster
) -> None:
    promote(runtime, spec(1))
    runtime.ensure(spec(2))
    runtime.run(spec(1), run_id="r1", task_id="hello", payload={"a": 1}, timeout=10)
    runtime.run(spec(2), run_id="r2", task_id="hello", payload=None, timeout=10)
    assert [p["target"] for p in cluster.posts] == [
        "service/workers:80",
        "pod/worker-20261201-2-pod:8000",
    ]
    assert cluster.posts[0]["payload"] == {"a": 1} and cluster.posts[0]["path"] == "/runs"


def test_a_changed_variable_updates_the_secret_without_a_redeploy(
    runtime: KubernetesRuntime, cluster: FakeCluster
) -> None:
    promote(runtime, spec(1))
    deployment = cluster.objects[("Deployment", PROD, "worker-20261201-1")]
    env = {"API_URL": "https://two", "SLIPWAY_RUN_ID": "r1", "SLIPWAY_TASK_ID": "hello"}
    runtime.run(spec(1), run_id="r1", task_id="hello", payload=None, timeout=10, env=env)
    secret = cluster.objects[("Secret", PROD, "slipway-env")]
    assert secret["data"] == {"API_URL": "aHR0cHM6Ly90d28="}  # base64 of https://two
    assert cluster.posts[-1]["env"] == env
    assert cluster.objects[("Deployment", PROD, "worker-20261201-1")] == deployment
    applies = len([c for c in cluster.calls if c[:2] == ("apply", "Secret")])
    runtime.run(spec(1), run_id="r2", task_id="hello", payload=None, timeout=10, env=env)
    assert len([c for c in cluster.calls if c[:2] == ("apply", "Secret")]) == applies


def test_a_refused_version_is_not_started(cluster: FakeCluster, inputs: FakeInputs) -> None:
    runtime = KubernetesRuntime(
        KubernetesSettings(), cluster=cluster, inputs=inputs, may_start=lambda _id: "archived"
    )
    with pytest.raises(PermanentError, match="archived"):
        runtime.ensure(spec(1))
    assert cluster.writes() == []


def test_a_run_another_process_recorded_keeps_a_preview_up(
    runtime: KubernetesRuntime, cluster: FakeCluster, clock: FakeClock, inputs: FakeInputs
) -> None:
    preview = spec(5, environment="preview", branch="feature/busy")
    promote(runtime, preview)
    web = KubernetesRuntime(
        runtime.settings, cluster=cluster, inputs=inputs, clock=clock, sleep=clock.sleep
    )
    clock.sleep(500)
    web.run(preview, run_id="r1", task_id="hello", payload=None, timeout=10)  # the web process
    clock.sleep(200)
    assert runtime.scale_idle_previews() == []
    clock.sleep(600)
    assert runtime.scale_idle_previews() == [5]


def test_pruning_in_another_process_never_deletes_the_current_version(
    runtime: KubernetesRuntime, cluster: FakeCluster, inputs: FakeInputs, clock: FakeClock
) -> None:
    promote(runtime, spec(1))
    other = KubernetesRuntime(
        runtime.settings, cluster=cluster, inputs=inputs, clock=clock, sleep=clock.sleep
    )
    for version_id in (2, 3, 4):
        other.ensure(spec(version_id))  # built, not promoted: 1 stays current
    names = {k[2] for k in cluster.objects if k[0] == "Deployment" and k[1] == PROD}
    assert "worker-20261201-1" in names and len(names) == 2


def test_archiving_with_several_versions_deletes_the_namespace_once_and_scales_nothing(
    runtime: KubernetesRuntime, cluster: FakeCluster, inputs: FakeInputs
) -> None:
    promote(runtime, spec(2, environment="preview", branch="feature/a"))
    promote(runtime, spec(3, environment="preview", branch="feature/a"))
    inputs.archived_ids |= {2, 3}
    runtime.retire(2)
    runtime.retire(3)
    assert [c[0] for c in cluster.calls if c[0] in ("delete", "scale")] == ["delete"]
