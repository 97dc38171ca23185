"""A SQLite database that cannot be written (docs/reliability.md, "Read-only database"): every
read command, `audit verify` included, still answers; every write is refused with one sentence
(`database_read_only`, exit 1); the file does not change by a byte.

Real components: a tmpfs or a bind mount remounted read-only (`mount -o remount,ro`; skipped,
saying why, where the test may not mount), and a file of mode 0444 in a folder of mode 0555
read by a process without root's power to ignore file modes (`setpriv` drops
CAP_DAC_OVERRIDE: a root process writes any file whatever its mode, so chmod alone proves
nothing here). The detection itself (events/engine.py `SqliteFile`) is tested on its own too.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import events.engine as engine_module
from events.engine import SqliteFile, create_store_engine, read_only
from events.errors import StoreUnavailable
from events.store import EventStore
from projections.runner import Runner
from tests.reliability.test_database_faults import (
    READ_ONLY,
    ROOT,
    TRIALFLOW,
    dispose_engines,
    error_line,
    file_digest,
    last_position,
    session_env,
    settle,
    sqlite_study,
    trialflow,
)
from tests.support.study import INVESTIGATOR

CANNOT_READ_LOG = (
    "The database file cannot be written here and its write-ahead log (trialflow.db-wal) "
    "cannot be read without the index SQLite would create beside it (trialflow.db-shm); "
    "nothing was read, open it once where it may be written.")
WITHOUT_DAC = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--"]


# ---------------------------------------------------------------------------- mounts
def _mount(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *argv], capture_output=True, text=True, check=False)


@contextlib.contextmanager
def own_mount(kind: str) -> Iterator[tuple[Path, Callable[[bool], None]]]:
    """A folder on a mount of its own (`tmpfs`, or a `bind` mount of a temporary folder) and a
    function that remounts it read-only (True) or writable again (False). Skips where the
    test may not mount."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting needs root and mount(8); the setpriv and unit tests cover the "
                    "detection")
    root = Path(tempfile.mkdtemp(prefix="trialflow-ro-"))
    backing = Path(tempfile.mkdtemp(prefix="trialflow-ro-backing-")) if kind == "bind" else None
    done = (_mount("-t", "tmpfs", "-o", "size=16m", "tmpfs", str(root)) if backing is None
            else _mount("--bind", str(backing), str(root)))
    if done.returncode != 0:
        root.rmdir()
        if backing is not None:
            backing.rmdir()
        pytest.skip(f"cannot mount a {kind} here ({done.stderr.strip()})")

    def remount(read_only: bool) -> None:
        mode = "ro" if read_only else "rw"
        options = f"remount,{mode}" if backing is None else f"remount,bind,{mode}"
        again = _mount("-o", options, str(root))
        if again.returncode != 0:
            pytest.skip(f"cannot remount the {kind} {mode} here ({again.stderr.strip()})")

    try:
        yield root, remount
    finally:
        dispose_engines()
        subprocess.run(["umount", str(root)], check=False, capture_output=True)
        root.rmdir()
        if backing is not None:
            shutil.rmtree(backing)


def files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


# ---------------------------------------------------------------------------- the commands
def run_everything(url: str, env: dict[str, str], scheduler: dict[str, str],
                   prefix: tuple[str, ...] = ()) -> dict[str, subprocess.CompletedProcess[str]]:
    """A write, a scheduler pass and four reads, each a real `trialflow` process (`prefix`:
    run through that command), all at once."""
    commands = {
        "write": (["--user", INVESTIGATOR, "confirm-eligibility", "S-001", "--command-id",
                   "ro-1"], env),
        "tick": (["--user", "scheduler", "scheduler", "tick"], scheduler),
        "eligibility": (["eligibility", "S-001"], env),
        "verify": (["audit", "verify"], env),
        "status": (["status"], env),
        "visits": (["--json", "visits", "S-001"], env),
    }
    processes = {name: subprocess.Popen([*prefix, TRIALFLOW, "--db", url, *argv], env=environ,
                                        cwd=ROOT, text=True, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE)
                 for name, (argv, environ) in commands.items()}
    found = {}
    for name, process in processes.items():
        out, err = process.communicate(timeout=60)
        found[name] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    return found


def check_reads_and_refusals(found: dict[str, subprocess.CompletedProcess[str]],
                             events: int) -> None:
    for name in ("write", "tick"):  # the scheduler had a reminder to issue
        done = found[name]
        assert done.returncode == 1 and error_line(done.stderr) == READ_ONLY, (name, done)
    for name in ("eligibility", "verify", "status", "visits"):
        done = found[name]
        assert done.returncode == 0 and not done.stderr, (name, done)
    assert found["verify"].stdout.startswith(f"OK: {events} events"), found["verify"].stdout
    assert found["eligibility"].stdout.startswith("Subject S-001: eligible")


