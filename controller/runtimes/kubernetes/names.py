"""Names and labels Kubernetes accepts, from names people give branches.

A namespace is ``<prefix><project>-<env>[-<branch slug>]``: a DNS-1123 label (lowercase
alphanumerics and ``-``, at most 63). Branch names are anything git allows (slashes,
uppercase, non-ASCII, 100+ characters), so the slug is lossy: ``Feature/X`` and
``feature-x`` slug alike, and two long names differing only at the end truncate alike.
A preview namespace therefore always ends in a short hash of the exact (project, branch)
pair; production and staging get one only when truncated. Eight hex digits (32 bits)
make a collision between two branches of one project vanishingly unlikely.

Label values follow the same idea (at most 63, ``[A-Za-z0-9]`` at both ends, ``-_.``
inside); a value that had to change keeps a hash of the original so two values never
merge. The original branch name is kept in an annotation, which has no such limits.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

MAX_LABEL = 63
HASH_LEN = 8
_NOT_DNS = re.compile(r"[^a-z0-9]+")
_NOT_LABEL = re.compile(r"[^A-Za-z0-9_.-]+")
_LABEL_OK = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def short_hash(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:HASH_LEN]


def slug(text: str) -> str:
    """Lowercase ASCII letters, digits and single dashes; accents folded, the rest dropped."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return _NOT_DNS.sub("-", ascii_text.lower()).strip("-")


def _with_hash(base: str, digest: str, *, limit: int) -> str:
    head = base[: limit - len(digest) - 1].rstrip("-_.")
    return f"{head}-{digest}" if head else digest


def namespace_name(*, prefix: str, project: str, environment: str, branch: str | None) -> str:
    parts = [slug(project) or "project", slug(environment) or "env"]
    if branch is not None:
        parts.append(slug(branch) or "branch")
    base = prefix + "-".join(parts)
    if branch is not None:
        return _with_hash(base, short_hash(project, environment, branch), limit=MAX_LABEL)
    if len(base) > MAX_LABEL:
        return _with_hash(base, short_hash(project, environment), limit=MAX_LABEL)
    return base


def label_value(text: str | None) -> str:
    """A valid label value for ``text``; the same text gives the same value."""
    if not text:
        return ""
    if len(text) <= MAX_LABEL and _LABEL_OK.match(text):
        return text
    cleaned = _NOT_LABEL.sub("-", text).strip("-_.")
    return _with_hash(cleaned, short_hash(text), limit=MAX_LABEL)


def object_name(text: str) -> str:
    """A DNS-1123 label for an object named after a version (``20260101.2`` -> ``...-2``)."""
    return slug(text)[:MAX_LABEL].strip("-") or "x"
