"""``SLIPWAY_RUNTIME=kubernetes``: versions as Deployments, the current one behind a Service.

The same contract as the local runtime, with Kubernetes doing the scheduling:

* :meth:`ensure` applies the namespace, the two Secrets and the version's Deployment
  (server-side apply), then waits for the rollout: observed generation caught up, every
  replica updated and available. ``ProgressDeadlineExceeded``, an image that cannot be
  pulled, a crash loop, a container config error or the rollout timeout fail it with a
  :class:`PermanentError` carrying the reasons from the pods' statuses and events, and
  nothing is promoted (promotion only follows a successful ensure);
* :meth:`activate` points ``Service/workers`` at the version: the selector changes in one
  server-side apply request, so promotion and rollback switch atomically;
* :meth:`run` sends a run to the Service when the version is current, else to one of that
  version's ready pods (a run is pinned to its version); the run carries the variables
  resolved when it starts, and the environment's Secret is re-applied when they changed;
* :meth:`retire` scales the version to zero (in-flight runs drain: the worker refuses new
  ones on SIGTERM); beyond ``keep_versions`` the oldest Deployments are deleted; retiring
  the versions of an archived preview deletes its namespace;
* idle previews (no run for ``SLIPWAY_PREVIEW_IDLE_TIMEOUT``) scale to zero replicas at a
  resync and back up on their next run. The last run's time is an annotation on the
  Deployment (written at most once a minute), so the web process, which serves runs,
  and the controller, which resyncs, agree without sharing memory.

Safety: before scaling, deleting or re-pointing anything, its labels are read; an object
without ``app.kubernetes.io/managed-by: slipway`` is never touched (an existing namespace
of the same name that is not Slipway's fails the deployment instead).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from controller.errors import PermanentError, RuntimeUnavailable
from controller.runtimes.base import VersionSpec
from controller.runtimes.kubernetes.cluster import Cluster
from controller.runtimes.kubernetes.names import label_value
from controller.runtimes.kubernetes.render import (
    BRANCH,
    MANAGED_BY,
    MANAGER,
    SERVICE,
    VERSION,
    VERSION_ID,
    WORKER_PORT,
    Bundle,
    Target,
    WorkerVersion,
    deployment_name,
    namespace_of,
    render_bundle_secret,
    render_deployment,
    render_env_secret,
    render_namespace,
    render_service,
    selector_for,
)
from controller.runtimes.kubernetes.rollout import wait_for_rollout
from controller.settings import KubernetesSettings

log = logging.getLogger(__name__)

LAST_USED = "slipway.dev/last-used"
LAST_USED_EVERY = 60.0
RESERVED = "SLIPWAY_"  # run variables Slipway sets itself: not the environment's


class Inputs(Protocol):
    """What the runtime needs from the controller (wired in :mod:`controller.services`)."""

    def bundle(self, spec: VersionSpec) -> Bundle: ...

    def token(self, spec: VersionSpec) -> str: ...

    def variables(self, spec: VersionSpec) -> dict[str, str]: ...

    def archived(self, version_id: int) -> bool: ...

    def resources(self, spec: VersionSpec) -> dict[str, str]:
        """Requests and limits the version's slipway.toml asks for (``[kubernetes]``)."""
        ...


@dataclass
class _Live:
    namespace: str
    name: str
    preview: bool
    replicas: int
    last_used: float = 0.0  # wall clock, as in the annotation
    recorded: float = 0.0  # when this process last wrote the annotation


def target_of(spec: VersionSpec) -> Target:
    context = spec.context
    return Target(
        project=str(context["project"]),
        environment=str(context["environment"]),
        branch=context.get("branch"),
    )


def worker_version(
    spec: VersionSpec, bundle: Bundle, resources: dict[str, str] | None = None
) -> WorkerVersion:
    return WorkerVersion(
        resources=dict(resources or {}),
        version=spec.version,
        version_id=spec.version_id,
        bundle=bundle,
        commit=spec.context.get("sha"),
        tasks_dir=spec.tasks_dir,
        deployment_id=spec.context.get("deployment_id"),
    )


