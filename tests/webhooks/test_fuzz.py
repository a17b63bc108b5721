"""Fuzzing ``POST /webhooks/github`` on a real ``slipway serve`` (issue 7's acceptance test).

A bounded, seeded generator (reproducible: a failure names its case) sends thousands of
deliveries over keep-alive httpx connections — bad headers, bad signatures, malformed,
deeply nested, wrong-typed and non-UTF-8 bodies, repeated ids — built by mutating GitHub's
real example payloads, most of them validly signed so that they get past the signature
check. Raw sockets add what httpx cannot send: truncated bodies, chunked bodies (whole,
and stopping midway) and bodies shorter than their ``Content-Length``.

It holds that:

* no answer is a 5xx (the server has a secret, so not even 503),
* every delivery answered 202 ends with a recorded outcome once the controller drains
  (routed, rejected with a reason, ignored), read from the database file,
* a valid push sent afterwards still deploys,
* nothing in the server log is an ERROR from intake or routing.

Most mutated pushes name an unconnected repository, so that they are validated (the
typed views parse before routing looks for projects) without starting hundreds of
deployments; the rest target the connected one. (Over 400 lines: the generator, the raw
cases and the checks are one test and read best together.)
"""

from __future__ import annotations

import copy
import json
import random
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from support import payloads
from support.repos import empty_repository
from support.server import Server

from webhooks.signatures import sign

pytestmark = pytest.mark.node

SEED = 20261201
CASES = 2000
THREADS = 4
REPO = "octo-org/demo"
OTHER_REPO = "octo-org/elsewhere"
SHA_A = "9b2c7e4f0a1d3c5e7f9b2c7e4f0a1d3c5e7f9b2c"
SHA_B = "1f3e5d7c9b1a2f3e5d7c9b1a2f3e5d7c9b1a2f3e"
DRAIN_DEADLINE = 600.0  # a deadline, not an expectation: ~1 min unloaded

# The fields routing reads: a mutation hits one of them more often than not.
ROUTED_PATHS = [
    ("after",),
    ("before",),
    ("ref",),
    ("deleted",),
    ("created",),
    ("repository",),
    ("repository", "full_name"),
    ("repository", "default_branch"),
    ("repository", "clone_url"),
    ("installation",),
    ("installation", "id"),
    ("installation", "account", "login"),
    ("repositories",),
    ("repositories_added",),
    ("action",),
    ("number",),
    ("pull_request",),
    ("pull_request", "number"),
    ("pull_request", "head"),
    ("pull_request", "head", "sha"),
    ("pull_request", "head", "ref"),
    ("pull_request", "head", "repo"),
    ("pull_request", "draft"),
    ("pull_request", "base", "ref"),
]

WEIRD: list[Any] = [
    5,
    -1,
    0,
    2**70,
    -(2**70),
    1.5,
    float("nan"),
    True,
    False,
    None,
    [],
    {},
    "",
    "x",
    "a" * 300,
    "nul\x00here",
    "\ud800",
    "\udfff tail",
    ["a" * 40],
    [{"full_name": 5, "id": 2**70}],
    [{"full_name": "octo-org/demo", "id": "7"}],
    {"id": 2**70, "full_name": ["x"]},
    "--upload-pack=touch /tmp/pwned",
    "refs/heads/main",
    "refs/tags/v1",
    "0" * 40,
    "f" * 64,
    "F" * 41,
    "ünïcödé/\u00e9\u4e2d\u6587",
]


@dataclass
class Case:
    name: str
    event: str | None
    delivery: str | None
    body: bytes
    signature: str | None


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    payloads.require_node_modules()
    root = tmp_path_factory.mktemp("fuzz")
    server = Server(root / "data", extra_env={"SLIPWAY_WEBHOOK_BODY_TIMEOUT": "1"})
    try:
        server.start()
        server.create_project(
            "demo", repo=REPO, clone_url=str(empty_repository(root / "empty-repo.git"))
        )
        yield server
    finally:
        server.close()


