"""Our exception tree.

Every adapter (git, builders, runtimes, GitHub, Kubernetes) catches its own library's
exceptions and re-raises one of these ``from exc``, so the pipeline only ever decides on
two questions (as kopf does with ``TemporaryError`` / ``PermanentError``):

* :class:`TemporaryError` — the world may fix itself (network, a busy database, a worker
  that is still starting). The step is retried with backoff; ``delay`` is a hint.
* :class:`PermanentError` — retrying cannot help (a sha that does not exist, a task file
  with a syntax error, an install command that exits non-zero). The deployment fails with
  ``message``, and ``hint`` tells the user how to fix it.

Messages must never contain secrets: they are stored and shown to users.
"""

from __future__ import annotations


class SlipwayError(Exception):
    """Base of every error Slipway raises on purpose."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class TemporaryError(SlipwayError):
    """Retry later; ``delay`` (seconds) is the earliest sensible retry."""

    def __init__(self, message: str, *, delay: float | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.delay = delay


class PermanentError(SlipwayError):
    """Retrying cannot help: fail with a message that says how to fix it."""


class NotFound(SlipwayError):
    """A named thing (project, environment, version, run) does not exist."""


class Forbidden(SlipwayError):
    """A valid credential used outside what it grants (another environment's runs)."""


class Conflict(SlipwayError):
    """The request contradicts current state (duplicate name, archived branch, ...)."""


class InvalidInput(SlipwayError):
    """The user's input is malformed; the message says what is wrong."""


# Adapter-level errors, still ours: sources, builders and runtimes raise these.
class SourceNotFound(PermanentError):
    """The repository or the requested commit does not exist at the source."""


class SourceUnavailable(TemporaryError):
    """The source could not be reached right now."""


class BuildFailed(PermanentError):
    """Installing, pre-building or discovering tasks failed."""


class RuntimeUnavailable(TemporaryError):
    """A worker could not be started or reached right now."""
