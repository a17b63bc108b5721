"""Wiring: one place builds every part from the settings and owns their lifecycle.

Plug-ins are chosen here by name (``SLIPWAY_RUNTIME``); each part gets only what it needs.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from controller.builders.commands import CommandRegistry
from controller.builders.venv import VirtualenvBuilder
from controller.datadir import private_dir
from controller.deployments import orphaned_queued_deployments
from controller.dispatch import route_pending
from controller.errors import PermanentError
from controller.manager import Drain, Manager, Pool
from controller.pipeline.deploy import Pipeline
from controller.queue import Claimed, Queue
from controller.runtimes.base import Runtime
from controller.runtimes.local import LocalRuntime
from controller.secretstore.crypto import Cipher
from controller.settings import Settings
from controller.sources.git import GitSource
from controller.store.db import Database
from controller.store.deliveries import (
    MAX_BATCH,
    DeliveryWriter,
    move_from_inbox,
    prune_deliveries,
)
from controller.store.inbox import Inbox
from controller.store.tables import Deployment, Environment, Job, Project, Version, utcnow
from controller.supervisor import ControllerProcess
from controller.versions import spec_for

log = logging.getLogger(__name__)

IDLE_RETIRE_SECONDS = 300.0


def make_runtime(settings: Settings) -> Runtime:
    if settings.runtime.runtime == "local":
        return LocalRuntime(data_dir=settings.data_dir)
    raise PermanentError(
        f"SLIPWAY_RUNTIME={settings.runtime.runtime} is not available in this build",
        hint="use SLIPWAY_RUNTIME=local",
    )


class Services:
    """``role``: ``all`` (everything in this process), ``web`` (HTTP: intake, API, runs;
    the controller runs in a supervised child process) or ``controller`` (that child)."""

    def __init__(
        self, settings: Settings, *, role: str = "all", log_level: str = "warning"
    ) -> None:
        self.settings = settings
        self.role = role
        self.child = ControllerProcess(log_level=log_level) if role == "web" else None
        data: Path = settings.data_dir
        self.db = Database(settings.database_url)
        self.cipher = Cipher(settings.encryption_keys)
        self.queue = Queue(self.db, limits={"deploy": settings.runtime.max_concurrent_builds})
        # SQLite: intake writes to an inbox file of its own (see controller.store.inbox).
        self.inbox = Inbox.beside(settings.database_url)
        self.writer = DeliveryWriter(
            self.db, inbox=self.inbox, on_commit=lambda: self.queue.notify("route")
        )
        self.runtime = make_runtime(settings)
        self.source = GitSource(data / "git")
        # Install and pre-build commands that are running, so that a controller killed
        # mid-build has them stopped by the next one (see controller.builders.commands).
        self.commands = CommandRegistry(data / "commands")
        self.builder = VirtualenvBuilder(
            cache_dir=data / "envs", home_dir=data / "home", commands=self.commands
        )
        self.uploads = private_dir(data / "uploads")
        self.manager = Manager(
            self.queue,
            [
                Pool(
                    ("deploy",), self.handle_deploy, threads=settings.runtime.max_concurrent_builds
                ),
            ],
            drains=[
                # Routing drains queued deliveries in short single-transaction batches,
                # pausing 50 ms after each so a burst batches up.
                Drain("route", ("route",), self.route_deliveries, pause=0.05),
            ],
            resync=[self.resync_deployments, self.resync_runtime, self.prune_deliveries],
            resync_interval=settings.runtime.resync_interval,
        )
        self.pipeline = Pipeline(
            db=self.db,
            data_dir=data,
            source=self.source,
            builder=self.builder,
            runtime=self.runtime,
            build_timeout=settings.runtime.build_timeout,
            stopping=self.manager.stopping,
        )
        self._started = False

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self.db.migrate()
        if self.role != "controller":
            self.db.start_checkpointer(also=[self.inbox.checkpoint] if self.inbox else [])
            self.writer.start()
        if self.child is not None:
            self.queue.listeners.append(self.child.notify)
            self.child.start()
        else:
            killed = self.commands.reap()
            if killed:
                log.warning(
                    "stopped %d build command(s) left running by a controller that was killed; "
                    "their deployments resume from the interrupted step",
                    killed,
                )
            self.manager.start()
        self._started = True

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()
        else:
            self.manager.stop()
        self.writer.stop()
        self.runtime.close()
        self.db.dispose()
        if self.inbox is not None:
            self.inbox.close()
        self._started = False

    def readiness_problems(self) -> list[str]:
        if not self._started:
            return ["controller not started"]
        if self.child is not None and not self.child.alive:
            return ["the controller process is not running (it is being restarted)"]
        if self.child is not None and not self.child.ready:
            return ["the controller process is starting"]
        return []

    # -- job handlers ---------------------------------------------------------------------

    def route_deliveries(self) -> bool | None:
        moved = move_from_inbox(self.db, self.inbox) if self.inbox is not None else 0
        results = route_pending(self.db, self.cipher)
        if results is None:
            return True if moved == MAX_BATCH else None
        if any(applied.deployments for applied in results):
            self.queue.notify("deploy")
        for applied in results:
            for env_id in applied.archived_env_ids:
                self.retire_environment(env_id)
        return results.backlog or moved == MAX_BATCH

    def handle_deploy(self, job: Claimed) -> None:
        self.pipeline.handle(job)

    # -- runtime bookkeeping --------------------------------------------------------------

    def retire_environment(self, env_id: int) -> None:
        with self.db.read() as session:
            ids = (
                session.execute(select(Version.id).where(Version.environment_id == env_id))
                .scalars()
                .all()
            )
        for version_id in ids:
            if version_id in self.runtime.serving():
                self.runtime.retire(version_id)

    def after_disconnect(self, ref: str) -> None:
        with self.db.read() as session:
            project = session.execute(select(Project).where(Project.ref == ref)).scalar_one()
            env_ids = (
                session.execute(select(Environment.id).where(Environment.project_id == project.id))
                .scalars()
                .all()
            )
        for env_id in env_ids:
            self.retire_environment(env_id)

    def resync_deployments(self) -> None:
        """Active deployments without a live job get one (their job was lost or gave up)."""
        with self.db.transaction() as session:
            for dep in orphaned_queued_deployments(session):
                last = session.execute(
                    select(Job).where(Job.deployment_id == dep.id).order_by(Job.id.desc()).limit(1)
                ).scalar_one_or_none()
                if last is not None and last.status == "failed":
                    dep.status = "failed"
                    dep.error = dep.error or f"gave up: {last.last_error}"
                    dep.finished_at = utcnow()
                    continue
                log.info("resync: re-queueing deployment %s", dep.id)
                Queue.add(
                    session, kind="deploy", key=f"env:{dep.environment_id}", deployment_id=dep.id
                )
        self.queue.notify()

    def prune_deliveries(self) -> None:
        """Delivery bodies and finished routing jobs older than the retention go."""
        days = self.settings.runtime.delivery_retention_days
        emptied, removed = prune_deliveries(self.db, older_than=timedelta(days=days))
        if emptied or removed:
            log.info(
                "retention (%g days): dropped %d delivery bodies, %d routing jobs",
                days,
                emptied,
                removed,
            )

    def resync_runtime(self) -> None:
        """Current versions serve; archived or idle non-current versions stop."""
        with self.db.read() as session:
            rows = session.execute(
                select(Environment, Version)
                .join(Version, Version.id == Environment.current_version_id)
                .join(Project, Project.id == Environment.project_id)
                .where(Environment.status == "active", Project.disconnected_at.is_(None))
            ).all()
            specs = [spec_for(session, version) for _env, version in rows]
            deploying = session.execute(
                select(Deployment.version_id).where(
                    Deployment.status == "deploying", Deployment.version_id.is_not(None)
                )
            ).scalars()
            busy = {version_id for version_id in deploying if version_id is not None}
        wanted = {spec.version_id for spec in specs}
        for spec in specs:
            try:
                self.runtime.ensure(spec)
            except Exception as exc:
                log.warning("resync: version %s does not serve: %s", spec.version, exc)
        self.runtime.stop_unlisted(wanted | busy | self.runtime.serving())
        for version_id in self.runtime.serving() - wanted - busy:
            if self.runtime.idle_for(version_id) > IDLE_RETIRE_SECONDS:
                self.runtime.retire(version_id)
