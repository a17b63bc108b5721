"""Issue 7 (bounded outputs and stored logs) and 10c (run failures are logged, classified).

The runtime is a fake at our ``Runtime`` boundary: it answers what a worker answers, or
raises what a runtime adapter (or a bug) raises.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from conftest import Deployed

from controller.errors import RuntimeUnavailable
from controller.runs import RunLimits, get_run, trigger
from controller.runtimes.base import VersionSpec

LIMITS = RunLimits(payload_bytes=4096, output_bytes=4096, log_bytes=4096)
SECRET = "4111-secret"


class ScriptedRuntime:
    """Answers each run with ``answer`` (a worker's result) or raises it."""

    name = "scripted"

    def __init__(self, answer: dict[str, Any] | BaseException) -> None:
        self.answer = answer

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
        if isinstance(self.answer, BaseException):
            raise self.answer
        return dict(self.answer)

    def _unused(self, *_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("a run must not call this")

    ensure = retire = serving = stop_unlisted = idle_for = close = _unused


def run_with(deployed: Deployed, answer: dict[str, Any] | BaseException) -> dict[str, Any]:
    return trigger(
        deployed.database,
        ScriptedRuntime(answer),  # type: ignore[arg-type]
        key=deployed.production_key,
        branch=None,
        task_id="hello",
        payload={"card": SECRET},
        version=None,
        limits=LIMITS,
    )


def stored(deployed: Deployed, run_id: str) -> dict[str, Any]:
    return get_run(deployed.database, run_id, key=None, admin=True)


def test_an_output_over_the_bound_fails_the_run_and_is_not_stored(deployed: Deployed) -> None:
    huge = {"blob": "x" * 10_000}
    run = run_with(deployed, {"status": "completed", "output": huge, "error": None, "logs": ""})
    assert run["status"] == "failed"
    assert run["output"] is None
    assert run["error"]["type"] == "OutputTooLarge"
    assert "larger than 4 KiB" in run["error"]["message"]
    assert stored(deployed, run["id"])["output"] is None


def test_an_output_within_the_bound_is_kept(deployed: Deployed) -> None:
    run = run_with(deployed, {"status": "completed", "output": {"ok": 1}, "error": None})
    assert (run["status"], run["output"]) == ("completed", {"ok": 1})


def test_stored_logs_keep_their_tail_behind_a_marker(deployed: Deployed) -> None:
    logs = "".join(f"line {i}\n" for i in range(5000))
    run = run_with(deployed, {"status": "completed", "output": 1, "error": None, "logs": logs})
    kept = stored(deployed, run["id"])["logs"]
    assert len(kept.encode()) <= 4096
    assert kept.startswith(f"[slipway: logs truncated, showing the last 4096 of {len(logs)} bytes]")
    assert kept.endswith("line 4999\n")


def test_an_expected_failure_is_a_failed_run_with_its_message(
    deployed: Deployed, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="controller.runs")
    run = run_with(deployed, RuntimeUnavailable("the worker of version 20260101.1 is unreachable"))
    assert run["status"] == "failed"
    assert run["error"] == {
        "type": "RuntimeUnavailable",
        "message": "the worker of version 20260101.1 is unreachable",
    }
    (record,) = [r for r in caplog.records if r.name == "controller.runs"]
    assert record.levelno == logging.WARNING and record.exc_info is None
    message = record.getMessage()
    assert run["id"] in message and "hello" in message and "production" in message
    assert SECRET not in caplog.text


def test_an_unexpected_error_is_logged_with_its_traceback(
    deployed: Deployed, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="controller.runs")
    run = run_with(deployed, KeyError("spec.venv"))
    assert run["status"] == "failed"
    assert run["error"]["type"] == "InternalError"
    assert "see the server log" in run["error"]["message"]
    (record,) = [r for r in caplog.records if r.name == "controller.runs"]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None and record.exc_info[0] is KeyError
    message = record.getMessage()
    assert run["id"] in message and "hello" in message and "production" in message
    assert SECRET not in caplog.text
