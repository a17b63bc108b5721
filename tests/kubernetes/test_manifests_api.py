"""``slipway kubernetes manifests``, its API, and the bundle endpoint, on a real server.

A real uvicorn server serves the app over a database holding project ``acme`` with a
production version and two preview branches of 100 characters that differ only at the
end. The CLI runs as a user runs it; the init container's own script fetches a bundle
from the server and checks its digest.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import kubernetes_validate
import pytest
import uvicorn
import yaml
from cryptography.fernet import Fernet
from sqlalchemy import select
from support.cli import slipway
from support.server import free_port
from support.waiting import poll_until

from controller.api.app import create_app
from controller.bundles import bundle_token, make_bundle
from controller.domain.deployments import DeployRequest, request_deployment
from controller.domain.environments import ensure_environment
from controller.domain.projects import create_project
from controller.runtimes.kubernetes.render import FETCH_SCRIPT
from controller.secretstore.crypto import Cipher
from controller.secretstore.store import Scope, set_variables
from controller.settings import load_settings, prepare
from controller.store.db import Database
from controller.store.tables import Environment, Version

BRANCH_STEM = "feature/" + "x" * 91
BRANCHES = [BRANCH_STEM + "a", BRANCH_STEM + "b"]
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
NEWEST = kubernetes_validate.utils.major_minor(kubernetes_validate.utils.latest_version())
SECRET_VALUE = "s3cr3t-password-value"


@dataclass
class Site:
    url: str
    token: str
    settings: Any
    env_ids: dict[str, int]


def _artifact(root: Path, name: str) -> tuple[Path, Path]:
    source = root / name / "app"
    (source / "tasks").mkdir(parents=True)
    (source / "tasks" / "hello.py").write_text(f"def run(payload, ctx):\n    return '{name}'\n")
    (source / "slipway.toml").write_text('[kubernetes]\nmemory_request = "300Mi"\n')
    packages = root / name / "venv" / "lib" / "python3.11" / "site-packages" / "dep"
    packages.mkdir(parents=True)
    (packages / "__init__.py").write_text("VALUE = 1\n")
    (packages / "__pycache__").mkdir()
    (packages / "__pycache__" / "x.pyc").write_bytes(b"junk")
    return source, root / name / "venv"


def _version(
    session: Any, cipher: Cipher, project: Any, env: Environment, *, root: Path, n: int
) -> None:
    dep = request_deployment(
        session,
        project=project,
        environment=env,
        request=DeployRequest(sha=f"{n:040d}", ref="refs/heads/main", source="git"),
    )
    source, venv = _artifact(root, f"v{n}")
    version = Version(
        project_id=project.id,
        environment_id=env.id,
        deployment_id=dep.id,
        version=f"20261201.{n}",
        day="20261201",
        seq=n,
        sha=f"{n:040d}",
        tasks=[{"id": "hello"}],
        source_path=str(source),
        venv_path=str(venv),
        artifact_digest="sha256:" + "0" * 64,
    )
    session.add(version)
    session.flush()
    env.current_version_id = version.id


@pytest.fixture
def site(tmp_path: Path, sqlite_database: Database) -> Iterator[Site]:
    port = free_port()
    settings, _ = prepare(
        load_settings(
            data_dir=tmp_path / "data",
            encryption_key=Fernet.generate_key().decode(),
            public_url=f"http://127.0.0.1:{port}",
        )
    )
    cipher = Cipher(settings.encryption_keys)
    env_ids = {}
    with sqlite_database.transaction() as session:
        project = create_project(session, cipher, ref="acme", repo="octo-org/acme")
        prod = session.execute(
            select(Environment).where(
                Environment.project_id == project.id, Environment.name == "production"
            )
        ).scalar_one()
        _version(session, cipher, project, prod, root=tmp_path, n=1)
        env_ids["production"] = prod.id
        set_variables(
            session,
            cipher,
            Scope.of(project, "production", None),
            {"API_URL": "https://api"},
            actor="test",
        )
        set_variables(
            session,
            cipher,
            Scope.of(project, "production", None),
            {"DB_PASSWORD": SECRET_VALUE},
            actor="test",
            secret=True,
        )
        for i, branch in enumerate(BRANCHES, start=2):
            env = ensure_environment(
                session, cipher, project=project, name="preview", branch=branch
            )
            _version(session, cipher, project, env, root=tmp_path, n=i)
            env_ids[branch] = env.id
    services = SimpleNamespace(settings=settings, db=sqlite_database, cipher=cipher)
    app = create_app(services, manage_lifecycle=False)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    poll_until(lambda: server.started, timeout=30)
    try:
        yield Site(
            url=f"http://127.0.0.1:{port}",
            token=settings.admin_token,
            settings=settings,
            env_ids=env_ids,
        )
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        assert not thread.is_alive()


def cli(site: Site, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLIPWAY_")}
    env.update(SLIPWAY_API_URL=site.url, SLIPWAY_TOKEN=site.token, SLIPWAY_RUNTIME="local")
    return slipway("kubernetes", "manifests", "--project", "acme", *args, env=env).stdout


def _check(objects: list[dict[str, Any]]) -> str:
    kinds = [o["kind"] for o in objects]
    assert kinds == ["Namespace", "Secret", "Secret", "Deployment", "Service"]
    namespace = objects[0]["metadata"]["name"]
    assert DNS_LABEL.match(namespace) and len(namespace) <= 63
    for obj in objects:
        for k8s in ("1.29", NEWEST):
            kubernetes_validate.validate(obj, k8s, strict=True)
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "slipway"
        assert obj["metadata"]["labels"]["slipway.dev/project"] == "acme"
    deployment, service = objects[3], objects[4]
    version = deployment["metadata"]["labels"]["slipway.dev/version"]
    assert service["spec"]["selector"]["slipway.dev/version"] == version
    return namespace


def test_manifests_for_production_and_two_long_previews(site: Site) -> None:
    prod = list(yaml.safe_load_all(cli(site, "--env", "prod")))
    assert _check(prod) == "slipway-acme-production"
    worker = prod[3]["spec"]["template"]["spec"]["containers"][0]
    assert worker["resources"]["requests"]["memory"] == "300Mi"  # from slipway.toml
    secret = {k: base64.b64decode(v).decode() for k, v in prod[1]["data"].items()}
    assert secret["API_URL"] == "https://api"
    assert set(secret) == {"API_URL", "DB_PASSWORD"} and SECRET_VALUE not in secret["DB_PASSWORD"]
    previews = [
        list(yaml.safe_load_all(cli(site, "--env", "preview", "--branch", b))) for b in BRANCHES
    ]
    names = [_check(objects) for objects in previews]
    assert len(set(names)) == 2
    assert previews[0][3]["metadata"]["annotations"]["slipway.dev/branch"] == BRANCHES[0]


def test_no_secret_in_the_answer_and_a_version_can_be_named(site: Site) -> None:
    answer = httpx.get(
        f"{site.url}/api/v1/projects/acme/environments/production/manifests",
        params={"version": "20261201.1"},
        headers={"Authorization": f"Bearer {site.token}"},
    )
    assert answer.status_code == 200
    text = answer.text + base64.b64decode(answer.json()[2]["data"]["token"]).decode()
    assert SECRET_VALUE not in text and bundle_token(site.settings.encryption_keys, 1) not in text
    assert "sbt_" not in text
    missing = httpx.get(
        f"{site.url}/api/v1/projects/acme/environments/production/manifests",
        params={"version": "20991231.9"},
        headers={"Authorization": f"Bearer {site.token}"},
    )
    assert missing.status_code == 404
    anonymous = httpx.get(f"{site.url}/api/v1/projects/acme/environments/production/manifests")
    assert anonymous.status_code == 401


def _bundle_url(site: Site, *args: str) -> tuple[str, str]:
    objects = list(yaml.safe_load_all(cli(site, *args)))
    fetch = objects[3]["spec"]["template"]["spec"]["initContainers"][0]
    env = {e["name"]: e.get("value") for e in fetch["env"]}
    return env["BUNDLE_URL"], env["BUNDLE_DIGEST"]


def test_the_bundle_is_served_only_with_its_environments_token(site: Site) -> None:
    url, digest = _bundle_url(site, "--env", "production")
    assert url == f"{site.url}/api/v1/bundles/{digest}"
    keys = site.settings.encryption_keys
    own = httpx.get(
        url, headers={"Authorization": f"Bearer {bundle_token(keys, site.env_ids['production'])}"}
    )
    assert own.status_code == 200
    assert "sha256:" + hashlib.sha256(own.content).hexdigest() == digest
    assert own.headers["content-length"] == str(len(own.content))
    assert own.headers["etag"] == f'"{digest}"'
    cached = httpx.get(
        url,
        headers={
            "Authorization": f"Bearer {bundle_token(keys, site.env_ids['production'])}",
            "If-None-Match": own.headers["etag"],
        },
    )
    assert cached.status_code == 304 and not cached.content
    with tarfile.open(fileobj=io.BytesIO(own.content)) as tar:
        names = tar.getnames()
    assert "source/tasks/hello.py" in names and "site-packages/dep/__init__.py" in names
    assert not [n for n in names if "__pycache__" in n]
    other = bundle_token(keys, site.env_ids[BRANCHES[0]])
    assert httpx.get(url, headers={"Authorization": f"Bearer {other}"}).status_code == 404
    assert httpx.get(url, headers={"Authorization": f"Bearer {site.token}"}).status_code == 401
    assert httpx.get(url).status_code == 401
    forged = bundle_token([Fernet.generate_key().decode()], site.env_ids["production"])
    assert httpx.get(url, headers={"Authorization": f"Bearer {forged}"}).status_code == 401


def test_the_bundle_is_reproducible(site: Site, tmp_path: Path) -> None:
    first = _bundle_url(site, "--env", "production")
    for path in (site.settings.data_dir / "bundles").iterdir():
        path.unlink()
    assert _bundle_url(site, "--env", "production") == first  # the stored bundle
    source, venv = tmp_path / "v1" / "app", tmp_path / "v1" / "venv"
    again = make_bundle(site.settings.data_dir, version_id=1, source=source, venv=venv)
    assert again.digest == first[1]  # made anew from the same tree: the same bytes


def test_a_replica_without_the_build_renders_the_same_manifests(site: Site, tmp_path: Path) -> None:
    """Once published, the bundle is what a replica that never built the version (a new
    leader, a follower) renders from: its digest, and slipway.toml's resources from it."""
    first = cli(site, "--env", "production")
    (tmp_path / "v1").rename(tmp_path / "elsewhere")  # as on another replica's disk
    assert cli(site, "--env", "production") == first
    worker = list(yaml.safe_load_all(first))[3]["spec"]["template"]["spec"]["containers"][0]
    assert worker["resources"]["requests"]["memory"] == "300Mi"


