"""Bundles in the database (:mod:`controller.store.bundles`), on SQLite and PostgreSQL:
chunked and byte-identical, verified on write, idempotent, and pruned with their versions."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import func, select

from controller.domain.deployments import DeployRequest, request_deployment
from controller.domain.projects import create_project
from controller.errors import PermanentError
from controller.secretstore.crypto import Cipher
from controller.store import bundles
from controller.store.bundles import (
    bundle_allowed,
    iter_chunks,
    prune_bundles,
    publish_bundle,
    stored_bundle,
    version_bundle,
)
from controller.store.db import Database
from controller.store.tables import BundleChunk, Environment, Project, StoredBundle, Version


def _versions(db: Database, count: int) -> tuple[int, int, list[int]]:
    """Project ``acme``: ``count`` production versions; returns (production id, staging
    id, version ids oldest first)."""
    cipher = Cipher([Fernet.generate_key().decode()])
    ids = []
    with db.transaction() as session:
        project = create_project(session, cipher, ref="acme", repo="octo-org/acme")
        envs = {
            e.name: e
            for e in session.execute(
                select(Environment).where(Environment.project_id == project.id)
            ).scalars()
        }
        prod = envs["production"]
        for n in range(1, count + 1):
            dep = request_deployment(
                session,
                project=project,
                environment=prod,
                request=DeployRequest(sha=f"{n:040d}", ref="refs/heads/main", source="git"),
            )
            version = Version(
                project_id=project.id,
                environment_id=prod.id,
                deployment_id=dep.id,
                version=f"20261201.{n}",
                day="20261201",
                seq=n,
                sha=f"{n:040d}",
                tasks=[],
                source_path="/nowhere",
                venv_path="/nowhere",
            )
            session.add(version)
            session.flush()
            ids.append(version.id)
        return prod.id, envs["staging"].id, ids


def _version_in(db: Database, environment_id: int) -> int:
    with db.transaction() as session:
        env = session.get(Environment, environment_id)
        assert env is not None
        project = env.project_id
        dep = request_deployment(
            session,
            project=session.get(Project, project),
            environment=env,
            request=DeployRequest(sha="f" * 40, ref="refs/heads/staging", source="git"),
        )
        version = Version(
            project_id=project,
            environment_id=env.id,
            deployment_id=dep.id,
            version="20261201.1",
            day="20261201",
            seq=1,
            sha="f" * 40,
            tasks=[],
            source_path="/nowhere",
            venv_path="/nowhere",
        )
        session.add(version)
        session.flush()
        return version.id


def _file(tmp_path: Path, name: str, size: int) -> tuple[Path, str]:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path, "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_bundle_is_stored_in_chunks_and_read_back_byte_identical(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bundles, "CHUNK_SIZE", 1000)
    prod, staging, (vid,) = _versions(database, 1)
    path, digest = _file(tmp_path, "b.tar", 5500)
    publish_bundle(database, digest=digest, path=path, version_id=vid)
    stored = stored_bundle(database, digest)
    assert stored is not None and (stored.size, stored.chunks) == (5500, 6)
    with database.read() as session:
        sizes = session.execute(
            select(func.length(BundleChunk.data))
            .where(BundleChunk.digest == digest)
            .order_by(BundleChunk.seq)
        ).scalars()
        assert list(sizes) == [1000] * 5 + [500]
    assert b"".join(iter_chunks(database, digest=digest, chunks=6)) == path.read_bytes()
    assert version_bundle(database, vid) == digest
    assert bundle_allowed(database, environment_id=prod, digest=digest)
    assert not bundle_allowed(database, environment_id=staging, digest=digest)


def test_a_bundle_whose_bytes_do_not_match_its_digest_is_not_stored(
    database: Database, tmp_path: Path
) -> None:
    _prod, _staging, (vid,) = _versions(database, 1)
    path, _digest = _file(tmp_path, "b.tar", 3000)
    wrong = "sha256:" + "ab" * 32
    with pytest.raises(PermanentError, match="sha256 differs"):
        publish_bundle(database, digest=wrong, path=path, version_id=vid)
    assert stored_bundle(database, wrong) is None
    assert version_bundle(database, vid) is None
    with database.read() as session:
        assert session.execute(select(func.count()).select_from(BundleChunk)).scalar() == 0


def test_publishing_one_digest_twice_stores_it_once(database: Database, tmp_path: Path) -> None:
    _prod, _staging, (first, second) = _versions(database, 2)
    path, digest = _file(tmp_path, "b.tar", 2000)
    publish_bundle(database, digest=digest, path=path, version_id=first)
    path.write_bytes(b"changed")  # the stored copy is not read or written again
    publish_bundle(database, digest=digest, path=path, version_id=second)
    assert version_bundle(database, first) == version_bundle(database, second) == digest
    with database.read() as session:
        assert session.execute(select(func.count()).select_from(StoredBundle)).scalar() == 1


def test_retention_keeps_the_newest_and_the_current_versions_bundles(
    database: Database, tmp_path: Path
) -> None:
    prod, staging, ids = _versions(database, 5)
    digests = {}
    for vid in ids:
        path, digest = _file(tmp_path, f"{vid}.tar", 1500)
        publish_bundle(database, digest=digest, path=path, version_id=vid)
        digests[vid] = digest
    with database.transaction() as session:
        env = session.get(Environment, prod)
        assert env is not None
        env.current_version_id = ids[0]  # rolled back to the oldest
    assert prune_bundles(database, environment_id=prod, keep=2) == 2
    kept = {ids[0], ids[3], ids[4]}
    for vid in ids:
        assert (version_bundle(database, vid) is not None) == (vid in kept), vid
        assert (stored_bundle(database, digests[vid]) is not None) == (vid in kept), vid
    with database.read() as session:
        left = set(session.execute(select(BundleChunk.digest)).scalars())
    assert left == {digests[vid] for vid in kept}

    with database.transaction() as session:
        env = session.get(Environment, prod)
        assert env is not None
        env.status = "archived"  # as an archived preview: its bundles go at the next publish
    path, digest = _file(tmp_path, "staging.tar", 1500)
    staging_version = _version_in(database, staging)
    publish_bundle(database, digest=digest, path=path, version_id=staging_version)
    assert prune_bundles(database, environment_id=staging, keep=2) == 3
    with database.read() as session:
        assert set(session.execute(select(StoredBundle.digest)).scalars()) == {digest}
