"""Private by default: what Slipway creates in its data dir is for the server's user only.

The data dir holds webhook payloads (private repositories, branches, commit messages),
the keys, worker logs (whatever tasks print), built artifacts and dependency caches. The
modes asked of ``mkdir``/``open`` are masked by the umask, and an existing directory
keeps whatever mode it had, so neither is relied on: these helpers ``chmod`` what they
create, or open, to 0700 (directories) and 0600 (files) explicitly.

What is made private, and what is not:

* the data dir itself (at every start, even when it existed: it is Slipway's), every
  directory Slipway makes in it, and every file Slipway itself writes there (database,
  inbox, keys, worker logs and registry, command registry, locks, uploads);
* not the *contents* of virtualenvs, git mirrors, builds and artifacts: the libraries
  and ``git`` that write them choose their own modes (an artifact keeps its executable
  bits), and they sit in 0700 directories, which no other user can enter.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import IO, Any

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Create ``path`` mode 0700, or make it 0700 if it exists; missing parents are
    created 0700 too (existing parents are left alone)."""
    if not path.parent.is_dir():
        private_dir(path.parent)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=DIR_MODE)
    path.chmod(DIR_MODE)
    return path


def open_private(path: Path, mode: str = "ab", **kwargs: Any) -> IO[Any]:
    """``open(path, mode)`` for writing (``a``/``w``, binary or text), the file created
    0600 or, if it exists, made 0600."""
    if not mode.startswith(("a", "w")) or "+" in mode:
        raise ValueError(f"open_private writes: mode {mode!r} is not 'a' or 'w'")
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode.startswith("a") else os.O_TRUNC)
    fd = os.open(path, flags | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        return os.fdopen(fd, mode, **kwargs)
    except BaseException:
        os.close(fd)
        raise


def write_private(path: Path, text: str) -> None:
    """``path.write_text(text)``, the file 0600."""
    with open_private(path, "w", encoding="utf-8") as out:
        out.write(text)
