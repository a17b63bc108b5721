"""A fake cluster at our own boundary (controller.runtimes.kubernetes.cluster.Cluster).

It keeps applied objects, simulates each Deployment's rollout by a scripted behaviour
(``ok`` rolls out after two polls; ``crash``, ``pull``, ``deadline`` and ``never`` fail
the way a kubelet and the Deployment controller report it), and records every call, so a
test can count the requests a promotion made.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from controller.runtimes.kubernetes.cluster import Answer, Rollout, Workload
from controller.runtimes.kubernetes.render import Bundle


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeCluster:
    behaviour: dict[str, str] = field(default_factory=dict)  # version -> behaviour
    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, ...]] = field(default_factory=list)
    polls: dict[tuple[str, str], int] = field(default_factory=dict)
    posts: list[dict[str, Any]] = field(default_factory=list)
    closed: bool = False

    def add_foreign(self, kind: str, namespace: str, name: str, labels: dict | None = None) -> None:
        meta = {"name": name, "namespace": namespace, "labels": labels or {}}
        self.objects[(kind, namespace, name)] = {
            "kind": kind,
            "metadata": meta,
            "spec": {"replicas": 1},
        }

    def _key(self, obj: dict[str, Any]) -> tuple[str, str, str]:
        meta = obj["metadata"]
        namespace = meta["name"] if obj["kind"] == "Namespace" else meta["namespace"]
        return obj["kind"], namespace, meta["name"]

    def apply(self, obj: dict[str, Any]) -> None:
        key = self._key(obj)
        self.calls.append(("apply", *key))
        old = self.objects.get(key)
        new = copy.deepcopy(obj)
        generation = 1
        if old is not None and obj["kind"] == "Deployment":
            generation = old["metadata"]["generation"] + (old["spec"] != new["spec"])
            new["metadata"].setdefault("annotations", {})
            for k, v in old["metadata"].get("annotations", {}).items():
                new["metadata"]["annotations"].setdefault(k, v)
        new["metadata"]["generation"] = generation
        self.objects[key] = new
        self.polls.pop(key[1:], None)

    def _behaviour(self, namespace: str, name: str) -> str:
        obj = self.objects[("Deployment", namespace, name)]
        return self.behaviour.get(obj["metadata"]["labels"].get("slipway.dev/version", ""), "ok")

    def rollout(self, namespace: str, name: str) -> Rollout | None:
        self.calls.append(("rollout", namespace, name))
        obj = self.objects.get(("Deployment", namespace, name))
        if obj is None:
            return None
        polls = self.polls[(namespace, name)] = self.polls.get((namespace, name), 0) + 1
        replicas = obj["spec"]["replicas"]
        behaviour = self._behaviour(namespace, name)
        done = behaviour == "ok" and polls >= 2
        failed = []
        if behaviour == "deadline" and polls >= 2:
            failed = [
                ("ProgressDeadlineExceeded", f'ReplicaSet "{name}-abc" has timed out progressing.')
            ]
        return Rollout(
            generation=obj["metadata"]["generation"],
            observed_generation=obj["metadata"]["generation"] if polls >= 1 else 0,
            replicas=replicas,
            updated=replicas if done else 0,
            available=replicas if done else 0,
            labels=dict(obj["metadata"]["labels"]),
            failed_conditions=failed,
        )

    def pod_problems(self, namespace: str, selector: dict[str, str]) -> list[str]:
        self.calls.append(("pod_problems", namespace))
        version = selector.get("slipway.dev/version", "")
        behaviour = self.behaviour.get(version, "ok")
        return {
            "crash": [
                "worker: CrashLoopBackOff: back-off 10s restarting failed container=worker",
                "worker exited 1: ImportError: No module named 'requests'",
            ],
            "pull": ["worker: ErrImagePull: pull access denied for ghcr.io/nope/worker"],
            "never": ["Unhealthy: Readiness probe failed: HTTP probe failed with statuscode: 503"],
        }.get(behaviour, [])

    def labels_of(self, kind: str, namespace: str, name: str) -> dict[str, str] | None:
        self.calls.append(("labels_of", kind, namespace, name))
        obj = self.objects.get((kind, namespace, name))
        return None if obj is None else dict(obj["metadata"].get("labels") or {})

    def deployments(self, namespace: str | None, selector: dict[str, str]) -> list[Workload]:
        self.calls.append(("deployments", str(namespace)))
        found = []
        for (kind, ns, name), obj in sorted(self.objects.items()):
            labels = obj["metadata"].get("labels") or {}
            if kind != "Deployment" or (namespace is not None and ns != namespace):
                continue
            if all(labels.get(k) == v for k, v in selector.items()):
                found.append(
                    Workload(
                        namespace=ns,
                        name=name,
                        replicas=obj["spec"]["replicas"],
                        labels=dict(labels),
                        annotations=dict(obj["metadata"].get("annotations") or {}),
                    )
                )
        return found

    def scale(self, namespace: str, name: str, replicas: int) -> None:
        self.calls.append(("scale", namespace, name, str(replicas)))
        self.objects[("Deployment", namespace, name)]["spec"]["replicas"] = replicas

    def annotate(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        self.calls.append(("annotate", namespace, name))
        meta = self.objects[("Deployment", namespace, name)]["metadata"]
        meta.setdefault("annotations", {}).update(annotations)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self.calls.append(("delete", kind, namespace, name))
        if kind == "Namespace":
            for key in [k for k in self.objects if k[1] == name]:
                del self.objects[key]
        else:
            self.objects.pop((kind, namespace, name), None)

    def ready_pods(self, namespace: str, selector: dict[str, str]) -> list[str]:
        version = selector["slipway.dev/version"]
        return [f"worker-{version.replace('.', '-')}-pod"]

    def post(
        self, namespace: str, *, target: str, path: str, body: bytes, timeout: float
    ) -> Answer:
        request = json.loads(body)
        self.calls.append(("post", namespace, target))
        self.posts.append({"namespace": namespace, "target": target, "path": path, **request})
        result = {
            "status": "completed",
            "output": {"task": request["task_id"]},
            "error": None,
            "logs": "",
        }
        return Answer(status=200, body=json.dumps(result).encode())

    def close(self) -> None:
        self.closed = True

    # -- what tests read ------------------------------------------------------------------

    def service_selector(self, namespace: str) -> dict[str, str] | None:
        obj = self.objects.get(("Service", namespace, "workers"))
        return None if obj is None else obj["spec"]["selector"]

    def writes(self) -> list[tuple[str, ...]]:
        return [c for c in self.calls if c[0] in ("apply", "scale", "delete", "annotate")]


@dataclass
class FakeInputs:
    variables_by_env: dict[str, dict[str, str]] = field(default_factory=dict)
    archived_ids: set[int] = field(default_factory=set)
    resources_by_version: dict[str, dict[str, str]] = field(default_factory=dict)

    def bundle(self, spec: Any) -> Bundle:
        return Bundle(
            digest="sha256:" + "c" * 64,
            url=f"https://slipway.test/api/v1/bundles/{spec.version_id}",
        )

    def token(self, spec: Any) -> str:
        return f"sbt_{spec.context.get('environment_id', 0)}_token"

    def variables(self, spec: Any) -> dict[str, str]:
        return dict(self.variables_by_env.get(spec.context["environment"], {}))

    def archived(self, version_id: int) -> bool:
        return version_id in self.archived_ids

    def resources(self, spec: Any) -> dict[str, str]:
        return dict(self.resources_by_version.get(spec.version, {}))
