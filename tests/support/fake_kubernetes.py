"""A Kubernetes API server that serves Deployments, for the ``kubernetes:`` gate.

It answers ``GET /apis/apps/v1/namespaces/{ns}/deployments/{name}`` (404 with a
``Status`` for one it does not hold) and ``GET /version``, which is all the gate asks.
The official ``kubernetes`` client talks to it for real through a kubeconfig
(:meth:`FakeKubernetes.kubeconfig`). ``kmock``'s emulator serves more, but is asyncio
(aiohttp) and cannot compute rollout status either; a Deployment here is whatever the
test sets, status included.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from support.kubeconfig import write_kubeconfig


def deployment(
    namespace: str,
    name: str,
    *,
    image: str,
    generation: int = 2,
    observed: int = 2,
    replicas: int = 2,
    updated: int = 2,
    available: int = 2,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "generation": generation},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name, **(labels or {})}},
                "spec": {"containers": [{"name": name, "image": image}]},
            },
        },
        "status": {
            "observedGeneration": observed,
            "replicas": replicas,
            "updatedReplicas": updated,
            "availableReplicas": available,
            "readyReplicas": available,
        },
    }


class FakeKubernetes:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.reads = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def put(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        with self._lock:
            self.objects[(meta["namespace"], meta["name"])] = obj

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            self.reads += 1
            return self.objects.get((namespace, name))

    def kubeconfig(self, path: Path) -> Path:
        return write_kubeconfig(path, self.url)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> FakeKubernetes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _handler(fake: FakeKubernetes) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            parts = self.path.split("?")[0].strip("/").split("/")
            status, body = 404, _not_found(self.path)
            if parts == ["version"]:
                status, body = 200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0"}
            elif len(parts) == 7 and parts[:4] == ["apis", "apps", "v1", "namespaces"] and parts[5] == "deployments":  # fmt: skip
                found = fake.get(parts[4], parts[6])
                if found is not None:
                    status, body = 200, found
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.close_connection = True
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def _not_found(path: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": f"{path} not found",
        "reason": "NotFound",
        "code": 404,
    }
