"""Bundles in the database, so every replica serves every version's bundle.

A bundle (:mod:`controller.bundles`) is built on the leader's disk, but the chart's
Service balances ``GET /api/v1/bundles/…`` over all replicas, and after a failover the
new leader has none of the old one's files. So the database, which every replica shares
and which outlives any pod, is where a bundle lives: ``bundles`` (digest, size, number
of chunks) and ``bundle_chunks`` (the bytes, in order), content-addressed by digest.

**Why chunks.** A bundle carries site-packages, tens of MB. One ``bytea``/BLOB value
of that size is held whole in memory by the driver on the way in and out (psycopg
builds the parameter and the result row in full; PostgreSQL's TOAST reassembles a value
to send it), and a slow client would pin a connection for the whole download. Rows of
:data:`CHUNK_SIZE` (1 MiB) keep both sides at one chunk: :func:`publish_bundle` reads the
file and inserts one row at a time, :func:`iter_chunks` fetches one row per short read
transaction, so a download never holds a connection between chunks.

**Written once, atomically, verified.** :func:`publish_bundle` writes the ``bundles``
row, every chunk and the version's link to it in one transaction, hashing what it reads;
a digest that does not match aborts it (nothing half-written is ever visible), and a
digest already stored is only linked (idempotent). A conflict (two writers of one digest,
or a prune deleting it meanwhile: the foreign key from ``versions`` makes one of them
fail) is retried. A version names only a complete bundle, and the runtime renders a
Deployment only after it is published, so no pod asks for a bundle that is not there. On
SQLite (one machine) that transaction holds the single writer's turn for as long as it
takes to copy the file in, about a second for tens of MB, once per version.

**Retention** follows the Kubernetes runtime's: it keeps the Deployments of the newest
``keep_versions`` versions of a namespace plus the one the Service selects, so
:func:`prune_bundles` keeps, per environment, the bundles of the current version and of
the newest ``keep`` versions that have one, and none of an archived environment. It
runs whenever a bundle is published: for that environment, and for every archived one
(an archived preview publishes nothing again, so its bundles go with the next publish
anywhere). Other versions lose their link; a bundle no version links to is deleted,
chunks first, one bundle per transaction. A
rollback to a pruned version re-publishes its bundle from the built tree if it is still
on disk (as its Deployment must be re-created anyway).
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import delete, exists, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from controller.errors import PermanentError, TemporaryError
from controller.store.db import Database
from controller.store.sql import not_one_of, one_of
from controller.store.tables import BundleChunk, Environment, StoredBundle, Version

CHUNK_SIZE = 1024 * 1024


def publish_bundle(db: Database, *, digest: str, path: Path, version_id: int) -> None:
    """Store the file at ``path`` as bundle ``digest`` (unless it is there already) and
    name it on the version, in one transaction."""
    for _attempt in range(3):
        try:
            with db.transaction() as session:
                if session.get(StoredBundle, digest) is None:
                    _write(session, digest=digest, path=path)
                session.execute(
                    update(Version).where(Version.id == version_id).values(bundle_digest=digest)
                )
            return
        except IntegrityError:
            continue  # another writer stored it, or a prune deleted it: look again
    raise TemporaryError(f"bundle {digest} could not be stored: it keeps changing underneath")


def _write(session: Session, *, digest: str, path: Path) -> None:
    size = path.stat().st_size
    session.add(StoredBundle(digest=digest, size=size, chunks=-(-size // CHUNK_SIZE)))
    session.flush()
    sha, seq, read = hashlib.sha256(), 0, 0
    with path.open("rb") as fh:
        while data := fh.read(CHUNK_SIZE):
            sha.update(data)
            read += len(data)
            session.add(BundleChunk(digest=digest, seq=seq, data=data))
            session.flush()
            session.expunge_all()
            seq += 1
    if f"sha256:{sha.hexdigest()}" != digest or read != size:
        raise PermanentError(
            f"bundle {digest} was not stored: its file's sha256 differs",
            hint="the data dir's bundle cache is damaged; remove its bundles folder",
        )


def version_bundle(db: Database, version_id: int) -> str | None:
    """The digest of the version's stored bundle, if it has one."""
    with db.read() as session:
        return session.execute(
            select(Version.bundle_digest)
            .join(StoredBundle, StoredBundle.digest == Version.bundle_digest)
            .where(Version.id == version_id)
        ).scalar_one_or_none()


