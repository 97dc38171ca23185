"""Human output (issue 16): no Python representations (`None`, dicts, lists, unrounded
floats), numbers as `trialflow calc` rounds them, tables fitted to `COLUMNS`, colour on a
terminal only (never piped or with NO_COLOR; TRIALFLOW_COLOR=1 forces it), no screening-window
countdown for an enrolled subject, and one `visit` column in `visit.csv`."""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest

from cli.render import _STYLE, GREEN, RED, RESET, YELLOW, Style, human, number, table
from tests.support.auth import run_cli
from tests.support.clock import FakeClock
from tests.support.study import (
    COORDINATOR,
    INVESTIGATOR,
    SITE,
    new_study,
    on_day,
    through_infusion,
    to_lymphodepletion,
)
from workflow.commands import messages as M

START = date(2025, 1, 6)  # S-001: D0 2025-02-05
NOW = "2025-02-25T12:00:00+08:00"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
LONG_FLOAT = re.compile(r"\d\.\d{3,}")
PLAIN_ENV = {k: v for k, v in os.environ.items()
             if k not in ("COLUMNS", "NO_COLOR", "TRIALFLOW_COLOR")}


@dataclass(frozen=True)
class Built:
    db: str


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    url = f"sqlite:///{tmp_path_factory.mktemp('human') / 'study.db'}"
    clock = FakeClock("2025-01-01T00:00:00+00:00")
    flow = new_study(url, clock, recorded_by_clock=True,
                     people=((COORDINATOR, "coordinator", SITE),
                             (INVESTIGATOR, "investigator", SITE)))
    through_infusion(flow, "S-001", START, clock)
    on_day(clock, date(2025, 2, 6))
    flow.send(COORDINATOR, M.RecordForm("S-001", "adverse_event", (
        "term=Cytokine release syndrome", "category=crs", "onset_date=2025-02-06", "grade=2",
        "temperature_c=39.2", "hypotension=no_vasopressors", "hypoxia=low_flow"),
        date(2025, 2, 6)))
    to_lymphodepletion(flow, "S-002", date(2025, 1, 20), clock)  # released 2025-02-09
    on_day(clock, date(2025, 2, 10))  # BSA √(153 × 58 / 3600) = 1.57 m²: 39.25 mg fludarabine
    flow.send(COORDINATOR, M.RecordForm("S-002", "vitals", ("height_cm=153",), date(2025, 2, 10)))
    flow.executor.engine.dispose()
    return Built(url)


def call(db: str, *argv: str, environ: dict[str, str] | None = None,
         stdout: io.StringIO | None = None, user: str | None = None) -> tuple[int, str, str]:
    out, err = stdout or io.StringIO(), io.StringIO()
    env = {**PLAIN_ENV, **(environ or {})}
    status = run_cli(["--db", db, *(["--user", user] if user else []), *argv], stdout=out,
                     stderr=err, environ=env)
    return status, out.getvalue(), err.getvalue()


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


READS = (
    ("status",), ("status", "S-001"), ("status", "S-002"), ("eligibility", "S-001"),
    ("eligibility", "S-002"), ("visits",), ("ae", "list"), ("ae", "windows"),
    ("deviations",), ("endpoints", "S-001"), ("forms",), ("forms", "--codes"),
)


def assert_readable(out: str, argv: tuple[str, ...]) -> None:
    for needle in ("None", "{'", "['", "': ", "True", "False"):
        assert needle not in out, (argv, needle, out)
    assert not LONG_FLOAT.search(out), (argv, LONG_FLOAT.search(out), out)


@pytest.mark.parametrize("argv", READS, ids=" ".join)
def test_reads_show_no_python_representations_and_fit_80_columns(built: Built,
                                                                  argv: tuple[str, ...]) -> None:
    status, out, err = call(built.db, *argv, "--now", NOW, environ={"COLUMNS": "80"}) \
        if argv[0] not in ("forms",) else call(built.db, *argv, environ={"COLUMNS": "80"})
    assert status == 0, (argv, out, err)
    assert_readable(out, argv)
    assert not ANSI.search(out)  # piped: no colour
    lines = out.splitlines()
    if argv in (("visits",), ("ae", "list"), ("ae", "windows"), ("forms",)):
        assert all(len(line) <= 80 for line in lines), (argv, out)
    rules = [i for i, line in enumerate(lines) if "--" in line and set(line) <= {"-", " "}]
    for i in rules:  # the rule under a table's header: the header and every row fit
        assert len(lines[i]) <= 80 and len(lines[i - 1]) <= 80, (argv, lines[i - 1])
        for line in lines[i + 1:]:
            if not line:
                break
            assert len(line) <= 80, (argv, line)


def test_eligibility_of_an_enrolled_subject_says_nothing_of_the_screening_window(
        built: Built) -> None:
    status, out, _ = call(built.db, "eligibility", "S-001", "--now", NOW)
    assert status == 0
    first = out.splitlines()[0]
    assert "as of its confirmation on" in first
    assert "days left" not in out and "window ends" not in first and "ago" not in first
    status, out, _ = call(built.db, "eligibility", "S-002", "--now", NOW)
    assert status == 0 and "as of its confirmation on" in out.splitlines()[0]


