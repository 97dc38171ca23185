"""CSV injection (OWASP): every CSV trialflow writes — the export's files and `audit log --csv`
— neutralises a text cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage return with
a leading `'`, while numbers stay numbers (projections/exports/cells.py).

Formula-like values go into every free-text field a user can type (drug names, AE terms,
correction, screen-failure note, failed-release, query and lock reasons, query texts) through the
real commands on a real SQLite study; then no cell of any CSV produced may start with one of
those characters, the values are there with their `'`, and `events.csv` still lets every hash
be recomputed (the `'` undone by `cells.restore`)."""

from __future__ import annotations

import csv
import io
import json
from datetime import date, timedelta
from pathlib import Path

import pytest

from events.envelope import event_hash
from projections.audit_trail import csv_rows, trail_entry
from projections.exports.cells import FORMULA_STARTS, cell, neutralise, restore
from projections.exports.csv_export import _form_row
from projections.exports.records import FormRecord
from tests.exports.support import cli, store_of
from tests.support.study import screening_forms

DRUG = "=cmd|' /C calc'!A0"
TERM = '=HYPERLINK("http://x")'
PLUS, AT, MINUS = "+1", "@SUM(1)", "-2+3"
TAB_REASON, CR_REASON = "\tTAB led reason", "\rCR led reason"


# --- the rule ----------------------------------------------------------------------------


@pytest.mark.parametrize("text", [DRUG, TERM, PLUS, AT, MINUS, TAB_REASON, CR_REASON, "-1.5",
                                  "'=quoted already", "'plain"])
def test_a_formula_like_text_gets_a_quote_and_restores_exactly(text: str) -> None:
    safe = neutralise(text)
    assert safe == "'" + text and restore(safe) == text


@pytest.mark.parametrize("text", ["prednisone", "", "2025-01-06", "S-001", "{}", "Érythème",
                                  "细胞因子释放综合征", " =leading space"])
def test_other_text_is_unchanged(text: str) -> None:
    assert neutralise(text) == text == restore(text)


def test_numbers_stay_numbers_text_that_looks_like_one_does_not() -> None:
    assert cell(-1.5) == "-1.5" and cell(-3) == "-3" and cell(7) == "7"
    assert cell("-1.5") == "'-1.5" and cell(True, "yes") == "yes"
    assert cell(None) == ""


def test_a_form_row_keeps_a_negative_number_and_quotes_text() -> None:
    record = FormRecord("S-001", 12, "medication", "SCREENING", None, date(2025, 1, 6),
                        {"drug": MINUS, "drug_class": "antimalarial", "dose_mg_per_day": -1.5})
    row = _form_row(record)
    assert "'-2+3" in row and "-1.5" in row and MINUS not in row


def test_audit_rows_quote_text_and_keep_numbers() -> None:
    entry = {"position": 9, "stream": "S-001", "version": 2, "type": "FormCorrected",
             "recorded_at": "2025-01-06T04:00:00Z", "occurred_at": None, "actor": "cora",
             "role": "coordinator", "site": "PKU3", "reason": TAB_REASON,
             "payload": {"form": "labs"},
             "changes": [{"form": "labs", "field": "x", "old": -1.5, "new": AT,
                          "target_position": 4}]}
    (row,) = csv_rows(entry)
    assert row["reason"] == "'" + TAB_REASON and row["new"] == "'" + AT
    assert row["old"] == "-1.5" and row["target_position"] == "4" and row["position"] == "9"


# --- through the commands ----------------------------------------------------------------


def _write(db: str, user: str, *argv: str) -> dict[str, object]:
    status, out, err = cli(db, "--json", *argv, user=user)
    assert status == 0, (argv, out, err)
    document: dict[str, object] = json.loads(out)
    return document


def _position(document: dict[str, object]) -> int:
    positions = document["positions"]
    assert isinstance(positions, list)
    return int(positions[0])


