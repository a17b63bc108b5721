"""The ``x-slipway-branch`` header, and the route preamble that picks an environment.

The header's encoding is fixed in :mod:`controller.branchnames` (percent-encoded UTF-8).
:data:`HEADER_PATTERN` says in the OpenAPI document exactly which values the server
takes, and :func:`branch_header` enforces that same pattern, so the schema and the API
cannot disagree: one token of the pattern is one character of the decoded branch (an
allowed ASCII character, raw or percent-encoded, ``%25`` for ``%``, or one UTF-8 encoded
non-ASCII character), and 1 to 255 of them are exactly the names ``BRANCH_PATTERN``
allows. Any other value is answered ``400`` before a handler runs. A raw UTF-8 header
(``curl -H`` with a non-ASCII name) is still read as UTF-8, outside the documented form.

:func:`env_target` is the preamble every per-environment route shares (``{ref}``,
``{env}``, ``?branch=`` or the header; the query wins), so the parameters, their patterns
and the precedence are declared once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, Header, HTTPException, Query

from controller.api.errors import EnvName, ProjectRef
from controller.branchnames import BadBranchEncoding, decode_branch
from controller.models import BRANCH_PATTERN, normalise_environment

_HEX = "[0-9A-Fa-f]"
_CONT = f"%[89ABab]{_HEX}"
_CHARACTER = "|".join(
    [
        r"[!-$&-)+-9;->@-Z\]_-}]",
        f"%(?:2[1-9B-Fb-f]|3[0-9B-Eb-e]|[46]{_HEX}|5[0-9ADFadf]|7[0-9A-DFa-df])",
        f"%(?:[Cc][2-9A-Fa-f]|[Dd]{_HEX}){_CONT}",
        f"%(?:[Ee]0%[ABab]{_HEX}|[Ee][1-9A-Ca-cEeFf]{_CONT}|[Ee][Dd]%[89]{_HEX}){_CONT}",
        f"%(?:[Ff]0%[9ABab]{_HEX}|[Ff][1-3]{_CONT}|[Ff]4%8{_HEX}){_CONT}{_CONT}",
    ]
)
HEADER_PATTERN = f"^(?:{_CHARACTER}){{1,255}}$"
_HEADER = re.compile(HEADER_PATTERN)
_PRINTABLE_ASCII = "".join(chr(c) for c in range(0x21, 0x7F))


def _raw_utf8(value: str) -> str:
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError) as exc:
        raise BadBranchEncoding(
            "the x-slipway-branch header is not UTF-8: send it percent-encoded"
        ) from exc


async def branch_header(  # async: pure CPU, so FastAPI calls it in the loop, no thread hop
    x_slipway_branch: str | None = Header(
        default=None,
        json_schema_extra={"pattern": HEADER_PATTERN},
        description="A preview branch, percent-encoded UTF-8 (quote(branch, safe='/')); "
        "a value that does not decode to a valid branch name is answered 400",
    ),
) -> str | None:
    if x_slipway_branch is None:
        return None
    try:
        wire = x_slipway_branch
        if not wire.isascii():
            wire = quote(_raw_utf8(wire), safe=_PRINTABLE_ASCII)
        if not _HEADER.fullmatch(wire):
            raise BadBranchEncoding(
                "the x-slipway-branch header is not a branch name in percent-encoded UTF-8 "
                "(1 to 255 characters, none of space ~ ^ : ? * [ \\; a literal % is %25)"
            )
        return decode_branch(wire)
    except BadBranchEncoding as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from None


@dataclass(frozen=True)
class EnvTarget:
    """The project, the normalised environment and, for ``preview`` only, the branch."""

    ref: str
    env: str
    branch: str | None


def env_target(
    ref: ProjectRef,
    env: EnvName,
    branch: Annotated[
        str | None, Query(pattern=BRANCH_PATTERN.pattern, description="A preview branch")
    ] = None,
    x_slipway_branch: str | None = Depends(branch_header),
) -> EnvTarget:
    """As everywhere in the API, a branch only matters with ``preview``."""
    name = normalise_environment(env)
    named = branch or x_slipway_branch
    return EnvTarget(ref=ref, env=name, branch=named if name == "preview" else None)
