"""Source archives: the upload of ``slipway deploy [PATH]``, safe unpacking, content digests.

* :func:`make_archive` packs a project as a gzip tar: the git-tracked files of a working
  tree, otherwise everything but the usual build and tool directories. The output is
  byte-for-byte reproducible (sorted members, zero timestamps and owners, modes reduced to
  0644/0755, no gzip timestamp), so an unchanged project uploads the same bytes.
* :func:`safe_extract` treats every archive as hostile. Each member is checked before it
  is written (no absolute paths, ``..`` or ``.git`` components, no writing through links,
  links only to places inside the tree, no devices), then extracted with tarfile's
  ``data`` filter as a second line of defence. Sizes are counted twice: per member from the
  header before writing, and on the decompressed stream itself, so neither a lying header
  nor a gzip bomb gets far. Members land in a staging directory next to ``dest`` that is
  renamed into place only when everything passed; on any error it is removed, leaving
  ``dest`` as it was.
* :func:`content_digest` is the artifact identity shared by uploads and git exports:
  SHA-256 over the sorted ``(path, git-style mode, SHA-256 of content or link target)`` of
  every file and symlink. As in git, directories are implied and timestamps and owners
  do not count, so the same tree always has the same digest.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import hashlib
import io
import logging
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO, cast

from controller.errors import InvalidInput

if TYPE_CHECKING:
    from typing_extensions import Buffer

log = logging.getLogger(__name__)

EXCLUDED_DIRS = frozenset({".git", ".venv", "venv", "__pycache__", "node_modules", ".slipway"})
EXCLUDED_SUFFIXES = (".pyc",)

_CHUNK = 1 << 16
# Tar headers, pax records and padding on top of the content: generous, still bounded.
_OVERHEAD_PER_MEMBER = 2048
_GZIP_MAGIC = b"\x1f\x8b"


class _TooLarge(Exception):
    pass


# --- make_archive -------------------------------------------------------------------


def make_archive(path: Path, *, max_bytes: int = 100 * 1024 * 1024) -> bytes:
    """Return a reproducible gzip tar of the project at ``path``.

    Raises :class:`InvalidInput` when ``path`` is not a directory or the archive would
    be larger than ``max_bytes``.
    """
    root = path.resolve()
    if not root.is_dir():
        raise InvalidInput(f"{path} is not a directory")
    from controller.sources.git import list_tracked_files  # only here do we need git

    tracked = list_tracked_files(root)
    entries = _with_parents(tracked) if tracked is not None else _walk_project(root)
    out = _BoundedBuffer(max_bytes)
    try:
        with (
            gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            for rel in entries:
                _add_entry(tar, root, rel)
    except _TooLarge:
        raise InvalidInput(
            f"the archive of {path} would be larger than {_human(max_bytes)}",
            hint="add large files to .gitignore, or deploy from a git working tree",
        ) from None
    return out.getvalue()


class _BoundedBuffer(io.BytesIO):
    def __init__(self, limit: int) -> None:
        super().__init__()
        self._limit = limit

    def write(self, data: Buffer, /) -> int:
        if self.tell() + memoryview(data).nbytes > self._limit:
            raise _TooLarge
        return super().write(data)


def _with_parents(files: list[str]) -> list[str]:
    entries = set(files)
    for name in files:
        entries.update(str(parent) for parent in PurePosixPath(name).parents if parent.name)
    return sorted(entries)


def _walk_project(root: Path) -> list[str]:
    found: list[str] = []

    def visit(directory: str, prefix: str) -> None:
        with os.scandir(directory) as listing:
            for entry in listing:
                if entry.name in EXCLUDED_DIRS or entry.name.endswith(EXCLUDED_SUFFIXES):
                    continue  # also a `venv` symlink or a `.git` file of a worktree
                rel = prefix + entry.name
                found.append(rel)
                if entry.is_dir(follow_symlinks=False):
                    visit(entry.path, rel + "/")

    visit(str(root), "")
    return sorted(found)


def _add_entry(tar: tarfile.TarFile, root: Path, rel: str) -> None:
    full = root / rel
    if not _is_inside(root, os.path.realpath(full.parent)):
        log.warning("not archiving %s: a parent directory links outside the project", rel)
        return
    try:
        st = full.lstat()
    except FileNotFoundError:  # tracked but deleted in the working tree
        return
    info = tarfile.TarInfo(rel)
    if stat.S_ISDIR(st.st_mode):
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
    elif stat.S_ISLNK(st.st_mode):
        target = os.readlink(full)
        if not (_link_stays_inside(rel, target) and _is_inside(root, os.path.realpath(full))):
            log.warning("not archiving %s: the symlink points outside the project", rel)
            return
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
        tar.addfile(info)
    elif stat.S_ISREG(st.st_mode):
        info.size = st.st_size
        info.mode = 0o755 if st.st_mode & stat.S_IXUSR else 0o644
        try:
            with full.open("rb") as source:
                tar.addfile(info, source)
        except OSError as exc:
            raise InvalidInput(f"could not read {rel}: {exc.strerror or exc}") from exc
    else:
        log.warning("not archiving %s: not a regular file, directory or symlink", rel)


def _is_inside(root: Path | str, resolved: str) -> bool:
    root_str = str(root)
    return resolved == root_str or resolved.startswith(root_str.rstrip("/") + "/")


def _link_stays_inside(name: str, target: str) -> bool:
    if not target or target.startswith("/"):
        return False
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
    return resolved != ".." and not resolved.startswith("../")


def _human(size: int) -> str:
    return f"{size / (1024 * 1024):g} MiB" if size >= 1024 * 1024 else f"{size} bytes"


# --- safe_extract -------------------------------------------------------------------


def safe_extract(
    data: bytes | BinaryIO | Path,
    dest: Path,
    *,
    max_bytes: int = 512 * 1024 * 1024,
    max_members: int = 100_000,
) -> None:
    """Unpack a tar (plain or gzip) from bytes, a seekable binary file or a path into ``dest``.

    ``dest`` must not exist or be an empty directory. Raises :class:`InvalidInput`, naming
    the member, for anything unsafe or over the limits; ``dest`` is then left as it was.
    """
    if dest.is_symlink() or (dest.exists() and (not dest.is_dir() or any(dest.iterdir()))):
        raise FileExistsError(f"{dest} exists and is not an empty directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        with _tar_stream(data, limit=max_bytes + (max_members + 1) * _OVERHEAD_PER_MEMBER) as raw:
            _extract_members(raw, staging, max_bytes=max_bytes, max_members=max_members)
        staging.chmod(0o755)
        os.replace(staging, dest)  # POSIX rename replaces an empty directory atomically
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextlib.contextmanager
def _tar_stream(data: bytes | BinaryIO | Path, *, limit: int) -> Iterator[BinaryIO]:
    with contextlib.ExitStack() as stack:
        source: BinaryIO
        if isinstance(data, bytes | bytearray | memoryview):
            source = io.BytesIO(data)
        elif isinstance(data, Path):
            source = stack.enter_context(data.open("rb"))
        else:
            source = data
        start = source.tell()
        magic = source.read(len(_GZIP_MAGIC))
        source.seek(start)
        if magic == _GZIP_MAGIC:
            gz = stack.enter_context(gzip.GzipFile(fileobj=source, mode="rb"))
            source = cast(BinaryIO, gz)
        yield io.BufferedReader(_BoundedReader(source, limit))


class _BoundedReader(io.RawIOBase):
    """Counts what is actually read (after decompression) and stops past ``limit``."""

    def __init__(self, inner: BinaryIO, limit: int) -> None:
        super().__init__()
        self._inner = inner
        self._left = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Buffer) -> int:
        view = memoryview(buffer).cast("B")
        chunk = self._inner.read(min(len(view), self._left + 1))
        self._left -= len(chunk)
        if self._left < 0:
            raise _TooLarge
        view[: len(chunk)] = chunk
        return len(chunk)


def _extract_members(raw: BinaryIO, staging: Path, *, max_bytes: int, max_members: int) -> None:
    kinds: dict[str, str] = {}  # normalised member name -> "dir" | "file" | "link"
    total = 0
    count = 0
    try:
        with tarfile.open(fileobj=raw, mode="r|") as tar:
            for member in tar:
                count += 1
                if count > max_members:
                    raise InvalidInput(f"the archive has more than {max_members} members")
                checked = _check_member(member, kinds)
                if checked is None:
                    continue
                if checked.isreg():
                    total += checked.size
                    if total > max_bytes:
                        raise InvalidInput(
                            f"archive member {_show(checked.name)} takes the unpacked size "
                            f"over the limit of {_human(max_bytes)}"
                        )
                _extract_one(tar, checked, staging)
    except _TooLarge:
        raise InvalidInput(f"the archive unpacks to more than {_human(max_bytes)}") from None
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise InvalidInput(f"not a valid tar archive: {exc}") from exc
    _check_links_resolve_inside(staging, [name for name, kind in kinds.items() if kind == "link"])


def _check_member(member: tarfile.TarInfo, kinds: dict[str, str]) -> tarfile.TarInfo | None:
    """Validate ``member`` against what came before; return a normalised copy to extract."""
    name = _normalise(member.name, member.name)
    if name is None:  # the archive's own root, "./"
        return None
    parents = [str(parent) for parent in PurePosixPath(name).parents if parent.name]
    if any(kinds.setdefault(parent, "dir") != "dir" for parent in parents):
        raise InvalidInput(f"archive member {_show(member.name)} goes through a link or file")
    if name in kinds and not (kinds[name] == "dir" and member.isdir()):
        raise InvalidInput(f"archive member {_show(member.name)} appears twice")
    checked = copy.copy(member)
    checked.name = name
    if member.isdir():
        kind = "dir"
    elif member.isreg():
        kind = "file"
    elif member.issym():
        if not _link_stays_inside(name, member.linkname):
            raise InvalidInput(
                f"archive member {_show(member.name)} is a symlink to "
                f"{_show(member.linkname)}, outside the archive"
            )
        kind = "link"
    elif member.islnk():
        target = _normalise(member.linkname, member.name)
        if target is None or kinds.get(target) != "file":
            raise InvalidInput(
                f"archive member {_show(member.name)} is a hard link to "
                f"{_show(member.linkname)}, which is not a file earlier in the archive"
            )
        checked.linkname = target
        kind = "file"
    else:
        raise InvalidInput(
            f"archive member {_show(member.name)} is a device, fifo or other special file"
        )
    kinds[name] = kind
    return checked


def _normalise(name: str, member_name: str) -> str | None:
    if name.startswith("/") or "\\" in name or "\0" in name:
        raise InvalidInput(f"archive member {_show(member_name)} has an absolute or odd path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if any(part == ".." for part in parts):
        raise InvalidInput(f"archive member {_show(member_name)} has a '..' path component")
    if any(part.lower() == ".git" for part in parts):
        raise InvalidInput(f"archive member {_show(member_name)} is inside a .git directory")
    return "/".join(parts) or None


def _extract_one(tar: tarfile.TarFile, member: tarfile.TarInfo, staging: Path) -> None:
    # Our checks ran already; normalise ownership and modes even where tarfile has no filter.
    member.uid, member.gid, member.uname, member.gname = os.getuid(), os.getgid(), "", ""
    member.mode &= 0o755
    if hasattr(tarfile, "data_filter"):
        try:
            tar.extract(member, staging, filter="data")
        except tarfile.FilterError as exc:
            raise InvalidInput(f"archive member {_show(member.name)} is refused: {exc}") from exc
    else:  # Python < 3.11.4
        tar.extract(member, staging)


def _check_links_resolve_inside(staging: Path, links: list[str]) -> None:
    # Each link was checked on its own; a chain through other links must stay inside too.
    root = os.path.realpath(staging)
    for name in links:
        if not _is_inside(root, os.path.realpath(staging / name)):
            raise InvalidInput(f"archive member {_show(name)} resolves outside the archive")


def _show(name: str) -> str:
    return repr(name if len(name) <= 200 else name[:200] + "…")


# --- content_digest -----------------------------------------------------------------


def content_digest(root: Path) -> str:
    """Return ``sha256:<hex>`` over the files and symlinks under ``root``."""
    digest = hashlib.sha256()
    for rel, mode, full in _tree_entries(root):
        if mode == "120000":
            content = hashlib.sha256(os.fsencode(os.readlink(full))).digest()
        else:
            content = _file_sha256(full)
        digest.update(mode.encode() + b" " + rel + b"\0" + content)
    return "sha256:" + digest.hexdigest()


def _tree_entries(root: Path) -> list[tuple[bytes, str, str]]:
    found: list[tuple[bytes, str, str]] = []

    def visit(directory: str, prefix: bytes) -> None:
        with os.scandir(directory) as listing:
            for entry in listing:
                rel = prefix + os.fsencode(entry.name)
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    visit(entry.path, rel + b"/")
                elif stat.S_ISLNK(st.st_mode):
                    found.append((rel, "120000", entry.path))
                elif stat.S_ISREG(st.st_mode):
                    mode = "100755" if st.st_mode & stat.S_IXUSR else "100644"
                    found.append((rel, mode, entry.path))
                else:
                    raise InvalidInput(f"{entry.path} is not a regular file, directory or symlink")

    visit(str(root), b"")
    return sorted(found)


def _file_sha256(path: str) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
    return digest.digest()
