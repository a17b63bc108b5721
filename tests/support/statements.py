"""The SQL statements a block of code sends, for tests that check their number or text."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event

from controller.store.db import Database


@contextmanager
def statements(database: Database, *, starting: str = "SELECT") -> Iterator[list[str]]:
    """The statements sent to ``database`` inside the block that start with ``starting``
    (case and leading space ignored), in order."""
    seen: list[str] = []
    prefix = starting.upper()

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith(prefix):
            seen.append(statement)

    event.listen(database.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(database.engine, "before_cursor_execute", record)
