"""Logging set-up for both processes, and the context each log line carries.

``SLIPWAY_LOG_FORMAT=json`` gives one JSON object per line (``time``, ``level``,
``logger``, ``process`` — ``web`` or ``controller`` — ``message``, and ``exc_info`` when
there is one). Every line also carries ``delivery``, ``deployment``, ``project`` and
``environment`` when they apply: they live in :mod:`contextvars`, set by
:func:`bind_log_context` where a delivery or a deployment is handled, and a logging filter
copies them onto each record (so the text format can show them too).

Context variables follow asyncio tasks and stay per thread, so a worker thread binds the
context at the start of each job; :func:`bind_log_context` replaces the whole context
(fields not given are cleared), so nothing leaks from one job into the next. The env
var is read here rather than from :mod:`controller.settings` because logging starts
before settings are loaded (a bad setting must still log readably).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any

FIELDS = ("delivery", "deployment", "project", "environment")

_context: ContextVar[dict[str, str] | None] = ContextVar("slipway_log_context", default=None)


def bind_log_context(**values: str | None) -> Token[dict[str, str] | None]:
    """Make ``values`` (a subset of :data:`FIELDS`) the context of the following lines."""
    unknown = set(values) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown log context fields: {', '.join(sorted(unknown))}")
    return _context.set({k: str(v) for k, v in values.items() if v is not None})


@contextmanager
def log_context(**values: str | None) -> Iterator[None]:
    """:func:`bind_log_context` for a block, adding to the context around it."""
    merged = {**(_context.get() or {}), **{k: v for k, v in values.items() if v is not None}}
    token = bind_log_context(**merged)
    try:
        yield
    finally:
        _context.reset(token)


def current_log_context() -> dict[str, str]:
    return dict(_context.get() or {})


class ContextFilter(logging.Filter):
    """Copies the log context onto each record as attributes (``record.deployment`` …)."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _context.get() or {}
        for name in FIELDS:
            if not hasattr(record, name):
                setattr(record, name, context.get(name))
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self, process_name: str) -> None:
        super().__init__()
        self.process_name = process_name

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "process": self.process_name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self, process_name: str) -> None:
        prefix = "controller " if process_name == "controller" else ""
        super().__init__(f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = " ".join(
            f"{name}={getattr(record, name)}"
            for name in FIELDS
            if getattr(record, name, None) is not None
        )
        return f"{text} [{extra}]" if extra else text


def log_format() -> str:
    value = os.environ.get("SLIPWAY_LOG_FORMAT", "text").strip().lower()
    return value if value in ("text", "json") else "text"


def setup_logging(level: str, *, process_name: str) -> None:
    """Configure the root logger for ``slipway serve`` (``web``) or its controller child."""
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    handler.setFormatter(
        JsonFormatter(process_name) if log_format() == "json" else TextFormatter(process_name)
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)
