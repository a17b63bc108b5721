"""Wiring: one place builds every part from the settings and owns their lifecycle.

Plug-ins are chosen here by name (``SLIPWAY_RUNTIME``); each part gets only what it needs.

Workers have one owner. The ``controller`` role (and ``all``) holds the
:class:`LocalRuntime`; the ``web`` role holds a :class:`RemoteRuntime` that asks the
controller over the control channel (:mod:`controller.runtimes.control`) for every start,
retire and run lease. Before the controller starts a worker it re-reads the version's
state (:func:`controller.runtimes.upkeep.start_refusal`) under the version's lock: an archived preview or
a disconnected project is never started again, whoever asks.

Stopping, in the order that keeps every run recorded (see :mod:`controller.supervisor`):
web — refuse new runs, stop the controller, wait for the runs it cut off to be recorded,
then close the database; controller — stop the control channel, set ``stopping``, stop
every worker (short drain, then kill), then join the worker threads.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path

from controller.builders.commands import CommandRegistry
from controller.builders.venv import VirtualenvBuilder
from controller.datadir import private_dir
from controller.errors import PermanentError
from controller.gates.wiring import gate_poller
from controller.github.auth import github_clone_auth
from controller.github.metering import METER
from controller.github.provider import AppClients
from controller.github.reporting import Reporter
from controller.heap import PeriodicTrim
from controller.heap import trim as trim_heap
from controller.leadership import make_elector
from controller.manager import Drain, Manager, Pool
from controller.pipeline.deploy import Pipeline
from controller.queue import Claimed, Queue
from controller.reconcile import resync_passes
from controller.reconcile.deployments import prune_old_deliveries, requeue_lost_deployments
from controller.routing import route_pending
from controller.runtimes.base import Runtime
from controller.runtimes.control import (
    ControlClient,
    ControlServer,
    Handler,
    RemoteRuntime,
    lease_handlers,
    spec_from_json,
)
from controller.runtimes.local import LocalRuntime
from controller.runtimes.upkeep import (
    resync_runtime,
    retire_environment,
    start_refusal,
    stop_leftover_sessions,
)
from controller.secretstore.crypto import Cipher
from controller.settings import Settings
from controller.sources.git import GitSource
from controller.store.db import Database
from controller.store.deliveries import (
    DeliveryWriter,
    Moved,
    move_from_inbox,
)
from controller.store.inbox import Inbox
from controller.supervisor import ControllerProcess

log = logging.getLogger(__name__)

# The controller's drain for workers at a graceful stop: the web process already gave runs
# the shutdown grace period before it asked the controller to stop.
WORKER_STOP_SECONDS = 5.0


def make_runtime(settings: Settings, *, may_start: Callable[[int], str | None]) -> LocalRuntime:
    if settings.runtime.runtime == "local":
        return LocalRuntime(
            data_dir=settings.data_dir,
            may_start=may_start,
            preview_idle_timeout=settings.runtime.preview_idle_timeout,
            max_live_previews=settings.runtime.max_live_preview_workers,
            keep_warm=True,
        )
    raise PermanentError(
        f"SLIPWAY_RUNTIME={settings.runtime.runtime} is not available in this build",
        hint="use SLIPWAY_RUNTIME=local",
    )


def make_kubernetes_runtime(
    settings: Settings, *, db: Database, cipher: Cipher, may_start: Callable[[int], str | None]
) -> Runtime:
    """Both processes talk to the cluster themselves (no control channel needed): the
    state they share lives in the cluster (see controller.runtimes.kubernetes.runtime)."""
    from controller.manifests import StoreInputs
    from controller.runtimes.kubernetes.client import ApiCluster
    from controller.runtimes.kubernetes.runtime import KubernetesRuntime

    return KubernetesRuntime(
        settings.kubernetes,
        cluster=ApiCluster.from_settings(settings.kubernetes),
        inputs=StoreInputs(settings, db=db, cipher=cipher),
        may_start=may_start,
        preview_idle_timeout=settings.runtime.preview_idle_timeout,
    )


class Services:
    """``role``: ``all`` (everything in this process), ``web`` (HTTP: intake, API, runs;
    the controller runs in a supervised child process) or ``controller`` (that child)."""

    def __init__(
        self, settings: Settings, *, role: str = "all", log_level: str = "warning"
    ) -> None:
        self.settings = settings
        self.role = role
        data: Path = settings.data_dir
        self.control_client = ControlClient(data) if role == "web" else None
        self.child = (
            ControllerProcess(log_level=log_level, notify=self.control_client.notify)
            if self.control_client is not None
            else None
        )
        self.db = Database(settings.database_url)
        self.cipher = Cipher(settings.encryption_keys)
        self.queue = Queue(self.db, limits={"deploy": settings.runtime.max_concurrent_builds})
        # SQLite: intake writes to an inbox file of its own (see controller.store.inbox).
        self.inbox = Inbox.beside(settings.database_url)
        self.writer = DeliveryWriter(
            self.db, inbox=self.inbox, on_commit=lambda: self.queue.notify("route")
        )
        self.local: LocalRuntime | None = None
        self.runtime: Runtime
        self.remote: RemoteRuntime | None = None
        if settings.runtime.runtime == "kubernetes":
            self.runtime = make_kubernetes_runtime(
                settings,
                db=self.db,
                cipher=self.cipher,
                may_start=functools.partial(start_refusal, self.db),
            )
        elif self.control_client is not None:
            self.remote = RemoteRuntime(
                self.control_client, grace=settings.runtime.shutdown_grace_period
            )
            self.runtime = self.remote
        else:
            self.local = make_runtime(settings, may_start=functools.partial(start_refusal, self.db))
            self.runtime = self.local
        self.control = (
            ControlServer(data, self._control_handlers(self.local))
            if role == "controller"
            else None
        )
        self.source = GitSource(data / "git")
        # Install and pre-build commands that are running, so that a controller killed
        # mid-build has them stopped by the next one (see controller.builders.commands).
        self.commands = CommandRegistry(data / "commands")
        self.builder = VirtualenvBuilder(
            cache_dir=data / "envs", home_dir=data / "home", commands=self.commands, keep_warm=True
        )
        self.uploads = private_dir(data / "uploads")
        # The configured App, else the one `slipway github setup` stored (read when needed).
        self.github_clients = AppClients(settings, db=self.db, cipher=self.cipher)
        self.reporter = Reporter(
            db=self.db, client_for=self.github_clients.current, public_url=settings.public_url
        )
        self.manager = Manager(
            self.queue,
            [
                Pool(
                    ("deploy",), self.handle_deploy, threads=settings.runtime.max_concurrent_builds
                ),
                # Promotion gates' decisions: short, and never behind a build slot.
                Pool(("promote",), self.handle_deploy),
            ],
            drains=[
                # Routing drains queued deliveries in short single-transaction batches,
                # pausing 50 ms after each so a burst batches up.
                Drain("route", ("route",), self.route_deliveries, pause=0.05),
                # GitHub is reconciled from the database (see controller.github.reporting).
                Drain("report", ("report",), self.reporter.run, leader_only=True),
            ],
            resync=[
                lambda: requeue_lost_deployments(self.db, notify=self.queue.notify),
                lambda: resync_runtime(self.db, self.runtime),
                lambda: prune_old_deliveries(
                    self.db, days=settings.runtime.delivery_retention_days
                ),
                gate_poller(self.db, settings, on_decision=lambda: self.queue.notify("promote")),
                *resync_passes(
                    db=self.db,
                    cipher=self.cipher,
                    git=self.source,
                    settings=settings,
                    on_deploy=lambda: self.queue.notify("deploy"),
                    github=self.github_clients.current,
                    on_archive=self._after_resync_archive,
                ),
                trim_heap,  # last: what the pass freed goes back to the system
            ],
            resync_interval=settings.runtime.resync_interval,
            elector=None if role == "web" else make_elector(settings),
        )
        self.pipeline = Pipeline(
            db=self.db,
            data_dir=data,
            source=self.source,
            builder=self.builder,
            runtime=self.runtime,
            build_timeout=settings.runtime.build_timeout,
            stopping=self.manager.stopping,
            cipher=self.cipher,
            clone_auth=github_clone_auth(settings, clients=self.github_clients),
        )
        self._started = False

    @property
    def lost_leadership(self) -> bool:  # the controller exits (see controller.leadership)
        return self.manager.lost_leadership.is_set()

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self.db.migrate(in_child=True)
        METER.start(self.settings.data_dir / "metrics" / "github", clean=self.role != "controller")
        if self.role != "controller":
            # Intake owns the inbox file: it deletes what the router moved, then checkpoints.
            inbox: list[Callable[[], object]] = (
                [self.inbox.forget_moved, self.inbox.checkpoint] if self.inbox else []
            )
            self.db.start_checkpointer(also=[*inbox, PeriodicTrim(30.0)])
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
            if self.local is not None:
                self.local.stop_strays()
            stop_leftover_sessions(self.settings.data_dir, keep_workers=True)
            if self.control is not None:
                self.control.start()
            self.manager.start()
        self._started = True

    def stop(self) -> None:
        if self.remote is not None:
            self.remote.stop_accepting()
        if self.child is not None:
            self.child.stop()
        if self.control is not None:
            self.control.stop()
        if self.child is None:
            self.manager.stopping.set()
            self.queue.notify()
        if self.local is not None:
            self.local.close(timeout=WORKER_STOP_SECONDS)
        if self.child is None:
            self.manager.stop()
            self.builder.close()
            stop_leftover_sessions(self.settings.data_dir, keep_workers=False)
        if self.remote is not None:
            self.remote.close()
        if self.local is None and self.remote is None:
            self.runtime.close()  # the Kubernetes runtime: its client's connections
        self.writer.stop()
        if self.control_client is not None:
            self.control_client.close()
        self.db.dispose()
        if self.inbox is not None:
            self.inbox.close()
        self._started = False

    def readiness_problems(self) -> list[str]:
        if not self._started:
            return ["controller not started"]
        if self.child is not None and not self.child.alive:
            return ["the controller process is not running (it is being restarted)"]
        if self.control_client is not None and not self.control_client.reachable():
            return ["the controller process is starting (its control channel is not up yet)"]
        return []

    # -- job handlers ---------------------------------------------------------------------

    def route_deliveries(self) -> bool | None:
        moved = move_from_inbox(self.db, self.inbox) if self.inbox is not None else Moved(0)
        results = route_pending(self.db, self.cipher)
        if results is None:
            return True if moved.backlog else None
        if any(applied.deployments for applied in results):
            self.queue.notify("deploy")
            self.queue.notify("promote")
        for applied in results:
            for env_id in applied.archived_env_ids:
                retire_environment(self.db, self.runtime, env_id)
        self.queue.notify("report")
        return results.backlog or moved.backlog

    def _after_resync_archive(self, env_id: int) -> None:
        retire_environment(self.db, self.runtime, env_id)
        self.queue.notify("report")

    def handle_deploy(self, job: Claimed) -> None:
        try:
            self.pipeline.handle(job)
        finally:
            self.queue.notify("report")

    # -- control channel ------------------------------------------------------------------

    def _control_handlers(self, runtime: LocalRuntime | None) -> dict[str, Handler]:
        """What the web process may ask of the controller (see controller.runtimes.control);
        with another runtime than the local one, only wake-ups."""
        wakeups: dict[str, Handler] = {
            "ping": lambda r: True,
            "notify": lambda r: self.queue.notify(r.get("kind")),
        }
        if runtime is None:
            return wakeups
        return {
            **wakeups,
            "ensure": lambda r: runtime.ensure(spec_from_json(r["spec"])),
            "retire": lambda r: runtime.retire(int(r["version_id"])),
            **lease_handlers(runtime),
        }
