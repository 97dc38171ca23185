"""Every file a command writes (`export …`, `report …`, `audit log --csv`) goes through
cli/output_files.py: a target that is a symbolic link is refused (exit 2, the link's target
untouched), and a write is atomic (a failure leaves the old file as it was and no temporary
file behind)."""

from __future__ import annotations

import errno
import io
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.output_files import check_target, replacing, write_file, write_files
from tests.support.clock import FakeClock
from tests.support.study import new_study
from workflow.errors import InvalidInput, RuleViolation

PRECIOUS = b"precious: not to be overwritten\n"


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An initialised study (users, sites, no subject): enough for every output."""
    path = tmp_path_factory.mktemp("outputs") / "study.db"
    desk = new_study(f"sqlite:///{path}", FakeClock())
    desk.store.engine.dispose()
    return f"sqlite:///{path}"


def call(db: str, *argv: str) -> tuple[int, dict[str, object], str]:
    from tests.support.auth import run_cli

    out, err = io.StringIO(), io.StringIO()
    status = run_cli(["--db", db, "--json", *argv], stdout=out, stderr=err, environ=None)
    return int(status), json.loads(out.getvalue() or "{}"), err.getvalue()


def victim(folder: Path) -> Path:
    path = folder / "victim.txt"
    path.write_bytes(PRECIOUS)
    return path


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


OUTPUTS = [
    ("export", "odm", "--out"),
    ("export", "fhir", "--out"),
    ("export", "ics", "S-001", "--out"),
    ("report", "swimmer", "--out"),
    ("report", "html", "--out"),
    ("audit", "log", "study", "--csv"),
]


def _argv(command: tuple[str, ...], target: Path) -> list[str]:
    return [*command, str(target)]


@pytest.mark.parametrize("command", OUTPUTS, ids=lambda c: " ".join(c[:2]))
def test_a_link_to_another_file_is_refused(study: str, tmp_path: Path,
                                           command: tuple[str, ...]) -> None:
    target = victim(tmp_path)
    suffix = ".png" if command[1] == "swimmer" else ".out"
    link = tmp_path / f"link{suffix}"
    link.symlink_to(target)
    status, document, _ = call(study, *_argv(command, link))
    assert status == 2, document
    assert document["rule"] == "bad_output_path"
    message = str(document["error"])
    assert "symbolic link" in message and str(link) in message and message.endswith(".")
    assert target.read_bytes() == PRECIOUS and link.is_symlink()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("command", OUTPUTS, ids=lambda c: " ".join(c[:2]))
def test_a_dangling_link_is_refused_and_nothing_is_created(study: str, tmp_path: Path,
                                                           command: tuple[str, ...]) -> None:
    suffix = ".png" if command[1] == "swimmer" else ".out"
    link = tmp_path / f"dangling{suffix}"
    link.symlink_to(tmp_path / "elsewhere.txt")
    status, document, _ = call(study, *_argv(command, link))
    assert status == 2 and document["rule"] == "bad_output_path", document
    assert not (tmp_path / "elsewhere.txt").exists() and link.is_symlink()


def test_a_pipe_is_refused_not_replaced(study: str, tmp_path: Path) -> None:
    """A device or a pipe would be replaced by a regular file: refused."""
    pipe = tmp_path / "pipe.csv"
    os.mkfifo(pipe)
    for argv in (("audit", "log", "study", "--csv", str(pipe)),
                 ("export", "odm", "--out", str(pipe))):
        status, document, _ = call(study, *argv)
        assert status == 2 and "not a regular file" in str(document["error"]), document
        assert stat.S_ISFIFO(pipe.lstat().st_mode)
    assert leftovers(tmp_path) == []


def test_export_csv_refuses_a_linked_folder(study: str, tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "linked"
    link.symlink_to(real, target_is_directory=True)
    status, document, _ = call(study, "export", "csv", "--out", str(link))
    assert status == 2 and "symbolic link" in str(document["error"]), document
    assert list(real.iterdir()) == []


def test_export_csv_refuses_a_link_inside_its_folder(study: str, tmp_path: Path) -> None:
    target = victim(tmp_path)
    out = tmp_path / "csv"
    out.mkdir()
    (out / "events.csv").symlink_to(target)
    status, document, _ = call(study, "export", "csv", "--out", str(out))
    assert status == 2 and "symbolic link" in str(document["error"]), document
    assert target.read_bytes() == PRECIOUS and (out / "events.csv").is_symlink()
    assert leftovers(out) == []


def test_outputs_replace_a_regular_file_and_leave_nothing_else(study: str,
                                                               tmp_path: Path) -> None:
    for command, name in ((("export", "odm", "--out"), "study.xml"),
                          (("audit", "log", "study", "--csv"), "trail.csv"),
                          (("report", "html", "--out"), "page.html")):
        target = tmp_path / name
        target.write_bytes(b"old")
        status, document, err = call(study, *_argv(command, target))
        assert status == 0, (document, err)
        assert target.read_bytes() not in (b"", b"old") and not target.is_symlink()
    status, document, err = call(study, "export", "csv", "--out", str(tmp_path / "csv"))
    assert status == 0, (document, err)
    assert leftovers(tmp_path) == [] and leftovers(tmp_path / "csv") == []


# --- the helper ----------------------------------------------------------------------------


def test_write_file_is_atomic_and_uses_the_usual_permissions(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    write_file(target, b"first")
    write_file(target, b"second")
    assert target.read_bytes() == b"second" and leftovers(tmp_path) == []
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_a_failure_while_writing_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "trail.csv"
    target.write_bytes(b"old contents")
    with pytest.raises(RuntimeError), replacing(target, "--csv") as stream:
        stream.write(b"half of the new")
        raise RuntimeError("the producer failed half way")
    assert target.read_bytes() == b"old contents" and leftovers(tmp_path) == []


def test_a_full_disk_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    target = tmp_path / "study.xml"
    target.write_bytes(b"old contents")

    def full(descriptor: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(RuleViolation) as refused:
        write_file(target, b"new contents" * 1000)
    assert refused.value.rule == "disk_full" and "nothing was written" in refused.value.message
    assert target.read_bytes() == b"old contents" and leftovers(tmp_path) == []


def test_an_interrupted_command_leaves_the_old_file(study: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`audit log --csv` dies while producing its rows: the file it was replacing stays."""
    import projections.audit_trail as trail

    target = tmp_path / "trail.csv"
    target.write_bytes(b"old contents")
    produced = trail.csv_rows

    def failing(entry: dict[str, object]) -> Iterator[dict[str, str]]:
        yield from produced(entry)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(trail, "csv_rows", failing)
    status, document, _ = call(study, "audit", "log", "study", "--csv", str(target))
    assert status == 2 and "nothing was written" in str(document["error"]), document
    assert target.read_bytes() == b"old contents" and leftovers(tmp_path) == []


