"""The Runtime protocol: run a version's tasks. Runtimes consume built artifacts only.

A version names its code by an :class:`ArtifactRef` (a digest and where the artifact
store keeps it), not by host paths, so a runtime on another machine fits: the local
runtime resolves the reference to paths on this host (:func:`host_paths`); the
Kubernetes runtime has the controller publish it as a content-addressed bundle that pods
fetch and verify (:mod:`controller.bundles`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from controller.errors import PermanentError


@dataclass(frozen=True)
class ArtifactRef:
    """``digest``: the content digest of the tree the version was built from;
    ``location`` / ``environment``: URIs of the built project root and of its
    dependency environment in the artifact store (``file://`` on the controller's host)."""

    digest: str
    location: str
    environment: str

    @classmethod
    def on_host(cls, *, digest: str | None, source: Path, venv: Path) -> ArtifactRef:
        return cls(digest=digest or "", location=source.as_uri(), environment=venv.as_uri())


def host_paths(ref: ArtifactRef) -> tuple[Path, Path]:
    """The (project root, environment) a ``file://`` reference names on this host."""
    paths = []
    for uri in (ref.location, ref.environment):
        parts = urlsplit(uri)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
            raise PermanentError(f"artifact {uri!r} is not on this host")
        paths.append(Path(unquote(parts.path)))
    return paths[0], paths[1]


@dataclass(frozen=True)
class VersionSpec:
    version_id: int
    version: str
    artifact: ArtifactRef
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

    def activate(self, spec: VersionSpec) -> None:
        """``spec`` became its environment's current version (after :meth:`ensure`):
        route the environment's traffic to it. A no-op where runs name their version."""
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
