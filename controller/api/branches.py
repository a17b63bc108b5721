"""The ``x-slipway-branch`` header as a dependency: percent-decoded UTF-8, strictly.

The encoding is fixed in :mod:`controller.branchnames`; a header that does not decode is
the client's mistake, answered ``400`` before any handler runs.
"""

from __future__ import annotations

from fastapi import Header, HTTPException

from controller.branchnames import BadBranchEncoding, decode_branch


def branch_header(
    x_slipway_branch: str | None = Header(
        default=None,
        description="a preview branch, percent-encoded UTF-8 (quote(branch, safe='/'))",
    ),
) -> str | None:
    if x_slipway_branch is None:
        return None
    try:
        return decode_branch(x_slipway_branch)
    except BadBranchEncoding as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from None
