"""Wake-ups from the web process to the controller are datagrams (controller.runtimes.control).

As one connection each they cost the controller a thread per webhook delivery; now one
thread reads them all, a send never waits, and nothing is left behind at stop.
"""

from __future__ import annotations

import contextlib
import json
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Any

from controller.runtimes.control import WAKE_NAME, ControlClient, ControlServer

DEADLINE = 60.0


def _wait_for(predicate: Any) -> None:
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


class _Recorder:
    def __init__(self) -> None:
        self.kinds: list[str | None] = []
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, request: dict[str, Any]) -> None:
        with self._lock:
            self.kinds.append(request.get("kind"))
            self.threads.add(threading.current_thread().name)


def test_wakeups_arrive_in_one_reading_thread_without_a_connection(tmp_path: Path) -> None:
    recorder = _Recorder()
    server = ControlServer(tmp_path, {"ping": lambda r: True, "notify": recorder})
    server.start()
    client = ControlClient(tmp_path)
    try:
        for _ in range(50):
            client.notify("route")
            _wait_for(lambda: recorder.kinds)  # one at a time: none finds the queue full
            assert recorder.kinds.pop() == "route"
        client.notify(None)
        _wait_for(lambda: recorder.kinds)
        assert recorder.kinds == [None]
        assert recorder.threads == {"control-wake"}
        assert stat.S_IMODE((tmp_path / WAKE_NAME).stat().st_mode) == 0o600
    finally:
        client.close()
        server.stop()
    assert not (tmp_path / WAKE_NAME).exists()
    assert not any(t.name == "control-wake" for t in threading.enumerate())


def test_a_wakeup_dropped_on_a_full_queue_makes_the_next_one_wake_all(tmp_path: Path) -> None:
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # a controller not reading yet
    sink.bind(str(tmp_path / WAKE_NAME))
    sink.settimeout(DEADLINE)
    client = ControlClient(tmp_path)
    try:
        for _ in range(1000):  # the kernel queues ~10 (net.unix.max_dgram_qlen)
            client.notify("route")
        client.notify("deploy")  # dropped too: the deploy threads would not wake
        sink.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                assert json.loads(sink.recv(256)) == {"kind": "route"}
        sink.settimeout(DEADLINE)
        client.notify("route")
        assert json.loads(sink.recv(256)) == {"kind": None}  # wakes every kind
        client.notify("route")
        assert json.loads(sink.recv(256)) == {"kind": "route"}
    finally:
        client.close()
        sink.close()


def test_malformed_datagrams_are_ignored_and_the_reader_goes_on(tmp_path: Path) -> None:
    recorder = _Recorder()
    server = ControlServer(tmp_path, {"notify": recorder})
    server.start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as raw:
            for junk in (b"", b"not json", b'{"no": "kind"}', b'{"kind": 7}', b"[1]"):
                raw.sendto(junk, str(tmp_path / WAKE_NAME))
        client = ControlClient(tmp_path)
        client.notify("deploy")
        _wait_for(lambda: recorder.kinds)
        assert recorder.kinds == ["deploy"]
        client.close()
    finally:
        server.stop()


def test_a_wakeup_with_no_controller_is_dropped_at_once(tmp_path: Path) -> None:
    client = ControlClient(tmp_path)  # nothing listens: the controller is restarting
    started = time.monotonic()
    for _ in range(100):
        client.notify("route")
    assert time.monotonic() - started < DEADLINE  # returned, raised nothing
    client.close()
    client.notify("route")  # a closed client opens another socket; still no error
    client.close()


def test_a_full_queue_of_wakeups_never_blocks_the_sender(tmp_path: Path) -> None:
    """A controller that does not read (stopped by a debugger, starved of CPU): the
    sender drops wake-ups instead of waiting; the queue's poll picks the work up."""
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(str(tmp_path / WAKE_NAME))
    client = ControlClient(tmp_path)
    try:
        done = threading.Event()

        def flood() -> None:
            for _ in range(20_000):  # far more than a socket's receive queue holds
                client.notify("route")
            done.set()

        thread = threading.Thread(target=flood, daemon=True)
        thread.start()
        assert done.wait(DEADLINE), "a notify blocked on a full queue"
    finally:
        client.close()
        sink.close()


def test_long_data_dir_paths_work(tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*["d" * 30] * 4)
    deep.mkdir(parents=True)
    assert len(str(deep / WAKE_NAME)) > 108
    recorder = _Recorder()
    server = ControlServer(deep, {"notify": recorder})
    server.start()
    client = ControlClient(deep)
    try:
        client.notify("promote")
        _wait_for(lambda: recorder.kinds)
        assert recorder.kinds == ["promote"]
    finally:
        client.close()
        server.stop()
