"""The Runtime protocol: run a version's tasks. Runtimes consume built artifacts only."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class VersionSpec:
    version_id: int
    version: str
    source: Path  # the project root inside the immutable artifact
    venv: Path
    tasks_dir: str
    context: dict[str, Any]  # project, environment, branch, deployment_id
    env: dict[str, str] = field(default_factory=dict)  # variables runs see


class Runtime(Protocol):
    name: str

    def ensure(self, spec: VersionSpec) -> None:
        """Serve ``spec`` (start it if needed) and pass a health check, or raise."""
        ...

    def retire(self, version_id: int) -> None:
        """Stop taking runs for the version; in-flight runs finish, then it stops."""
        ...

    def run(
        self,
        spec: VersionSpec,
        *,
        run_id: str,
        task_id: str,
        payload: Any,
        timeout: float | None,
        env: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Execute one run on the version; returns status, output, error, logs. ``env``
        (resolved when the run starts) is set in the run's ``os.environ`` and ``ctx.env``."""
        ...

    def serving(self) -> set[int]: ...

    def stop_unlisted(self, keep: set[int]) -> None: ...

    def idle_for(self, version_id: int) -> float: ...

    def close(self) -> None: ...