def test_lymphodepletion_prints_expected_mg_and_bsa_as_calc_does(built: Built,
                                                                 tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "study.db"
    shutil.copyfile(built.db.removeprefix("sqlite:///"), copy)
    db = f"sqlite:///{copy}"
    status, out, err = call(db, "lymphodepletion", "S-002", "--on", "2025-02-12",
                            "fludarabine_mg=39.25", "cyclophosphamide_mg=0", user=COORDINATOR)
    assert status == 0, (out, err)
    assert "expected fludarabine 39.25 mg, BSA 1.57 m²" in out, out
    assert_readable(out, ("lymphodepletion",))
    status, calc_out, _ = call(db, "calc", "lymphodepletion-dose", "bsa_m2=1.57")
    assert status == 0 and "39.25" in calc_out
    status, out, _ = call(db, "deviations", "--now", NOW)
    assert status == 0
    assert_readable(out, ("deviations",))


def test_colour_on_a_terminal_forced_or_never(built: Built) -> None:
    argv = ("visits", "S-001", "--now", NOW)
    assert not ANSI.search(call(built.db, *argv)[1])  # piped
    assert ANSI.search(call(built.db, *argv, environ={"TRIALFLOW_COLOR": "1"})[1])
    assert ANSI.search(call(built.db, *argv, stdout=Terminal())[1])
    assert not ANSI.search(call(built.db, *argv, stdout=Terminal(),
                                environ={"NO_COLOR": ""})[1])  # set, any value
    assert not ANSI.search(call(built.db, *argv, environ={"TRIALFLOW_COLOR": "1",
                                                          "NO_COLOR": "1"})[1])
    assert not ANSI.search(call(built.db, *argv, stdout=Terminal(),
                                environ={"TRIALFLOW_COLOR": "0"})[1])
    assert not ANSI.search(call(built.db, "--json", *argv, stdout=Terminal())[1])


def test_state_words_are_coloured_only_with_colour() -> None:
    """A whole cell naming a state is coloured (overdue red, due yellow, done green); other
    cells and the padding stay plain, so the columns still line up."""
    rows = [["S-001", "overdue", "visit D7 is overdue"], ["S-002", "due", "x"],
            ["S-003", "completed", "y"]]
    token = _STYLE.set(Style(width=None, colour=True))
    try:
        coloured = table(["subject", "state", "task"], rows)
    finally:
        _STYLE.reset(token)
    lines = coloured.splitlines()
    assert lines[2] == f"S-001    {RED}overdue{RESET}    visit D7 is overdue"  # task: plain
    assert lines[3] == f"S-002    {YELLOW}due{RESET}        x"
    assert lines[4] == f"S-003    {GREEN}completed{RESET}  y"
    plain = table(["subject", "state", "task"], rows)
    assert not ANSI.search(plain)
    assert [ANSI.sub("", line) for line in lines[1:]] == plain.splitlines()[1:]


def test_the_visit_csv_has_one_visit_column(built: Built, tmp_path: Path) -> None:
    out_dir = tmp_path / "csv"
    status, out, err = call(built.db, "export", "csv", "--out", str(out_dir))
    assert status == 0, (out, err)
    with (out_dir / "visit.csv").open(encoding="utf-8", newline="") as handle:
        header = next(csv.reader(handle))
    assert header.count("visit") == 1 and "study_visit" in header
    files = sorted(out_dir.glob("*.csv"))
    assert len(files) > 10  # one per form, and events.csv
    for path in files:  # every CSV: no column name twice
        with path.open(encoding="utf-8", newline="") as handle:
            names = next(csv.reader(handle))
        assert len(names) == len(set(names)), (path.name, names)


# --- the formatter and the table, alone ----------------------------------------------------


def test_one_value_formatter() -> None:
    assert human(None) == "-"
    assert (human(True), human(False)) == ("yes", "no")
    assert human([1, "a", None]) == "1, a, -"
    assert human({"fludarabine": 39.25, "cyclophosphamide": 0.0}) == (
        "fludarabine 39.25, cyclophosphamide 0")
    assert (human(1.0 / 3), human(39.245), human(2.5e8), human(7)) == (
        "0.33", "39.25", "250000000", "7")
    assert number(0.125) == "0.13"  # half up, as calc rounds


def test_a_table_wraps_whole_words_to_the_width() -> None:
    token = _STYLE.set(Style(width=40))
    try:
        text = table(["subject", "detail"], [["S-001", "visit D14 done on 2024-11-02, outside "
                                              "its window 2024-10-28 to 2024-11-01"]])
    finally:
        _STYLE.reset(token)
    lines = text.splitlines()
    assert all(len(line) <= 40 for line in lines), lines
    words = ["visit", "D14", "done", "on", "2024-11-02,", "outside", "its", "window",
             "2024-10-28", "to", "2024-11-01"]
    cells = " ".join(line[9:].strip() for line in lines[2:]).split()
    assert cells == words  # every word whole, in order


def test_a_table_too_wide_for_its_words_becomes_one_block_per_row() -> None:
    token = _STYLE.set(Style(width=30))
    try:
        text = table(["subject", "onset", "window", "term"],
                     [["S-001", "2025-02-06", "2025-02-05..2025-03-05", "Cytokine release"]])
    finally:
        _STYLE.reset(token)
    lines = text.splitlines()
    assert all(len(line) <= 30 for line in lines), lines
    assert "onset    2025-02-06" in lines and "term     Cytokine release" in lines
