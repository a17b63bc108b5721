"""Turn a recorded delivery into work: load → route (pure) → apply, in one transaction.

The delivery row carries ``processed_at``; it is set in the same transaction that applies
the intents, so a routing job that runs twice (its worker died after committing, before
acking) finds the delivery processed and does nothing the second time.

One delivery never holds back its neighbours:

* A payload routing cannot read (a wrong-typed field, see :mod:`webhooks.events`) is
  recorded ``rejected`` with the reason, at once; so is one whose pure routing raises
  anything else (retrying a pure function on the same input cannot help) — that one is
  also logged with its traceback, as it is a bug.
* If applying a batch fails (the database refused a write), the batch is rolled back and
  its deliveries are routed one by one, each in its own transaction: only the failing one
  waits for a retry with backoff, and once its attempts run out it is recorded
  ``failed``, so every delivery ends with an outcome.

Memory: a batch is bounded by bytes of body as well as by count (``MAX_BATCH_BYTES``),
delivery rows are loaded without their bodies, and each body is read, parsed and dropped
one at a time, so a backlog of 24 MiB pushes holds one of them in memory, not 128.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, defer

from controller.deployments import (
    DeployRequest,
    active_deployment_count,
    active_previews,
    archive_branch,
    attempted_deployment,
    cancel_queued,
    ensure_environment,
    find_environment,
    project_not_deploying_reason,
    record_event,
    record_superseded,
    request_deployment,
)
from controller.errors import Conflict
from controller.gates.waiting import decide_commit
from controller.logs import bind_log_context
from controller.models import BRANCH_PATTERN
from controller.queue import Backoff
from controller.secretstore.crypto import Cipher
from controller.store.db import Database
from controller.store.tables import CommitSignal as SignalRow
from controller.store.tables import (
    Delivery,
    Environment,
    Installation,
    Job,
    Project,
    Repository,
    utcnow,
)
from webhooks.events import (
    CommitSignal,
    InstallationChange,
    PayloadError,
    RepositorySource,
    repository_full_name,
)
from webhooks.routing import (
    AccessChange,
    Archive,
    Deploy,
    ProjectView,
    RecordSignal,
    Skip,
    route,
)

log = logging.getLogger(__name__)

# Intents that follow a tracked branch: a commit is deployed to an environment at most once
# (a late delivery after the resync deployed it, or the resync after the delivery).
TRACKED_SOURCES = frozenset({"push", "resync"})
MAX_BATCH_BYTES = 16 * 1024 * 1024


@dataclass
class Applied:
    outcome: str
    archived_env_ids: list[int] = field(default_factory=list)
    deployments: list[str] = field(default_factory=list)


def project_views(
    session: Session, repo: str | None
) -> tuple[list[ProjectView], dict[int, Project]]:
    if not repo:
        return [], {}
    projects = session.execute(
        select(Project).where(Project.repo_lower == repo.lower()).order_by(Project.id)
    ).scalars()
    views, by_id = [], {}
    for project in projects:
        reason = project_not_deploying_reason(session, project)
        by_id[project.id] = project
        views.append(
            ProjectView(
                id=project.id,
                ref=project.ref,
                repo=project.repo,
                production_branch=project.production_branch,
                staging_branch=project.staging_branch,
                previews=project.previews,
                fork_previews=project.fork_previews,
                preview_limit=project.preview_limit,
                active_previews=active_previews(session, project.id),
                deploying=reason is None,
                not_deploying_reason=reason,
            )
        )
    return views, by_id


def process_delivery(db: Database, cipher: Cipher, delivery_pk: int) -> Applied | None:
    """Apply one delivery exactly once. Returns None if it was already processed."""
    with db.transaction() as session:
        return _process(session, cipher, delivery_pk)


class Routed(list[Applied]):
    """The outcomes of one routing batch; ``backlog`` says more deliveries are waiting."""

    backlog: bool = False


def route_pending(
    db: Database,
    cipher: Cipher,
    *,
    limit: int = 128,
    budget: float = 0.05,
    max_bytes: int = MAX_BATCH_BYTES,
) -> Routed | None:
    """Route the oldest queued deliveries of one repository in one transaction, and mark
    their routing jobs done in it: no lease, no separate claim or ack, so a crash simply
    rolls the batch back. Returns None when nothing is queued.

    On PostgreSQL several replicas may drain at once; a transaction-scoped advisory lock
    per repository keeps each repository's deliveries in order.
    """
    now = utcnow()
    with db.read() as session:
        keys = list(
            dict.fromkeys(
                session.execute(
                    select(Job.key)
                    .where(Job.kind == "route", Job.status == "queued", Job.run_after <= now)
                    .order_by(Job.id)
                    .limit(16)
                ).scalars()
            )
        )
    if not keys:
        return None
    try:
        return _route_key(db, cipher, keys, limit=limit, budget=budget, max_bytes=max_bytes)
    except Exception as exc:
        log.warning(
            "routing a batch of %s failed (%s); routing its deliveries one by one",
            keys[0],
            type(exc).__name__,
        )
        routed = Routed(_route_one_by_one(db, cipher, keys[0], limit=limit, budget=budget))
        routed.backlog = True
        return routed


def _within_bytes(session: Session, pks: list[int], max_bytes: int) -> int:
    """How many of ``pks`` (in order) fit in ``max_bytes`` of body; at least one."""
    if len(pks) <= 1:
        return len(pks)
    sizes: dict[int, int | None] = {
        pk: size
        for pk, size in session.execute(
            select(Delivery.id, func.length(Delivery.body)).where(Delivery.id.in_(pks))
        )
    }
    total = 0
    for n, pk in enumerate(pks):
        total += sizes.get(pk) or 0
        if n and total > max_bytes:
            return n
    return len(pks)


def _route_key(
    db: Database, cipher: Cipher, keys: list[str], *, limit: int, budget: float, max_bytes: int
) -> Routed:
    started = time.monotonic()
    with db.transaction() as session:
        key = keys[0]
        if db.dialect == "postgresql":
            for candidate in keys:
                if session.execute(
                    select(func.pg_try_advisory_xact_lock(func.hashtext(candidate)))
                ).scalar():
                    key = candidate
                    break
            else:
                return Routed()
        query = (
            select(Job)
            .where(
                Job.kind == "route",
                Job.key == key,
                Job.status == "queued",
                Job.run_after <= utcnow(),
            )
            .order_by(Job.id)
            .limit(limit)
        )
        if db.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True)
        jobs = list(session.execute(query).scalars())
        pks = [int(job.payload["delivery"]) for job in jobs]
        fit = _within_bytes(session, pks, max_bytes)
        deliveries = {
            d.id: d
            for d in session.execute(
                select(Delivery).options(defer(Delivery.body)).where(Delivery.id.in_(pks[:fit]))
            ).scalars()
        }
        batch = _Batch(session, cipher)
        done = 0
        for pk in pks[:fit]:
            if done and time.monotonic() - started > budget:
                break
            delivery = deliveries.get(pk)
            if delivery is not None:
                batch.process(delivery)
            done += 1
        batch.flush_deploys()
        now = utcnow()
        for job in jobs[:done]:
            job.status, job.updated_at, job.attempts = "done", now, job.attempts + 1
        routed = Routed(batch.results)
        routed.backlog = done < len(jobs) or len(jobs) == limit or len(keys) > 1
        return routed


def _route_one_by_one(
    db: Database, cipher: Cipher, key: str, *, limit: int, budget: float
) -> list[Applied]:
    """Route the queued deliveries of ``key`` one transaction each (after their batch
    failed), so that only the one that fails waits for a retry."""
    started = time.monotonic()
    with db.read() as session:
        jobs = list(
            session.execute(
                select(Job)
                .where(
                    Job.kind == "route",
                    Job.key == key,
                    Job.status == "queued",
                    Job.run_after <= utcnow(),
                )
                .order_by(Job.id)
                .limit(limit)
            ).scalars()
        )
    results: list[Applied] = []
    for job in jobs:
        if results and time.monotonic() - started > budget:
            break
        results += _route_alone(db, cipher, job)
    return results


def _route_alone(db: Database, cipher: Cipher, job: Job) -> list[Applied]:
    """Route one delivery alone, or record the failure and retry it later with backoff;
    once its job's attempts run out the delivery is recorded ``failed``."""
    try:
        with db.transaction() as session:
            applied = _process(session, cipher, int(job.payload["delivery"]))
            row = session.get(Job, job.id)
            assert row is not None
            row.status, row.updated_at = "done", utcnow()
            return [applied] if applied is not None else []
    except Exception as exc:
        log.exception("routing delivery %s failed", job.payload.get("delivery"))
        with db.transaction() as session:
            row = session.get(Job, job.id)
            assert row is not None
            row.attempts += 1
            row.last_error = f"{type(exc).__name__}: {exc}"[:4000]
            if row.attempts >= row.max_attempts:
                row.status = "failed"
                delivery = session.get(
                    Delivery, int(job.payload["delivery"]), options=[defer(Delivery.body)]
                )
                if delivery is not None and delivery.processed_at is None:
                    delivery.processed_at = utcnow()
                    delivery.outcome = (
                        f"failed: routing gave up after {row.attempts} attempts "
                        f"({type(exc).__name__})"
                    )
            else:
                delay = Backoff(limit=row.max_attempts, min_timeout=1, max_timeout=60).delay(
                    row.attempts
                )
                row.run_after = utcnow() + timedelta(seconds=delay)
        return []


