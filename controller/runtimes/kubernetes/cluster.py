"""Our boundary to a cluster: the few operations the runtime needs, as plain data.

:class:`Cluster` is what :class:`~.runtime.KubernetesRuntime` talks to; :mod:`.client`
implements it with the official client, tests with a fake that simulates rollouts. It
speaks dicts (the objects :mod:`.render` makes) and small records, so neither the runtime
nor a fake depends on the client's model classes. Every method raises our own errors
(:class:`~controller.errors.RuntimeUnavailable` for what may pass, PermanentError for
what will not).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Rollout:
    """A Deployment's state as the rollout check reads it."""

    generation: int
    observed_generation: int
    replicas: int  # desired
    updated: int
    available: int
    labels: dict[str, str] = field(default_factory=dict)
    # (reason, message) of conditions that are False, e.g. ProgressDeadlineExceeded.
    failed_conditions: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Workload:
    """A Deployment Slipway made, as listed."""

    namespace: str
    name: str
    replicas: int
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes


class Cluster(Protocol):
    def apply(self, obj: dict[str, Any]) -> None:
        """Server-side apply (field manager ``slipway``, forced): create or update."""
        ...

    def rollout(self, namespace: str, name: str) -> Rollout | None:
        """The Deployment's rollout state, or None when it does not exist."""
        ...

    def pod_problems(self, namespace: str, selector: dict[str, str]) -> list[str]:
        """Why the selected pods are not ready: waiting reasons of their containers
        (ErrImagePull, CrashLoopBackOff, ...) and their Warning events, newest last."""
        ...

    def labels_of(self, kind: str, namespace: str, name: str) -> dict[str, str] | None:
        """An object's labels (``kind``: Namespace, Deployment, Service), None if absent."""
        ...

    def deployments(self, namespace: str | None, selector: dict[str, str]) -> list[Workload]:
        """Deployments matching ``selector`` (in every namespace when None)."""
        ...

    def scale(self, namespace: str, name: str, replicas: int) -> None: ...

    def annotate(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        """Merge ``annotations`` into a Deployment's metadata (one merge patch)."""
        ...

    def delete(self, kind: str, namespace: str, name: str) -> None:
        """Delete a Deployment or a Namespace (``namespace`` is the name then)."""
        ...

    def post(
        self,
        namespace: str,
        *,
        target: str,
        path: str,
        body: bytes,
        timeout: float,
    ) -> Answer:
        """POST to ``target`` (``service/<name>:<port>`` or ``pod/<name>:<port>``)."""
        ...

    def ready_pods(self, namespace: str, selector: dict[str, str]) -> list[str]: ...

    def close(self) -> None: ...
