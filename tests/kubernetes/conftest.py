"""Kubernetes tests: no cluster here (see /work/shared/TESTING.md). Manifests are checked
with ``kubernetes-validate`` (the API's own schemas, strict); the runtime against a fake
cluster at our own boundary (``FakeCluster``), and the client adapter against ``kmock``."""

from support.kmock_server import kmock_emulated

__all__ = ["kmock_emulated"]
