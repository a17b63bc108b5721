"""What the Kubernetes runtime applies, as plain dicts: pure functions, no client, no I/O.

The runtime applies exactly these objects (server-side apply) and ``slipway kubernetes
manifests`` prints them, so a user of Argo CD or Flux can commit the same output.
Per environment (or preview branch) one namespace holds:

* ``Secret/slipway-env`` — the environment's resolved variables; the workers load it with
  ``envFrom`` (what task modules see when they are imported), and every run also gets the
  values resolved when it starts, so a changed variable reaches the next run without a
  redeploy, as with the local runtime. The runtime re-applies it when the values change;
* ``Secret/slipway-bundle`` — the environment's bundle token (see
  :mod:`controller.bundles`): the init container's credential, never the admin token;
* ``Deployment/worker-<version>`` per live version — init container ``fetch-bundle``
  downloads the version's bundle, checks its sha256 and unpacks it into an emptyDir; the
  worker (``controller.runtimes.worker_main`` of the worker image) serves it on port 8000.
  Non-root, no privilege escalation, every capability dropped, read-only root filesystem
  (``/tmp`` and the bundle are emptyDirs);
* ``Service/workers`` — selects the current version's pods; promotion and rollback change
  only its selector, in one request.

Every object carries ``app.kubernetes.io/managed-by: slipway`` and the project,
environment and branch labels: the runtime touches nothing without them.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from controller.runtimes.kubernetes.names import label_value, namespace_name, object_name
from controller.runtimes.kubernetes.resources import container_resources
from controller.settings import KubernetesSettings

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "slipway"
PROJECT = "slipway.dev/project"
ENVIRONMENT = "slipway.dev/environment"
BRANCH = "slipway.dev/branch"
VERSION = "slipway.dev/version"
VERSION_ID = "slipway.dev/version-id"
COMMIT = "slipway.dev/commit"
ENV_SECRET = "slipway-env"  # noqa: S105 - a Secret's name
BUNDLE_SECRET = "slipway-bundle"  # noqa: S105 - a Secret's name
SERVICE = "workers"
WORKER_PORT = 8000
BUNDLE_DIR = "/slipway/bundle"
RUN_USER = 10001

# The init container: standard library only, so any image with Python runs it.
FETCH_SCRIPT = """\
import hashlib, os, sys, tarfile, urllib.request
dest = os.environ["BUNDLE_DIR"]
path = os.path.join(dest, ".bundle.tar")
request = urllib.request.Request(
    os.environ["BUNDLE_URL"], headers={"Authorization": "Bearer " + os.environ["BUNDLE_TOKEN"]}
)
digest = hashlib.sha256()
with urllib.request.urlopen(request, timeout=300) as answer, open(path, "wb") as out:
    while chunk := answer.read(1 << 20):
        digest.update(chunk)
        out.write(chunk)
want = os.environ["BUNDLE_DIGEST"].removeprefix("sha256:")
if digest.hexdigest() != want:
    sys.exit(f"bundle digest mismatch: got sha256:{digest.hexdigest()}, want sha256:{want}")
with tarfile.open(path) as bundle:
    bundle.extractall(dest, filter="data")
os.remove(path)
print("bundle sha256:" + want + " verified and unpacked")
"""


@dataclass(frozen=True)
class Target:
    """The environment (or preview branch) a namespace belongs to."""

    project: str
    environment: str
    branch: str | None = None


@dataclass(frozen=True)
class Bundle:
    """A version's code as pods get it: content digest (``sha256:<hex>``) and URL."""

    digest: str
    url: str


@dataclass(frozen=True)
class WorkerVersion:
    version: str
    version_id: int
    bundle: Bundle
    commit: str | None = None
    tasks_dir: str = "tasks"
    deployment_id: str | None = None
    context: dict[str, Any] = field(default_factory=dict)
    # From the version's slipway.toml ``[kubernetes]`` table: they win over the settings.
    resources: dict[str, str] = field(default_factory=dict)


def namespace_of(settings: KubernetesSettings, target: Target) -> str:
    return namespace_name(
        prefix=settings.namespace_prefix,
        project=target.project,
        environment=target.environment,
        branch=target.branch,
    )


def labels_for(target: Target) -> dict[str, str]:
    labels = {
        MANAGED_BY: MANAGER,
        PROJECT: label_value(target.project),
        ENVIRONMENT: label_value(target.environment),
    }
    if target.branch is not None:
        labels[BRANCH] = label_value(target.branch)
    return labels


def _annotations(target: Target) -> dict[str, str]:
    notes = {"slipway.dev/project": target.project}
    if target.branch is not None:
        notes["slipway.dev/branch"] = target.branch
    return notes


def _meta(settings: KubernetesSettings, target: Target, name: str, **labels: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace_of(settings, target),
        "labels": {**labels_for(target), **labels},
        "annotations": _annotations(target),
    }


def deployment_name(version: str) -> str:
    return object_name(f"worker-{version}")


def version_labels(version: WorkerVersion) -> dict[str, str]:
    labels = {VERSION: label_value(version.version), VERSION_ID: str(version.version_id)}
    if version.commit:
        labels[COMMIT] = label_value(version.commit)
    return labels


