"""What the resync asks a source: where does a ref point now?

:class:`Source` is one repository as the reconcile passes see it, with the one question
they ask (``resolve``). Today the only implementation is git's ``ls-remote`` of a
project's clone URL (:class:`GitRemote`); an uploaded-only project has no source at all.
A GitHub-API resolver (branch heads and open pull requests from the REST API, with an
installation token) implements the same protocol later, so the passes never learn which
one they talk to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Resolved:
    """``ref`` is a full branch ref (``HEAD`` already followed); ``sha`` its commit."""

    ref: str
    sha: str

    @property
    def branch(self) -> str:
        return self.ref.removeprefix("refs/heads/")


class Source(Protocol):
    """One repository. ``name`` is for messages (never holds credentials)."""

    @property
    def name(self) -> str: ...

    def resolve(self, ref: str) -> Resolved | None:
        """``ref`` is ``HEAD`` or ``refs/heads/<branch>``. ``None``: no such branch.
        Raises :class:`~controller.errors.SourceNotFound` or
        :class:`~controller.errors.SourceUnavailable` when the source cannot answer."""
        ...


class RefResolver(Protocol):
    """A fetcher that can also resolve refs of any clone URL (``GitSource``)."""

    def resolve(
        self,
        ref: str,
        *,
        clone_url: str,
        timeout: float | None = None,
        auth_header: str | None = None,
    ) -> Resolved | None: ...


@dataclass(frozen=True)
class GitRemote:
    """A project's clone URL, resolved with ``git ls-remote`` (no credentials yet)."""

    resolver: RefResolver
    clone_url: str
    name: str
    timeout: float = 30.0

    def resolve(self, ref: str) -> Resolved | None:
        return self.resolver.resolve(ref, clone_url=self.clone_url, timeout=self.timeout)
