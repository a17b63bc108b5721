"""SQL constructs the query functions share.

``one_of(column, values)`` is ``column IN (values)`` written so that the SQL text does not
depend on how many values there are. SQLAlchemy's ``in_()`` renders one ``?`` per value, so
every list length is a different statement, and the driver keeps each one prepared: pysqlite
caches 128 statements per connection, and a 1,000-value ``IN`` holds ~80 KB of SQLite's
memory. A page listing 1,000 previews every second kept ~18 MB of prepared statements alive
in the web process (measured with ``sqlite3_db_status``). Here the values travel as one JSON
array parameter and the database unpacks it (SQLite ``json_each``, PostgreSQL
``json_array_elements_text``), so there is one statement for every length.

Use it where a list comes from data (ids of rows read earlier, keys of a batch); a fixed
tuple of literals (``status.in_(ACTIVE_STATUSES)``) is one statement already.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Boolean, false, true
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import coercions, roles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BindParameter, ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.types import String


class _OneOf(ColumnElement[bool]):
    __visit_name__ = "slipway_one_of"
    inherit_cache = True
    type = Boolean()
    _is_implicitly_boolean = True  # a predicate: no "= 1" on SQLite

    _traverse_internals = [
        ("column", InternalTraversal.dp_clauseelement),
        ("values", InternalTraversal.dp_clauseelement),
        ("negate", InternalTraversal.dp_boolean),
    ]

    def __init__(self, column: ColumnElement[Any], values: BindParameter[str], negate: bool):
        self.column = column
        self.values = values
        self.negate = negate


def one_of(column: Any, values: Iterable[Any]) -> ColumnElement[bool]:
    """``column IN values`` with SQL text that does not depend on ``len(values)``."""
    return _build(column, values, negate=False)


def not_one_of(column: Any, values: Iterable[Any]) -> ColumnElement[bool]:
    """``column NOT IN values`` (``values`` holds no ``None``), constant SQL text."""
    return _build(column, values, negate=True)


def _build(column: Any, values: Iterable[Any], *, negate: bool) -> ColumnElement[bool]:
    items = list(values)
    if not items:
        return true() if negate else false()
    if any(v is None for v in items):
        raise ValueError("one_of() values must not contain None")
    param = BindParameter(None, json.dumps(items), type_=String(), unique=True)
    return _OneOf(coercions.expect(roles.ExpressionElementRole, column), param, negate)


def _operator(element: _OneOf) -> str:
    return "NOT IN" if element.negate else "IN"


@compiles(_OneOf, "sqlite")
def _one_of_sqlite(element: _OneOf, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.column, **kw)
    values = compiler.process(element.values, **kw)
    # Compiled fragments only: the values are one bound parameter.
    return f"{column} {_operator(element)} (SELECT value FROM json_each({values}))"  # noqa: S608


@compiles(_OneOf, "postgresql")
def _one_of_postgresql(element: _OneOf, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.column, **kw)
    values = compiler.process(element.values, **kw)
    # Text compares without a length cast (VARCHAR(n) would truncate a longer value).
    column_type = element.column.type
    sql_type = (
        "TEXT"
        if isinstance(column_type, String)
        else compiler.dialect.type_compiler_instance.process(column_type)
    )
    # Compiled fragments only: the values are one bound parameter.
    return (
        f"{column} {_operator(element)} (SELECT CAST(value AS {sql_type}) "  # noqa: S608
        f"FROM json_array_elements_text(CAST({values} AS JSON)))"
    )


@compiles(_OneOf)
def _one_of_default(element: _OneOf, compiler: SQLCompiler, **kw: Any) -> str:
    raise NotImplementedError(f"one_of() has no form for {compiler.dialect.name}")