class KubernetesRuntime:
    name = "kubernetes"

    def __init__(
        self,
        settings: KubernetesSettings,
        *,
        cluster: Cluster,
        inputs: Inputs,
        may_start: Callable[[int], str | None] | None = None,
        preview_idle_timeout: float = 600.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.cluster = cluster
        self.inputs = inputs
        self.may_start = may_start
        self.preview_idle_timeout = preview_idle_timeout
        self.clock = clock
        self.sleep = sleep
        self._lock = threading.Lock()
        self._live: dict[int, _Live] = {}
        self._current: dict[str, str] = {}  # namespace -> version the Service selects
        self._secrets: dict[str, str] = {}  # namespace -> digest of the applied variables
        self._tokens: dict[str, str] = {}  # namespace -> the bundle token applied

    # -- ensure ---------------------------------------------------------------------------

    def ensure(self, spec: VersionSpec) -> None:
        refusal = self.may_start(spec.version_id) if self.may_start is not None else None
        if refusal:
            raise PermanentError(f"version {spec.version} is not started: {refusal}")
        target = target_of(spec)
        namespace = namespace_of(self.settings, target)
        self._claim_namespace(namespace)
        self.cluster.apply(render_namespace(self.settings, target))
        self._apply_variables(spec, target, self.inputs.variables(spec))
        token = self.inputs.token(spec)
        if self._tokens.get(namespace) != token:
            self.cluster.apply(render_bundle_secret(self.settings, target, token))
            self._tokens[namespace] = token
        version = worker_version(spec, self.inputs.bundle(spec), self.inputs.resources(spec))
        deployment = render_deployment(self.settings, target, version)
        self.cluster.apply(deployment)
        name = deployment["metadata"]["name"]
        wait_for_rollout(
            self.cluster,
            namespace,
            name,
            version=spec.version,
            timeout=self.settings.rollout_timeout,
            clock=self.clock,
            sleep=self.sleep,
        )
        with self._lock:
            self._live[spec.version_id] = _Live(
                namespace=namespace,
                name=name,
                preview=target.environment == "preview",
                replicas=self.settings.replicas,
                last_used=self.clock(),
            )
        self._prune(namespace, keep=spec.version_id)

    def _claim_namespace(self, namespace: str) -> None:
        labels = self.cluster.labels_of("Namespace", namespace, namespace)
        if labels is not None and labels.get(MANAGED_BY) != MANAGER:
            raise PermanentError(
                f"namespace {namespace} exists and is not Slipway's; Slipway leaves it alone",
                hint="delete or rename it, or set SLIPWAY_KUBERNETES_NAMESPACE_PREFIX",
            )

    def _apply_variables(self, spec: VersionSpec, target: Target, values: dict[str, str]) -> None:
        namespace = namespace_of(self.settings, target)
        digest = json.dumps(values, sort_keys=True)
        if self._secrets.get(namespace) == digest:
            return
        self.cluster.apply(render_env_secret(self.settings, target, values))
        self._secrets[namespace] = digest

    # -- promotion ------------------------------------------------------------------------

    def activate(self, spec: VersionSpec) -> None:
        target = target_of(spec)
        namespace = namespace_of(self.settings, target)
        labels = self.cluster.labels_of("Service", namespace, SERVICE)
        if labels is not None and labels.get(MANAGED_BY) != MANAGER:
            raise PermanentError(f"Service {namespace}/{SERVICE} is not Slipway's")
        self.cluster.apply(render_service(self.settings, target, spec.version))
        with self._lock:
            self._current[namespace] = label_value(spec.version)

    # -- runs -----------------------------------------------------------------------------

    def run(
        self,
        spec: VersionSpec,
        *,
        run_id: str,
        task_id: str,
        payload: Any,
        timeout: float | None,
        env: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        with self._lock:
            live = self._live.get(spec.version_id)
        if live is None or live.replicas == 0:
            self.ensure(spec)  # scaled to zero (or unknown here): back up first
            with self._lock:
                live = self._live[spec.version_id]
        target = target_of(spec)
        if env:
            shared = {k: v for k, v in env.items() if not k.startswith(RESERVED)}
            self._apply_variables(spec, target, shared)
        self._touch(live)
        body = {"run_id": run_id, "task_id": task_id, "payload": payload, "timeout": timeout}
        if env:
            body["env"] = env
        answer = self.cluster.post(
            live.namespace,
            target=self._route(live, spec),
            path="/runs",
            body=json.dumps(body).encode(),
            timeout=(timeout or 24 * 3600) + 60,
        )
        if answer.status == 503:
            raise RuntimeUnavailable(f"the workers of version {spec.version} are draining")
        try:
            result: dict[str, Any] = json.loads(answer.body)
        except ValueError as exc:
            raise RuntimeUnavailable(
                f"the workers of version {spec.version} answered {answer.status}, not JSON"
            ) from exc
        if answer.status != 200:
            message = result.get("error") if isinstance(result, dict) else None
            raise PermanentError(f"the worker refused the run ({answer.status}): {message}")
        return {**result, "version": spec.version}

    def _route(self, live: _Live, spec: VersionSpec) -> str:
        with self._lock:
            current = self._current.get(live.namespace)
        if current is None:
            labels = self.cluster.labels_of("Service", live.namespace, SERVICE)
            current = (labels or {}).get(VERSION)
        if current is not None and current == label_value(spec.version):
            return f"service/{SERVICE}:80"
        pods = self.cluster.ready_pods(live.namespace, selector_for(spec.version))
        if not pods:
            raise RuntimeUnavailable(f"no ready worker pod of version {spec.version}")
        return f"pod/{pods[0]}:{WORKER_PORT}"

    def _touch(self, live: _Live) -> None:
        now = live.last_used = self.clock()
        if now - live.recorded < LAST_USED_EVERY:
            return
        live.recorded = now
        try:
            self.cluster.annotate(live.namespace, live.name, {LAST_USED: f"{now:.0f}"})
        except RuntimeUnavailable as exc:
            log.warning("could not record the last run of %s: %s", live.name, exc)

    # -- retiring, pruning, scale to zero -------------------------------------------------

    def _find(self, version_id: int) -> _Live | None:
        with self._lock:
            live = self._live.get(version_id)
        if live is not None:
            return live
        found = self.cluster.deployments(None, {MANAGED_BY: MANAGER, VERSION_ID: str(version_id)})
        if not found:
            return None
        workload = found[0]
        return _Live(
            namespace=workload.namespace,
            name=workload.name,
            preview=BRANCH in workload.labels,
            replicas=workload.replicas,
        )

    def retire(self, version_id: int) -> None:
        live = self._find(version_id)
        if live is None:
            return
        if live.preview and self.inputs.archived(version_id):
            self.archive_namespace(live.namespace)  # its Deployments go with it
            return
        self._scale(live, 0)
        with self._lock:
            self._live.pop(version_id, None)

    def archive_namespace(self, namespace: str) -> None:
        """Delete a preview's namespace, and nothing that is not a Slipway preview's."""
        labels = self.cluster.labels_of("Namespace", namespace, namespace)
        if labels is None or labels.get(MANAGED_BY) != MANAGER or BRANCH not in labels:
            return
        self.cluster.delete("Namespace", namespace, namespace)
        with self._lock:
            self._current.pop(namespace, None)
            self._secrets.pop(namespace, None)
            self._tokens.pop(namespace, None)
            for version_id in [i for i, v in self._live.items() if v.namespace == namespace]:
                del self._live[version_id]
        log.info("deleted namespace %s of an archived preview", namespace)

    def _scale(self, live: _Live, replicas: int) -> None:
        labels = self.cluster.labels_of("Deployment", live.namespace, live.name)
        if labels is None or labels.get(MANAGED_BY) != MANAGER:
            return
        self.cluster.scale(live.namespace, live.name, replicas)
        live.replicas = replicas

    def _prune(self, namespace: str, *, keep: int) -> None:
        """Delete the oldest versions' Deployments beyond ``keep_versions``; never the
        one just ensured nor the one the Service selects."""
        with self._lock:
            current = self._current.get(namespace)
        if current is None:  # another process promoted: the Service says which
            current = (self.cluster.labels_of("Service", namespace, SERVICE) or {}).get(VERSION)
        workloads = self.cluster.deployments(namespace, {MANAGED_BY: MANAGER})
        spare = [
            w
            for w in workloads
            if w.labels.get(VERSION_ID, "").isdigit()
            and int(w.labels[VERSION_ID]) != keep
            and (current is None or w.name != deployment_name(current))
        ]
        spare.sort(key=lambda w: int(w.labels[VERSION_ID]))
        excess = len(workloads) - self.settings.keep_versions
        for workload in spare[: max(excess, 0)]:
            self.cluster.delete("Deployment", namespace, workload.name)
            with self._lock:
                self._live.pop(int(workload.labels[VERSION_ID]), None)

    def scale_idle_previews(self) -> list[int]:
        """Previews without a run for the idle timeout scale to zero; returns their ids."""
        if self.preview_idle_timeout <= 0:
            return []
        now, stopped = self.clock(), []
        with self._lock:
            candidates = [(i, v) for i, v in self._live.items() if v.preview and v.replicas]
        for version_id, live in candidates:
            if now - live.last_used < self.preview_idle_timeout:
                continue
            live.last_used = max(live.last_used, self._recorded_use(live, version_id))
            if now - live.last_used >= self.preview_idle_timeout:
                self._scale(live, 0)
                stopped.append(version_id)
        return stopped

    def _recorded_use(self, live: _Live, version_id: int) -> float:
        """The last run another process recorded on the Deployment (0 when none)."""
        found = self.cluster.deployments(
            live.namespace, {MANAGED_BY: MANAGER, VERSION_ID: str(version_id)}
        )
        try:
            return max(float(w.annotations.get(LAST_USED, 0)) for w in found) if found else 0.0
        except ValueError:
            return 0.0

    # -- bookkeeping ----------------------------------------------------------------------

    def serving(self) -> set[int]:
        with self._lock:
            return {i for i, v in self._live.items() if v.replicas > 0}

    def stop_unlisted(self, keep: set[int]) -> None:
        self.scale_idle_previews()
        for version_id in self.serving() - keep:
            self.retire(version_id)

    def idle_for(self, version_id: int) -> float:
        with self._lock:
            live = self._live.get(version_id)
        return 0.0 if live is None else max(self.clock() - live.last_used, 0.0)

    def close(self) -> None:
        self.cluster.close()
