"""The env var parts of a deployment: build-time variables and the ``sync-env`` step.

Install, pre-build and sync see the environment's ``SLIPWAY_BUILD_<NAME>`` variables as
``<NAME>``, resolved when each step starts (a fork preview: fork-safe ones only), and
every line they log has the secret values masked.

``sync-env`` runs ``sync_env_vars`` in the built environment (``SLIPWAY_ENVIRONMENT``
and ``SLIPWAY_BRANCH`` set) and imports what it printed, marked as synced, into the
environment or preview branch being deployed — never another one. It writes all of them
in one transaction only after the command succeeded and its output parsed, so a failing,
timed-out or malformed sync fails the deployment and changes nothing; the journaled
step's result holds the names only, and is recorded in that same transaction, so a
controller killed after the import never imports twice. It is skipped with ``--skip-sync-env-vars``, and for
fork previews: what a fork's code prints must not become the project's variables.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controller.builders.base import Builder
from controller.errors import BuildFailed, InvalidInput
from controller.pipeline.journal import Journal
from controller.queue import Backoff
from controller.secretstore.crypto import Cipher
from controller.secretstore.store import Scope, resolve_for_environment, set_variables
from controller.secretstore.variables import (
    Variable,
    build_variables,
    mask,
    parse_sync_output,
    secret_values,
)
from controller.store.db import Database
from controller.store.tables import Deployment, Environment


class EnvVarsPhase:
    def __init__(
        self,
        *,
        db: Database,
        cipher: Cipher | None,
        builder: Builder,
        stopping: threading.Event,
    ) -> None:
        self.db = db
        self.cipher = cipher
        self.builder = builder
        self.stopping = stopping

    def variables(self, dep: Deployment, env: Environment) -> dict[str, Variable]:
        if self.cipher is None:
            return {}
        with self.db.read() as session:
            row = session.get(Environment, env.id)
            assert row is not None
            variables = resolve_for_environment(session, self.cipher, row)
        if dep.options.get("fork"):
            variables = {n: v for n, v in variables.items() if v.fork_safe}
        return variables

    def build_variables(
        self, dep: Deployment, env: Environment, journal: Journal
    ) -> tuple[dict[str, str], Callable[[str], None]]:
        """The build-time variables now, and a log that masks the secret ones."""
        variables = self.variables(dep, env)
        secrets = secret_values(variables)
        return build_variables(variables), lambda line: journal.log(mask(line, secrets))

    def sync(
        self,
        dep: Deployment,
        env: Environment,
        journal: Journal,
        *,
        command: str,
        root: Path,
        venv: Path,
        timeout: Callable[[], float],
    ) -> None:
        if dep.options.get("skip_sync_env_vars"):
            journal.log("Not syncing env vars (--skip-sync-env-vars)")
            return
        if dep.options.get("fork") or env.is_fork:
            journal.log("Not syncing env vars: this is a preview of a fork", level="warn")
            return

        def sync(_attempt: int) -> dict[str, Any]:
            build_env, log = self.build_variables(dep, env, journal)
            printed = self.builder.sync_env_vars(
                root,
                venv=venv,
                command=command,
                log=log,
                cancel=self.stopping,
                timeout=timeout(),
                build_env=build_env,
                extra_env={"SLIPWAY_ENVIRONMENT": env.name, "SLIPWAY_BRANCH": env.branch or ""},
            )
            try:
                values = parse_sync_output(printed)
            except InvalidInput as exc:
                raise BuildFailed(exc.message, hint="no variable was changed") from None
            where = f"preview branch {env.branch}" if env.branch else env.name
            journal.log(f"Synced {len(values)} env var(s) into {where}: {', '.join(values)}")
            result = {"synced": sorted(values)}
            if values and self.cipher is not None:
                with self.db.transaction() as session:
                    set_variables(
                        session,
                        self.cipher,
                        Scope(dep.project_id, env.name, env.branch or ""),
                        values,
                        actor=f"sync of deployment {dep.id}",
                        source="sync",
                    )
                    journal.record(session, result)
            return result

        journal.step("sync-env", sync, retry=Backoff(limit=1))