def _feed_formulas(db: str) -> None:
    """Every free text a user can type, formula-like, through the CLI."""
    day = (date.today() - timedelta(days=2)).isoformat()
    _write(db, "cora", "consent", "S-003", "--on", day, "--consent-form-version", "2.0")
    medication = _position(_write(db, "cora", "record", "S-003", "medication", f"drug={DRUG}",
                                  "drug_class=antimalarial", "--on", day))
    prior = _position(_write(db, "cora", "record", "S-003", "prior_treatment",
                             f"drug={MINUS}", "drug_class=biologic", "--on", day))
    _write(db, "cora", "record", "S-003", "medication", f"drug={AT}", "drug_class=antimalarial",
           "--on", day)
    _write(db, "cora", "record", "S-003", "adverse_event", f"term={TERM}", f"onset_date={day}",
           "grade=1", "--on", day)
    _write(db, "cora", "record", "S-003", "adverse_event", f"term={PLUS}", f"onset_date={day}",
           "grade=1", "--on", day)
    _write(db, "cora", "correct", "S-003", str(medication), f"drug={PLUS}cmd",
           "--reason", AT)
    query = _write(db, "mona", "query", "open", "S-003", str(prior), "--field", "drug",
                   "--text", MINUS)
    query_id = str(query["query"])
    _write(db, "cora", "query", "answer", query_id, "--text", "=1+2", f"drug={MINUS}9",
           "--reason", "+fixed")
    _write(db, "mona", "query", "close", query_id, "--reason", "-closed")
    _write(db, "cora", "screen-fail", "S-003", "--reason", "other", "--note", TAB_REASON)
    _write(db, "cora", "consent", "S-004", "--on", day, "--consent-form-version", "2.0")
    _write(db, "cora", "screen-fail", "S-004", "--reason", "other", "--note", CR_REASON)
    _write(db, "dora", "study", "lock", "--reason", "=lock()")
    _write(db, "ada", "study", "unlock", "--reason", "@unlock")
    # a failed product release keeps its reason as it was typed (the envelope's `reason`)
    consent = (date.today() - timedelta(days=5)).isoformat()
    _write(db, "cora", "consent", "S-005", "--on", consent, "--consent-form-version", "2.0")
    for form, tokens in screening_forms():
        _write(db, "cora", "record", "S-005", form, *tokens, "--on", consent)
    _write(db, "ivan", "confirm-eligibility", "S-005", "--on", consent)
    for reason in (TAB_REASON, CR_REASON):
        _write(db, "cora", "leukapheresis", "S-005", "--on", day, "--coi-id", "COI-S-005")
        _write(db, "cora", "release", "S-005", "--lot", "LOT-S-005", "--coi-id", "COI-S-005",
               "--fail", "--reason", reason, "--on", day)


def _table(raw: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(raw.decode("utf-8"), newline="")))


def _assert_no_formula(name: str, rows: list[list[str]]) -> None:
    for number, row in enumerate(rows):
        for value in row:
            assert not value.startswith(FORMULA_STARTS), (name, number, value)


def test_no_cell_of_any_csv_starts_a_formula(db: str, tmp_path: Path) -> None:
    _feed_formulas(db)
    out = tmp_path / "csv"
    status, _, err = cli(db, "export", "csv", "--out", str(out), user="dora")
    assert status == 0, err
    tables = {path.name: _table(path.read_bytes()) for path in sorted(out.glob("*.csv"))}
    for stream in ("S-003", "S-004", "S-005", "study"):
        target = tmp_path / f"trail-{stream}.csv"
        status, _, err = cli(db, "audit", "log", stream, "--csv", str(target))
        assert status == 0, err
        tables[target.name] = _table(target.read_bytes())
    status, stdout, err = cli(db, "audit", "log", "S-003", "--csv", "-")
    assert status == 0, err
    tables["stdout"] = _table(stdout.encode("utf-8"))
    for name, rows in tables.items():
        _assert_no_formula(name, rows)

    cells = {name: {value for row in rows for value in row} for name, rows in tables.items()}
    assert {"'+1cmd", "'" + AT} <= cells["medication.csv"]  # the current (corrected) values
    assert {"'" + TERM, "'" + PLUS} <= cells["adverse_event.csv"]
    assert "'" + MINUS + "9" in cells["prior_treatment.csv"]
    assert {"'" + TAB_REASON, "'" + CR_REASON, "'" + AT, "'=lock()",
            "'@unlock", "'+fixed", "'-closed"} <= cells["events.csv"]
    assert {"'" + DRUG, "'+1cmd", "'" + AT} <= cells["trail-S-003.csv"]  # old → new
    assert {"'" + TAB_REASON, "'" + CR_REASON} <= cells["trail-S-005.csv"]
    assert {"'=lock()", "'@unlock"} <= cells["trail-study.csv"]
    assert cells["stdout"] == cells["trail-S-003.csv"]


def test_events_csv_stays_lossless(db: str, tmp_path: Path) -> None:
    """Undoing the quote gives the stored text back: every row's hash recomputes."""
    _feed_formulas(db)
    out = tmp_path / "csv"
    status, _, err = cli(db, "export", "csv", "--out", str(out))
    assert status == 0, err
    raw = (out / "events.csv").read_bytes().decode("utf-8")
    rows = list(csv.DictReader(io.StringIO(raw, newline="")))
    ints = {"position", "version", "schema_version"}
    stored = {event.position: event for event in store_of(db).read_all()}
    quoted = 0
    for row in rows:
        fields = {name: (int(value) if name in ints else restore(value) or None)
                  for name, value in row.items()}
        quoted += any(value.startswith("'") for value in row.values())
        assert event_hash(fields) == row["hash"]
        assert fields["reason"] == stored[int(row["position"])].reason
    assert quoted >= 6


def test_audit_rows_of_the_stored_trail_match_the_file(db: str, tmp_path: Path) -> None:
    """`audit log --csv` is `csv_rows` of the trail, cell for cell."""
    _feed_formulas(db)
    target = tmp_path / "trail.csv"
    assert cli(db, "audit", "log", "S-003", "--csv", str(target))[0] == 0
    with target.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    expected = [row for event in store_of(db).read_stream("S-003")
                for row in csv_rows(trail_entry(event))]
    assert rows == expected
