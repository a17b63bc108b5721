"""``slipway.toml``: where the tasks are and how to install and pre-build them.

The file sits at the project's config path (default ``slipway.toml`` at the repository
root; a monorepo points it into a subdirectory, which then becomes the project root).
A missing file means all defaults. Settings on the project (``--install-command``,
``--pre-build-command``) win over the file, which wins over detection.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from controller.errors import BuildFailed

KNOWN_KEYS = {"tasks_dir", "install", "pre_build", "release_tasks", "sync_env_vars", "kubernetes"}
# ``[kubernetes]`` (workers' requests and limits) is read by the Kubernetes runtime.


@dataclass(frozen=True)
class BuildConfig:
    root: str = "."  # project root, relative to the repository
    tasks_dir: str = "tasks"
    install: str | None = None
    pre_build: str | None = None
    release_tasks: list[str] = field(default_factory=list)
    sync_env_vars: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "root": self.root,
            "tasks_dir": self.tasks_dir,
            "install": self.install,
            "pre_build": self.pre_build,
            "release_tasks": list(self.release_tasks),
            "sync_env_vars": self.sync_env_vars,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> BuildConfig:
        return cls(
            root=str(data.get("root") or "."),
            tasks_dir=str(data.get("tasks_dir") or "tasks"),
            install=data.get("install") or None,  # type: ignore[arg-type]
            pre_build=data.get("pre_build") or None,  # type: ignore[arg-type]
            release_tasks=list(data.get("release_tasks") or []),  # type: ignore[call-overload]
            sync_env_vars=data.get("sync_env_vars") or None,  # type: ignore[arg-type]
        )


def _inside(path: str, what: str) -> str:
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts:
        raise BuildFailed(f"{what} {path!r} must be a relative path inside the repository")
    return str(pure)


def load_config(
    checkout: Path,
    *,
    config_path: str | None,
    install_command: str | None = None,
    pre_build_command: str | None = None,
) -> BuildConfig:
    rel = _inside(config_path or "slipway.toml", "config path")
    if not rel.endswith(".toml"):
        rel = str(PurePosixPath(rel) / "slipway.toml")
    file = checkout / rel
    root = str(PurePosixPath(rel).parent)
    data: dict[str, object] = {}
    warnings: list[str] = []
    if file.is_file():
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise BuildFailed(f"{rel} is not valid TOML: {exc}", hint=f"fix {rel}") from exc
        unknown = sorted(set(data) - KNOWN_KEYS)
        if unknown:
            warnings.append(f"{rel}: ignoring unknown keys {', '.join(unknown)}")
    elif config_path and not (checkout / root).is_dir():
        raise BuildFailed(
            f"config path {config_path!r} does not exist in the repository",
            hint="fix the project's --config",
        )
    for key in ("tasks_dir", "install", "pre_build", "sync_env_vars"):
        if key in data and not isinstance(data[key], str):
            raise BuildFailed(f"{rel}: {key} must be a string")
    release = data.get("release_tasks", [])
    if not isinstance(release, list) or not all(isinstance(t, str) for t in release):
        raise BuildFailed(f"{rel}: release_tasks must be a list of task ids")
    tasks_dir = _inside(str(data.get("tasks_dir") or "tasks"), "tasks_dir")
    return BuildConfig(
        root=root,
        tasks_dir=tasks_dir,
        install=install_command or data.get("install") or None,  # type: ignore[arg-type]
        pre_build=pre_build_command or data.get("pre_build") or None,  # type: ignore[arg-type]
        release_tasks=list(release),
        sync_env_vars=data.get("sync_env_vars") or None,  # type: ignore[arg-type]
        warnings=warnings,
    )