@pytest.mark.parametrize("kind", ["tmpfs", "bind"])
def test_a_read_only_mount_reads_and_refuses_writes(kind: str) -> None:
    """No -wal and no -shm beside the file and none can be created: it is read as it is
    (`immutable=1`); writes exit 1; the read models' lag is folded in memory."""
    with own_mount(kind) as (root, remount):
        path = root / "trialflow.db"
        # consented 24 days ago: the screening window closes soon, a reminder is due now
        sqlite_study(path, consented_days_ago=24)
        url = f"sqlite:///{path}"
        env, scheduler = session_env(url, INVESTIGATOR), session_env(url, "scheduler")
        digest, events = settle(path)  # the WAL is checkpointed and removed, so is the -shm
        assert files(root) == ["trialflow.db"]
        remount(True)
        try:
            found = run_everything(url, env, scheduler)
        finally:
            remount(False)
        check_reads_and_refusals(found, events)
        assert files(root) == ["trialflow.db"] and file_digest(path) == digest
        writable = trialflow(["--db", url, "eligibility", "S-001"], env)  # catches up
        assert writable.returncode == 0 and writable.stdout == found["eligibility"].stdout


KEEPER = """
import sys
from tests.support.study import COORDINATOR, PASSWORD, TEST_KDF
from workflow.bootstrap import build_app
from workflow.commands import messages as M
from workflow.commands.actors import Actors
from workflow.commands.executor import Executor

flow = Actors(Executor(build_app(sys.argv[1], kdf=TEST_KDF)))
flow.know(COORDINATOR, PASSWORD)
flow.send(COORDINATOR, M.RecordForm("S-001", "vitals", ("weight_kg=61", "height_cm=162")),
          "killed-writer")
print("committed", flush=True)
sys.stdin.readline()
"""


def killed_writer(url: str) -> None:
    """A writer that commits a form and is killed (SIGKILL) with the database open: its
    commit stays in the -wal, with the -shm beside it (nobody checkpointed)."""
    keeper = subprocess.Popen([sys.executable, "-c", KEEPER, url], cwd=ROOT, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)
    try:
        assert keeper.stdout is not None
        assert "committed\n" in iter(keeper.stdout.readline, "")  # (after its log lines)
    finally:
        keeper.send_signal(signal.SIGKILL)
        keeper.wait(30)


@pytest.mark.parametrize("index", ["kept", "lost"])
def test_a_read_only_mount_with_a_write_ahead_log(index: str) -> None:
    """A writer was killed and the mount then made read-only: its last commit is only in the
    -wal. With the -shm beside it the file is read through it (`mode=ro`), the killed commit
    included; without it (`lost`: a copy made without the -shm) SQLite cannot read the log,
    and reading the file alone (`immutable`) would silently miss that commit: refused."""
    with own_mount("tmpfs") as (root, remount):
        path = root / "trialflow.db"
        sqlite_study(path, consented_days_ago=24)
        url = f"sqlite:///{path}"
        env, scheduler = session_env(url, INVESTIGATOR), session_env(url, "scheduler")
        _, events = settle(path)
        killed_writer(url)
        assert files(root) == ["trialflow.db", "trialflow.db-shm", "trialflow.db-wal"]
        if index == "lost":
            (root / "trialflow.db-shm").unlink()
        digests = {name: file_digest(root / name) for name in files(root)}
        remount(True)
        try:
            found = run_everything(url, env, scheduler)
        finally:
            remount(False)
        assert {name: file_digest(root / name) for name in files(root)} == digests
        if index == "kept":
            check_reads_and_refusals(found, events + 1)  # the killed writer's commit
        else:
            for name, done in found.items():
                assert done.returncode == 1, (name, done)
                if name == "visits":  # --json: the one document on stdout
                    body = json.loads(done.stdout)
                    assert (body["error"], body["rule"]) == (CANNOT_READ_LOG,
                                                             "database_unreachable")
                else:
                    assert error_line(done.stderr) == CANNOT_READ_LOG, (name, done)
        verify = trialflow(["--db", url, "audit", "verify"], env)  # writable again
        assert verify.returncode == 0 and verify.stdout.startswith(f"OK: {events + 1} events")


