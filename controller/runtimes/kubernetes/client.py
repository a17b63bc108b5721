"""The official ``kubernetes`` client behind our :class:`~.cluster.Cluster` boundary.

The only module that imports the client (an import-linter contract keeps it so). Writes
are server-side apply (``application/apply-patch+yaml``, field manager ``slipway``,
forced: Slipway owns the fields it renders); scaling is a merge patch of the ``scale``
subresource. Every call asks for the raw answer (``_preload_content=False``) and reads
reads' JSON here, so we depend on the API's wire format, not on the client's generated
model classes (whose validation of answers changes between client versions).

Runs go to the workers' Service through the API server's service proxy, or straight to
``<service>.<namespace>.svc`` when Slipway runs in the cluster; they are sent with httpx
using the client configuration's credentials (the proxy call of the generated client
cannot stream a JSON body and answer in every client version alike).

Errors: a missing object reads as None; 5xx, timeouts and refused connections are
:class:`~controller.errors.RuntimeUnavailable`; other 4xx are permanent. A message never
carries a Secret's content: for Secrets only the status and reason are kept.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import httpx
import urllib3
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from controller.errors import PermanentError, RuntimeUnavailable
from controller.runtimes.kubernetes.cluster import Answer, Rollout, Workload
from controller.settings import KubernetesSettings

FIELD_MANAGER = "slipway"
APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
REQUEST_TIMEOUT = 30.0
# Container states that mean the pods will not become ready by waiting.
_WAITING_OK = {"ContainerCreating", "PodInitializing"}


def selector_text(selector: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))


def _error(exc: Exception, *, what: str, secret: bool = False) -> Exception:
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        detail = exc.reason or ""
        if not secret and exc.body:
            with contextlib.suppress(ValueError, AttributeError):
                detail = json.loads(exc.body).get("message") or detail
        message = f"Kubernetes refused to {what}: {status} {str(detail)[:300]}".rstrip()
        if status == 0 or status >= 500 or status == 429:
            return RuntimeUnavailable(message)
        return PermanentError(message, hint="check the controller's RBAC and the objects named")
    return RuntimeUnavailable(f"Kubernetes could not be reached to {what}: {type(exc).__name__}")


def load_configuration(settings: KubernetesSettings) -> tuple[client.Configuration, bool]:
    """In-cluster config when running in a pod (and no kubeconfig is set), else kubeconfig."""
    configuration = client.Configuration()
    in_cluster = settings.in_cluster
    if in_cluster is None:
        in_cluster = settings.kubeconfig is None and "KUBERNETES_SERVICE_HOST" in os.environ
    try:
        if in_cluster:
            config.load_incluster_config(client_configuration=configuration)
        else:
            config.load_kube_config(
                config_file=str(settings.kubeconfig) if settings.kubeconfig else None,
                context=settings.context,
                client_configuration=configuration,
            )
    except (config.ConfigException, OSError, ValueError) as exc:
        raise PermanentError(
            f"no Kubernetes configuration: {exc}",
            hint="run in a pod with a service account, or set SLIPWAY_KUBERNETES_KUBECONFIG",
        ) from exc
    return configuration, bool(in_cluster)


def api_client_for(settings: KubernetesSettings) -> client.ApiClient:
    """An official client on the cluster the settings name (the Lease and the
    ``kubernetes:`` gate use it, so they reach the cluster the workers run on)."""
    configuration, _ = load_configuration(settings)
    return client.ApiClient(configuration)


class ApiCluster:
    def __init__(self, configuration: client.Configuration, *, in_cluster: bool = False) -> None:
        self.configuration = configuration
        self.in_cluster = in_cluster
        self.api = client.ApiClient(configuration)
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self._http = httpx.Client(**self._http_options())

    @classmethod
    def from_settings(cls, settings: KubernetesSettings) -> ApiCluster:
        configuration, in_cluster = load_configuration(settings)
        return cls(configuration, in_cluster=in_cluster)

    def _http_options(self) -> dict[str, Any]:
        cfg = self.configuration
        verify: Any = cfg.ssl_ca_cert or bool(cfg.verify_ssl)
        cert = (cfg.cert_file, cfg.key_file) if cfg.cert_file and cfg.key_file else None
        return {"verify": verify, "cert": cert, "follow_redirects": False}

    # -- reads ----------------------------------------------------------------------------

    def _raw(self, call: Any, *args: Any, what: str, **kwargs: Any) -> dict[str, Any] | None:
        try:
            answer = call(*args, _preload_content=False, _request_timeout=REQUEST_TIMEOUT, **kwargs)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise _error(exc, what=what) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _error(exc, what=what) from exc
        data = answer.data
        parsed: dict[str, Any] = json.loads(data) if data else {}
        return parsed

    def rollout(self, namespace: str, name: str) -> Rollout | None:
        obj = self._raw(
            self.apps.read_namespaced_deployment, name, namespace, what=f"read {namespace}/{name}"
        )
        if obj is None:
            return None
        status = obj.get("status") or {}
        failed = [
            (str(c.get("reason") or c.get("type")), str(c.get("message") or ""))
            for c in status.get("conditions") or []
            if c.get("status") == "False"
        ]
        return Rollout(
            generation=int(obj["metadata"].get("generation") or 0),
            observed_generation=int(status.get("observedGeneration") or 0),
            replicas=int((obj.get("spec") or {}).get("replicas", 1)),
            updated=int(status.get("updatedReplicas") or 0),
            available=int(status.get("availableReplicas") or 0),
            labels=dict(obj["metadata"].get("labels") or {}),
            failed_conditions=failed,
        )

    def pod_problems(self, namespace: str, selector: dict[str, str]) -> list[str]:
        pods = self._raw(
            self.core.list_namespaced_pod,
            namespace,
            label_selector=selector_text(selector),
            what=f"list pods in {namespace}",
        ) or {"items": []}
        problems: list[str] = []
        names = set()
        for pod in pods.get("items") or []:
            names.add(pod["metadata"]["name"])
            status = pod.get("status") or {}
            for container in (status.get("initContainerStatuses") or []) + (
                status.get("containerStatuses") or []
            ):
                problems += _container_problems(container)
        events = self._raw(
            self.core.list_namespaced_event,
            namespace,
            field_selector="type=Warning,involvedObject.kind=Pod",
            what=f"list events in {namespace}",
        ) or {"items": []}
        ordered = sorted(
            events.get("items") or [],
            key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""),
        )
        for event in ordered:
            if (event.get("involvedObject") or {}).get("name") in names:
                problems.append(f"{event.get('reason')}: {event.get('message')}")
        return problems

    def labels_of(self, kind: str, namespace: str, name: str) -> dict[str, str] | None:
        calls: dict[str, tuple[Any, tuple[str, ...]]] = {
            "Namespace": (self.core.read_namespace, (name,)),
            "Deployment": (self.apps.read_namespaced_deployment, (name, namespace)),
            "Service": (self.core.read_namespaced_service, (name, namespace)),
        }
        call, args = calls[kind]
        obj = self._raw(call, *args, what=f"read {kind} {name}")
        return None if obj is None else dict(obj["metadata"].get("labels") or {})

    def deployments(self, namespace: str | None, selector: dict[str, str]) -> list[Workload]:
        if namespace is None:
            listed = self._raw(
                self.apps.list_deployment_for_all_namespaces,
                label_selector=selector_text(selector),
                what="list Deployments",
            )
        else:
            listed = self._raw(
                self.apps.list_namespaced_deployment,
                namespace,
                label_selector=selector_text(selector),
                what=f"list Deployments in {namespace}",
            )
        return [
            Workload(
                namespace=item["metadata"]["namespace"],
                name=item["metadata"]["name"],
                replicas=int((item.get("spec") or {}).get("replicas", 1)),
                labels=dict(item["metadata"].get("labels") or {}),
                annotations=dict(item["metadata"].get("annotations") or {}),
            )
            for item in (listed or {}).get("items") or []
        ]

    def ready_pods(self, namespace: str, selector: dict[str, str]) -> list[str]:
        pods = self._raw(
            self.core.list_namespaced_pod,
            namespace,
            label_selector=selector_text(selector),
            what=f"list pods in {namespace}",
        ) or {"items": []}
        ready = []
        for pod in pods.get("items") or []:
            if pod["metadata"].get("deletionTimestamp"):
                continue
            conditions = (pod.get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
                ready.append(pod["metadata"]["name"])
        return sorted(ready)

    # -- writes ---------------------------------------------------------------------------

    def apply(self, obj: dict[str, Any]) -> None:
        kind, meta = obj["kind"], obj["metadata"]
        name, namespace = meta["name"], meta.get("namespace")
        options: dict[str, Any] = {
            "field_manager": FIELD_MANAGER,
            "force": True,
            "_content_type": APPLY,
            "_request_timeout": REQUEST_TIMEOUT,
            "_preload_content": False,
        }
        try:
            if kind == "Namespace":
                self.core.patch_namespace(name, obj, **options)
            elif kind == "Secret":
                self.core.patch_namespaced_secret(name, namespace, obj, **options)
            elif kind == "Service":
                self.core.patch_namespaced_service(name, namespace, obj, **options)
            elif kind == "Deployment":
                self.apps.patch_namespaced_deployment(name, namespace, obj, **options)
            else:
                raise PermanentError(f"Slipway does not apply {kind} objects")
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise _error(exc, what=f"apply {kind} {name}", secret=kind == "Secret") from exc

    def scale(self, namespace: str, name: str, replicas: int) -> None:
        try:
            self.apps.patch_namespaced_deployment_scale(
                name,
                namespace,
                {"spec": {"replicas": replicas}},
                _content_type=MERGE,
                _request_timeout=REQUEST_TIMEOUT,
                _preload_content=False,
            )
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise _error(exc, what=f"scale {namespace}/{name}") from exc

    def annotate(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        try:
            self.apps.patch_namespaced_deployment(
                name,
                namespace,
                {"metadata": {"annotations": annotations}},
                _content_type=MERGE,
                _request_timeout=REQUEST_TIMEOUT,
                _preload_content=False,
            )
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise _error(exc, what=f"annotate {namespace}/{name}") from exc

    def delete(self, kind: str, namespace: str, name: str) -> None:
        try:
            if kind == "Namespace":
                self.core.delete_namespace(
                    name, _request_timeout=REQUEST_TIMEOUT, _preload_content=False
                )
            elif kind == "Deployment":
                self.apps.delete_namespaced_deployment(
                    name, namespace, _request_timeout=REQUEST_TIMEOUT, _preload_content=False
                )
            else:
                raise PermanentError(f"Slipway does not delete {kind} objects")
        except ApiException as exc:
            # 404: gone already; 409 on a namespace: it is being deleted already.
            if exc.status != 404 and not (kind == "Namespace" and exc.status == 409):
                raise _error(exc, what=f"delete {kind} {name}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _error(exc, what=f"delete {kind} {name}") from exc

    # -- runs -----------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.configuration.refresh_api_key_hook is not None:
            self.configuration.refresh_api_key_hook(self.configuration)
        token = self.configuration.get_api_key_with_prefix("authorization")
        if token:
            headers["Authorization"] = token
        return headers

    def post(
        self, namespace: str, *, target: str, path: str, body: bytes, timeout: float
    ) -> Answer:
        kind, _, address = target.partition("/")
        name, _, port = address.partition(":")
        if kind == "service" and self.in_cluster:
            url, headers = (
                f"http://{name}.{namespace}.svc:{port}{path}",
                {"Content-Type": "application/json"},
            )
        else:
            plural = "services" if kind == "service" else "pods"
            host = self.configuration.host.rstrip("/")
            url = f"{host}/api/v1/namespaces/{namespace}/{plural}/{name}:{port}/proxy{path}"
            headers = self._headers()
        try:
            answer = self._http.post(
                url, content=body, headers=headers, timeout=httpx.Timeout(10.0, read=timeout)
            )
        except httpx.HTTPError as exc:
            raise RuntimeUnavailable(
                f"the workers in {namespace} could not be reached: {type(exc).__name__}"
            ) from exc
        return Answer(status=answer.status_code, body=answer.content)

    def close(self) -> None:
        self._http.close()
        self.api.close()


def _container_problems(container: dict[str, Any]) -> list[str]:
    problems = []
    state = container.get("state") or {}
    waiting = state.get("waiting") or {}
    reason = waiting.get("reason")
    if reason and reason not in _WAITING_OK:
        problems.append(
            f"{container.get('name')}: {reason}: {waiting.get('message') or ''}".rstrip(": ")
        )
    last = (container.get("lastState") or {}).get("terminated") or {}
    if last.get("message"):
        problems.append(
            f"{container.get('name')} exited {last.get('exitCode')}: {last['message'].strip()[-500:]}"
        )
    return problems
