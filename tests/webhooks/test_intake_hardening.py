"""``POST /webhooks/github`` against bodies and clients GitHub never sends, on a real
``slipway serve`` (issue 7, items 10a, 12, 13, 16, 17).

Slow and lying clients are raw sockets: httpx cannot send fewer bytes than it announces.
The server runs with a 1 s body timeout so that they are cut off quickly; each socket
waits for the server's answer (or its close) with a generous deadline, never a sleep.
"""

from __future__ import annotations

import json
import select
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from support import payloads
from support.payloads import body_of
from support.repos import empty_repository
from support.server import Server

pytestmark = pytest.mark.node

REPO = "octo-org/demo"
SHA_A = "9b2c7e4f0a1d3c5e7f9b2c7e4f0a1d3c5e7f9b2c"
SHA_B = "1f3e5d7c9b1a2f3e5d7c9b1a2f3e5d7c9b1a2f3e"
BODY_TIMEOUT = 1.0
DEADLINE = 30.0


@pytest.fixture(autouse=True)
def _node_modules() -> None:
    payloads.require_node_modules()


@pytest.fixture(scope="module")
def impatient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the module (starting one costs seconds on a loaded machine): its
    webhook body timeout is 1 s, and project ``demo`` is connected."""
    payloads.require_node_modules()
    root = tmp_path_factory.mktemp("impatient")
    server = Server(root / "data", extra_env={"SLIPWAY_WEBHOOK_BODY_TIMEOUT": str(BODY_TIMEOUT)})
    try:
        server.start()
        server.create_project(
            "demo", repo=REPO, clone_url=str(empty_repository(root / "empty-repo.git"))
        )
        yield server
    finally:
        server.close()


def push_body(after: str = SHA_B, **fields: Any) -> bytes:
    payload = payloads.push(before=SHA_A, after=after)
    payload["repository"].update(fields)
    return body_of(payload)


def connect(server: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE)
    return sock


def head(server: Server, extra: str) -> bytes:
    return (
        f"POST /webhooks/github HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"X-GitHub-Event: push\r\nX-GitHub-Delivery: {uuid.uuid4()}\r\n"
        f"X-Hub-Signature-256: sha256={'0' * 64}\r\n{extra}\r\n"
    ).encode()


def read_until_closed(sock: socket.socket, deadline: float) -> bytes:
    """Everything the server sends until it closes the connection (or the deadline)."""
    data = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"the connection is still open after {DEADLINE} s; got {data!r}")


def trickle(sock: socket.socket, data: bytes, *, gap: float) -> None:
    """Send ``data`` a byte every ``gap`` seconds until the server answers or closes."""
    for byte in data:
        readable, _, _ = select.select([sock], [], [], gap)
        if readable:
            return
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return


def assert_timed_out(server: Server, sock: socket.socket, started: float) -> None:
    answer = read_until_closed(sock, started + DEADLINE)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"connection: close" in answer.lower()
    assert time.monotonic() - started < BODY_TIMEOUT + 15


# --- item 16: slow or lying bodies time out ---------------------------------------------


def test_a_body_shorter_than_announced_is_answered_408_and_closed(impatient: Server) -> None:
    with connect(impatient) as sock:
        started = time.monotonic()
        sock.sendall(head(impatient, "Content-Length: 1000\r\n") + b'{"zen":')
        assert_timed_out(impatient, sock, started)


def test_a_chunked_body_that_stops_midway_is_answered_408_and_closed(impatient: Server) -> None:
    with connect(impatient) as sock:
        started = time.monotonic()
        sock.sendall(head(impatient, "Transfer-Encoding: chunked\r\n") + b"64\r\n" + b"x" * 10)
        assert_timed_out(impatient, sock, started)


def test_a_slowloris_body_is_cut_off(impatient: Server) -> None:
    body = push_body()
    with connect(impatient) as sock:
        started = time.monotonic()
        sock.sendall(head(impatient, f"Content-Length: {len(body)}\r\n"))
        trickle(sock, body, gap=0.25)
        assert_timed_out(impatient, sock, started)
    assert "body not received within 1 s" in impatient.log()


def test_many_slow_clients_do_not_keep_their_connections(impatient: Server) -> None:
    def one(_: int) -> bytes:
        with connect(impatient) as sock:
            started = time.monotonic()
            sock.sendall(head(impatient, "Content-Length: 500\r\n") + b"{")
            return read_until_closed(sock, started + DEADLINE)

    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(one, range(20)))
    assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers), answers
    response = impatient.deliver("push", push_body(SHA_B))
    assert response.status_code == 202, response.text


# --- item 17: a client that goes away is one line, not a traceback ----------------------


def test_a_client_disconnect_logs_one_line(impatient: Server) -> None:
    message = "the client disconnected before sending its whole body"
    before = impatient.log().count(message)
    for _ in range(3):
        with connect(impatient) as sock:
            sock.sendall(head(impatient, "Content-Length: 1000\r\n") + b'{"zen":')
    impatient.wait_for(lambda: impatient.log().count(message) == before + 3, timeout=DEADLINE)
    log = impatient.log()
    assert "Traceback" not in log
    assert "ClientDisconnect" not in log
    assert "ERROR" not in log


# --- items 12 and 13: bodies that are not UTF-8 JSON are 400, alone ---------------------


def test_a_lone_surrogate_is_400_and_its_neighbours_are_recorded(impatient: Server) -> None:
    """Item 12: ``"\\ud800"`` in ``repository.full_name`` is valid JSON but cannot be
    stored; it used to fail its whole group commit (every neighbour answered 503)."""
    bad = push_body(full_name="octo-org/demo\\ud800").replace(b"\\\\ud800", b"\\ud800")
    assert b'"octo-org/demo\\ud800"' in bad
    bodies = [bad if n % 5 == 0 else push_body(f"{n:040x}") for n in range(60)]

    with ThreadPoolExecutor(12) as pool:
        statuses = list(pool.map(lambda body: impatient.deliver("push", body).status_code, bodies))
    for body, status in zip(bodies, statuses, strict=True):
        assert status == (400 if body is bad else 202), statuses
    assert "ud800" not in impatient.log()


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe{}",
        b'{"zen": "\xed\xa0\x80"}',  # a surrogate encoded in UTF-8: not UTF-8
        b'{"zen": "\xc3"}',
        b'{"zen": "\\udc00"}',
        b'{"zen": ["ok \\ud83d\\ude00", {"\\ud800": 1}]}',
    ],
)
def test_a_body_that_is_not_utf8_text_is_400(impatient: Server, body: bytes) -> None:
    response = impatient.deliver("push", body)
    assert response.status_code == 400, response.text
    assert "UTF" in response.json()["error"]


def test_a_surrogate_pair_is_fine(impatient: Server) -> None:
    body = push_body().replace(b'"zen"', b'"zen \\ud83d\\ude00"')
    assert impatient.deliver("push", body).status_code == 202


@pytest.mark.parametrize("depth", [10_000, 200_000])
def test_deeply_nested_json_is_400(impatient: Server, depth: int) -> None:
    """Item 13: it used to raise RecursionError and answer 500."""
    for body in (b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth):
        response = impatient.deliver("push", body)
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "body is nested too deeply"


def test_unstorable_names_and_headers_are_400(impatient: Server) -> None:
    too_long = push_body(full_name="octo-org/" + "x" * 400)
    with_nul = push_body(full_name="octo-org/demo\u0000")
    for body in (too_long, with_nul):
        assert impatient.deliver("push", body).status_code == 400
    long_event = impatient.deliver("e" * 101, push_body())
    assert long_event.status_code == 400


# --- item 10a: a failure to record is logged with context, never the body ----------------


def test_a_failure_to_record_is_logged_with_context_and_answered_503(impatient: Server) -> None:
    inbox = sqlite3.connect(impatient.data_dir / "slipway.inbox.db", isolation_level=None)
    try:
        inbox.execute("ALTER TABLE inbox RENAME TO inbox_away")
        body = push_body(SHA_B)
        response = impatient.deliver("push", body, delivery="broken-1")
        assert response.status_code == 503, response.text
    finally:
        inbox.execute("ALTER TABLE inbox_away RENAME TO inbox")
        inbox.close()
    line = impatient.wait_for(
        lambda: next((ln for ln in impatient.log().splitlines() if "could not record" in ln), None),
        timeout=DEADLINE,
    )
    assert "'broken-1'" in line and "'push'" in line and "OperationalError" in line, line
    log = impatient.log()
    assert json.loads(body)["compare"] not in log
    assert impatient.secret and impatient.secret not in log
    again = impatient.deliver("push", body, delivery="broken-1")
    assert (again.status_code, again.json()["duplicate"]) == (202, False)
