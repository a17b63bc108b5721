"""Branch names on the wire: the ``x-slipway-branch`` header and branches in URL paths.

Git allows almost any UTF-8 in a branch name (``feat/ünï/cödé``, emoji, ``%``), but HTTP
header values are Latin-1 at best and ASCII in practice (httpx refuses anything else), and
a server reading UTF-8 bytes as Latin-1 garbles them. So clients send the header as
percent-encoded UTF-8, ``quote(branch, safe="/")``, and the server always percent-decodes
it, strictly (invalid UTF-8 is a ``400``). An ASCII name without ``%`` is the same in both
forms, so clients that send plain names keep working; a literal ``%`` must be sent as
``%25``. For the same reason, a header whose raw bytes were UTF-8 (``curl -H`` with a
non-ASCII name) is read as UTF-8 before decoding rather than as Latin-1.

Branches in URL paths (``/projects/{ref}/branches/{branch}/archive``) use the same
encoding; there the server framework already percent-decodes the path, so only clients
need :func:`encode_branch`.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

HEADER = "x-slipway-branch"


class BadBranchEncoding(ValueError):
    """A header value that is not percent-encoded UTF-8."""


def encode_branch(branch: str) -> str:
    """The ASCII form of ``branch`` for the header or a URL path."""
    return quote(branch, safe="/")


def decode_branch(value: str) -> str:
    """The branch name a header value designates (see the module docstring)."""
    if not value.isascii():
        try:
            value = value.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError) as exc:
            raise BadBranchEncoding(
                f"the {HEADER} header is not UTF-8: send it percent-encoded"
            ) from exc
    try:
        return unquote(value, errors="strict")
    except UnicodeDecodeError as exc:
        raise BadBranchEncoding(
            f"the {HEADER} header does not percent-decode to UTF-8 "
            "(a literal % in a branch name is sent as %25)"
        ) from exc


def branch_headers(branch: str | None) -> dict[str, str]:
    """The request headers that target ``branch`` (none without one)."""
    return {HEADER: encode_branch(branch)} if branch else {}