def _process(session: Session, cipher: Cipher, delivery_pk: int) -> Applied | None:
    delivery = session.get(Delivery, delivery_pk, options=[defer(Delivery.body)])
    if delivery is None or delivery.processed_at is not None:
        return None
    batch = _Batch(session, cipher)
    batch.process(delivery)
    batch.flush_deploys()
    return batch.results[0] if batch.results else None


class _Batch:
    """Routing state shared by the deliveries of one batch (one repository)."""

    def __init__(self, session: Session, cipher: Cipher) -> None:
        self.session = session
        self.cipher = cipher
        self.results: list[Applied] = []
        self._views: dict[str | None, tuple[list[ProjectView], dict[int, Project]]] = {}
        self._pending: dict[tuple[int, str], list[tuple[Deploy, Delivery, Applied]]] = {}

    def views(self, repo: str | None) -> tuple[list[ProjectView], dict[int, Project]]:
        if repo not in self._views:
            self._views[repo] = project_views(self.session, repo)
        return self._views[repo]

    def process(self, delivery: Delivery) -> None:
        if delivery.processed_at is not None:
            return
        bind_log_context(delivery=delivery.delivery_id)
        session = self.session
        try:
            payload = json.loads(_body(session, delivery))
            views, projects = self.views(repository_full_name(payload))
        except (PayloadError, ValueError, RecursionError) as exc:
            self._reject(delivery, str(exc) if not isinstance(exc, RecursionError) else "")
            return
        try:
            routed = route(delivery.event, payload, views)
            _record_default_branch(projects.values(), payload)
            if projects:
                _record_repository(session, payload)
        except (PayloadError, ValueError) as exc:
            self._reject(delivery, str(exc))
            return
        except Exception as exc:  # a bug in pure routing: retrying cannot help
            log.exception(
                "routing delivery %s (%s) raised %s; recorded as rejected",
                delivery.delivery_id,
                delivery.event,
                type(exc).__name__,
            )
            self._reject(delivery, f"routing failed ({type(exc).__name__})")
            return
        del payload  # only the intents are needed from here on
        applied = Applied(routed.outcome)
        for intent in routed.intents:
            if isinstance(intent, Deploy) and intent.source == "push":
                # Tracked-branch pushes wait for the end of the batch (see flush_deploys).
                self._pending.setdefault((intent.project_id, intent.environment), []).append(
                    (intent, delivery, applied)
                )
                continue
            # Anything else applies in order, after the deploys that came before it, and
            # may change what routing sees (previews, access): drop the cached views.
            self.flush_deploys()
            self._views.clear()
            if isinstance(intent, Deploy):
                apply_deploy(
                    session, self.cipher, projects[intent.project_id], intent, delivery, applied
                )
            elif isinstance(intent, Archive):
                if _owned_by_another_pull_request(session, intent):
                    continue
                env = archive_branch(
                    session, projects[intent.project_id], intent.branch, intent.reason
                )
                if env is not None:
                    applied.archived_env_ids.append(env.id)
            elif isinstance(intent, Skip):
                record_event(
                    session, intent.project_id, "skipped", intent.reason, delivery.delivery_id
                )
            elif isinstance(intent, AccessChange):
                _apply_access(session, intent.change)
            elif isinstance(intent, RecordSignal):
                _record_signal(session, intent.signal, delivery.delivery_id)
                # A waiting deployment of that commit may be decided by it now.
                applied.deployments += decide_commit(
                    session, repo_lower=intent.signal.repo.lower(), sha=intent.signal.sha
                )
        delivery.processed_at = utcnow()
        delivery.outcome = applied.outcome[:4000]
        self.results.append(applied)

    def _reject(self, delivery: Delivery, reason: str) -> None:
        delivery.processed_at = utcnow()
        delivery.outcome = f"rejected: {reason or 'malformed payload'}"[:4000]
        self.results.append(Applied(delivery.outcome))

    def flush_deploys(self) -> None:
        pending, self._pending = self._pending, {}
        for (project_id, env_name), items in pending.items():
            project = self.session.get(Project, project_id)
            assert project is not None
            env = find_environment(self.session, project, env_name, None)
            supersede = True
            if len(items) > 1 and active_deployment_count(self.session, env.id) == 0:
                # The environment is idle: the oldest starts at once, as it would have had
                # it been routed alone; newest-wins applies to the ones waiting behind it.
                first, first_delivery, first_applied = items.pop(0)
                apply_deploy(
                    self.session, self.cipher, project, first, first_delivery, first_applied
                )
                supersede = not first_applied.deployments
            newest, newest_delivery, newest_applied = items[-1]
            apply_deploy(
                self.session,
                self.cipher,
                project,
                newest,
                newest_delivery,
                newest_applied,
                supersede=supersede,
            )
            if not newest_applied.deployments:
                continue  # refused (recorded as an event); the older ones would be too
            winner = newest_applied.deployments[-1]
            now = utcnow()
            older = items[:-1]
            for n, (intent, delivery, applied) in enumerate(older):
                if attempted_deployment(self.session, env.id, intent.sha) is not None:
                    continue
                dep = record_superseded(
                    self.session,
                    project=project,
                    environment=env,
                    request=DeployRequest(
                        sha=intent.sha,
                        ref=intent.ref,
                        source=intent.source,
                        delivery_id=delivery.delivery_id,
                    ),
                    winner=winner,
                    created_at=now - timedelta(microseconds=len(older) - n),
                )
                applied.deployments.append(dep.id)


