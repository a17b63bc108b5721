"""The ``kubernetes:NAMESPACE/DEPLOYMENT`` gate: has that Deployment rolled out the commit?

:class:`ClusterReader` is the boundary (tests use a fake, or the official client against
an emulated API server); :class:`KubernetesReader` is the one implementation, and this
is the one module of the gates that imports the official ``kubernetes`` client — lazily,
so a controller without a kubernetes gate needs neither the package nor a cluster. It
reaches the cluster the runtime does (``SLIPWAY_KUBERNETES_KUBECONFIG`` / ``_CONTEXT``,
else the pod's service account, else ``KUBECONFIG`` / ``~/.kube/config``).

Rolled out, as ``kubectl rollout status`` judges it: ``observedGeneration`` ≥
``generation``, and updated = available = desired replicas; and of the same commit: the
pod template's label or annotation ``slipway.dev/commit`` is the sha (or a prefix of at
least 7 characters), or a container image's tag contains it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

from controller.errors import TemporaryError
from controller.settings import KubernetesSettings

COMMIT_KEY = "slipway.dev/commit"
MIN_SHA = 7


@dataclass(frozen=True)
class DeploymentState:
    generation: int
    observed_generation: int
    replicas: int
    updated: int
    available: int
    commits: tuple[str, ...] = ()  # slipway.dev/commit values of the pod template
    images: tuple[str, ...] = field(default_factory=tuple)


class ClusterReader(Protocol):
    def read_deployment(self, namespace: str, name: str) -> DeploymentState | None:
        """The Deployment's state, None if it does not exist."""
        ...


def _same_commit(value: str, sha: str) -> bool:
    value = value.strip().lower()
    return len(value) >= MIN_SHA and sha.lower().startswith(value)


def rolled_out(state: DeploymentState, sha: str) -> bool:
    if state.observed_generation < state.generation:
        return False
    if not (state.replicas == state.updated == state.available):
        return False
    if any(_same_commit(commit, sha) for commit in state.commits):
        return True
    for image in state.images:
        tag = image.rsplit("@", 1)[0].rsplit("/", 1)[-1].partition(":")[2].lower()
        if any(len(part) >= MIN_SHA and sha.lower().startswith(part) for part in _tag_parts(tag)):
            return True
    return False


def _tag_parts(tag: str) -> list[str]:
    """``v1-3f2a9c1`` and ``sha-3f2a9c1d…`` carry the sha as one of their parts."""
    parts = [tag]
    for sep in ("-", "_", "."):
        parts += [p for chunk in list(parts) for p in chunk.split(sep)]
    return parts


def state_from_object(obj: dict[str, Any]) -> DeploymentState:
    """A Deployment as the API serialises it (camelCase) → :class:`DeploymentState`."""
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    template = spec.get("template") or {}
    tmeta = template.get("metadata") or {}
    commits = [
        str(source.get(COMMIT_KEY))
        for source in (
            tmeta.get("labels") or {},
            tmeta.get("annotations") or {},
            meta.get("annotations") or {},
        )
        if source.get(COMMIT_KEY)
    ]
    containers = (template.get("spec") or {}).get("containers") or []
    return DeploymentState(
        generation=int(meta.get("generation") or 0),
        observed_generation=int(status.get("observedGeneration") or 0),
        replicas=int(spec["replicas"]) if spec.get("replicas") is not None else 1,
        updated=int(status.get("updatedReplicas") or 0),
        available=int(status.get("availableReplicas") or 0),
        commits=tuple(commits),
        images=tuple(str(c.get("image") or "") for c in containers),
    )


class KubernetesReader:
    """Reads Deployments with the official client (see the module docstring)."""

    def __init__(self, api_client: Any = None, *, settings: KubernetesSettings | None = None):
        self._api_client = api_client
        self._settings = settings or KubernetesSettings()
        self._lock = threading.Lock()

    def _client(self) -> Any:
        from controller.runtimes.kubernetes.client import api_client_for

        with self._lock:
            if self._api_client is None:
                self._api_client = api_client_for(self._settings)
            return self._api_client

    def read_deployment(self, namespace: str, name: str) -> DeploymentState | None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        api = client.AppsV1Api(self._client())
        try:
            found = api.read_namespaced_deployment(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise TemporaryError(
                f"reading Deployment {namespace}/{name}: the cluster answered {exc.status}"
            ) from None
        except Exception as exc:
            raise TemporaryError(
                f"reading Deployment {namespace}/{name}: {type(exc).__name__}"
            ) from None
        return state_from_object(self._client().sanitize_for_serialization(found))
