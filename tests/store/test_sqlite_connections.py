"""The main database's SQLite connections: each keeps a small page cache, and the pool
hands out the most recently used one.

A web process with 1,000 previews held up to 32 pooled connections (16 + 16 overflow)
after a burst, each with SQLite's default 2 MB page cache warmed by the round-robin a
FIFO pool does. With a 512 KiB cache each and a LIFO pool, the few connections that
serve a steady load stay warm and the rest stay cold: the controller's RSS at 1,000
previews went from 253.1 to 246.7 MB (tests/benchmarks/previews.py), with no change in the
resync pass or the run latency (the kernel caches the file).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from controller.store.db import CACHE_KIB, Database


def test_every_connection_keeps_a_small_page_cache(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'slipway.db'}")
    try:
        database.migrate()
        reads = database.engine.execution_options(sqlite_deferred=True)  # BEGIN, not IMMEDIATE
        held = [reads.connect() for _ in range(3)]  # three distinct connections
        try:
            sizes = {c.execute(text("PRAGMA cache_size")).scalar_one() for c in held}
        finally:
            for conn in held:
                conn.close()
        assert sizes == {-CACHE_KIB}
    finally:
        database.dispose()


def test_the_pool_reuses_the_connection_returned_last(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'slipway.db'}")
    try:
        held = [database.engine.connect() for _ in range(4)]  # a burst opened four
        raw = [conn.connection.dbapi_connection for conn in held]
        for conn in held:
            conn.close()  # returned in order: the last one returned is raw[-1]
        for _ in range(3):  # a steady load, one request at a time
            with database.engine.connect() as conn:
                assert conn.connection.dbapi_connection is raw[-1]
    finally:
        database.dispose()
