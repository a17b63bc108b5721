"""kmock's emulated Kubernetes API server, run for one test on its own event loop.

kmock is asyncio; the code under test (the official client) is synchronous. So the
server runs in a thread with its own loop, and the fixture hands out its URL and the
emulator (which records every request it served). Shared by the Kubernetes client
tests and the Lease tests; each folder's conftest re-exports :func:`kmock_emulated`.
"""

from __future__ import annotations

import asyncio
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kmock
import pytest

from support.kubeconfig import write_kubeconfig


@dataclass(frozen=True)
class Emulated:
    url: str
    emulator: Any

    def kubeconfig(self, path: Path) -> Path:
        return write_kubeconfig(path, self.url)


@pytest.fixture
def kmock_emulated() -> Iterator[Emulated]:
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        try:
            box["stop"] = asyncio.Event()
            emulator = kmock.KubernetesEmulator()
            with warnings.catch_warnings():  # kmock 0.8 reads its bundle the old way
                warnings.filterwarnings("ignore", "read_binary is deprecated", DeprecationWarning)
                emulator.resources.load_bundled()
            box["emulator"] = emulator
            async with emulator, kmock.Server(emulator) as server:
                box["url"] = str(server.url).rstrip("/")
                ready.set()
                await box["stop"].wait()
        except BaseException as exc:
            box["error"] = exc
            ready.set()
            raise

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), name="kmock")
    thread.start()
    assert ready.wait(30), "kmock did not start"
    assert "error" not in box, f"kmock did not start: {box.get('error')!r}"
    try:
        yield Emulated(url=box["url"], emulator=box["emulator"])
    finally:
        loop.call_soon_threadsafe(box["stop"].set)
        thread.join(30)
        loop.close()
        assert not thread.is_alive()
