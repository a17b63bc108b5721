"""The branch pass: deploy every tracked branch's head that its environment has not seen.

Load → guards → resolve → compare → request, as Flux's kustomization controller does for
each object, once per resync (``SLIPWAY_RESYNC_INTERVAL``, jittered by the manager):

1. **Load** (one read transaction): every connected project that is deploying (not
   disconnected, its repository reachable) and has a clone URL. Its tracked branches are
   production — ``production_branch``, else the recorded default branch, else whatever
   the remote's ``HEAD`` points at (``git ls-remote --symref URL HEAD``) — and staging
   when a staging branch is set. Uploaded-only projects have no clone URL: skipped.
2. **Resolve** the heads in parallel, in a pool of ``workers`` threads, each call bounded
   by ``timeout``. A call that fails or runs out of time changes nothing: one log line,
   no deployment, no archive. A branch the source does not have is left alone too.
3. **Compare and request**: a head the environment has never attempted (in any status,
   queued included) is requested through :func:`controller.domain.deployments.apply_deploy`, the
   function a routed push goes through, with source ``resync``. That function holds the
   rule for both paths — a tracked-branch commit deploys at most once per environment —
   so a delivery that arrives after the resync deployed its commit (or the resync after a
   delivery) adds nothing. Candidates are found in a read transaction first; only those
   take a (short, per-environment) write transaction, which checks again.

Previews are not reconciled yet: they come from pull requests, which only GitHub can
list (a later issue adds that behind the same :class:`~controller.sources.base.Source`
protocol). An open preview whose branch was deleted at the source is left alone: with
only ``ls-remote`` we cannot tell "deleted" from "never pushed here" (fork branches live
in another repository), and an error must never archive anything.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TypeVar

from controller.domain.deployments import Applied, apply_deploy
from controller.domain.projects import project_not_deploying_reason
from controller.errors import SlipwayError
from controller.secretstore.crypto import Cipher
from controller.sources.base import Resolved, Source
from controller.store.db import Database
from controller.store.deployments import attempted_deployment
from controller.store.environments import environment_id_by_key
from controller.store.projects import connected_projects_with_clone_url
from controller.store.tables import Project
from webhooks.routing import Deploy

log = logging.getLogger(__name__)

RESOLVE_WORKERS = 8
RESOLVE_TIMEOUT = 30.0

K = TypeVar("K")


@dataclass(frozen=True)
class Repo:
    """What the pass knows of a project when it picks a source for it."""

    project_id: int
    ref: str
    repo: str
    clone_url: str


@dataclass(frozen=True)
class Tracked:
    project_id: int
    project_ref: str
    clone_url: str
    environment: str  # production | staging
    ref: str  # refs/heads/<branch>, or HEAD: the remote's default branch

    @property
    def key(self) -> tuple[str, str]:
        return self.project_ref, self.ref


SourceFor = Callable[[Repo], Source | None]


class BranchPass:
    """``reconcile_branches`` is the resync callback (see the module docstring)."""

    def __init__(
        self,
        *,
        db: Database,
        cipher: Cipher,
        source_for: SourceFor,
        on_deploy: Callable[[], None] = lambda: None,
        workers: int = RESOLVE_WORKERS,
        timeout: float = RESOLVE_TIMEOUT,
    ) -> None:
        self.db = db
        self.cipher = cipher
        self.source_for = source_for
        self.on_deploy = on_deploy
        self.workers = workers
        self.timeout = timeout

    def reconcile_branches(self) -> None:
        self.run()

    def run(self) -> list[str]:
        """One pass; returns the ids of the deployments it requested."""
        targets, sources = self.load()
        calls = {t.key: _bind(sources[t.project_id], t.ref) for t in targets}
        heads = resolve_all(calls, workers=self.workers, timeout=self.timeout)
        requested: list[str] = []
        for target in self.unattempted(targets, heads):
            try:
                requested += self.request(target, heads[target.key])
            except Exception:
                # One environment's failure (a database hiccup) leaves the others to go on;
                # the next pass asks again.
                log.exception("resync: requesting %s of %s failed", target.ref, target.project_ref)
        if requested:
            self.on_deploy()
        return requested

    # -- phases ---------------------------------------------------------------------------

    def load(self) -> tuple[list[Tracked], dict[int, Source]]:
        targets: list[Tracked] = []
        sources: dict[int, Source] = {}
        with self.db.read() as session:
            projects = connected_projects_with_clone_url(session)
            for project in projects:
                if not project.clone_url or project_not_deploying_reason(session, project):
                    continue
                source = self.source_for(
                    Repo(project.id, project.ref, project.repo, project.clone_url)
                )
                if source is None:
                    continue
                sources[project.id] = source
                production = project.production_branch or project.default_branch
                wanted = [("production", f"refs/heads/{production}" if production else "HEAD")]
                if project.staging_branch:
                    wanted.append(("staging", f"refs/heads/{project.staging_branch}"))
                targets += [
                    Tracked(project.id, project.ref, project.clone_url, env, ref)
                    for env, ref in wanted
                ]
        return targets, sources

    def unattempted(
        self, targets: list[Tracked], heads: dict[tuple[str, str], Resolved | None]
    ) -> list[Tracked]:
        """Targets whose head is known and not yet attempted (checked again on write)."""
        out = []
        with self.db.read() as session:
            for target in targets:
                head = heads.get(target.key)
                if head is None:
                    continue  # no such branch at the source, or it did not answer
                env_id = environment_id_by_key(session, target.project_id, target.environment, "")
                if env_id is None or attempted_deployment(session, env_id, head.sha) is None:
                    out.append(target)
        return out

    def request(self, target: Tracked, head: Resolved | None) -> list[str]:
        assert head is not None
        with self.db.transaction() as session:
            project = session.get(Project, target.project_id)
            if (
                project is None
                or project.disconnected_at is not None
                or project.clone_url != target.clone_url
                or project_not_deploying_reason(session, project)
            ):
                return []  # changed while we were asking the source
            intent = Deploy(project.id, target.environment, None, head.sha, head.ref, "resync")
            applied = Applied("resync")
            apply_deploy(session, self.cipher, project, intent, None, applied)
        for deployment_id in applied.deployments:
            log.info(
                "resync: %s of %s is at %s, not yet attempted in %s: requested %s",
                head.branch,
                target.project_ref,
                head.sha[:12],
                target.environment,
                deployment_id,
            )
        return applied.deployments


def _bind(source: Source, ref: str) -> Callable[[], Resolved | None]:
    return lambda: source.resolve(ref)


def resolve_all(
    calls: dict[K, Callable[[], Resolved | None]], *, workers: int, timeout: float
) -> dict[K, Resolved | None]:
    """Run ``calls`` in a pool of ``workers`` threads, each bounded by ``timeout`` from its
    start. A call that raised or ran out of time is logged and left out of the result.

    A call that overruns keeps its thread until it returns (a thread cannot be killed):
    git's own timeout kills its subprocess, and the pool is shut down without waiting, so
    one hung remote never holds up the pass.
    """
    results: dict[K, Resolved | None] = {}
    if not calls:
        return results
    lock = threading.Lock()
    started: dict[K, float] = {}

    def run(key: K, call: Callable[[], Resolved | None]) -> Resolved | None:
        with lock:
            started[key] = time.monotonic()
        return call()

    pool = ThreadPoolExecutor(max_workers=min(workers, len(calls)), thread_name_prefix="resolve")
    try:
        futures: dict[Future[Resolved | None], K] = {
            pool.submit(run, key, call): key for key, call in calls.items()
        }
        rounds = math.ceil(len(calls) / max(1, workers))
        give_up = time.monotonic() + timeout * (rounds + 1)
        pending = set(futures)
        while pending:
            now = time.monotonic()
            with lock:
                begun = {f: started[futures[f]] for f in pending if futures[f] in started}
            for future in list(pending):
                if now > give_up or (future in begun and now - begun[future] > timeout):
                    pending.discard(future)
                    log.warning(
                        "resync: resolving %s timed out after %gs; nothing changes",
                        _describe(futures[future]),
                        timeout,
                    )
            if not pending:
                break
            nearest = min([begun[f] + timeout - now for f in pending if f in begun] + [0.5])
            done, pending = wait(pending, timeout=max(0.01, nearest), return_when=FIRST_COMPLETED)
            for future in done:
                key = futures[future]
                try:
                    results[key] = future.result()
                except SlipwayError as exc:
                    log.warning(
                        "resync: cannot resolve %s: %s; nothing changes", _describe(key), exc
                    )
                except Exception as exc:
                    log.warning(
                        "resync: resolving %s raised %s: %s; nothing changes",
                        _describe(key),
                        type(exc).__name__,
                        exc,
                    )
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return results


def _describe(key: object) -> str:
    if isinstance(key, tuple) and len(key) == 2:
        return f"{key[1]} of project {key[0]}"
    return str(key)
