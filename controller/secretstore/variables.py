"""Env vars without I/O: names, parsing (dotenv, JSON, sync output), precedence, masking.

**Names** match ``[A-Za-z_][A-Za-z0-9_]*``. ``SLIPWAY_*`` is reserved for what Slipway
sets itself (``SLIPWAY_PROJECT``, ``SLIPWAY_RUN_ID``, …) except ``SLIPWAY_BUILD_<NAME>``:
those are build-time variables, stored like any other variable of the environment, that
reach install, pre-build and sync commands as ``<NAME>`` and never reach runs.

**Precedence** (:func:`resolve_variables`, the one place it is decided): production and
staging see only their own variables; a preview branch sees the ``preview`` environment's
variables overridden by its own; the preview root sees the ``preview`` variables. A fork
preview sees only fork-safe variables: each layer is filtered before the override, so a
fork still sees the preview-wide value of a name when the branch's own is not fork-safe.

**Masking**: secret values are replaced by ``***`` in text that leaves the runtime (run
logs, outputs and errors, deployment logs). The whole text is masked at once, so a value
printed in several writes is still found. Values shorter than :data:`MIN_MASKED` are not
masked (masking ``1`` would rewrite every digit of every log); the README says so.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dotenv.parser import parse_stream

from controller.errors import InvalidInput

NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED_PREFIX = "SLIPWAY_"
BUILD_PREFIX = "SLIPWAY_BUILD_"
PIP_CONF = "PIP_CONF"
MAX_NAME = 255
MAX_VALUE = 64 * 1024
MAX_VARIABLES = 5000
MIN_MASKED = 3
MASK = "***"


@dataclass(frozen=True)
class Variable:
    name: str
    value: str
    secret: bool = False
    fork_safe: bool = False


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or len(name) > MAX_NAME:
        shown = name if isinstance(name, str) and len(name) <= 80 else "(a long name)"
        raise InvalidInput(
            f"invalid variable name {shown!r}: names match [A-Za-z_][A-Za-z0-9_]* "
            f"(at most {MAX_NAME} characters)"
        )
    if name.startswith(RESERVED_PREFIX):
        rest = name[len(BUILD_PREFIX) :] if name.startswith(BUILD_PREFIX) else ""
        if not rest or not NAME_PATTERN.match(rest):
            raise InvalidInput(
                f"{name} is reserved: names starting with SLIPWAY_ are set by Slipway, "
                "except SLIPWAY_BUILD_<NAME> (a build-time variable)"
            )
    return name


def validate_variables(values: Mapping[str, Any]) -> dict[str, str]:
    """Check names and values; the message names the variable, never its value."""
    if len(values) > MAX_VARIABLES:
        raise InvalidInput(f"at most {MAX_VARIABLES} variables at once")
    checked: dict[str, str] = {}
    for name, value in values.items():
        validate_name(name)
        if not isinstance(value, str):
            raise InvalidInput(f"the value of {name} must be a string")
        if len(value) > MAX_VALUE:
            raise InvalidInput(f"the value of {name} is longer than {MAX_VALUE} characters")
        checked[name] = value
    return checked


# -- parsing -------------------------------------------------------------------------


def parse_dotenv(text: str) -> dict[str, str]:
    """dotenv lines as python-dotenv reads them (``export``, quotes, comments); a line
    it cannot parse is an error here, where python-dotenv would skip it with a warning."""
    values: dict[str, Any] = {}
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            raise InvalidInput(f"dotenv line {binding.original.line} cannot be parsed")
        if binding.key is None:
            continue
        if binding.value is None:
            raise InvalidInput(
                f"dotenv line {binding.original.line} has no value (write NAME=VALUE)"
            )
        values[binding.key] = binding.value
    return validate_variables(values)


def _from_json(data: Any, *, what: str) -> dict[str, str]:
    if isinstance(data, dict):
        return validate_variables(data)
    if isinstance(data, list):
        values: dict[str, Any] = {}
        for item in data:
            if not isinstance(item, dict) or set(item) - {"name", "value"} or "name" not in item:
                raise InvalidInput(f'{what}: a JSON list must hold {{"name", "value"}} objects')
            values[item["name"]] = item.get("value")
        return validate_variables(values)
    raise InvalidInput(f'{what}: expected a JSON object or a list of {{"name", "value"}}')


def parse_import(body: bytes) -> tuple[dict[str, str], bool]:
    """An import body: JSON ``{"variables": {...}, "override": bool}`` or dotenv text."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput("the import body is not UTF-8 text") from exc
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"the import body is not valid JSON: {exc.msg}") from exc
        if not isinstance(data, dict) or "variables" not in data:
            raise InvalidInput('a JSON import is {"variables": {...}, "override": bool}')
        override = data.get("override", False)
        if not isinstance(override, bool):
            raise InvalidInput("override must be true or false")
        return _from_json(data["variables"], what="variables"), override
    return parse_dotenv(text), False