def _record_default_branch(projects: Iterable[Project], payload: dict[str, Any]) -> None:
    """Remember the repository's default branch, which every delivery carries: the resync
    tracks it for projects without a production branch (else it asks the remote's HEAD)."""
    repository = payload.get("repository") if isinstance(payload, dict) else None
    branch = repository.get("default_branch") if isinstance(repository, dict) else None
    if not isinstance(branch, str) or not BRANCH_PATTERN.match(branch):
        return
    for project in projects:
        if project.default_branch != branch:
            project.default_branch = branch


def _record_repository(session: Session, payload: dict[str, Any]) -> None:
    """Remember the clone URL and installation a delivery of a connected repository names:
    a project without ``--clone-url`` fetches from there with an installation token. A
    field of the wrong shape records nothing (the delivery is still routed)."""
    try:
        source = RepositorySource.parse(payload)
    except PayloadError as exc:
        log.info("not recording the repository's clone URL or installation: %s", exc)
        return
    if source is None or (source.clone_url is None and source.installation_id is None):
        return
    lower = source.full_name.lower()
    found = session.execute(
        select(Repository).where(Repository.full_name_lower == lower)
    ).scalar_one_or_none()
    if found is None:
        found = Repository(full_name=source.full_name, full_name_lower=lower)
        session.add(found)
    if source.clone_url is not None and found.clone_url != source.clone_url:
        found.clone_url = source.clone_url
    if source.installation_id is not None and found.installation_id != source.installation_id:
        found.installation_id = source.installation_id


