"""What Slipway shows on GitHub: states, names, check run output and the PR comment body.

Pure functions of what the database holds (no I/O), so the reporter can compare what it
would send now with what it sent (a hash of the comment body, the state names).

State mapping (SPEC.md "On GitHub"): ``queued`` → ``queued``; installing, building,
deploying (and any other active status, e.g. a gate's ``waiting``) → ``in_progress``;
``deployed`` → ``success``; ``failed`` → ``failure``; ``timed_out``, ``canceled`` and
``superseded`` → ``error`` (the description says which). An archived preview's
deployments then become ``inactive``. Check runs conclude ``success``, ``failure``,
``timed_out`` or ``cancelled``.

A deployment ``waiting`` for its promotion gate stays ``in_progress`` on GitHub (both the
Deployment status and the check run), but what it shows changes: the gate, in words,
since when and until when. So the reporter compares *phases* (:func:`deployment_phase`,
:func:`check_phase`), where ``waiting`` differs from ``in_progress``, and sends GitHub's
state names (:func:`deployment_state`, :func:`check_status`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

from controller.errors import InvalidInput
from controller.gates.spec import describe_gate, parse_gate
from controller.models import ACTIVE_STATUSES, WAITING

MARKER = "<!-- slipway:preview project={ref} -->"
LOG_TAIL_LINES = 40
MAX_TEXT = 60_000  # GitHub's check run output.text limit is 65535 characters
_FAILING_FILE = re.compile(r"([\w][\w./-]*\.(?:py|toml|txt|cfg|ini|json))(?:, line (\d+))?")
FINAL_STATES = frozenset({"success", "failure", "error"})


@dataclass(frozen=True)
class DeploymentView:
    """One deployment as the reporter loads it."""

    id: str
    project_ref: str
    repo: str
    installation_id: int
    sha: str
    status: str
    environment: str  # production | staging | preview
    branch: str | None
    env_archived: bool
    version: str | None = None
    tasks: list[str] = field(default_factory=list)
    error: str | None = None
    steps: list[tuple[str, str, float | None]] = field(default_factory=list)
    log_tail: list[str] = field(default_factory=list)
    gate: str | None = None
    waiting_since: datetime | None = None
    gate_deadline: datetime | None = None

    @property
    def github_environment(self) -> str:
        if self.environment == "preview":
            return f"slipway/preview/{self.branch}"
        return f"slipway/{self.environment}"

    @property
    def label(self) -> str:
        return f"preview/{self.branch}" if self.environment == "preview" else self.environment


def deployment_state(status: str) -> str:
    if status == "queued":
        return "queued"
    if status in ACTIVE_STATUSES or status not in _FINAL_MAP:
        return "in_progress"
    return _FINAL_MAP[status]


_FINAL_MAP = {
    "deployed": "success",
    "failed": "failure",
    "timed_out": "error",
    "canceled": "error",
    "superseded": "error",
}
_CONCLUSIONS = {
    "deployed": "success",
    "failed": "failure",
    "timed_out": "timed_out",
    "canceled": "cancelled",
    "superseded": "cancelled",
}


def deployment_phase(status: str) -> str:
    """:func:`deployment_state`, but ``waiting`` (sent as ``in_progress``) is its own."""
    return WAITING if status == WAITING else deployment_state(status)


def check_phase(status: str) -> str:
    """:func:`check_status`, but ``waiting`` (sent as ``in_progress``) is its own."""
    return WAITING if status == WAITING else check_status(status)


def check_status(status: str) -> str:
    if status == "queued":
        return "queued"
    return "completed" if status in _CONCLUSIONS else "in_progress"


def check_conclusion(status: str) -> str | None:
    return _CONCLUSIONS.get(status)


def check_name(dep: DeploymentView) -> str:
    return f"Slipway ({dep.label})"


def environment_url(public_url: str, dep: DeploymentView) -> str:
    url = f"{public_url}/projects/{quote(dep.project_ref)}/environments/{dep.environment}"
    return url + (f"?branch={quote(dep.branch, safe='')}" if dep.branch else "")


def log_url(public_url: str, dep: DeploymentView) -> str:
    return f"{public_url}/deployments/{quote(dep.id)}"


def describe(dep: DeploymentView) -> str:
    """A deployment status's ``description`` (GitHub keeps 140 characters)."""
    text = {
        "queued": "queued",
        "deployed": f"deployed {dep.version}" if dep.version else "deployed",
        "superseded": "superseded by a newer commit",
        "canceled": "canceled",
        "timed_out": "timed out",
    }.get(dep.status, dep.status)
    if dep.status == "failed" and dep.error:
        text = "failed: " + dep.error.splitlines()[0]
    if dep.status == "timed_out" and dep.error:
        first = dep.error.splitlines()[0]
        text = first if first.startswith("timed out") else "timed out: " + first
    if dep.status == WAITING:
        text = f"waiting for promotion gate {dep.gate or '?'}"
        if dep.gate_deadline is not None:
            text += f" until {_utc(dep.gate_deadline)}"
    return text[:140]


