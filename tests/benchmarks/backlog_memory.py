"""Memory of the router draining a backlog of large deliveries (issue 7, item 15).

A SQLite data dir gets ``--count`` pushes of ``--size-mib`` each waiting in the inbox (a
backlog, as after a controller restart); a fresh process then moves and routes them all,
as the controller's route drain does, and reports its peak RSS. It runs twice: with the
byte bounds (``MAX_BATCH_BYTES`` for the inbox move and the routing batch) and with the
bounds lifted (count only, as before), so the figures compare like with like on the same
machine. Prints figures; checks nothing.

    .venv/bin/python tests/benchmarks/backlog_memory.py [--count 30 --size-mib 16] [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

REPO = "octo-org/demo"
UNBOUNDED = 2**62

DRAIN = """
import resource, sys, time
from cryptography.fernet import Fernet
from controller.routing import route_pending
from controller.secretstore.crypto import Cipher
from controller.store.db import Database
from controller.store.deliveries import move_from_inbox
from controller.store.inbox import Inbox
url, max_bytes = sys.argv[1], int(sys.argv[2])
db, inbox = Database(url), Inbox.beside(url)
cipher = Cipher([Fernet.generate_key().decode()])
started = time.monotonic()
routed = 0
while True:
    moved = move_from_inbox(db, inbox, max_bytes=max_bytes)
    results = route_pending(db, cipher, budget=60.0, max_bytes=max_bytes)
    routed += len(results or [])
    if not moved and results is None:
        break
print(routed, time.monotonic() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def prepare(root: Path, *, count: int, size: int) -> str:
    from cryptography.fernet import Fernet
    from support import payloads

    from controller.domain.projects import create_project
    from controller.secretstore.crypto import Cipher
    from controller.store.db import Database
    from controller.store.inbox import Entry, Inbox

    url = f"sqlite:///{root / 'slipway.db'}"
    db = Database(url)
    db.migrate()
    with db.transaction() as session:
        cipher = Cipher([Fernet.generate_key().decode()])
        create_project(session, cipher, ref="demo", repo=REPO, clone_url="/nowhere")
    db.dispose()
    inbox = Inbox.beside(url)
    assert inbox is not None
    template = payloads.push(repo=REPO, before="0" * 40, after="1" * 40)
    for n in range(count):
        body = json.dumps({**template, "after": f"{n + 1:040x}"}).encode()
        body = body[:-1] + b',"padding":"' + b"x" * max(0, size - len(body)) + b'"}'
        inbox.append(
            [
                Entry(
                    seq=0,
                    delivery_id=f"big-{n}",
                    event="push",
                    action=None,
                    repo_lower=REPO,
                    body=body,
                    received_at=datetime.now(UTC),
                )
            ]
        )
    inbox.close()
    return url


def drain(url: str, max_bytes: int) -> tuple[int, float, float]:
    result = subprocess.run(
        [sys.executable, "-c", DRAIN, url, str(max_bytes)],
        capture_output=True,
        text=True,
        check=True,
        timeout=1800,
    )
    routed, seconds, maxrss_kib = result.stdout.split()
    return int(routed), float(seconds), int(maxrss_kib) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=30)
    parser.add_argument("--size-mib", type=float, default=16)
    parser.add_argument("--quick", action="store_true", help="8 deliveries of 4 MiB")
    args = parser.parse_args()
    count, size_mib = (8, 4.0) if args.quick else (args.count, args.size_mib)
    size = int(size_mib * 1024 * 1024)
    print(f"backlog: {count} pushes of {size_mib:g} MiB waiting in the inbox")
    for label, max_bytes in (("byte-bounded", 0), ("count only", UNBOUNDED)):
        with tempfile.TemporaryDirectory(prefix="slipway-backlog-") as tmp:
            url = prepare(Path(tmp), count=count, size=size)
            routed, seconds, peak = drain(url, max_bytes or 16 * 1024 * 1024)
        print(f"  {label:>12}: routed {routed} in {seconds:.1f} s, peak RSS {peak:.0f} MiB")


if __name__ == "__main__":
    main()
