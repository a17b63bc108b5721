"""Every object the runtime renders validates strictly, for every kind of environment."""

from __future__ import annotations

import base64
import re

import kubernetes_validate
import pytest

from controller.errors import PermanentError
from controller.runtimes.kubernetes.names import label_value, namespace_name
from controller.runtimes.kubernetes.render import (
    MANAGED_BY,
    Bundle,
    Target,
    WorkerVersion,
    namespace_of,
    render_deployment,
    render_environment,
)
from controller.runtimes.kubernetes.resources import resource_overrides
from controller.settings import KubernetesSettings

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
AWKWARD = ("Feature/ÜBER-Straße/" + "x" * 100)[:100]
NEWEST = kubernetes_validate.utils.major_minor(kubernetes_validate.utils.latest_version())
TARGETS = [
    Target("acme-tasks", "production"),
    Target("acme-tasks", "staging"),
    Target("acme-tasks", "preview", AWKWARD),
]


def objects_for(target: Target, settings: KubernetesSettings | None = None) -> list[dict]:
    version = WorkerVersion(
        version="20260101.2",
        version_id=7,
        commit="a" * 40,
        bundle=Bundle(digest="sha256:" + "b" * 64, url="https://slipway.example/api/v1/bundles/x"),
        deployment_id="dep_1",
    )
    return render_environment(
        settings or KubernetesSettings(),
        target,
        variables={"API_URL": "https://api", "DB_PASSWORD": "hunter2"},
        bundle_token="sbt_1_abc",
        version=version,
        current_version="20260101.2",
    )


@pytest.mark.parametrize("k8s", ["1.29", NEWEST])
@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.environment)
def test_every_object_validates_strictly(target: Target, k8s: str) -> None:
    objects = objects_for(target)
    assert [o["kind"] for o in objects] == [
        "Namespace",
        "Secret",
        "Secret",
        "Deployment",
        "Service",
    ]
    for obj in objects:
        kubernetes_validate.validate(obj, k8s, strict=True)
        assert obj["metadata"]["labels"][MANAGED_BY] == "slipway"
        for value in obj["metadata"]["labels"].values():
            assert len(value) <= 63 and re.match(
                r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$", value
            )


def test_newest_bundled_version_is_recent() -> None:
    assert tuple(int(p) for p in NEWEST.split(".")) >= (1, 31)


def test_deployment_is_hardened_and_probed() -> None:
    deployment = objects_for(TARGETS[0])[3]
    pod = deployment["spec"]["template"]["spec"]
    worker, fetch = pod["containers"][0], pod["initContainers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    for container in (worker, fetch):
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert worker["readinessProbe"]["httpGet"]["path"] == "/health"
    assert worker["livenessProbe"]["httpGet"]["path"] == "/health"
    assert worker["resources"]["requests"] == {"cpu": "100m", "memory": "256Mi"}
    assert {c["terminationMessagePolicy"] for c in (worker, fetch)} == {"FallbackToLogsOnError"}
    assert worker["image"] == fetch["image"] == KubernetesSettings().worker_image
    labels = pod and deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["slipway.dev/version"] == "20260101.2"
    assert labels["slipway.dev/commit"] == "a" * 40
    env = {e["name"]: e for e in fetch["env"]}
    assert env["BUNDLE_DIGEST"]["value"] == "sha256:" + "b" * 64
    assert env["BUNDLE_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "slipway-bundle"
    assert all("value" not in e or "sbt_" not in e["value"] for e in fetch["env"])


def test_the_worker_image_and_pull_policy_come_from_the_settings() -> None:
    settings = KubernetesSettings(
        worker_image="registry.example/team/slipway:1.2.3", image_pull_policy="Always"
    )
    pod = objects_for(TARGETS[0], settings)[3]["spec"]["template"]["spec"]
    for container in pod["containers"] + pod["initContainers"]:
        assert container["image"] == "registry.example/team/slipway:1.2.3"
        assert container["imagePullPolicy"] == "Always"


def test_service_selects_the_current_version_and_secret_holds_variables() -> None:
    objects = objects_for(TARGETS[1])
    secret, service = objects[1], objects[4]
    assert service["spec"]["selector"]["slipway.dev/version"] == "20260101.2"
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded == {"API_URL": "https://api", "DB_PASSWORD": "hunter2"}


def test_namespace_names_are_dns_labels_unique_for_long_branches() -> None:
    settings = KubernetesSettings()
    base = "feature/" + "y" * 91
    one, two = Target("acme", "preview", base + "a"), Target("acme", "preview", base + "b")
    names = {namespace_of(settings, t) for t in (one, two)}
    assert len(names) == 2
    for name in names:
        assert (
            DNS_LABEL.match(name) and len(name) <= 63 and name.startswith("slipway-acme-preview-")
        )
    assert namespace_of(settings, Target("acme", "production")) == "slipway-acme-production"


def test_branches_that_slug_alike_get_different_namespaces() -> None:
    kw = {"prefix": "slipway-", "project": "p", "environment": "preview"}
    assert namespace_name(**kw, branch="Feature/X") != namespace_name(**kw, branch="feature-x")


def test_label_values_are_sanitised_and_distinct() -> None:
    a, b = label_value("x/" + "z" * 100 + "1"), label_value("x/" + "z" * 100 + "2")
    assert a != b and len(a) <= 63
    assert label_value("main") == "main"
    assert label_value("Ünïcode/branch") != label_value("Unicode-branch")


def test_slipway_toml_resources_win_over_the_settings_and_are_checked() -> None:
    overrides = resource_overrides({"cpu_request": "500m", "memory_limit": "2Gi"})
    version = WorkerVersion(
        version="20260101.3",
        version_id=9,
        bundle=Bundle(digest="sha256:" + "b" * 64, url="https://x/api/v1/bundles/y"),
        resources=overrides,
    )
    deployment = render_deployment(KubernetesSettings(), TARGETS[0], version)
    kubernetes_validate.validate(deployment, "1.29", strict=True)
    resources = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources == {
        "requests": {"cpu": "500m", "memory": "256Mi"},
        "limits": {"cpu": "1", "memory": "2Gi"},
    }
    with pytest.raises(PermanentError, match="not a Kubernetes quantity"):
        resource_overrides({"cpu_request": "lots"})
    with pytest.raises(PermanentError, match="unknown keys"):
        resource_overrides({"gpu": "1"})
