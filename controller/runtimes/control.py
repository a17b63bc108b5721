"""The control channel: the controller process owns every worker; the web process asks.

``slipway serve`` runs two processes (see :mod:`controller.supervisor`). Before, each held
a :class:`~controller.runtimes.local.LocalRuntime` over the same registry files, each with
its own in-flight counts, so both could start a worker for one version, and a graceful
stop of one left the other's workers running. Now only the controller starts, adopts,
retires and stops workers. The web process holds a :class:`RemoteRuntime` that talks to
the controller over a Unix socket, ``<data>/control.sock``:

* one connection per request, one JSON line each way: ``{"op": ..., ...}`` and
  ``{"ok": ...}`` or ``{"error": {"class", "message"}}``. Connections are cheap on a Unix
  socket and a slow worker start then never holds up a wake-up or another run;
* queue wake-ups are datagrams on a socket of their own, ``<data>/control.wake``: one
  ``sendto`` that never waits, read by one thread that only signals the queue. As a
  connection each (a ``notify`` request) they cost the controller a thread per delivery
  (a fifth of its CPU while 1,000 webhooks arrived in a burst) and the web process a
  thread that connected and waited for the answer. (They replaced a thread blocked on
  the child's stdin, which aborted the interpreter at exit.) ``ensure`` / ``retire``
  serve promotions and archiving done through the API; ``acquire`` / ``release``
  bracket a run: the controller starts the version's worker if needed (pinned older
  versions, after a restart) and counts the run in flight, so a retire waits for it;
  the web process then sends the run to the worker's port directly (runs do not pass
  through the niced controller) and sends ``release`` without waiting for its answer;
  ``refused`` reports a worker that answered 503 (it was retiring), so it is replaced;
* a run whose version has a worker record (``<data>/workers/<id>.json``, written by the
  controller once the worker is healthy) skips ``acquire``: the web process reads the
  record, sends ``begin`` (no answer awaited; see :mod:`.ledger`) and posts the run to
  that port. The worker itself keeps the count a retire waits on (it drains: admitted
  runs finish, new ones get 503), and checks the run's version id, so a stale record
  whose port another worker took is refused too. A refused connection or a 503 means the
  run has not started: it goes the ``acquire`` way (which starts the worker if it may,
  and retries once). The web process never starts a worker, so an archived preview's
  worker stays stopped;
* ``begin`` and ``release`` are datagrams too, on ``<data>/control.runs``, read in order
  by one thread of their own (a ``begin`` may wait for a version's lock; wake-ups must
  not). Unlike a wake-up, a full queue holds the sender (bounded), and one that cannot
  go at all goes as a connection;
* the sockets live in the data dir (mode 0700) and are made 0600: only this user's
  processes can ask. Paths too long for ``sockaddr_un`` go through ``/proc/self/fd``.

Errors keep their class across the channel (:class:`PermanentError` stays permanent).
Nothing secret travels in an error: workers' errors never contain environment values.
Over 400 lines: both ends of the channel and the run paths that use it are one protocol.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from controller import errors
from controller.errors import RuntimeUnavailable, SlipwayError
from controller.runtimes.base import ArtifactRef, VersionSpec
from controller.runtimes.runcall import (
    WorkerConnections,
    WorkerUnreachable,
    answer_of,
    post_run,
    run_leased,
)
from controller.runtimes.workers import Registry

log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
WAKE_NAME = "control.wake"
LEDGER_NAME = "control.runs"
LEDGER_OPS = ("begin", "release")
MAX_DATAGRAM = 4096  # a wake-up {"kind": ...} or a run's {"op": "begin", ...}
LEDGER_SEND_TIMEOUT = 5.0  # a run's begin or release, while the controller's queue is full
MAX_LINE = 1024 * 1024
SUN_PATH_MAX = 100
CONNECT_TIMEOUT = 5.0
ACQUIRE_TIMEOUT = 180.0
RESTART_WAIT = 30.0  # how long a run waits for a controller that is being restarted
READ_TIMEOUT = 30.0  # for a request's line: every client sends it at once
STOP_WAIT = 60.0  # how long a stopping controller lets requests being answered finish

Handler = Callable[[dict[str, Any]], Any]


@contextlib.contextmanager
def _addressable(path: Path) -> Iterator[str]:
    """``path``, or the same file reached through a directory fd when it is too long."""
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def spec_to_json(spec: VersionSpec) -> dict[str, Any]:
    return asdict(spec)


def spec_from_json(data: dict[str, Any]) -> VersionSpec:
    return VersionSpec(
        version_id=int(data["version_id"]),
        version=str(data["version"]),
        artifact=ArtifactRef(**data["artifact"]),
        tasks_dir=str(data["tasks_dir"]),
        context=dict(data.get("context") or {}),
        env={str(k): str(v) for k, v in (data.get("env") or {}).items()},
    )


def _error_of(exc: BaseException) -> dict[str, str]:
    name = type(exc).__name__ if isinstance(exc, SlipwayError) else "RuntimeUnavailable"
    message = exc.message if isinstance(exc, SlipwayError) else f"{type(exc).__name__}: {exc}"
    return {"class": name, "message": message}


def _raise(error: dict[str, Any]) -> None:
    cls = getattr(errors, str(error.get("class")), None)
    if not (isinstance(cls, type) and issubclass(cls, SlipwayError)):
        cls = RuntimeUnavailable
    raise cls(str(error.get("message") or "the controller refused"))


class _Server(socketserver.ThreadingUnixStreamServer):
    # Handler threads are counted (``answering``) rather than joined without a bound: one
    # request that never ends (a peer that never sends its line, a start that hangs) must
    # not hold the controller's shutdown, and with it every worker, forever.
    daemon_threads = True
    block_on_close = False
    # Unanswered sends (begin, release) arrive in bursts; a full backlog refuses them
    # with EAGAIN, and a lost release makes a worker look busy until a restart.
    request_queue_size = 256
    handlers: dict[str, Handler]
    answering: threading.Condition
    in_flight: int


class _Connection(socketserver.StreamRequestHandler):
    server: _Server
    timeout = READ_TIMEOUT  # for the request line; a handler itself may take longer

    def handle(self) -> None:
        with self.server.answering:
            self.server.in_flight += 1
        try:
            self._answer()
        finally:
            with self.server.answering:
                self.server.in_flight -= 1
                self.server.answering.notify_all()

    def _answer(self) -> None:
        try:
            line = self.rfile.readline(MAX_LINE)
        except OSError:
            return  # the peer went away or never sent its request
        if self.connection.gettimeout() is not None:
            self.connection.settimeout(None)
        try:
            request = json.loads(line)
            handler = self.server.handlers[request["op"]]
            reply: dict[str, Any] = {"ok": handler(request)}
        except (ValueError, KeyError, TypeError) as exc:
            reply = {"error": {"class": "InvalidInput", "message": f"bad request: {exc}"}}
        except Exception as exc:
            if not isinstance(exc, SlipwayError):
                log.exception("control request failed")
            reply = {"error": _error_of(exc)}
        with contextlib.suppress(OSError):
            self.wfile.write(json.dumps(reply).encode() + b"\n")


@contextlib.contextmanager
def _private_files() -> Iterator[None]:
    """Sockets bound meanwhile are made 0600 (the data dir is 0700 too)."""
    old = os.umask(0o177)
    try:
        yield
    finally:
        os.umask(old)


class _Datagrams:
    """The controller's end of a datagram socket: each datagram goes to ``handle``, in
    one thread of its own (``name``), in the order they were sent."""

    def __init__(self, path: Path, handle: Callable[[bytes], None], *, name: str) -> None:
        self.path = path
        self.name = name
        self._handle = handle
        self._sock: socket.socket | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._stopping.clear()
        self.path.unlink(missing_ok=True)
        with _addressable(self.path) as address, _private_files():
            self._sock.bind(address)
        self._thread = threading.Thread(
            target=self._read, args=(self._sock,), name=self.name, daemon=True
        )
        self._thread.start()

    def _read(self, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(MAX_DATAGRAM)
            except OSError:
                return
            if self._stopping.is_set():
                return
            try:
                self._handle(data)
            except Exception:
                log.exception("a control datagram's handler failed")

    def stop(self, *, wait: float = STOP_WAIT) -> None:
        """Stop reading; a handler being run gets ``wait`` seconds to finish (a
        ``begin`` may be waiting for a worker start), then the shutdown goes on."""
        self._stopping.set()
        if self._thread is not None:
            # A datagram of our own ends the wait (no polling timeout, so an idle
            # controller does not wake). If the queue is full, the thread is reading
            # and sees the flag after the next one.
            with (
                socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as poke,
                _addressable(self.path) as address,
                contextlib.suppress(OSError),
            ):
                poke.setblocking(False)
                poke.sendto(b"", address)
            self._thread.join(wait)
            if self._thread.is_alive():
                log.warning(
                    "the %s thread is still busy after %gs; stopping anyway", self.name, wait
                )
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self.path.unlink(missing_ok=True)


def _wakeups(path: Path, notify: Handler) -> _Datagrams:
    """Wake-up datagrams: each ``{"kind": ...}`` goes to ``notify`` (a queue signal,
    which never blocks)."""

    def handle(data: bytes) -> None:
        try:
            kind = json.loads(data)["kind"]
            if kind is not None and not isinstance(kind, str):
                raise TypeError(kind)
        except (ValueError, KeyError, TypeError):
            log.debug("ignored a malformed wake-up datagram: %r", data[:80])
            return
        notify({"kind": kind})

    return _Datagrams(path, handle, name="control-wake")


def _ledger(path: Path, handlers: dict[str, Handler]) -> _Datagrams:
    """A run's ``begin`` and ``release``, ``{"op": ..., ...}`` each. Their own thread:
    a ``begin`` waits for its version's lock, which a worker start holds, and wake-ups
    must not wait behind it."""

    def handle(data: bytes) -> None:
        try:
            request = json.loads(data)
            handler = handlers[request["op"]] if request["op"] in LEDGER_OPS else None
        except (ValueError, KeyError, TypeError):
            handler = None
        if handler is None:
            log.debug("ignored a malformed run datagram: %r", data[:80])
            return
        try:
            handler(request)
        except (ValueError, KeyError, TypeError) as exc:
            log.debug("ignored a malformed run datagram (%s): %r", exc, data[:80])

    return _Datagrams(path, handle, name="control-runs")


class ControlServer:
    """The controller's end: serves ``handlers`` (op name -> callable) on the socket, and
    wake-up datagrams to the ``notify`` handler when there is one."""

    def __init__(self, data_dir: Path, handlers: dict[str, Handler]) -> None:
        self.path = data_dir / SOCKET_NAME
        self.handlers = handlers
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        notify = handlers.get("notify")
        self._datagrams = [_wakeups(data_dir / WAKE_NAME, notify)] if notify else []
        if all(op in handlers for op in LEDGER_OPS):
            self._datagrams.append(_ledger(data_dir / LEDGER_NAME, handlers))

    def start(self) -> None:
        for datagrams in self._datagrams:
            datagrams.start()
        self.path.unlink(missing_ok=True)
        with _addressable(self.path) as address:
            server = _Server(address, _Connection, bind_and_activate=False)
            with _private_files():
                server.server_bind()
            server.server_activate()
        server.handlers = self.handlers
        server.answering = threading.Condition()
        server.in_flight = 0
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="control"
        )
        self._thread.start()

    def stop(self, *, wait: float = STOP_WAIT) -> None:
        """Stop accepting; requests being answered get ``wait`` seconds to finish (a run's
        ``acquire`` may be starting a worker), then the shutdown goes on without them."""
        for datagrams in self._datagrams:
            datagrams.stop(wait=wait)
        if self._server is None:
            return
        server = self._server
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join()
        deadline = time.monotonic() + wait
        with server.answering:
            while server.in_flight and time.monotonic() < deadline:
                server.answering.wait(max(0.0, min(1.0, deadline - time.monotonic())))
            if server.in_flight:
                log.warning(
                    "%d control request(s) still unanswered after %gs; stopping anyway",
                    server.in_flight,
                    wait,
                )
        self.path.unlink(missing_ok=True)
        self._server = None


class ControlClient:
    """The web process's end. Every call opens a connection of its own; wake-ups and a
    run's ``begin`` and ``release`` are datagrams from unbound sockets."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / SOCKET_NAME
        self.wake_path = data_dir / WAKE_NAME
        self.ledger_path = data_dir / LEDGER_NAME
        self._wake: socket.socket | None = None
        self._ledger: socket.socket | None = None
        self._wake_lock = threading.Lock()
        self._missed = False  # a wake-up found the controller's queue full

    def call(
        self, op: str, *, timeout: float = CONNECT_TIMEOUT, wait: float = 0.0, **fields: Any
    ) -> Any:
        """One request. ``wait``: how long to keep trying to connect while the controller
        is (re)starting and its socket is not there yet."""
        deadline = time.monotonic() + wait
        while True:
            try:
                line = self._exchange(op, timeout=timeout, fields=fields)
                break
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                if time.monotonic() >= deadline:
                    raise RuntimeUnavailable(
                        f"the controller process cannot be reached ({op}): {exc.strerror}",
                        delay=1.0,
                    ) from exc
                time.sleep(0.1)
            except OSError as exc:
                raise RuntimeUnavailable(
                    f"the controller process cannot be reached ({op}): {exc.strerror or exc}",
                    delay=1.0,
                ) from exc
        if not line:
            raise RuntimeUnavailable(f"the controller process closed the channel ({op})")
        reply = json.loads(line)
        if "error" in reply:
            _raise(reply["error"])
        return reply.get("ok")

    def _exchange(self, op: str, *, timeout: float, fields: dict[str, Any]) -> bytes:
        with (
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock,
            _addressable(self.path) as address,
        ):
            sock.settimeout(CONNECT_TIMEOUT)
            sock.connect(address)
            sock.settimeout(timeout)
            sock.sendall(json.dumps({"op": op, **fields}).encode() + b"\n")
            with sock.makefile("rb") as stream:
                return stream.readline(MAX_LINE)

    def send(self, op: str, **fields: Any) -> None:
        """A request whose answer nobody waits for: a run's ``begin`` or ``release`` (the
        run's answer should not wait for the niced controller to be scheduled).

        It goes as a datagram on ``control.runs``, read by one thread of the controller:
        as a connection each they cost the controller a thread per message, two per run
        (~2 ms of its CPU, on the two cores the run itself needs). A full queue holds the
        sender up to ``LEDGER_SEND_TIMEOUT``; a datagram that cannot go (no controller
        listening, or the queue stayed full) goes as a connection of its own. Best
        effort beyond that, as a lost release only makes a worker look busy until the
        controller restarts."""
        data = json.dumps({"op": op, **fields}).encode()
        if op in LEDGER_OPS and self._datagram(data):
            return
        with (
            contextlib.suppress(OSError),
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock,
            _addressable(self.path) as address,
        ):
            sock.settimeout(CONNECT_TIMEOUT)
            sock.connect(address)
            sock.sendall(data + b"\n")

    def _datagram(self, data: bytes) -> bool:
        with self._wake_lock:
            if self._ledger is None:
                self._ledger = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                # Blocking, with the kernel's own send timeout: a Python-level timeout
                # would spin, as an unconnected socket polls writable when the
                # receiver's queue is full.
                seconds = int(LEDGER_SEND_TIMEOUT)
                micros = int((LEDGER_SEND_TIMEOUT - seconds) * 1e6)
                timeval = struct.pack("ll", seconds, micros)
                self._ledger.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
            sock = self._ledger
        try:
            with _addressable(self.ledger_path) as address:
                sock.sendto(data, address)
        except OSError:
            return False
        return True

    def reachable(self) -> bool:
        try:
            return bool(self.call("ping", timeout=2.0))
        except (RuntimeUnavailable, ValueError):
            return False

    def notify(self, kind: str | None) -> None:
        """A wake-up, sent without waiting. With no controller listening it is lost,
        which only costs a poll interval. When the controller's queue of datagrams is
        full (the kernel holds ~10), the ones queued will wake it anyway, but maybe not
        the threads of this ``kind``: the next wake-up that gets through wakes all."""
        with (
            contextlib.suppress(OSError),
            _addressable(self.wake_path) as address,
            self._wake_lock,  # a send never blocks, so holding it is short
        ):
            if self._wake is None:
                self._wake = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._wake.setblocking(False)
            sent = None if self._missed else kind
            try:
                self._wake.sendto(json.dumps({"kind": sent}).encode(), address)
            except BlockingIOError:
                self._missed = True
                return
            self._missed = False

    def close(self) -> None:
        """Close the datagram sockets (a later message opens another)."""
        with self._wake_lock:
            sockets = [self._wake, self._ledger]
            self._wake = self._ledger = None
        for sock in sockets:
            if sock is not None:
                sock.close()


