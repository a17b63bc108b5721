"""The Builder protocol: sources produce a checkout; a builder turns it into an
immutable artifact (a dependency environment, the pre-built code, the task list).
Runtimes only consume what builders produce; the two never import each other."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

Log = Callable[[str], None]


class Builder(Protocol):
    name: str

    def prepare(
        self,
        root: Path,
        *,
        install: str | None,
        log: Log,
        cancel: threading.Event,
        timeout: float,
        build_env: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Install dependencies; returns at least ``{"venv", "key", "cached"}``.
        ``build_env``: the build-time variables (``SLIPWAY_BUILD_`` stripped)."""
        ...

    def pre_build(
        self,
        root: Path,
        *,
        venv: Path,
        command: str,
        log: Log,
        cancel: threading.Event,
        timeout: float,
        build_env: dict[str, str] | None = None,
    ) -> None: ...

    def sync_env_vars(
        self,
        root: Path,
        *,
        venv: Path,
        command: str,
        log: Log,
        cancel: threading.Event,
        timeout: float,
        build_env: dict[str, str] | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> str:
        """Run ``sync_env_vars`` in the built environment; returns its stdout."""
        ...

    def discover(
        self,
        root: Path,
        *,
        venv: Path,
        tasks_dir: str,
        timeout: float,
        tree: str | None = None,
        log: Log | None = None,
    ) -> list[dict[str, Any]]:
        """The tasks under ``root / tasks_dir``. ``tree`` names the content of ``root``
        (a digest); when given, a builder may reuse what it found for the same tree and
        environment before."""
        ...
