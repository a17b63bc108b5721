"""A run's ``begin`` and ``release`` are datagrams (controller.runtimes.control).

As one connection each they cost the controller a thread per message, two per run; now
one thread reads them, in the order they were sent, and a message that cannot go as a
datagram still arrives, as a connection.
"""

from __future__ import annotations

import os
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from controller.runtimes import control
from controller.runtimes.control import LEDGER_NAME, ControlClient, ControlServer, lease_handlers
from controller.runtimes.local import LocalRuntime
from controller.runtimes.workers import Worker

DEADLINE = 60.0


def _wait_for(predicate: Any) -> None:
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


class _Ledger:
    """``begin`` / ``release`` handlers that record what arrived, and in which thread."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []  # (op, run id, thread name)
        self._lock = threading.Lock()

    def handlers(self) -> dict[str, Any]:
        return {
            "ping": lambda r: True,
            "acquire": lambda r: self._record("acquire", r),
            "begin": lambda r: self._record("begin", r),
            "release": lambda r: self._record("release", r),
        }

    def _record(self, op: str, request: dict[str, Any]) -> None:
        with self._lock:
            self.seen.append((op, str(request.get("run_id")), threading.current_thread().name))


def test_begin_and_release_arrive_in_order_in_one_thread(tmp_path: Path) -> None:
    ledger = _Ledger()
    server = ControlServer(tmp_path, ledger.handlers())
    server.start()
    client = ControlClient(tmp_path)
    sent = []
    try:
        for number in range(100):
            for op in ("begin", "release"):
                client.send(op, version_id=1, port=1234, run_id=f"r{number}")
                sent.append((op, f"r{number}"))
        _wait_for(lambda: len(ledger.seen) == len(sent))
        assert [(op, run) for op, run, _ in ledger.seen] == sent
        assert {thread for _, _, thread in ledger.seen} == {"control-runs"}
        assert stat.S_IMODE((tmp_path / LEDGER_NAME).stat().st_mode) == 0o600
    finally:
        client.close()
        server.stop()
    assert not (tmp_path / LEDGER_NAME).exists()
    assert not any(t.name == "control-runs" for t in threading.enumerate())


def test_only_begin_and_release_are_taken_as_datagrams(tmp_path: Path) -> None:
    """An ``acquire`` starts workers and is answered: never from an unanswered datagram."""
    ledger = _Ledger()
    server = ControlServer(tmp_path, ledger.handlers())
    server.start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as raw:
            for junk in (
                b"",
                b"not json",
                b"[1]",
                b'{"op": "acquire", "run_id": "x"}',
                b'{"no": "op"}',
                b'{"op": "begin"}',  # handled, missing fields are the handler's to refuse
            ):
                raw.sendto(junk, str(tmp_path / LEDGER_NAME))
        client = ControlClient(tmp_path)
        client.send("release", version_id=1, port=1234, run_id="r1")
        _wait_for(lambda: any(run == "r1" for _, run, _ in ledger.seen))
        assert [op for op, _, _ in ledger.seen] == ["begin", "release"]
        client.close()
    finally:
        server.stop()


def test_a_message_the_queue_cannot_take_goes_as_a_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The controller's reader is held (a ``begin`` waits for a worker start) and the
    queue behind it is full: after a bounded wait the release goes as a connection, and
    arrives before the reader is free again."""
    monkeypatch.setattr(control, "LEDGER_SEND_TIMEOUT", 0.2)
    ledger = _Ledger()
    held, free = threading.Event(), threading.Event()
    handlers = ledger.handlers()
    begin = handlers["begin"]

    def slow_begin(request: dict[str, Any]) -> None:
        held.set()
        free.wait(DEADLINE)
        begin(request)

    server = ControlServer(tmp_path, {**handlers, "begin": slow_begin})
    server.start()
    client = ControlClient(tmp_path)
    try:
        client.send("begin", version_id=1, port=1234, run_id="r0")
        assert held.wait(DEADLINE)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as raw:
            raw.setblocking(False)
            for _ in range(100_000):
                try:
                    raw.sendto(b'{"op": "ping"}', str(tmp_path / LEDGER_NAME))
                except BlockingIOError:
                    break
            else:
                raise AssertionError("the queue never filled")
        started = time.monotonic()
        client.send("release", version_id=1, port=1234, run_id="r1")
        assert time.monotonic() - started < DEADLINE
        _wait_for(lambda: ledger.seen)
        ((op, run, thread),) = ledger.seen
        assert (op, run) == ("release", "r1")
        assert thread != "control-runs"  # a connection's own thread
        free.set()
        _wait_for(lambda: len(ledger.seen) == 2)
        assert ledger.seen[1][:2] == ("begin", "r0")
    finally:
        free.set()
        client.close()
        server.stop()
    assert not any(t.name == "control-runs" for t in threading.enumerate())


def test_a_message_with_no_controller_is_dropped_without_error(tmp_path: Path) -> None:
    client = ControlClient(tmp_path)  # nothing listens: the controller is restarting
    started = time.monotonic()
    for number in range(50):
        client.send("release", version_id=1, port=1234, run_id=f"r{number}")
    assert time.monotonic() - started < DEADLINE
    client.close()


def test_a_begin_waiting_for_its_version_holds_up_no_other_release(tmp_path: Path) -> None:
    """Version 1's lock is held (a worker start): its begin waits, in a thread of its
    own, while version 2's release, sent after it, is counted at once."""
    runtime = LocalRuntime(data_dir=tmp_path / "data")
    one = Worker(version_id=1, pid=os.getpid(), port=1111)
    two = Worker(version_id=2, pid=os.getpid(), port=2222)
    runtime._workers.update({1: one, 2: two})
    server = ControlServer(
        runtime.registry.parent, {"ping": lambda r: True, **lease_handlers(runtime)}
    )
    server.start()
    client = ControlClient(runtime.registry.parent)
    try:
        runtime.begin(2, 2222, "r2")
        assert two.in_flight == 1
        with runtime._version_lock(1):
            client.send("begin", version_id=1, port=1111, run_id="r1")
            client.send("release", version_id=2, port=2222, run_id="r2")
            _wait_for(lambda: two.in_flight == 0)
            assert one.in_flight == 0  # still waiting for the lock
        _wait_for(lambda: one.in_flight == 1)
        client.send("release", version_id=1, port=1111, run_id="r1")
        _wait_for(lambda: one.in_flight == 0)
    finally:
        client.close()
        server.stop()
        runtime._workers.clear()
        runtime.close(timeout=2)