class RemoteRuntime:
    """The :class:`~controller.runtimes.base.Runtime` of the web process.

    Shutdown: :meth:`stop_accepting` refuses new runs; :meth:`close` waits (bounded) for
    the runs in flight to come back, after the controller stopped their workers, so that
    each is recorded before the database is closed. A run cut short by the shutdown says
    so (``grace`` is named in the message) instead of "worker unreachable".
    """

    name = "local"

    def __init__(self, client: ControlClient, *, grace: float) -> None:
        self.client = client
        self.grace = grace
        self._http = WorkerConnections()
        self.records = Registry(client.path.parent / "workers")
        self._stopping = threading.Event()
        self._in_flight = 0
        self._changed = threading.Condition()

    def ensure(self, spec: VersionSpec) -> None:
        self.client.call(
            "ensure", spec=spec_to_json(spec), timeout=ACQUIRE_TIMEOUT, wait=RESTART_WAIT
        )

    def activate(self, spec: VersionSpec) -> None:
        """Nothing to switch: every run names its version's worker."""

    def retire(self, version_id: int) -> None:
        self.client.call("retire", version_id=version_id, wait=RESTART_WAIT)

    def serving(self) -> set[int]:
        return set()

    def stop_unlisted(self, keep: set[int]) -> None:
        return None

    def idle_for(self, version_id: int) -> float:
        return 0.0

    def stop_accepting(self) -> None:
        self._stopping.set()

    def close(self, *, timeout: float = 15.0) -> None:
        self._stopping.set()
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._in_flight and time.monotonic() < deadline:
                self._changed.wait(0.2)
            if self._in_flight:
                log.warning("%d run(s) still in flight at shutdown", self._in_flight)
        self._http.close()
        self.client.close()  # its datagram sockets; a later message would open another

    def run(
        self,
        spec: VersionSpec,
        *,
        run_id: str,
        task_id: str,
        payload: Any,
        timeout: float | None,
        env: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        if self._stopping.is_set():
            raise RuntimeUnavailable("slipway serve is shutting down and takes no new runs")
        with self._changed:
            self._in_flight += 1
        try:
            direct = self._run_direct(
                spec, run_id=run_id, task_id=task_id, payload=payload, timeout=timeout, env=env
            )
            if direct is not None:
                return direct
            return run_leased(
                _ChannelLeases(self.client),
                self._http,
                spec,
                run_id=run_id,
                task_id=task_id,
                payload=payload,
                timeout=timeout,
                env=env,
                stopping=self._stopping,
                stopped_message=self._stopped_message(),
            )
        finally:
            with self._changed:
                self._in_flight -= 1
                self._changed.notify_all()

    def _run_direct(
        self,
        spec: VersionSpec,
        *,
        run_id: str,
        task_id: str,
        payload: Any,
        timeout: float | None,
        env: dict[str, str] | None,
    ) -> dict[str, Any] | None:
        """The run sent to the recorded worker without a lease; None when there is no
        record or the worker did not take the run (then it has not started)."""
        worker = self.records.read(spec.version_id)
        if worker is None:
            return None
        mark = {"version_id": spec.version_id, "port": worker.port, "run_id": run_id}
        self.client.send("begin", **mark)
        try:
            response = post_run(
                self._http,
                worker.url,
                run_id=run_id,
                task_id=task_id,
                payload=payload,
                timeout=timeout,
                env=env,
                version_id=spec.version_id,
            )
        except WorkerUnreachable as exc:
            if exc.connecting:
                response = None
            else:
                self.client.send("release", **mark)
                if self._stopping.is_set():
                    raise RuntimeUnavailable(self._stopped_message()) from exc
                raise RuntimeUnavailable(
                    f"the worker of version {spec.version} is unreachable: {exc}"
                ) from exc
        self.client.send("release", **mark)
        if response is None or response.status_code == 503:
            return None
        return answer_of(response, spec=spec, task_id=task_id)

    def _stopped_message(self) -> str:
        return (
            "the run was stopped: slipway serve shut down and the run "
            f"outlived the {self.grace:g}s shutdown grace period "
            "(SLIPWAY_SHUTDOWN_GRACE_PERIOD)"
        )


def lease_handlers(runtime: Any) -> dict[str, Handler]:
    """The control ops a run uses, served by the controller's ``LocalRuntime``."""

    def release(request: dict[str, Any]) -> None:
        run_id = request.get("run_id")
        runtime.release(
            int(request["version_id"]),
            int(request["port"]),
            run_id=str(run_id) if run_id is not None else None,
        )

    return {
        "acquire": lambda r: runtime.acquire(spec_from_json(r["spec"])),
        "begin": lambda r: runtime.begin(int(r["version_id"]), int(r["port"]), str(r["run_id"])),
        "release": release,
        "refused": lambda r: runtime.refused(int(r["version_id"]), int(r["port"])),
    }


class _ChannelLeases:
    """Leases from the controller, over the control channel."""

    def __init__(self, client: ControlClient) -> None:
        self.client = client

    def acquire(self, spec: VersionSpec) -> dict[str, Any]:
        return dict(
            self.client.call(
                "acquire", spec=spec_to_json(spec), timeout=ACQUIRE_TIMEOUT, wait=RESTART_WAIT
            )
        )

    def release(self, version_id: int, port: int) -> None:
        self.client.send("release", version_id=version_id, port=port)

    def refused(self, version_id: int, port: int) -> None:
        self.client.call("refused", version_id=version_id, port=port)