def parse_sync_output(text: str) -> dict[str, str]:
    """What ``sync_env_vars`` printed: a JSON object, a JSON list of ``{name, value}``,
    or dotenv lines. Anything else raises :class:`InvalidInput` with a message that
    quotes nothing of the output (a malformed line may well be a value)."""
    stripped = text.strip()
    if not stripped:
        return {}
    try:
        if stripped[0] in "{[":
            try:
                data = json.loads(stripped)
            except json.JSONDecodeError as exc:
                raise InvalidInput(
                    f"sync_env_vars printed invalid JSON (line {exc.lineno}, column {exc.colno})"
                ) from None
            return _from_json(data, what="sync_env_vars output")
        return parse_dotenv(text)
    except InvalidInput as exc:
        if exc.message.startswith("sync_env_vars printed invalid JSON"):
            raise
        raise InvalidInput(
            "sync_env_vars printed malformed output: expected a JSON object, a JSON list of "
            '{"name", "value"}, or dotenv NAME=VALUE lines, with valid names that do not '
            "start with SLIPWAY_ (except SLIPWAY_BUILD_)"
        ) from None


# -- precedence ----------------------------------------------------------------------


Layer = tuple[str, str]  # (environment name, branch or "")


def layers_for(environment: str, branch: str | None) -> list[Layer]:
    """The layers a target sees, lowest precedence first."""
    if environment == "preview":
        return [("preview", "")] + ([("preview", branch)] if branch else [])
    return [(environment, "")]


def resolve_variables(
    *,
    environment: str,
    branch: str | None,
    layers: Mapping[Layer, Iterable[Variable]],
    fork: bool = False,
) -> dict[str, Variable]:
    """The variables ``environment``/``branch`` sees, from every stored layer."""
    resolved: dict[str, Variable] = {}
    for layer in layers_for(environment, branch):
        for var in layers.get(layer, ()):
            if fork and not var.fork_safe:
                continue
            resolved[var.name] = var
    return resolved


def build_variables(resolved: Mapping[str, Variable]) -> dict[str, str]:
    """``SLIPWAY_BUILD_<NAME>`` as ``<NAME>`` (``PIP_CONF`` is handled by the builder)."""
    return {
        name[len(BUILD_PREFIX) :]: var.value
        for name, var in resolved.items()
        if name.startswith(BUILD_PREFIX)
    }


def run_variables(resolved: Mapping[str, Variable]) -> dict[str, str]:
    return {
        name: var.value for name, var in resolved.items() if not name.startswith(RESERVED_PREFIX)
    }


def secret_values(resolved: Mapping[str, Variable]) -> list[str]:
    return [var.value for var in resolved.values() if var.secret]


# -- masking -------------------------------------------------------------------------


def mask(text: str, secrets: Iterable[str]) -> str:
    values = sorted({s for s in secrets if len(s) >= MIN_MASKED}, key=len, reverse=True)
    for value in values:
        if value in text:
            text = text.replace(value, MASK)
    return text


def mask_json(value: Any, secrets: Iterable[str]) -> Any:
    """``mask`` applied to every string (and key) inside a JSON document."""
    secrets = list(secrets)
    if not secrets:
        return value
    if isinstance(value, str):
        return mask(value, secrets)
    if isinstance(value, list):
        return [mask_json(v, secrets) for v in value]
    if isinstance(value, dict):
        return {mask(str(k), secrets): mask_json(v, secrets) for k, v in value.items()}
    return value
