"""Leadership in Kubernetes: a ``coordination.k8s.io/v1`` Lease, as client-go elects.

The algorithm is client-go's ``leaderelection``: read the Lease; take it when it does not
exist, is ours, or its holder has not renewed it for ``leaseDurationSeconds`` — measured
on *our* clock from when we last saw the record change, never by comparing the holder's
``renewTime`` with our clock, so clock skew between nodes cannot elect two leaders. Every
write carries the ``resourceVersion`` read, so two candidates racing for an expired Lease
get one success and one 409. The leader renews every few seconds and gives up when it
has not renewed for ``renew_deadline``, which is shorter than the lease duration: it has
stopped building before any other replica may take over.

The official ``kubernetes`` client is used only in :class:`KubernetesLeaseApi`, our
boundary; :class:`LeaseClaim` speaks :class:`LeaseApi`, which tests fake.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from controller.errors import PermanentError, TemporaryError
from controller.settings import KubernetesSettings

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
LEASE_SECONDS = 15
RENEW_DEADLINE = 10.0
REQUEST_TIMEOUT = 5.0


class LeaseConflict(TemporaryError):
    """Someone else wrote the Lease since we read it (HTTP 409)."""


@dataclass(frozen=True)
class LeaseRecord:
    holder: str
    duration: int
    acquired: datetime | None
    renewed: datetime | None
    transitions: int
    resource_version: str | None = None


class LeaseApi(Protocol):
    """Read, create and replace one Lease. ``create`` and ``replace`` raise
    :class:`LeaseConflict` when the Lease exists or changed since it was read."""

    name: str

    def read(self) -> LeaseRecord | None: ...

    def create(self, record: LeaseRecord) -> LeaseRecord: ...

    def replace(self, record: LeaseRecord) -> LeaseRecord: ...


def default_identity() -> str:
    """The pod name (the hostname in a pod) plus the pid: unique per process."""
    return f"{socket.gethostname()}_{os.getpid()}"


class LeaseClaim:
    def __init__(
        self,
        api: LeaseApi,
        *,
        identity: str,
        lease_seconds: int = LEASE_SECONDS,
        renew_deadline: float = RENEW_DEADLINE,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if renew_deadline >= lease_seconds:
            raise ValueError("renew_deadline must be shorter than the lease duration")
        self.api = api
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.renew_deadline = renew_deadline
        self.description = f"Lease {api.name}"
        self._clock = clock
        self._now = now
        self._observed: LeaseRecord | None = None
        self._observed_at = 0.0
        self._renewed_at: float | None = None

    def acquire(self) -> bool:
        current = self.api.read()
        now = self._now()
        if current is None:
            mine = LeaseRecord(self.identity, self.lease_seconds, now, now, 0)
            return self._write(self.api.create, mine)
        self._observe(current)
        if current.holder == self.identity:
            return self._write(self.api.replace, replace(current, renewed=now))
        if current.holder and self._clock() < self._observed_at + current.duration:
            return False
        taken = replace(
            current,
            holder=self.identity,
            duration=self.lease_seconds,
            acquired=now,
            renewed=now,
            transitions=current.transitions + 1,
        )
        return self._write(self.api.replace, taken)

    def keep(self) -> bool:
        """Renew; False once another holder shows, or nothing was renewed for the
        deadline (the API server may be unreachable: we cannot know we still lead)."""
        try:
            current = self.api.read()
            if current is None or current.holder != self.identity:
                return False
            if self._write(self.api.replace, replace(current, renewed=self._now())):
                return True
        except TemporaryError:
            pass
        return self._renewed_at is not None and (
            self._clock() - self._renewed_at < self.renew_deadline
        )

    def release(self) -> None:
        """Hand the Lease over at once: no holder, and a duration of one second."""
        if self._renewed_at is None:
            return
        self._renewed_at = None
        current = self.api.read()
        if current is None or current.holder != self.identity:
            return
        released = replace(current, holder="", duration=1, renewed=self._now())
        self._write(self.api.replace, released)

    def _observe(self, record: LeaseRecord) -> None:
        if self._observed is None or record != self._observed:
            self._observed, self._observed_at = record, self._clock()

    def _write(self, write: Callable[[LeaseRecord], LeaseRecord], record: LeaseRecord) -> bool:
        try:
            stored = write(record)
        except LeaseConflict:
            return False
        self._observe(stored)
        if stored.holder == self.identity:
            self._renewed_at = self._clock()
        return True


class KubernetesLeaseApi:
    """:class:`LeaseApi` through the official client: in-cluster configuration (the pod's
    service account) or, outside a cluster, the kubeconfig."""

    def __init__(
        self,
        *,
        name: str,
        namespace: str | None,
        api_client: Any = None,
        settings: KubernetesSettings | None = None,
    ) -> None:
        from kubernetes import client

        if api_client is None:
            # The runtime's loader, so SLIPWAY_KUBERNETES_KUBECONFIG / _CONTEXT / _IN_CLUSTER
            # mean the same cluster for the Lease as for the workers.
            from controller.runtimes.kubernetes.client import api_client_for

            try:
                api_client = api_client_for(settings or KubernetesSettings())
            except PermanentError as exc:
                raise PermanentError(
                    f"SLIPWAY_KUBERNETES_LEASE_NAME is set but there is {exc.message}",
                    hint="run in a pod with a service account, set SLIPWAY_KUBERNETES_KUBECONFIG,"
                    " or unset the lease name to elect through PostgreSQL",
                ) from exc
        self.name = name
        self.namespace = namespace or _own_namespace()
        self._client = client
        self._api = client.CoordinationV1Api(api_client)

    def read(self) -> LeaseRecord | None:
        try:
            lease = self._call(self._api.read_namespaced_lease, self.name, self.namespace)
        except _NotFound:
            return None
        return self._record(lease)

    def create(self, record: LeaseRecord) -> LeaseRecord:
        return self._write(self._api.create_namespaced_lease, self.namespace, record)

    def replace(self, record: LeaseRecord) -> LeaseRecord:
        return self._write(self._api.replace_namespaced_lease, self.name, self.namespace, record)

    def _write(self, fn: Callable[..., Any], *args: Any) -> LeaseRecord:
        *where, record = args
        try:
            return self._record(self._call(fn, *where, self._lease(record)))
        except _NotFound as exc:  # deleted since we read it: someone else's move
            raise LeaseConflict(f"Lease {self.name} is gone") from exc

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            return fn(*args, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status == 404:
                raise _NotFound() from exc
            if exc.status == 409:
                raise LeaseConflict(f"Lease {self.name} changed meanwhile") from exc
            if exc.status in (401, 403):
                raise PermanentError(
                    f"the service account may not use Lease {self.namespace}/{self.name} "
                    f"(HTTP {exc.status})",
                    hint="grant get, create and update on coordination.k8s.io leases "
                    "(the Helm chart's Role does)",
                ) from exc
            raise TemporaryError(f"Lease {self.name}: HTTP {exc.status} {exc.reason}") from exc
        except OSError as exc:  # urllib3 connection errors derive from it
            raise TemporaryError(f"Lease {self.name}: {type(exc).__name__}") from exc

    def _lease(self, record: LeaseRecord) -> Any:
        c = self._client
        return c.V1Lease(
            api_version="coordination.k8s.io/v1",
            kind="Lease",
            metadata=c.V1ObjectMeta(
                name=self.name,
                namespace=self.namespace,
                resource_version=record.resource_version,
                labels={"app.kubernetes.io/managed-by": "slipway"},
            ),
            spec=c.V1LeaseSpec(
                holder_identity=record.holder,
                lease_duration_seconds=record.duration,
                acquire_time=record.acquired,
                renew_time=record.renewed,
                lease_transitions=record.transitions,
            ),
        )

    @staticmethod
    def _record(lease: Any) -> LeaseRecord:
        spec = lease.spec
        return LeaseRecord(
            holder=spec.holder_identity or "",
            duration=int(spec.lease_duration_seconds or LEASE_SECONDS),
            acquired=spec.acquire_time,
            renewed=spec.renew_time,
            transitions=int(spec.lease_transitions or 0),
            resource_version=lease.metadata.resource_version,
        )


class _NotFound(Exception):
    pass


def _own_namespace() -> str:
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    except OSError:
        return "default"
