"""A run's ``env`` reaches its process's ``os.environ`` and ``ctx.env``, for that run only."""

from __future__ import annotations

from pathlib import Path

from test_worker_main import running_worker, write_repo

ENV_TASK = """
import os


def run(payload, ctx):
    left = os.environ.get("LEFT_BEHIND")
    os.environ["LEFT_BEHIND"] = "by an earlier run"
    return {"os": os.environ.get("API_URL"), "ctx": ctx.env.get("API_URL"), "left": left}
"""


def test_each_run_sees_its_own_environment(tmp_path: Path) -> None:
    source = write_repo(tmp_path / "repo", {"tasks/envcheck.py": ENV_TASK})
    with running_worker(source) as worker:
        first = worker.run("envcheck", {}, env={"API_URL": "https://x"}).json()
        assert first["status"] == "completed", first
        assert first["output"] == {"os": "https://x", "ctx": "https://x", "left": None}
        second = worker.run("envcheck", {}, env={"API_URL": "https://y"}).json()
        assert second["output"]["os"] == second["output"]["ctx"] == "https://y"
        third = worker.run("envcheck", {}).json()
        assert third["output"]["os"] is None, "a run without variables sees none of the last"
        assert third["output"]["left"] is None, "what a run sets dies with its process"
        bad = worker.run("envcheck", {}, env={"A": 1})
        assert bad.status_code == 400


HOME_TASK = """
import os


def run(payload, ctx):
    return {"home": os.environ.get("HOME"), "ctx": ctx.env.get("HOME"), "n": len(ctx.env)}
"""


def test_a_variable_over_the_workers_own_is_undone_for_the_next_run(tmp_path: Path) -> None:
    """The spawner keeps the last variables it was sent (runs inherit them); a change
    restores what the worker itself had."""
    source = write_repo(tmp_path / "repo", {"tasks/home.py": HOME_TASK})
    many = {f"VAR_{i:03d}": "v" * 100 for i in range(500)}
    with running_worker(source) as worker:
        own = worker.run("home", {}).json()["output"]
        first = worker.run("home", {}, env={"HOME": "/elsewhere", **many}).json()["output"]
        assert first["home"] == first["ctx"] == "/elsewhere"
        assert first["n"] == own["n"] + 500
        again = worker.run("home", {}, env={"HOME": "/elsewhere", **many}).json()["output"]
        assert again == first
        after = worker.run("home", {}).json()["output"]
        assert after == own