def test_check_target_and_write_files_refuse_links(tmp_path: Path) -> None:
    target = victim(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(InvalidInput, match="symbolic link"):
        check_target(link)
    with pytest.raises(InvalidInput, match="symbolic link"):
        write_file(link, b"x")
    with pytest.raises(InvalidInput, match="symbolic link"):
        write_files(tmp_path, {"link": b"x"})
    assert target.read_bytes() == PRECIOUS


def test_a_linked_parent_folder_is_the_users_own_path(tmp_path: Path) -> None:
    """Only the last component is refused when it is a link: a folder reached through a link
    (a home folder on another disk, /tmp on some systems) is where the user asked to write."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "via").symlink_to(real, target_is_directory=True)
    write_file(tmp_path / "via" / "out.txt", b"data")
    assert (real / "out.txt").read_bytes() == b"data"


def test_secret_files_never_follow_a_link(tmp_path: Path) -> None:
    """cli/auth.py creates secret files with O_CREAT | O_EXCL, which refuses any existing name,
    a link (dangling or not) included: a planted link never receives a secret."""
    from cli.auth import write_secret_file

    target = victim(tmp_path)
    for link, points_to in ((tmp_path / "a.secret", target),
                            (tmp_path / "b.secret", tmp_path / "missing.secret")):
        link.symlink_to(points_to)
        with pytest.raises(InvalidInput, match="exists already"):
            write_secret_file(link, "s" * 40)
    assert target.read_bytes() == PRECIOUS and not (tmp_path / "missing.secret").exists()


def test_exports_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    """Exports hold clinical data: created 0600 whatever the umask (reports are not)."""
    import stat

    from cli.output_files import PRIVATE, write_file, write_files

    write_file(tmp_path / "study.xml", b"<ODM/>", "--out", PRIVATE)
    write_files(tmp_path / "csv", {"events.csv": b"a\n"}, "--out", PRIVATE)
    for path in (tmp_path / "study.xml", tmp_path / "csv" / "events.csv"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
