"""A kubeconfig naming one API server (an emulated or fake one), as the official client
and Slipway's SLIPWAY_KUBERNETES_KUBECONFIG read it."""

from __future__ import annotations

import json
from pathlib import Path


def write_kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "test", "cluster": {"server": server}}],
                "users": [{"name": "test", "user": {"token": "not-a-real-token"}}],
                "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
                "current-context": "test",
            }
        )
    )
    return path
