"""A deployment resumed by another replica redoes the steps whose effects are on disk.

``fetch`` (the repository mirror), ``checkout`` (the work dir), ``install`` (the
virtualenv) and ``build`` (the artifact) leave their effects in the data dir of the
controller that ran them; their journaled results are true only there. With several
replicas each has a data dir of its own (an ``emptyDir`` per pod: the state is in
PostgreSQL), so when the leader dies mid-build and another replica takes the deployment
over, reusing those results would point at files that are not there.

So each of those results carries the id of the data dir that produced it (a random id
kept in ``<data dir>/node-id``, stable across restarts on the same volume). On resume,
if any of them was produced elsewhere, all of them that are done run again here; the
steps are written to be rerun from a clean slate (see :mod:`controller.pipeline.journal`).
The steps from ``version`` on write to the database and are never redone: a resumed
deployment numbers one version and promotes it once. Results from before this change
have no id and count as this replica's, as they always did.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controller.pipeline.journal import Journal

LOCAL_STEPS = ("fetch", "checkout", "install", "build")
NODE_FILE = "node-id"

StepFn = Callable[[int], dict[str, Any]]


def node_id(data_dir: Path) -> str:
    path = data_dir / NODE_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    node = uuid.uuid4().hex[:16]
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(node + "\n")
    return node


def on_node(node: str, fn: StepFn) -> StepFn:
    """``fn`` with its result marked as produced in the data dir ``node``."""
    return lambda attempt: {**fn(attempt), "node": node}


def redo_foreign_steps(journal: Journal, node: str) -> list[str]:
    """Mark the done local steps to run again if any of them ran in another data dir."""
    if journal.done("version") is not None:
        return []
    done = {name: journal.done(name) for name in LOCAL_STEPS}
    elsewhere = sorted(
        {str(r["node"]) for r in done.values() if r is not None and r.get("node", node) != node}
    )
    if not elsewhere:
        return []
    redo = [name for name, result in done.items() if result is not None]
    for name in redo:
        journal.redo(name)
    journal.log(
        f"Resuming a deployment started by another replica (data dir {', '.join(elsewhere)}): "
        f"{', '.join(redo)} run again here, their results are on that replica's disk",
        level="warn",
    )
    return redo
