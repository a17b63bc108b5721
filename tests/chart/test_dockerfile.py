"""The repository's Dockerfile, checked by reading it (no Docker daemon runs here).

A small parser (continuation lines joined, comments dropped, stages split at ``FROM``)
is enough to hold the image to what the chart and the SPEC expect: python:3.11-slim, a
non-root numeric user that matches the chart's ``runAsUser``, the package installed with
pip, ``slipway serve`` as the entry point, and every ``COPY`` source present and not
excluded by ``.dockerignore``.
"""

from __future__ import annotations

import json
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> list[Stage]:
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
            continue
        assert stages, f"{keyword} before the first FROM"
        stages[-1].instructions.append((keyword, args.strip()))
    return stages


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not exec form: {args}"
    return [str(v) for v in value]


def stages() -> list[Stage]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


def test_every_stage_is_python_311_slim() -> None:
    assert [stage.base for stage in stages()] == ["python:3.11-slim", "python:3.11-slim"]


def test_runs_as_the_non_root_user_the_chart_expects() -> None:
    final = stages()[-1]
    keywords = [kw for kw, _ in final.instructions]
    users = final.all("USER")
    assert users, "the final stage never leaves root"
    user = users[-1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), "a numeric uid lets Kubernetes check runAsNonRoot"
    assert int(uid) != 0
    assert gid and int(gid) != 0
    last_user = max(i for i, kw in enumerate(keywords) if kw == "USER")
    assert "RUN" not in keywords[last_user:], "nothing runs as root after USER"
    created = " ".join(final.all("RUN"))
    assert f"--uid {uid}" in created
    values = yaml.safe_load((ROOT / "charts" / "slipway" / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == int(uid)
    assert values["podSecurityContext"]["runAsGroup"] == int(gid)
    assert values["podSecurityContext"]["fsGroup"] == int(gid)


def test_entry_point_is_slipway_serve() -> None:
    final = stages()[-1]
    (entrypoint,) = final.all("ENTRYPOINT")
    (cmd,) = final.all("CMD")
    assert exec_form(entrypoint) + exec_form(cmd) == ["slipway", "serve"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["slipway"] == "controller.cli:main"
    chart = (ROOT / "charts" / "slipway" / "templates" / "deployment.yaml").read_text()
    assert 'args: ["serve"]' in chart


def test_installs_the_package_with_pip_and_listens_where_the_chart_looks() -> None:
    build, final = stages()
    assert any("pip wheel" in run and run.rstrip().endswith(" .") for run in build.all("RUN"))
    assert any("pip install" in run and "/wheels/" in run for run in final.all("RUN"))
    assert any(f"--from={build.name}" in copy for copy in final.all("COPY"))
    env = " ".join(final.all("ENV"))
    assert "SLIPWAY_HOST=0.0.0.0" in env
    assert "SLIPWAY_PORT=8080" in env
    assert final.all("EXPOSE") == ["8080"]
    installs = " ".join(final.all("RUN"))
    assert "install -y --no-install-recommends git" in installs  # GitPython needs git


def test_copy_sources_exist_and_are_not_ignored() -> None:
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for stage in stages():
        for copy in stage.all("COPY"):
            if copy.startswith("--from="):
                continue
            *sources, _dest = shlex.split(copy)
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: no such path"
                assert source not in ignored, f"COPY {source} is excluded by .dockerignore"
    for heavy in (".venv", ".git", "tests"):
        assert heavy in ignored
    package = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for pattern in package["packages"]["find"]["include"]:
        top = pattern.rstrip("*")
        assert any(top in copy for copy in stages()[0].all("COPY")), f"{top} is not copied"