def bases() -> list[tuple[str, dict[str, Any]]]:
    return [
        ("push", payloads.push(before=SHA_A, after=SHA_B)),
        ("push", payloads.push(ref="refs/heads/feature/x", before=SHA_A, after=SHA_B)),
        ("pull_request", payloads.pull_request(action="opened", head_sha=SHA_B)),
        ("pull_request", payloads.pull_request(action="closed", head_sha=SHA_B)),
        ("installation", payloads.installation(action="created", repos=[REPO])),
        (
            "installation_repositories",
            payloads.installation_repositories(action="added", added=[REPO], removed=[]),
        ),
        ("ping", payloads.ping()),
    ]


def _set(payload: Any, path: tuple[str, ...], value: Any) -> None:
    node = payload
    for name in path[:-1]:
        if not isinstance(node, dict):
            return
        if not isinstance(node.get(name), dict):
            node[name] = {}
        node = node[name]
    if isinstance(node, dict):
        node[path[-1]] = value


def _random_path(rng: random.Random, payload: Any) -> tuple[str, ...]:
    path: list[str] = []
    node = payload
    while isinstance(node, dict) and node and (not path or rng.random() < 0.6):
        name = rng.choice(sorted(node))
        path.append(name)
        node = node[name]
    return tuple(path) or ("zen",)


def _encode(rng: random.Random, payload: Any) -> bytes:
    if rng.random() < 0.5:
        return json.dumps(payload).encode("ascii")
    text = json.dumps(payload, ensure_ascii=False)
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate becomes invalid UTF-8


def _nested(rng: random.Random) -> bytes:
    depth = rng.choice([300, 999, 1000, 1001, 5000, 50_000])
    if rng.random() < 0.5:
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


def generate(rng: random.Random, secret: str, count: int) -> list[Case]:
    base = bases()
    sent_ids: list[str] = []
    cases = []
    for n in range(count):
        event, original = rng.choice(base)
        payload = copy.deepcopy(original)
        if isinstance(payload.get("repository"), dict) and rng.random() < 0.8:
            payload["repository"]["full_name"] = OTHER_REPO
        kind = rng.choices(
            ["typed", "random", "malformed", "nested", "non-utf8", "headers", "signature"],
            weights=[40, 20, 10, 5, 8, 8, 9],
        )[0]
        if kind in ("typed", "random"):
            for _ in range(rng.randint(1, 3)):
                path = rng.choice(ROUTED_PATHS) if kind == "typed" else _random_path(rng, payload)
                _set(payload, path, copy.deepcopy(rng.choice(WEIRD)))
            body = _encode(rng, payload)
        elif kind == "malformed":
            whole = json.dumps(payload).encode()
            body = rng.choice(
                [
                    whole[: rng.randrange(len(whole))],
                    bytes(rng.randrange(256) for _ in range(rng.randint(0, 64))),
                    b"[1, 2, 3]",
                    b'"just a string"',
                    whole + b" trailing",
                ]
            )
        elif kind == "nested":
            body = _nested(rng)
        elif kind == "non-utf8":
            whole = json.dumps(payload, ensure_ascii=False)
            body = rng.choice(
                [
                    whole.encode("latin-1", "replace").replace(b'"zen"', b'"z\xe9n"'),
                    whole.encode().replace(b'"', b'"\xff', 1),
                    whole.encode().replace(b'{"', b'{"\xed\xa0\x80', 1),
                    b"\xef\xbb\xbf" + whole.encode(),
                ]
            )
        else:
            body = _encode(rng, payload)
        delivery: str | None = str(uuid.uuid4())
        if sent_ids and rng.random() < 0.05:
            delivery = rng.choice(sent_ids)
        signature: str | None = sign(secret, body)
        case_event: str | None = event
        if kind == "headers":
            choice = rng.randrange(5)
            if choice == 0:
                case_event = None
            elif choice == 1:
                delivery = None
            elif choice == 2:
                delivery = "d" * rng.choice([100, 101, 5000])
            elif choice == 3:
                case_event = rng.choice(["fork", "e" * 101, "push\tx", "PUSH", "installation"])
            else:
                case_event = "x" * 200
        elif kind == "signature":
            signature = rng.choice(
                [
                    None,
                    "",
                    "sha256=",
                    sign("not-the-secret", body),
                    sign(secret, body + b" "),
                    "sha1=" + "0" * 40,
                    sign(secret, body).upper(),
                    "sha256=" + "z" * 64,
                    sign(secret, body) + "00",
                ]
            )
        if delivery:
            sent_ids.append(delivery)
        cases.append(Case(f"{n}:{kind}", case_event, delivery, body, signature))
    return cases