def _setpriv_works() -> str | None:
    if shutil.which("setpriv") is None:
        return "no setpriv(1) to drop CAP_DAC_OVERRIDE"
    done = subprocess.run([*WITHOUT_DAC, "true"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return f"setpriv cannot drop CAP_DAC_OVERRIDE here ({done.stderr.strip()})"
    return None


@pytest.mark.parametrize("folder_mode", [0o555, 0o755], ids=["folder-0555", "folder-0755"])
def test_a_file_of_mode_0444_read_by_a_process_that_respects_modes(folder_mode: int) -> None:
    """The file 0444, its folder 0555 (no -shm can be created: `immutable`) or 0755 (SQLite
    creates its -shm there: `mode=ro`), read by `trialflow` processes that cannot override
    file modes (root without CAP_DAC_OVERRIDE, as any other user is)."""
    problem = _setpriv_works()
    if problem is not None:
        pytest.skip(problem)
    top = Path(tempfile.mkdtemp(prefix="trialflow-0444-"))
    folder = top / "db"
    folder.mkdir()
    path = folder / "trialflow.db"
    try:
        sqlite_study(path, consented_days_ago=24)
        url = f"sqlite:///{path}"
        env, scheduler = session_env(url, INVESTIGATOR), session_env(url, "scheduler")
        digest, events = settle(path)
        path.chmod(0o444)
        folder.chmod(folder_mode)
        found = run_everything(url, env, scheduler, prefix=tuple(WITHOUT_DAC))
        check_reads_and_refusals(found, events)
        assert file_digest(path) == digest
        if folder_mode == 0o555:
            assert files(folder) == ["trialflow.db"]
    finally:
        folder.chmod(0o755)
        shutil.rmtree(top)


# ---------------------------------------------------------------------------- detection
def test_the_file_a_url_opens() -> None:
    of = SqliteFile.of
    assert of(":memory:", False) is None and of("", False) is None
    assert of("file::memory:?cache=shared", True) is None
    assert of("file:x.db?mode=memory", True) is None
    assert of("/tmp/a.db", False) == SqliteFile("/tmp/a.db")
    assert of("rel.db", False) == SqliteFile(os.path.abspath("rel.db"))
    found = of("file:/tmp/a%20b.db?mode=ro&cache=private", True)
    assert found == SqliteFile("/tmp/a b.db", (("mode", "ro"), ("cache", "private")))
    assert found.asks_read_only() and found.read_only()
    assert of("file:///tmp/a.db?immutable=1", True).asks_read_only()  # type: ignore[union-attr]
    assert not of("file:/tmp/a.db?mode=rw", True).asks_read_only()  # type: ignore[union-attr]
    odd = SqliteFile("/tmp/a b?c#d%e.db", (("cache", "private"),))
    assert odd.uri(mode="ro") == "file:/tmp/a%20b%3Fc%23d%25e.db?cache=private&mode=ro"


def test_when_a_file_is_opened_read_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    """Read-only when this process may not write the file or its folder (os.access, which
    knows a read-only mount and a dropped capability); a missing file is not (SQLite creates
    it or says why not)."""
    path = tmp_path / "x.db"
    file = SqliteFile(str(path))
    assert not file.read_only()  # missing
    path.write_bytes(b"")
    assert not file.read_only()
    denied: set[str] = set()
    monkeypatch.setattr(engine_module, "_may", lambda p, mode: p not in denied)
    denied.add(str(path))
    assert file.read_only()
    denied.clear()
    denied.add(str(tmp_path))
    assert file.read_only()


def test_a_read_only_engine_never_tries_a_catch_up(tmp_path: Path) -> None:
    """On a read-only file the runner refuses before any transaction (SQLite would let BEGIN
    IMMEDIATE through and refuse only the first row written)."""
    path = tmp_path / "trialflow.db"
    sqlite_study(path)
    dispose_engines()
    digest = file_digest(path)
    engine = create_store_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
    try:
        assert read_only(engine)
        store = EventStore(engine)
        assert store.last_position() == last_position(path)
        with pytest.raises(StoreUnavailable) as refused:
            Runner(engine, store).catch_up()
        assert refused.value.rule == "database_read_only" and str(refused.value) == READ_ONLY
    finally:
        engine.dispose()
    assert file_digest(path) == digest
    writable = create_store_engine(f"sqlite:///{path}")
    try:
        assert not read_only(writable)
    finally:
        writable.dispose()
    assert not read_only(create_store_engine("sqlite://"))


def test_a_file_detected_read_only_is_opened_by_its_exact_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A name with characters a URI escapes (space, `#`, `%`) opens read-only as it is: the
    detection builds the `file:` URI itself."""
    path = tmp_path / "a b#c%zz.db"
    sqlite_study(path)
    digest, events = settle(path)
    monkeypatch.setattr(engine_module, "_may", lambda p, mode: p != str(path))
    engine = create_store_engine(f"sqlite:///{path}")
    try:
        assert read_only(engine)
        assert EventStore(engine).last_position() == events
    finally:
        engine.dispose()
    assert file_digest(path) == digest
