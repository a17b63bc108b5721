"""The gate grammar of ``--promote-after ENV=GATE`` and ``--promotion-timeout DURATION``.

Gates are stored per environment name (``production``, ``staging``, ``preview``; a
preview gate holds for every preview branch) as their text, so what ``projects show``
prints is what the user typed, normalised. Decisions where the SPEC is silent:

* ``github-deployment:NAME`` never names one of Slipway's own environments
  (``slipway/…``): those are the deployments this gate must not count. That is a
  :class:`Conflict` (well-formed, but it contradicts what Slipway reports), not an
  :class:`InvalidInput`.
* ``check-run:NAME`` compares the check's name exactly, as GitHub shows it;
  GitHub environment names compare case-insensitively, as GitHub does.
* ``kubernetes:NAMESPACE/DEPLOYMENT`` takes DNS-label names (RFC 1123).
* A duration is a whole number with ``s``, ``m`` or ``h`` (a bare number is seconds),
  from 10 s to 7 days.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from controller.errors import Conflict, InvalidInput
from controller.models import normalise_environment

KINDS = ("github-deployment", "check-run", "kubernetes", "manual")
DEFAULT_TIMEOUT = 30 * 60
MIN_TIMEOUT, MAX_TIMEOUT = 10, 7 * 24 * 3600
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DURATION = re.compile(r"^\s*(\d+)\s*([smh]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}


@dataclass(frozen=True)
class Gate:
    kind: str
    target: str = ""  # NAME, or NAMESPACE/DEPLOYMENT

    def __str__(self) -> str:
        return self.kind if self.kind == "manual" else f"{self.kind}:{self.target}"

    @property
    def namespace(self) -> str:
        return self.target.partition("/")[0]

    @property
    def deployment(self) -> str:
        return self.target.partition("/")[2]


def parse_gate(text: str) -> Gate:
    value = text.strip()
    kind, sep, target = value.partition(":")
    kind = kind.lower()
    if kind == "manual" and not sep:
        return Gate("manual")
    if kind not in KINDS or kind == "manual" or not target.strip():
        raise InvalidInput(
            f"{text!r} is not a promotion gate",
            hint="use github-deployment:NAME, check-run:NAME, kubernetes:NAMESPACE/DEPLOYMENT or manual",
        )
    target = target.strip()
    if len(target) > 255:
        raise InvalidInput("a promotion gate's name is at most 255 characters")
    if kind == "github-deployment" and target.lower().startswith("slipway/"):
        raise Conflict(
            f"{text!r} names one of Slipway's own GitHub environments",
            hint="name the environment your app deploys to (what Vercel or your workflow creates)",
        )
    if kind == "kubernetes":
        namespace, _, name = target.partition("/")
        if not (_DNS_LABEL.match(namespace) and _DNS_LABEL.match(name)):
            raise InvalidInput(
                f"{text!r}: a kubernetes gate is kubernetes:NAMESPACE/DEPLOYMENT (lowercase DNS names)"
            )
    return Gate(kind, target)


def parse_duration(text: str | int) -> int:
    """Seconds of ``90s``, ``30m``, ``2h`` (or a number of seconds)."""
    found = _DURATION.match(str(text))
    if found is None:
        raise InvalidInput(f"{text!r} is not a duration", hint="use 90s, 30m or 2h")
    seconds = int(found.group(1)) * _UNITS[found.group(2)]
    if not MIN_TIMEOUT <= seconds <= MAX_TIMEOUT:
        raise InvalidInput("--promotion-timeout must be between 10s and 168h")
    return seconds


def describe_gate(gate: Gate, sha: str | None) -> str:
    """What a deployment of ``sha`` waits for, in words (its log and its GitHub check run)."""
    commit = (sha or "")[:12] or "this upload"
    if gate.kind == "github-deployment":
        return f"a successful GitHub deployment of {commit} in GitHub environment {gate.target}"
    if gate.kind == "check-run":
        return f"check run {gate.target} on {commit} to complete success"
    if gate.kind == "kubernetes":
        return f"Deployment {gate.deployment} in namespace {gate.namespace} to roll out {commit}"
    return "`slipway promote` (manual gate)"


def format_duration(seconds: int) -> str:
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def merge_gates(current: dict[str, Any] | None, changes: dict[str, Any]) -> dict[str, str]:
    """``current`` with ``changes`` applied: ``ENV: GATE`` sets, ``ENV: none`` (or null)
    removes. Keys are environment names (``prod`` is ``production``)."""
    gates = dict(current or {})
    for env, gate in changes.items():
        try:
            name = normalise_environment(str(env))
        except ValueError as exc:
            raise InvalidInput(f"--promote-after {env}=…: {exc}") from None
        if gate is None or str(gate).strip().lower() == "none":
            gates.pop(name, None)
        else:
            gates[name] = str(parse_gate(str(gate)))
    return gates


def gate_for(gates: dict[str, Any] | None, environment: str) -> Gate | None:
    text = (gates or {}).get(environment)
    return parse_gate(text) if text else None
