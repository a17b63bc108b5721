"""The Helm chart, rendered and linted by the real Helm 3 binary (see support.helm).

Every object ``helm template`` renders is validated strictly (unknown fields refused)
with ``kubernetes-validate`` against Kubernetes 1.29 and the newest schema it bundles.
The chart's own refusals are checked too: several replicas on SQLite, several replicas
without a shared secret, and a value of the wrong type (values.schema.json).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from support.helm import ensure_helm

CHART = Path(__file__).resolve().parents[2] / "charts" / "slipway"
VERSIONS = ["1.29", kubernetes_validate.latest_version()]
HA = {
    "replicaCount": "3",
    "database.url": "postgresql://slipway:pw@postgres:5432/slipway",
    "existingSecret": "slipway-secrets",
}


@pytest.fixture(scope="module")
def helm() -> Path:
    return ensure_helm()


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), *args], capture_output=True, text=True, timeout=120, check=False
    )


def render(helm: Path, values: dict[str, str] | None = None) -> list[dict[str, Any]]:
    sets = [arg for k, v in (values or {}).items() for arg in ("--set", f"{k}={v}")]
    done = run_helm(helm, "template", "rel", str(CHART), "--namespace", "ops", *sets)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def refusal(helm: Path, values: dict[str, str]) -> str:
    sets = [arg for k, v in values.items() for arg in ("--set", f"{k}={v}")]
    done = run_helm(helm, "template", "rel", str(CHART), *sets)
    assert done.returncode != 0, f"rendered although it must not:\n{done.stdout[:2000]}"
    return done.stderr


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def container_env(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    (deployment,) = by_kind(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {item["name"]: item for item in container["env"]}


def test_helm_lint_strict_passes(helm: Path) -> None:
    for values in ({}, HA):
        sets = [arg for k, v in values.items() for arg in ("--set", f"{k}={v}")]
        done = run_helm(helm, "lint", "--strict", str(CHART), *sets)
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("values", [{}, HA], ids=["defaults", "ha"])
def test_every_rendered_object_validates_strictly(helm: Path, values: dict[str, str]) -> None:
    docs = render(helm, {**values, "ingress.enabled": "true"})
    kinds = {doc["kind"] for doc in docs}
    assert {"Deployment", "Service", "ServiceAccount", "ClusterRole", "Ingress"} <= kinds
    for doc in docs:
        for version in VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def test_defaults_are_one_replica_on_sqlite_with_a_volume(helm: Path) -> None:
    docs = render(helm)
    (deployment,) = by_kind(docs, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"]["type"] == "Recreate"  # two pods never share the SQLite file
    env = container_env(docs)
    assert "SLIPWAY_DATABASE_URL" not in env
    assert env["SLIPWAY_DATA_DIR"]["value"] == "/data"
    assert env["SLIPWAY_HOST"]["value"] == "0.0.0.0"
    (claim,) = by_kind(docs, "PersistentVolumeClaim")
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]


def test_ha_values_share_postgres_and_the_secret(helm: Path) -> None:
    docs = render(helm, HA)
    (deployment,) = by_kind(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert not by_kind(docs, "PersistentVolumeClaim")
    env = container_env(docs)
    ref = env["SLIPWAY_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    (db_secret,) = [s for s in by_kind(docs, "Secret") if s["metadata"]["name"] == ref["name"]]
    assert db_secret["stringData"][ref["key"]] == HA["database.url"]
    # the URL's password is only in the Secret, never in the pod spec
    assert "pw@" not in yaml.safe_dump(deployment)
    for name in ("SLIPWAY_WEBHOOK_SECRET", "SLIPWAY_ENCRYPTION_KEY", "SLIPWAY_ADMIN_TOKEN"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "slipway-secrets"
    assert env["SLIPWAY_KUBERNETES_LEASE_NAME"]["value"] == "rel-slipway-leader"
    namespace = env["SLIPWAY_KUBERNETES_LEASE_NAMESPACE"]["valueFrom"]["fieldRef"]
    assert namespace["fieldPath"] == "metadata.namespace"
    # pods fetch bundles through the Service, balanced over replicas that all serve them
    assert env["SLIPWAY_KUBERNETES_ARTIFACT_URL"]["value"] == "http://rel-slipway.ops.svc:80"


def test_database_existing_secret_is_used_as_is(helm: Path) -> None:
    docs = render(
        helm,
        {"replicaCount": "2", "database.existingSecret": "pg", "existingSecret": "s"},
    )
    ref = container_env(docs)["SLIPWAY_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "pg", "key": "database-url"}
    assert not by_kind(docs, "Secret")


def test_pod_runs_as_non_root_with_probes(helm: Path) -> None:
    (deployment,) = by_kind(render(helm), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    (container,) = pod["containers"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["args"] == ["serve"]


def test_rbac_is_exactly_what_the_runtime_needs(helm: Path) -> None:
    docs = render(helm)
    (cluster_role,) = by_kind(docs, "ClusterRole")
    (role,) = by_kind(docs, "Role")
    granted = {
        (group, resource): set(rule["verbs"])
        for rule in cluster_role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    for rule in [*cluster_role["rules"], *role["rules"]]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
    assert set(granted) == {
        ("", "namespaces"),
        ("apps", "deployments"),
        ("apps", "deployments/scale"),
        ("", "services"),
        ("", "secrets"),
        ("", "pods"),
        ("", "events"),
        ("events.k8s.io", "events"),
        ("", "services/proxy"),
        ("", "pods/proxy"),
    }
    assert granted[("", "pods/proxy")] == {"get", "create"}
    assert granted[("", "pods")] == {"get", "list", "watch"}
    assert granted[("", "events")] == {"get", "list", "watch"}
    assert "create" in granted[("", "namespaces")]
    assert "delete" in granted[("", "namespaces")]
    (lease_rule,) = role["rules"]
    assert lease_rule["apiGroups"] == ["coordination.k8s.io"]
    assert lease_rule["resources"] == ["leases"]
    assert role["metadata"]["namespace"] == "ops"
    (binding,) = by_kind(docs, "ClusterRoleBinding")
    (account,) = by_kind(docs, "ServiceAccount")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "ops"}
    ]


def test_ingress_routes_the_webhook_and_the_pages(helm: Path, tmp_path: Path) -> None:
    values = tmp_path / "ingress.yaml"
    values.write_text(
        yaml.safe_dump({"ingress": {"enabled": True, "hosts": [{"host": "deploy.example.org"}]}})
    )
    refused = run_helm(helm, "template", "rel", str(CHART), "-f", str(values))
    assert "paths is required" in refused.stderr
    values.write_text(
        yaml.safe_dump(
            {
                "ingress": {
                    "enabled": True,
                    "className": "nginx",
                    "hosts": [
                        {
                            "host": "deploy.example.org",
                            "paths": [
                                {"path": "/webhooks/github", "pathType": "Exact"},
                                {"path": "/", "pathType": "Prefix"},
                            ],
                        }
                    ],
                    "tls": [{"secretName": "tls", "hosts": ["deploy.example.org"]}],
                }
            }
        )
    )
    done = run_helm(helm, "template", "rel", str(CHART), "-f", str(values))
    assert done.returncode == 0, done.stderr
    (ingress,) = by_kind([d for d in yaml.safe_load_all(done.stdout) if d], "Ingress")
    for version in VERSIONS:
        kubernetes_validate.validate(ingress, version, strict=True)
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "deploy.example.org"
    paths = {(p["path"], p["pathType"]) for p in rule["http"]["paths"]}
    assert paths == {("/webhooks/github", "Exact"), ("/", "Prefix")}
    assert ingress["spec"]["tls"] == [{"hosts": ["deploy.example.org"], "secretName": "tls"}]


def test_default_ingress_routes_the_webhook_and_the_pages(helm: Path) -> None:
    (ingress,) = by_kind(render(helm, {"ingress.enabled": "true"}), "Ingress")
    (rule,) = ingress["spec"]["rules"]
    paths = {(p["path"], p["pathType"]) for p in rule["http"]["paths"]}
    assert paths == {("/webhooks/github", "Exact"), ("/", "Prefix")}


def test_several_replicas_on_sqlite_are_refused(helm: Path) -> None:
    stderr = refusal(helm, {"replicaCount": "3"})
    assert "replicaCount=3 needs PostgreSQL" in stderr
    assert "SQLite" in stderr


def test_several_replicas_without_a_shared_secret_are_refused(helm: Path) -> None:
    stderr = refusal(helm, {"replicaCount": "3", "database.url": "postgresql://db/slipway"})
    assert "needs existingSecret" in stderr


def test_several_replicas_with_the_local_runtime_are_refused(helm: Path) -> None:
    stderr = refusal(helm, {**HA, "runtime": "local"})
    assert "replicaCount=3 needs runtime=kubernetes" in stderr
    render(helm, {"runtime": "local"})  # one replica may run its workers in its pod


def test_a_database_url_that_is_not_postgres_is_refused(helm: Path) -> None:
    assert "postgresql://" in refusal(helm, {"database.url": "mysql://db/slipway"})


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"replicaCount": "three"}, "replicaCount: Invalid type"),
        ({"persistence.enabled": "maybe"}, "persistence.enabled: Invalid type"),
        ({"runtime": "docker"}, "runtime"),
        ({"servce.port": "80"}, "servce"),
        ({"kubernetes.artifactUrl": "slipway:80"}, "artifactUrl"),
    ],
)
def test_values_schema_refuses_wrong_values(
    helm: Path, values: dict[str, str], complaint: str
) -> None:
    assert complaint in refusal(helm, values)


def render_notes(helm: Path, tmp_path: Path, values: dict[str, str]) -> str:
    """NOTES.txt as ``helm install`` would print it. ``helm template`` never renders it
    and an install needs a cluster, so a copy of the chart includes it in a manifest."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "notes-check.yaml").write_text(
        'notes: {{ include "slipway/templates/NOTES.txt" . | quote }}\n'
    )
    sets = [arg for k, v in values.items() for arg in ("--set", f"{k}={v}")]
    done = run_helm(
        helm,
        "template",
        "rel",
        str(chart),
        "--namespace",
        "ops",
        "--show-only",
        "templates/notes-check.yaml",
        *sets,
    )
    assert done.returncode == 0, done.stderr
    return str(yaml.safe_load(done.stdout)["notes"])


def test_notes_say_how_to_reach_it_and_where_the_token_is(helm: Path, tmp_path: Path) -> None:
    notes = render_notes(helm, tmp_path, {})
    assert "port-forward service/rel-slipway" in notes
    assert "cat /data/admin_token" in notes
    notes = render_notes(helm, tmp_path / "ha", {**HA, "ingress.enabled": "true"})
    assert "3 replica(s), PostgreSQL" in notes
    assert "https://" not in notes
    assert "http://slipway.example.com/webhooks/github" in notes
    assert '"admin-token" key of Secret slipway-secrets' in notes
    assert "pw@" not in notes
