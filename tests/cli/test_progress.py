"""Progress of long work on stderr (cli/progress.py): nothing when stderr is no terminal
(piped, a file), nothing with --json, a progress bar when it is one (forced here with
TRIALFLOW_PROGRESS=1, as a terminal would be); stdout is the same either way."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from tests.support.clock import FakeClock
from tests.support.study import new_study

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("progress") / "study.db"
    desk = new_study(f"sqlite:///{path}", FakeClock())
    desk.store.engine.dispose()
    return f"sqlite:///{path}"


class Terminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def trialflow(argv: list[str], environ: dict[str, str], stderr: io.StringIO | None = None
              ) -> tuple[int, str, str]:
    from cli.app import run

    out, err = io.StringIO(), stderr if stderr is not None else io.StringIO()
    status = run(argv, stdout=out, stderr=err, environ=environ)
    return int(status), out.getvalue(), err.getvalue()


@pytest.mark.parametrize("argv,what", [
    (["audit", "verify"], "verifying"),
    (["projections", "rebuild"], "rebuilding"),
], ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_progress_only_on_a_terminal(study: str, argv: list[str], what: str) -> None:
    status, plain_out, plain_err = trialflow(["--db", study, *argv], {})
    assert status == 0 and plain_err == "", plain_err  # piped: nothing on stderr
    status, out, err = trialflow(["--db", study, *argv], {"TRIALFLOW_PROGRESS": "1"})
    assert status == 0 and out == plain_out  # stdout unchanged
    assert what in ANSI.sub("", err), err
    status, out, err = trialflow(["--db", study, *argv], {}, stderr=Terminal())
    assert status == 0 and out == plain_out and what in ANSI.sub("", err), err
    # --json, or TRIALFLOW_PROGRESS=0: nothing, even on a terminal
    status, out, err = trialflow(["--db", study, "--json", *argv], {}, stderr=Terminal())
    assert status == 0 and err == "", err
    status, out, err = trialflow(["--db", study, *argv], {"TRIALFLOW_PROGRESS": "0"},
                                 stderr=Terminal())
    assert status == 0 and err == "" and out == plain_out, err


def test_audit_log_all_shows_progress_only_when_its_lines_go_elsewhere(study: str) -> None:
    argv = ["--db", study, "audit", "log", "--all"]
    status, plain, err = trialflow(argv, {})
    assert status == 0 and err == "" and plain.count("\n") > 1
    status, out, err = trialflow(argv, {"TRIALFLOW_PROGRESS": "1"})  # stdout: no terminal
    assert status == 0 and out == plain and "audit log" in ANSI.sub("", err), err


def test_demo_shows_its_days_on_a_terminal(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    status, out, err = trialflow(["--db", url, "demo", "--no-reports"],
                                 {"TRIALFLOW_PROGRESS": "1"})
    assert status == 0, err
    shown = ANSI.sub("", err)
    assert "demo: story days" in shown, shown[-500:]
    assert re.search(r"\b(\d+)/\1\b", shown), shown[-500:]  # every day played
    assert out.startswith(f"Demo study in {url}: ")


@pytest.fixture(scope="module")
def screened(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Two subjects screened: the exports count them."""
    from datetime import date

    from tests.support.study import screen_eligible

    path = tmp_path_factory.mktemp("progress-exports") / "study.db"
    clock = FakeClock()
    desk = new_study(f"sqlite:///{path}", clock)
    for subject in ("S-001", "S-002"):
        screen_eligible(desk, subject, date(2025, 3, 3), clock=clock)
    desk.store.engine.dispose()
    return f"sqlite:///{path}"


@pytest.mark.parametrize("kind,out,last", [
    ("odm", "odm.xml", "ODM: XML written"),
    ("fhir", "fhir.json", "FHIR: resources (subjects)"),
    ("csv", "csv", "CSV: files written"),
])
def test_exports_show_their_progress_per_subject(screened: str, tmp_path: Path, kind: str,
                                                 out: str, last: str) -> None:
    """Each export's bar counts its subjects (and the writing of the file): the last frame
    shows every unit done; piped, stderr holds only the export's own warning."""
    argv = ["--db", screened, "export", kind, "--out", str(tmp_path / out)]
    status, _, plain = trialflow(argv, {})
    assert status == 0 and plain.startswith("Warning: the export was written but not "
                                            "recorded"), plain
    status, _, err = trialflow(argv, {"TRIALFLOW_PROGRESS": "1"})
    shown = ANSI.sub("", err)
    units = {"odm": 5, "fhir": 2, "csv": 3}[kind]  # 2 subjects (twice for ODM), + the file
    assert status == 0 and last in shown and f"{units}/{units}" in shown, shown[-500:]


@pytest.mark.parametrize("argv,last,units", [
    (["report", "swimmer", "--out", "swimmer.png"], "report: swimmer drawn", 3),
    (["report", "html", "--out", "page.html"], "report: persistence drawn", 8),
], ids=["plot", "page"])
def test_reports_show_their_progress_per_subject(screened: str, tmp_path: Path,
                                                 argv: list[str], last: str,
                                                 units: int) -> None:
    """A plot: each subject read, then the drawing; the page: each subject read and reviewed,
    the overdue tasks and three plots. Piped: nothing on stderr, the same stdout."""
    argv = ["--db", screened, *argv[:-1], str(tmp_path / argv[-1])]
    status, plain, err = trialflow(argv, {})
    assert status == 0 and err == "", err
    status, out, err = trialflow(argv, {"TRIALFLOW_PROGRESS": "1"})
    shown = ANSI.sub("", err)
    assert status == 0 and out == plain, err
    assert last in shown and f"{units}/{units}" in shown, shown[-500:]