def _utc(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def gate_words(dep: DeploymentView) -> str:
    """What the deployment waits for, as its log says it (the gate text if unparsable)."""
    try:
        return describe_gate(parse_gate(dep.gate or ""), dep.sha)
    except InvalidInput:
        return f"promotion gate {dep.gate}"


def waiting_lines(dep: DeploymentView) -> list[str]:
    lines = [f"Waiting for {gate_words(dep)} (gate `{dep.gate}`)."]
    if dep.waiting_since is not None:
        lines.append(f"Since: {_utc(dep.waiting_since)}")
    if dep.gate_deadline is not None:
        lines.append(f"Until: {_utc(dep.gate_deadline)} (then it times out)")
    lines.append("The current version is unchanged until the gate passes.")
    return lines


def failing_file(error: str | None) -> tuple[str, int | None] | None:
    """The first file a failure names (``tasks/broken.py, line 3: …``), if any."""
    if not error:
        return None
    found = _FAILING_FILE.search(error)
    if found is None:
        return None
    return found.group(1), int(found.group(2)) if found.group(2) else None


def check_output(dep: DeploymentView) -> dict[str, Any]:
    """``output`` of the check run: title, summary (version, tasks, step timings) and, on
    failure, the failing file and the log tail."""
    title = {
        "deployed": f"Deployed {dep.version or ''}".strip(),
        "failed": "Deployment failed",
        WAITING: f"Waiting for promotion gate {dep.gate}",
        "timed_out": "Promotion gate timed out" if dep.gate else "Deployment timed out",
    }.get(dep.status, f"Deployment {dep.status}")
    lines = [f"**{dep.label}** at `{dep.sha[:12]}`: {dep.status}"]
    if dep.version:
        lines.append(f"Version: `{dep.version}`")
    if dep.tasks:
        lines.append("Tasks: " + ", ".join(f"`{t}`" for t in dep.tasks[:50]))
    if dep.status == WAITING:
        lines += ["", *waiting_lines(dep)]
    if dep.steps:
        lines += ["", "| step | status | time |", "|---|---|---|"]
        lines += [
            f"| {name} | {status} | {f'{ms / 1000:.1f} s' if ms is not None else '-'} |"
            for name, status, ms in dep.steps
        ]
    output: dict[str, Any] = {"title": title[:255], "summary": "\n".join(lines)[:MAX_TEXT]}
    if dep.status in ("failed", "timed_out"):
        text = []
        found = failing_file(dep.error)
        if found:
            text.append(f"Failing file: `{found[0]}`" + (f", line {found[1]}" if found[1] else ""))
        if dep.error:
            text += ["", "```", dep.error[:4000], "```"]
        if dep.log_tail:
            text += ["", "Log tail:", "```", *dep.log_tail, "```"]
        output["text"] = "\n".join(text)[-MAX_TEXT:]
        if found and found[1]:
            output["annotations"] = [
                {
                    "path": found[0],
                    "start_line": found[1],
                    "end_line": found[1],
                    "annotation_level": "failure",
                    "message": (dep.error or "failed").splitlines()[0][:1000],
                }
            ]
    return output


@dataclass(frozen=True)
class PreviewView:
    """A pull request's preview as its comment shows it."""

    project_ref: str
    pr_number: int
    branch: str | None
    archived: bool
    deployment: DeploymentView | None = None
    refusal: str | None = None  # why no preview was made (a fork PR)


def comment_body(public_url: str, preview: PreviewView) -> str:
    lines = [
        MARKER.format(ref=preview.project_ref),
        f"**Slipway** · project `{preview.project_ref}`",
    ]
    if preview.refusal:
        lines += ["", f"No preview: {preview.refusal}"]
        return "\n".join(lines)
    dep = preview.deployment
    state = "archived" if preview.archived else (dep.status if dep else "waiting")
    lines += [
        "",
        "| preview branch | version | status | links |",
        "|---|---|---|---|",
    ]
    links = ""
    if dep is not None:
        links = (
            f"[environment]({environment_url(public_url, dep)}) · [log]({log_url(public_url, dep)})"
        )
    version = dep.version if dep and dep.version else "-"
    lines.append(f"| `{preview.branch}` | `{version}` | {state} | {links} |")
    if dep is not None:
        lines.append(f"\nCommit `{dep.sha[:12]}`.")
    if preview.archived:
        lines.append("\nThe preview branch was archived: its workers are stopped.")
    return "\n".join(lines)


def body_hash(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()
