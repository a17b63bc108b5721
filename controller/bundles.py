"""Version bundles: a version's code as one content-addressed file, for runtimes elsewhere.

Pods cannot read the controller's disk, so a version reaches them as a **bundle**: an
uncompressed tar of ``source/`` (the built project root) and ``site-packages/`` (its
virtualenv's packages), named by the sha256 of its bytes. The controller serves it at
``GET /api/v1/bundles/sha256:<hex>``; the Deployment's init container downloads it,
checks the digest and unpacks it into an emptyDir before the worker starts (see
:mod:`controller.runtimes.kubernetes.render`).

Why a bundle rather than an image per version: building images needs a builder in the
cluster (Kaniko, BuildKit) with registry credentials and push rights, and a registry
round trip per deploy; a bundle needs only the worker image (one per Slipway release)
and the controller, reuses the virtualenv the build already made, and a rollback only
needs the bundle that is still stored.

Where a bundle lives: the file made here in the data dir is a local cache (a version is
bundled once); the bundle itself is published to the database (:mod:`controller.store.bundles`),
content-addressed and in chunks, so every replica serves it and a new leader after a
failover still has the bundles of versions built before. The trade-off: the worker image's
Python must be the controller's (same minor version and platform), because the bundle
carries compiled packages: both come from the same Slipway image.

The tar is reproducible (sorted entries, zero owners and times, ``__pycache__`` left out),
so the same tree gives the same digest, and a bundle lost from the data dir is remade
identical. Members are regular files, directories and symlinks only; the init
container unpacks with tarfile's ``data`` filter (no absolute paths, no links leaving
the tree, no device files).

Authentication: each environment has a **bundle token** ``sbt_<env id>_<hmac>``,
derived from the encryption key (HMAC-SHA256 over the environment id), so nothing new
is stored; a key rotation changes every token and the runtime re-applies them. A token
grants reading the bundles of its own environment's versions, nothing else: never the
admin token in a manifest.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from controller.datadir import private_dir
from controller.errors import PermanentError

TOKEN_PREFIX = "sbt_"  # noqa: S105 - a prefix, not a token
DIGEST_PREFIX = "sha256:"
SKIP_DIRS = {"__pycache__", ".git"}


@dataclass(frozen=True)
class BundleFile:
    digest: str  # sha256:<hex>
    path: Path
    size: int


def bundles_dir(data_dir: Path) -> Path:
    return data_dir / "bundles"


def site_packages(venv: Path) -> Path:
    found = sorted((venv / "lib").glob("python3*/site-packages"))
    if not found:
        raise PermanentError(f"no site-packages in the version's environment {venv}")
    return found[-1]


def _members(root: Path, arcroot: str) -> list[tuple[Path, str]]:
    members = [(root, arcroot)]
    for here, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        base = Path(here)
        for name in dirs + sorted(files):
            path = base / name
            if name.endswith(".pyc"):
                continue
            members.append((path, f"{arcroot}/{path.relative_to(root).as_posix()}"))
    return sorted(members, key=lambda m: m[1])


def _add(tar: tarfile.TarFile, path: Path, arcname: str) -> None:
    info = tar.gettarinfo(str(path), arcname=arcname)
    if not (info.isfile() or info.isdir() or info.issym()):
        return
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    info.mode = (0o755 if info.isdir() or info.mode & 0o111 else 0o644) | (info.mode & ~0o7777)
    if info.isfile():
        with path.open("rb") as fh:
            tar.addfile(info, fh)
    else:
        tar.addfile(info)


class _Hashing:
    def __init__(self, fh: object) -> None:
        self.fh = fh
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.fh.write(data)  # type: ignore[attr-defined]


def make_bundle(data_dir: Path, *, version_id: int, source: Path, venv: Path) -> BundleFile:
    """The version's bundle, made once (an index ``v<id>.json`` remembers its digest)."""
    folder = private_dir(bundles_dir(data_dir))
    index = folder / f"v{version_id}.json"
    try:
        known = json.loads(index.read_text())
        path = folder / f"{known['digest'].replace(':', '-')}.tar"
        if path.is_file():
            return BundleFile(digest=known["digest"], path=path, size=path.stat().st_size)
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        pass
    if not source.is_dir():
        raise PermanentError(f"the built source of version id {version_id} is gone: {source}")
    packages = site_packages(venv)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".bundle-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as raw:
            sink = _Hashing(raw)
            with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                for path, arcname in _members(source, "source"):
                    _add(tar, path, arcname)
                for path, arcname in _members(packages, "site-packages"):
                    _add(tar, path, arcname)
        digest = DIGEST_PREFIX + sink.sha.hexdigest()
        final = folder / f"{digest.replace(':', '-')}.tar"
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    index_tmp = folder / f".v{version_id}.json.tmp"
    index_tmp.write_text(json.dumps({"digest": digest}))
    os.replace(index_tmp, index)
    return BundleFile(digest=digest, path=final, size=final.stat().st_size)


def valid_digest(digest: str) -> bool:
    hexpart = digest.removeprefix(DIGEST_PREFIX)
    return (
        digest.startswith(DIGEST_PREFIX)
        and len(hexpart) == 64
        and all(c in "0123456789abcdef" for c in hexpart)
    )


def _mac(key: str, environment_id: int) -> str:
    message = f"slipway-bundle-token:v1:{environment_id}".encode()
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()[:40]


def bundle_token(keys: list[str], environment_id: int) -> str:
    """The environment's bundle token, under the newest key."""
    return f"{TOKEN_PREFIX}{environment_id}_{_mac(keys[0], environment_id)}"


def token_environment(keys: list[str], token: str) -> int | None:
    """The environment a bundle token belongs to (any key still listed), or None."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    env_part, _, mac = token[len(TOKEN_PREFIX) :].partition("_")
    if not env_part.isdigit():
        return None
    environment_id = int(env_part)
    for key in keys:
        if hmac.compare_digest(mac, _mac(key, environment_id)):
            return environment_id
    return None