def _fetch(
    site: Site, tmp_path: Path, *, digest: str, url: str
) -> subprocess.CompletedProcess[str]:
    dest = tmp_path / "bundle"
    dest.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "BUNDLE_URL": url,
        "BUNDLE_DIGEST": digest,
        "BUNDLE_DIR": str(dest),
        "BUNDLE_TOKEN": bundle_token(site.settings.encryption_keys, site.env_ids["production"]),
    }
    return subprocess.run(
        [sys.executable, "-I", "-c", FETCH_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_init_container_script_verifies_and_unpacks_the_bundle(
    site: Site, tmp_path: Path
) -> None:
    url, digest = _bundle_url(site, "--env", "production")
    done = _fetch(site, tmp_path, digest=digest, url=url)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "bundle" / "source" / "tasks" / "hello.py").read_text().endswith("'v1'\n")
    assert (tmp_path / "bundle" / "site-packages" / "dep" / "__init__.py").is_file()
    assert not (tmp_path / "bundle" / ".bundle.tar").exists()


def test_the_init_container_refuses_a_bundle_whose_digest_differs(
    site: Site, tmp_path: Path
) -> None:
    url, _digest = _bundle_url(site, "--env", "production")
    wrong = "sha256:" + "f" * 64
    done = _fetch(site, tmp_path, digest=wrong, url=url)
    assert done.returncode != 0
    assert "digest mismatch" in done.stderr
    assert not (tmp_path / "bundle" / "source").exists()


def test_the_worker_container_serves_the_unpacked_bundle(site: Site, tmp_path: Path) -> None:
    """The Deployment's worker command, run here as the kubelet would run it (the bundle
    dir and the port mapped to this machine), serves the version's tasks."""
    objects = list(yaml.safe_load_all(cli(site, "--env", "production")))
    pod = objects[3]["spec"]["template"]["spec"]
    fetch, worker = pod["initContainers"][0], pod["containers"][0]
    env = {e["name"]: e.get("value") for e in fetch["env"]}
    assert (
        _fetch(site, tmp_path, digest=env["BUNDLE_DIGEST"], url=env["BUNDLE_URL"]).returncode == 0
    )
    bundle_dir = str(tmp_path / "bundle")

    def local(text: str) -> str:
        return text.replace("/slipway/bundle", bundle_dir)

    args = [local(a) for a in worker["args"]]
    args[args.index("--port") + 1] = "0"
    args[args.index("--host") + 1] = "127.0.0.1"
    command = [sys.executable if c == "python" else c for c in worker["command"]]
    child_env = {e["name"]: local(e["value"]) for e in worker["env"]}
    child_env.update(PATH=os.environ.get("PATH", "/usr/bin:/bin"), HOME=str(tmp_path))
    proc = subprocess.Popen(
        command + args, env=child_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert ready["event"] == "ready" and ready["tasks"] == ["hello"], ready
        base = f"http://127.0.0.1:{ready['port']}"
        health = httpx.get(f"{base}/health", timeout=10).json()
        label = objects[3]["metadata"]["labels"]["slipway.dev/version-id"]
        assert health["version_id"] == int(label)
        run = httpx.post(
            f"{base}/runs",
            json={"run_id": "run_k8s", "task_id": "hello", "payload": None, "timeout": 30},
            timeout=60,
        ).json()
        assert run["status"] == "completed" and run["output"] == "v1", run
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