def selector_for(version: str) -> dict[str, str]:
    return {MANAGED_BY: MANAGER, VERSION: label_value(version)}


def render_namespace(settings: KubernetesSettings, target: Target) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": namespace_of(settings, target),
            "labels": labels_for(target),
            "annotations": _annotations(target),
        },
    }


def _secret(
    settings: KubernetesSettings, target: Target, name: str, values: dict[str, str]
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(settings, target, name),
        "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in sorted(values.items())},
    }


def render_env_secret(
    settings: KubernetesSettings, target: Target, variables: dict[str, str]
) -> dict[str, Any]:
    return _secret(settings, target, ENV_SECRET, variables)


def render_bundle_secret(
    settings: KubernetesSettings, target: Target, token: str
) -> dict[str, Any]:
    return _secret(settings, target, BUNDLE_SECRET, {"token": token})


_CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
}


def _worker_context(target: Target, version: WorkerVersion) -> dict[str, Any]:
    return {
        **version.context,
        "project": target.project,
        "environment": target.environment,
        "branch": target.branch,
        "deployment_id": version.deployment_id,
        "version": version.version,
        "version_id": version.version_id,
    }


def render_deployment(
    settings: KubernetesSettings,
    target: Target,
    version: WorkerVersion,
    *,
    replicas: int | None = None,
) -> dict[str, Any]:
    labels = {**labels_for(target), **version_labels(version)}
    mounts = [
        {"name": "bundle", "mountPath": BUNDLE_DIR},
        {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - an emptyDir in the pod
    ]
    probe = {"httpGet": {"path": "/health", "port": "http"}, "timeoutSeconds": 3}
    worker = {
        "name": "worker",
        "image": settings.worker_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["python", "-B", "-m", "controller.runtimes.worker_main"],
        "args": [
            "--source",
            f"{BUNDLE_DIR}/source",
            "--tasks-dir",
            version.tasks_dir,
            "--context-json",
            json.dumps(_worker_context(target, version), sort_keys=True),
            "--host",
            "0.0.0.0",
            "--port",
            str(WORKER_PORT),
        ],
        "env": [
            {"name": "PYTHONPATH", "value": f"{BUNDLE_DIR}/site-packages"},
            {"name": "PYTHONUNBUFFERED", "value": "1"},
            {"name": "HOME", "value": "/tmp"},  # noqa: S108
            {"name": "SLIPWAY_VERSION", "value": version.version},
        ],
        "envFrom": [{"secretRef": {"name": ENV_SECRET}}],
        "ports": [{"name": "http", "containerPort": WORKER_PORT, "protocol": "TCP"}],
        "readinessProbe": {**probe, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {
            **probe,
            "initialDelaySeconds": 10,
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "resources": container_resources(settings, version.resources),
        "securityContext": _CONTAINER_SECURITY,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }
    fetch = {
        "name": "fetch-bundle",
        "image": settings.worker_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["python", "-I", "-c", FETCH_SCRIPT],
        "env": [
            {"name": "BUNDLE_URL", "value": version.bundle.url},
            {"name": "BUNDLE_DIGEST", "value": version.bundle.digest},
            {"name": "BUNDLE_DIR", "value": BUNDLE_DIR},
            {
                "name": "BUNDLE_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": BUNDLE_SECRET, "key": "token"}},
            },
        ],
        "resources": container_resources(settings, version.resources),
        "securityContext": _CONTAINER_SECURITY,
        # A failing container's last log lines become its termination message, which
        # the rollout check reports (a digest mismatch, an import error).
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }
    name = deployment_name(version.version)
    meta = _meta(settings, target, name, **version_labels(version))
    meta["annotations"]["slipway.dev/bundle"] = version.bundle.digest
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": settings.replicas if replicas is None else replicas,
            "progressDeadlineSeconds": max(int(settings.rollout_timeout), 1),
            "revisionHistoryLimit": 1,
            "selector": {"matchLabels": selector_for(version.version)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {"slipway.dev/bundle": version.bundle.digest},
                },
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": 60,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": RUN_USER,
                        "runAsGroup": RUN_USER,
                        "fsGroup": RUN_USER,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "initContainers": [fetch],
                    "containers": [worker],
                    "volumes": [
                        {"name": "bundle", "emptyDir": {}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
                    ],
                },
            },
        },
    }


def render_service(
    settings: KubernetesSettings, target: Target, current_version: str
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(settings, target, SERVICE, **{VERSION: label_value(current_version)}),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_for(current_version),
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def render_environment(
    settings: KubernetesSettings,
    target: Target,
    *,
    variables: dict[str, str],
    bundle_token: str,
    version: WorkerVersion | None,
    current_version: str | None,
) -> list[dict[str, Any]]:
    """Everything the runtime applies for ``target`` with ``version`` live and
    ``current_version`` selected by the Service (in the order it applies them)."""
    objects = [
        render_namespace(settings, target),
        render_env_secret(settings, target, variables),
        render_bundle_secret(settings, target, bundle_token),
    ]
    if version is not None:
        objects.append(render_deployment(settings, target, version))
    selected = current_version or (version.version if version else None)
    if selected is not None:
        objects.append(render_service(settings, target, selected))
    return objects