def _body(session: Session, delivery: Delivery) -> bytes:
    """The delivery's body, read on its own: not kept on the row for the whole batch."""
    body = session.execute(select(Delivery.body).where(Delivery.id == delivery.id)).scalar_one()
    return bytes(body)


def _owned_by_another_pull_request(session: Session, intent: Archive) -> bool:
    """A closed pull request archives only its own preview, not another pull request's
    preview of the same branch name (e.g. an outsider's fork PR from a branch named
    like ours)."""
    if intent.pr_number is None:
        return False
    owner = session.execute(
        select(Environment.pr_number).where(
            Environment.project_id == intent.project_id,
            Environment.name == "preview",
            Environment.branch_key == intent.branch,
        )
    ).scalar_one_or_none()
    return owner is not None and owner != intent.pr_number


def apply_deploy(
    session: Session,
    cipher: Cipher,
    project: Project,
    intent: Deploy,
    delivery: Delivery | None,
    applied: Applied,
    *,
    supersede: bool = True,
) -> None:
    """Apply one deploy intent: a routed delivery's (``delivery`` set) or the resync's
    (``delivery`` None; :mod:`controller.reconcile`). A tracked-branch commit that the
    environment already attempted is not requested again, whoever saw it first."""
    delivery_id = delivery.delivery_id if delivery is not None else None
    attrs: dict[str, object] = {}
    if intent.environment == "preview":
        holder = session.execute(
            select(Environment).where(
                Environment.project_id == project.id,
                Environment.name == "preview",
                Environment.branch_key == intent.branch,
            )
        ).scalar_one_or_none()
        if (
            holder is not None
            and holder.status == "active"
            and holder.pr_number is not None
            and holder.pr_number != intent.pr_number
        ):
            record_event(
                session,
                project.id,
                "skipped",
                f"no preview for pull request #{intent.pr_number}: preview branch "
                f"{intent.branch} belongs to pull request #{holder.pr_number}, which is still "
                "open; rename the branch or close the other pull request",
                delivery_id,
            )
            return
        attrs = {
            "pr_number": intent.pr_number,
            "head_repo": intent.head_repo,
            "is_fork": intent.is_fork,
        }
    env = ensure_environment(
        session, cipher, project=project, name=intent.environment, branch=intent.branch, **attrs
    )
    if env.status == "archived" and intent.source == "pull_request":
        # A reopened pull request (or a new one from the same branch) revives its preview.
        env.status, env.status_reason, env.archived_at = "active", None, None
    if intent.source in TRACKED_SOURCES:
        # PostgreSQL: the resync and routing (or two replicas) check-then-insert under
        # the environment's row lock; SQLite's write transactions are serial already.
        session.execute(select(Environment.id).where(Environment.id == env.id).with_for_update())
        earlier = attempted_deployment(session, env.id, intent.sha)
        if earlier is not None:
            if delivery is not None:
                record_event(
                    session,
                    project.id,
                    "skipped",
                    f"{intent.sha[:7]} was already attempted in {env.name} ({earlier.id}, "
                    f"{earlier.status}); a commit deploys once per environment",
                    delivery_id,
                )
            return
    try:
        deployment = request_deployment(
            session,
            project=project,
            environment=env,
            request=DeployRequest(
                sha=intent.sha,
                ref=intent.ref,
                source=intent.source,
                delivery_id=delivery_id,
                pr_number=intent.pr_number,
                options={"fork": intent.is_fork} if intent.is_fork else {},
            ),
            supersede=supersede,
        )
    except Conflict as exc:
        record_event(session, project.id, "skipped", exc.message, delivery_id)
        return
    applied.deployments.append(deployment.id)


