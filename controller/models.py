"""Domain vocabulary shared by the API, the CLI and the pipeline (names fixed by SPEC.md)."""

from __future__ import annotations

import re

ENVIRONMENTS = ("production", "staging", "preview")
ENV_ALIASES = {"prod": "production", "stg": "staging"}

DEPLOYMENT_STATUSES = (
    "queued",
    "installing",
    "building",
    "deploying",
    "waiting",
    "deployed",
    "failed",
    "canceled",
    "superseded",
    "timed_out",
)
ACTIVE_STATUSES = frozenset({"queued", "installing", "building", "deploying"})
# A gated deployment waits for its promotion gate holding no thread and no build slot:
# neither active (it does not hold its environment) nor final (the gate may promote it).
WAITING = "waiting"
FINAL_STATUSES = frozenset(DEPLOYMENT_STATUSES) - ACTIVE_STATUSES - {WAITING}
# Where `slipway deploy --wait` stops: the version is built and, if gated, waits.
SETTLED_STATUSES = FINAL_STATUSES | {WAITING}

REF_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
BRANCH_PATTERN = re.compile(r"^[^\x00-\x20~^:?*\[\\]{1,255}$")


def normalise_environment(name: str) -> str:
    value = ENV_ALIASES.get(name.strip().lower(), name.strip().lower())
    if value not in ENVIRONMENTS:
        raise ValueError(
            f"unknown environment {name!r}: use production (or prod), staging or preview"
        )
    return value


def environment_type(name: str, branch: str | None) -> str:
    """As Trigger.dev's environment types: a preview branch is of type ``preview`` like the
    preview root (which holds the preview-wide key); ``branch`` tells them apart."""
    return name