def send_all(server: Server, cases: list[Case]) -> list[tuple[Case, int, Any]]:
    local = threading.local()

    def client() -> httpx.Client:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=server.url, timeout=60, trust_env=False)
            clients.append(local.client)
        return local.client  # type: ignore[no-any-return]

    def send(case: Case) -> tuple[Case, int, Any]:
        headers = {"Content-Type": "application/json"}
        if case.event is not None:
            headers["X-GitHub-Event"] = case.event
        if case.delivery is not None:
            headers["X-GitHub-Delivery"] = case.delivery
        if case.signature is not None:
            headers["X-Hub-Signature-256"] = case.signature
        response = client().post("/webhooks/github", content=case.body, headers=headers)
        answer = response.json() if response.status_code == 202 else response.text
        return case, response.status_code, answer

    clients: list[httpx.Client] = []
    try:
        with ThreadPoolExecutor(THREADS) as pool:
            return list(pool.map(send, cases))
    finally:
        for c in clients:
            c.close()


def raw_request(server: Server, head: str, body: bytes, *, close_early: bool) -> bytes:
    """Send ``head`` and ``body``; the answer, read until the server closes (every raw
    request says ``Connection: close``), or nothing if the client goes away first."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(head.encode() + body)
        if close_early:
            return b""
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


def raw_cases(rng: random.Random, server: Server) -> list[tuple[str, str, Callable[[], bytes]]]:
    """(name, delivery id, send) for what httpx cannot send."""
    secret = server.secret or ""
    out: list[tuple[str, str, Callable[[], bytes]]] = []
    template = payloads.push(before=SHA_A, after=SHA_B)
    template["repository"]["full_name"] = OTHER_REPO
    for n in range(60):
        body = json.dumps({**template, "after": f"{n + 1:040x}"}).encode()
        delivery = str(uuid.uuid4())
        common = (
            f"POST /webhooks/github HTTP/1.1\r\nHost: 127.0.0.1\r\nX-GitHub-Event: push\r\n"
            f"X-GitHub-Delivery: {delivery}\r\nX-Hub-Signature-256: {sign(secret, body)}\r\n"
            "Connection: close\r\n"
        )
        cut = rng.randrange(1, len(body))
        kind = n % 4
        if kind == 0:  # truncated: the client goes away mid-body
            head = common + f"Content-Length: {len(body)}\r\n\r\n"
            out.append((f"truncated-{n}", delivery, _bind(server, head, body[:cut], True)))
        elif kind == 1:  # fewer bytes than announced, then silence
            head = common + f"Content-Length: {len(body)}\r\n\r\n"
            out.append((f"short-{n}", delivery, _bind(server, head, body[:cut], False)))
        elif kind == 2:  # chunked, whole
            chunks = b"".join(
                f"{len(body[i : i + 700]):x}\r\n".encode() + body[i : i + 700] + b"\r\n"
                for i in range(0, len(body), 700)
            )
            head = common + "Transfer-Encoding: chunked\r\n\r\n"
            out.append(
                (f"chunked-{n}", delivery, _bind(server, head, chunks + b"0\r\n\r\n", False))
            )
        else:  # chunked, announcing more than it sends
            head = common + "Transfer-Encoding: chunked\r\n\r\n"
            lying = f"{len(body):x}\r\n".encode() + body[:cut]
            out.append((f"chunked-short-{n}", delivery, _bind(server, head, lying, False)))
    return out


def _bind(server: Server, head: str, body: bytes, close_early: bool) -> Callable[[], bytes]:
    return lambda: raw_request(server, head, body, close_early=close_early)


def outcomes(server: Server, ids: set[str]) -> dict[str, str | None]:
    db = sqlite3.connect(f"{(server.data_dir / 'slipway.db').as_uri()}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT delivery_id, outcome FROM deliveries").fetchall()
    finally:
        db.close()
    return {delivery: outcome for delivery, outcome in rows if delivery in ids}


@pytest.mark.timeout(1200)  # thousands of requests: minutes on a loaded 2-core machine
def test_fuzzed_deliveries_get_no_5xx_and_every_accepted_one_an_outcome(fuzzed: Server) -> None:
    begun = time.monotonic()
    rng = random.Random(SEED)
    cases = generate(rng, fuzzed.secret or "", CASES)
    started = time.monotonic()
    print(f"fuzz: {CASES} cases generated in {started - begun:.1f} s")
    results = send_all(fuzzed, cases)
    raw = raw_cases(rng, fuzzed)
    with ThreadPoolExecutor(12) as pool:
        raw_answers = list(pool.map(lambda item: (item[0], item[1], item[2]()), raw))
    sent = time.monotonic() - started

    server_errors = [(c.name, status, answer) for c, status, answer in results if status >= 500]
    assert server_errors == [], server_errors[:20]
    unexpected = [
        (c.name, status) for c, status, _ in results if status not in (202, 400, 401, 413)
    ]
    assert unexpected == [], unexpected[:20]
    accepted = {c.delivery for c, status, _ in results if status == 202 and c.delivery}
    kinds = {c.name.split(":")[1] for c, status, _ in results if status == 202}
    assert {"typed", "random"} <= kinds, "the fuzz must get wrong-typed bodies past intake"
    assert len(accepted) > CASES // 4

    for name, delivery, answer in raw_answers:
        if name.startswith("truncated"):
            continue
        status = answer.split(b" ", 2)[1] if answer.startswith(b"HTTP/1.1 ") else answer[:40]
        expected = b"202" if name.startswith("chunked-") and "short" not in name else b"408"
        assert status == expected, (name, answer[:200])
        if expected == b"202":
            accepted.add(delivery)

    def drained() -> bool:
        known = outcomes(fuzzed, accepted)
        missing[:] = sorted(d for d in accepted if not known.get(d))
        return not missing

    missing: list[str] = []
    fuzzed.wait_for(drained, timeout=DRAIN_DEADLINE, interval=0.5)
    drained_after = time.monotonic() - started

    final = fuzzed.deliver("push", payloads.push(before=SHA_A, after="c0ffee" + "0" * 34))
    assert final.status_code == 202, final.text
    deployment = fuzzed.wait_for(
        lambda: next((d for d in fuzzed.deployments() if d["sha"] == "c0ffee" + "0" * 34), None),
        timeout=DRAIN_DEADLINE,
    )
    assert deployment["environment"] == "production"
    log = fuzzed.log_path.read_text(errors="replace")
    assert " ERROR webhooks." not in log and " ERROR controller.routing" not in log, log
    print(
        f"fuzz: {len(results) + len(raw)} requests sent in {sent:.1f} s, {len(accepted)} "
        f"accepted, all with an outcome after {drained_after:.1f} s, "
        f"the last push deployed after {time.monotonic() - started:.1f} s; "
        f"{log.count('routing a batch')} routing batches retried one by one"
    )
