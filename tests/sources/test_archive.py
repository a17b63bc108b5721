"""Upload archives: what make_archive selects, and safe_extract against hostile tars."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from controller.errors import InvalidInput
from controller.sources.archive import content_digest, make_archive, safe_extract

MiB = 1024 * 1024


def names_in(archive: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        return tar.getnames()


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


def member(
    name: str, data: bytes = b"", *, kind: bytes = tarfile.REGTYPE, link: str = ""
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def tar_of(*members: tuple[tarfile.TarInfo, bytes], mode: str = "w:gz") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode, format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out.getvalue()


def write_project(root: Path) -> None:
    for name, content in {
        "tasks/hello.py": "def run(payload, ctx): ...\n",
        "bin/start.sh": "#!/bin/sh\n",
        "requirements.txt": "httpx\n",
    }.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)
    (root / "bin" / "start.sh").chmod(0o755)
    (root / "tasks" / "greet.py").symlink_to("hello.py")
    (root / "empty").mkdir()


# --- make_archive -------------------------------------------------------------------


def test_round_trip_of_a_plain_directory(tmp_path):
    project = tmp_path / "project"
    write_project(project)

    safe_extract(make_archive(project), tmp_path / "out")

    out = tmp_path / "out"
    assert files_under(out) == files_under(project)
    assert (out / "empty").is_dir()
    assert os.stat(out / "bin" / "start.sh").st_mode & stat.S_IXUSR
    assert os.readlink(out / "tasks" / "greet.py") == "hello.py"
    assert content_digest(out) == content_digest(project)


def test_a_plain_directory_leaves_out_tool_and_build_directories(tmp_path):
    project = tmp_path / "project"
    write_project(project)
    for name in (
        ".git/config", ".venv/bin/python", "venv/lib/x.py", "tasks/__pycache__/hello.pyc",
        "web/node_modules/left-pad/index.js", ".slipway/state.db", "tasks/stale.pyc",
    ):  # fmt: skip
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text("x")

    names = names_in(make_archive(project))

    assert names == [
        "bin", "bin/start.sh", "empty", "requirements.txt", "tasks", "tasks/greet.py",
        "tasks/hello.py", "web",
    ]  # fmt: skip


def test_a_git_working_tree_sends_its_tracked_files_only(make_repo, tmp_path):
    repo = make_repo(tmp_path / "project")
    repo.commit(
        {".gitignore": "*.log\nbuild/\n", "tasks/hello.py": "", "requirements.txt": ""},
        symlinks={"tasks/greet.py": "hello.py"},
    )
    repo.write({"notes.txt": "untracked", "debug.log": "ignored", "build/out.bin": "ignored"})

    names = names_in(make_archive(repo.path))

    assert names == [".gitignore", "requirements.txt", "tasks", "tasks/greet.py", "tasks/hello.py"]


def test_a_subdirectory_of_a_repository_sends_its_own_tracked_files(make_repo, tmp_path):
    repo = make_repo(tmp_path / "monorepo")
    repo.commit({"services/worker/tasks/a.py": "", "services/web/app.py": ""})

    assert names_in(make_archive(repo.path / "services" / "worker")) == ["tasks", "tasks/a.py"]


def test_the_archive_is_reproducible(tmp_path):
    project = tmp_path / "project"
    write_project(project)
    first = make_archive(project)

    os.utime(project / "requirements.txt", (1, 1))

    assert make_archive(project) == first


def test_symlinks_out_of_the_project_are_left_out(tmp_path):
    project = tmp_path / "project"
    write_project(project)
    (project / "passwd").symlink_to("/etc/passwd")
    (project / "tasks" / "up").symlink_to("../..")

    names = names_in(make_archive(project))

    assert "passwd" not in names and "tasks/up" not in names


def test_a_project_over_the_limit_is_refused(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "model.bin").write_bytes(os.urandom(MiB))

    with pytest.raises(InvalidInput, match="larger than 524288 bytes"):
        make_archive(project, max_bytes=512 * 1024)


def test_a_path_that_is_not_a_directory_is_refused(tmp_path):
    with pytest.raises(InvalidInput, match="not a directory"):
        make_archive(tmp_path / "missing")


# --- safe_extract -------------------------------------------------------------------


@pytest.mark.parametrize("form", ["bytes", "file", "path", "plain tar"])
def test_safe_extract_reads_bytes_files_and_paths(tmp_path, form):
    members = (member("a/b.txt", b"hello"), member("c", kind=tarfile.SYMTYPE, link="a/b.txt"))
    archive = tar_of(*members, mode="w" if form == "plain tar" else "w:gz")
    (tmp_path / "upload.tar").write_bytes(archive)
    data = {
        "bytes": archive,
        "plain tar": archive,
        "file": io.BytesIO(archive),
        "path": tmp_path / "upload.tar",
    }[form]

    safe_extract(data, tmp_path / "out")

    assert (tmp_path / "out" / "a" / "b.txt").read_bytes() == b"hello"
    assert (tmp_path / "out" / "c").read_bytes() == b"hello"


def test_a_hard_link_to_an_earlier_file_is_kept(tmp_path):
    archive = tar_of(member("a.txt", b"same"), member("b.txt", kind=tarfile.LNKTYPE, link="a.txt"))

    safe_extract(archive, tmp_path / "out")

    assert os.path.samefile(tmp_path / "out" / "a.txt", tmp_path / "out" / "b.txt")


HOSTILE = {
    "dotdot": ([member("../x", b"pwned")], "'..'"),
    "absolute": ([member("/tmp/x", b"pwned")], "absolute"),
    "dotdot inside": ([member("a/../../x", b"pwned")], "'..'"),
    "symlink to /etc": ([member("etc", kind=tarfile.SYMTYPE, link="/etc")], "outside"),
    "symlink up": ([member("a/up", kind=tarfile.SYMTYPE, link="../../x")], "outside"),
    "hardlink to /etc": ([member("h", kind=tarfile.LNKTYPE, link="/etc/passwd")], "absolute"),
    "hardlink up": ([member("h", kind=tarfile.LNKTYPE, link="../x")], "'..'"),
    "hardlink to nothing": ([member("h", kind=tarfile.LNKTYPE, link="nope")], "hard link"),
    "device": ([member("null", kind=tarfile.CHRTYPE)], "device"),
    "fifo": ([member("pipe", kind=tarfile.FIFOTYPE)], "fifo"),
    "git dir": ([member("sub/.git/config", b"[core]")], ".git"),
    "through a link": (
        [member("l", kind=tarfile.SYMTYPE, link="a"), member("l/x", b"via link")],
        "goes through",
    ),
    "replaces a file": (
        [member("f", b"1"), member("f", kind=tarfile.SYMTYPE, link="ok.txt")],
        "twice",
    ),
    "link chain, link first": (
        [
            member("p/q/r/d", kind=tarfile.SYMTYPE, link="../../.."),
            member("e", kind=tarfile.SYMTYPE, link="p/q/r/d/../x"),
        ],
        "outside",
    ),
    "link chain, link last": (
        [
            member("e", kind=tarfile.SYMTYPE, link="p/q/r/d/../x"),
            member("p/q/r/d", kind=tarfile.SYMTYPE, link="../../.."),
        ],
        "outside",
    ),
}


@pytest.mark.parametrize("case", HOSTILE, ids=list(HOSTILE))
def test_hostile_members_are_refused_and_nothing_is_left_behind(tmp_path, case):
    members, complaint = HOSTILE[case]
    uploads = tmp_path / "deep" / "uploads"
    uploads.mkdir(parents=True)
    archive = tar_of(member("ok.txt", b"extracted first"), *members)

    with pytest.raises(InvalidInput, match=complaint):
        safe_extract(archive, uploads / "out")

    assert list(uploads.iterdir()) == []
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["deep", "uploads"]


def test_the_error_names_the_member(tmp_path):
    with pytest.raises(InvalidInput, match=r"'tasks/\.\./\.\./evil\.py'"):
        safe_extract(tar_of(member("tasks/../../evil.py", b"x")), tmp_path / "out")


def test_an_existing_empty_destination_is_left_as_it_was(tmp_path):
    (tmp_path / "out").mkdir()

    with pytest.raises(InvalidInput):
        safe_extract(tar_of(member("ok.txt", b"1"), member("../x", b"2")), tmp_path / "out")

    assert (tmp_path / "out").is_dir() and list((tmp_path / "out").iterdir()) == []


def test_a_destination_with_content_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")

    with pytest.raises(FileExistsError):
        safe_extract(tar_of(member("ok.txt", b"1")), tmp_path / "out")

    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_a_single_member_over_the_size_limit_is_refused(tmp_path):
    bomb = tar_of(member("zeros.bin", bytes(2 * MiB)))
    assert len(bomb) < 16 * 1024  # compresses to almost nothing

    with pytest.raises(InvalidInput, match=r"'zeros\.bin'.*over the limit of 1 MiB"):
        safe_extract(bomb, tmp_path / "out", max_bytes=MiB)

    assert not (tmp_path / "out").exists()


def test_many_members_adding_up_over_the_size_limit_are_refused(tmp_path):
    archive = tar_of(*(member(f"part{i:02}", bytes(100 * 1024)) for i in range(20)))

    with pytest.raises(InvalidInput, match="'part10'"):
        safe_extract(archive, tmp_path / "out", max_bytes=MiB)

    assert not (tmp_path / "out").exists()


def test_bytes_hidden_outside_member_sizes_are_counted_too(tmp_path):
    padded = tarfile.TarInfo("small.txt")
    padded.pax_headers = {"comment": "x" * (2 * MiB)}  # no member size says so

    with pytest.raises(InvalidInput, match="unpacks to more than 1 MiB"):
        safe_extract(tar_of((padded, b"")), tmp_path / "out", max_bytes=MiB, max_members=10)

    assert not (tmp_path / "out").exists()


def test_too_many_members_are_refused(tmp_path):
    archive = tar_of(*(member(f"f{i}", b"") for i in range(11)))

    with pytest.raises(InvalidInput, match="more than 10 members"):
        safe_extract(archive, tmp_path / "out", max_members=10)


@pytest.mark.parametrize("data", [b"not a tar at all" * 100, b"\x1f\x8b\x08garbage"])
def test_garbage_is_invalid_input(tmp_path, data):
    with pytest.raises(InvalidInput, match="not a valid tar archive"):
        safe_extract(data, tmp_path / "out")

    assert not (tmp_path / "out").exists()


def test_a_truncated_upload_is_invalid_input(tmp_path):
    archive = tar_of(member("a.bin", os.urandom(64 * 1024)))

    with pytest.raises(InvalidInput, match="not a valid tar archive"):
        safe_extract(archive[: len(archive) // 2], tmp_path / "out")

    assert not (tmp_path / "out").exists()


def test_modes_are_tamed(tmp_path):
    setuid, _ = info_data = member("tool", b"#!/bin/sh\n")
    setuid.mode = 0o4777

    safe_extract(tar_of(info_data), tmp_path / "out")

    assert stat.S_IMODE(os.stat(tmp_path / "out" / "tool").st_mode) == 0o755


# --- content_digest -----------------------------------------------------------------


def test_content_digest_depends_on_paths_modes_and_content_only(tmp_path):
    project = tmp_path / "project"
    write_project(project)
    digest = content_digest(project)

    os.utime(project / "requirements.txt", (1, 1))
    (project / "another-empty-dir").mkdir()
    assert content_digest(project) == digest

    (project / "requirements.txt").chmod(0o755)
    assert content_digest(project) != digest
    (project / "requirements.txt").chmod(0o644)
    assert content_digest(project) == digest

    (project / "tasks" / "greet.py").unlink()
    (project / "tasks" / "greet.py").symlink_to("./hello.py")
    assert content_digest(project) != digest