def _apply_access(session: Session, change: InstallationChange) -> None:
    installation = session.get(Installation, change.installation_id)
    if installation is None:
        installation = Installation(id=change.installation_id, account=change.account)
        session.add(installation)
    if change.event == "installation":
        installation.deleted = change.action == "deleted"
        if change.action in ("suspend", "unsuspend"):
            installation.suspended = change.action == "suspend"
            _announce_suspension(session, installation)
            return
    reachable = {r.full_name.lower(): r for r in change.added}
    gone = {r.full_name.lower(): r for r in change.removed}
    if change.event == "installation" and change.action == "deleted":
        # GitHub may omit the list; every repository of the installation is gone.
        for repo in session.execute(
            select(Repository).where(Repository.installation_id == change.installation_id)
        ).scalars():
            repo.reachable = False
    for lower, ref in [*((k, v) for k, v in reachable.items()), *((k, v) for k, v in gone.items())]:
        found = session.execute(
            select(Repository).where(Repository.full_name_lower == lower)
        ).scalar_one_or_none()
        if found is None:
            found = Repository(full_name=ref.full_name, full_name_lower=lower)
            session.add(found)
        repo = found
        repo.github_id = ref.id or repo.github_id
        repo.installation_id = change.installation_id
        repo.reachable = lower in reachable
        session.flush()
        for project in session.execute(
            select(Project).where(Project.repo_lower == lower)
        ).scalars():
            if lower in gone:
                for (env_id,) in session.execute(
                    select(Environment.id).where(Environment.project_id == project.id)
                ):
                    cancel_queued(session, env_id, f"{ref.full_name} is no longer reachable")
                record_event(
                    session,
                    project.id,
                    "access",
                    f"the GitHub App lost access to {ref.full_name}; deployments stop (data kept)",
                )
            else:
                record_event(
                    session, project.id, "access", f"the GitHub App can reach {ref.full_name}"
                )