def bundle_allowed(db: Database, *, environment_id: int, digest: str) -> bool:
    """True when ``digest`` is the stored bundle of a version of that environment."""
    with db.read() as session:
        query = select(
            exists().where(
                Version.environment_id == environment_id, Version.bundle_digest == digest
            )
        )
        return bool(session.execute(query).scalar())


def iter_chunks(db: Database, *, digest: str, chunks: int) -> Iterator[bytes]:
    """The bundle's bytes, one chunk per short read transaction."""
    for seq in range(chunks):
        with db.read() as session:
            data = session.execute(
                select(BundleChunk.data).where(BundleChunk.digest == digest, BundleChunk.seq == seq)
            ).scalar_one_or_none()
        if data is None:
            raise PermanentError(f"bundle {digest} lost its chunk {seq} while being read")
        yield bytes(data)


class _ChunkReader(io.RawIOBase):
    """A file over :func:`iter_chunks`, for tarfile's streaming mode."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._buffer:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._buffer = chunk
        size = min(len(buffer), len(self._buffer))
        buffer[:size], self._buffer = self._buffer[:size], self._buffer[size:]
        return size


def read_member(db: Database, *, digest: str, name: str, limit: int = 1024 * 1024) -> bytes | None:
    """One regular file of a stored bundle (at most ``limit`` bytes), or None. The tar is
    read as a stream, so only the chunks up to that member are fetched (``source/`` comes
    before ``site-packages/``)."""
    stored = stored_bundle(db, digest)
    if stored is None:
        return None
    raw = _ChunkReader(iter_chunks(db, digest=digest, chunks=stored.chunks))
    with tarfile.open(fileobj=io.BufferedReader(raw), mode="r|") as tar:
        for member in tar:
            if member.name == name:
                fh = tar.extractfile(member) if member.isfile() else None
                return None if fh is None or member.size > limit else fh.read()
    return None


def stored_bundle(db: Database, digest: str) -> StoredBundle | None:
    with db.read() as session:
        return session.get(StoredBundle, digest)


def prune_bundles(db: Database, *, environment_id: int, keep: int, also: int | None = None) -> int:
    """Apply bundle retention to one environment (see the module docstring), keeping
    version ``also`` too (the one just published); return how many bundles went."""
    with db.transaction() as session:
        env = session.get(Environment, environment_id)
        if env is None:
            return 0
        linked = list(
            session.execute(
                select(Version.id)
                .where(Version.environment_id == environment_id, Version.bundle_digest.is_not(None))
                .order_by(Version.id.desc())
            ).scalars()
        )
        kept = set() if env.status == "archived" else set(linked[:keep])
        if env.status != "archived":
            kept |= {v for v in (env.current_version_id, also) if v is not None}
        dropped = [vid for vid in linked if vid not in kept]
        if dropped:
            session.execute(
                update(Version).where(one_of(Version.id, dropped)).values(bundle_digest=None)
            )
        archived = select(Environment.id).where(Environment.status == "archived")
        session.execute(
            update(Version)
            .where(Version.environment_id.in_(archived), Version.bundle_digest.is_not(None))
            .values(bundle_digest=None)
        )
    return delete_orphans(db)


def delete_orphans(db: Database) -> int:
    """Delete every bundle no version links to, one bundle per transaction."""
    removed, skipped = 0, set[str]()
    while True:
        try:
            with db.transaction() as session:
                digest = session.execute(
                    select(StoredBundle.digest)
                    .where(
                        ~exists().where(Version.bundle_digest == StoredBundle.digest),
                        not_one_of(StoredBundle.digest, skipped),
                    )
                    .limit(1)
                    .with_for_update(skip_locked=True)
                ).scalar_one_or_none()
                if digest is None:
                    return removed
                session.execute(delete(BundleChunk).where(BundleChunk.digest == digest))
                session.execute(delete(StoredBundle).where(StoredBundle.digest == digest))
        except IntegrityError:  # a version was linked to it meanwhile: it stays
            skipped.add(str(digest))
            continue
        removed += 1
