"""Keeping the workers in line with the store: the runtime half of the resync, the start
check the runtime asks before every start, and retiring what was archived or disconnected.

These read the store (and the domain's project lookup), which sit below the runtimes in
the layers contract, and act on a :class:`~controller.runtimes.base.Runtime`; services
only connects them (the resync list, the runtime's ``may_start``, the API's calls).
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from controller.domain.projects import get_project
from controller.runtimes.base import Runtime, VersionSpec
from controller.runtimes.local import WORKER_MAIN, LocalRuntime
from controller.runtimes.procs import kill_session, sessions_with_env, workers_marked
from controller.store.db import Database
from controller.store.deployments import deploying_version_ids
from controller.store.environments import environment_ids_of_project
from controller.store.tables import Environment, Project, Version
from controller.store.versions import current_versions, version_ids_of_environment
from controller.versions import spec_of

log = logging.getLogger(__name__)

IDLE_RETIRE_SECONDS = 300.0
# Health checks in flight at once during a resync pass.
RESYNC_CHECKS = 8


def start_refusal(db: Database, version_id: int) -> str | None:
    """Why a worker of this version must not start now, or None. Called by the
    runtime under the version's lock, so it sees every archive and disconnect."""
    with db.read() as session:
        version = session.get(Version, version_id)
        if version is None:
            return f"version id {version_id} does not exist"
        env = session.get(Environment, version.environment_id)
        project = session.get(Project, version.project_id)
        if env is None or project is None:
            return "its environment is gone"
        if project.disconnected_at is not None:
            return f"project {project.ref} is disconnected"
        if env.status == "archived":
            return f"preview branch {env.branch} is archived"
    return None


def retire_environment(db: Database, runtime: Runtime, env_id: int) -> None:
    with db.read() as session:
        ids = version_ids_of_environment(session, env_id)
    for version_id in ids:
        runtime.retire(version_id)


def retire_project(db: Database, runtime: Runtime, ref: str) -> None:
    """Retire the workers of every environment of a (just disconnected) project."""
    with db.read() as session:
        env_ids = environment_ids_of_project(session, get_project(session, ref).id)
    for env_id in env_ids:
        retire_environment(db, runtime, env_id)


def stop_leftover_sessions(data_dir: Path, *, keep_workers: bool) -> None:
    """Kill sessions of this data dir's commands and runs that nothing tracks: every
    install, pre-build and worker runs with ``HOME=<data>/home``. The command registry
    misses one started just before its controller was SIGKILLed; at a start the
    workers that can be adopted are kept, at a stop nothing is."""
    keep = workers_marked(WORKER_MAIN, owner=data_dir / "workers")
    for sid in sessions_with_env("HOME", str(data_dir / "home")):
        if sid == os.getsid(0) or (keep_workers and sid in keep):
            continue
        log.warning("stopping session %s of this data dir that nothing tracks", sid)
        kill_session(sid)


def resync_runtime(db: Database, runtime: Runtime) -> None:
    """Current versions serve (previews only while they have runs: they scale to
    zero); archived or idle non-current versions stop."""
    with db.read() as session:
        specs = [
            spec_of(version, env, project) for env, version, project in current_versions(session)
        ]
        busy = deploying_version_ids(session)
    wanted = {spec.version_id for spec in specs}
    # A preview scaled to zero stays stopped until its next run; production and
    # staging always serve. Health checks run in parallel, bounded.
    serving = runtime.serving()
    if isinstance(runtime, LocalRuntime):
        serving |= runtime.recorded()  # adopted, then stopped when idle
    check = [
        spec
        for spec in specs
        if spec.context.get("environment") != "preview" or spec.version_id in serving
    ]

    def ensure(spec: VersionSpec) -> None:
        try:
            runtime.ensure(spec)
        except Exception as exc:
            log.warning("resync: version %s does not serve: %s", spec.version, exc)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=RESYNC_CHECKS, thread_name_prefix="resync") as pool:
        list(pool.map(ensure, check))
    log.debug(
        "resync: %d worker(s) checked in %.1f ms",
        len(check),
        (time.monotonic() - started) * 1000,
    )
    if isinstance(runtime, LocalRuntime):
        runtime.stop_idle_previews()
    runtime.stop_unlisted(wanted | busy | runtime.serving())
    for version_id in runtime.serving() - wanted - busy:
        if runtime.idle_for(version_id) > IDLE_RETIRE_SECONDS:
            runtime.retire(version_id)