def _announce_suspension(session: Session, installation: Installation) -> None:
    """A suspended installation's projects stop deploying (their queued work is
    canceled); unsuspended, those whose repository the App still reaches resume."""
    account = installation.account or f"installation {installation.id}"
    for repo in session.execute(
        select(Repository).where(Repository.installation_id == installation.id)
    ).scalars():
        for project in session.execute(
            select(Project).where(Project.repo_lower == repo.full_name_lower)
        ).scalars():
            if installation.suspended:
                for (env_id,) in session.execute(
                    select(Environment.id).where(Environment.project_id == project.id)
                ):
                    cancel_queued(session, env_id, f"the GitHub App on {account} was suspended")
                message = (
                    f"the GitHub App's installation on {account} was suspended; deployments "
                    "stop (data kept) until it is unsuspended"
                )
            elif repo.reachable:
                message = (
                    f"the GitHub App's installation on {account} was unsuspended; deploying again"
                )
            else:
                continue
            record_event(session, project.id, "access", message)


def _record_signal(session: Session, signal: CommitSignal, delivery_id: str) -> None:
    session.add(
        SignalRow(
            kind=signal.kind,
            repo_lower=signal.repo.lower(),
            sha=signal.sha,
            name=signal.name,
            state=signal.state,
            github_id=signal.github_id,
            deployment_id=signal.deployment_id,
            url=signal.url,
            delivery_id=delivery_id,
        )
    )
