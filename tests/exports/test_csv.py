"""`trialflow export csv`: a file per form with current values, the log's envelope in
events.csv (enough to re-verify every hash), and a manifest `sha256sum -c` accepts."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

from events.envelope import ENVELOPE_FIELDS, event_hash
from projections.exports.csv_export import form_header
from tests.exports.support import cli, store_of
from workflow import event_types as T
from workflow.forms import FORMS

PHASE_EVENTS = {T.SUBJECT_CONSENTED: "consent", T.LEUKAPHERESIS_RECORDED: "leukapheresis",
                T.PRODUCT_RELEASED: "product_release", T.LYMPHODEPLETION_GIVEN: "lymphodepletion",
                T.INFUSION_GIVEN: "infusion", T.VISIT_RECORDED: "visit"}


def export(db: str, out: Path) -> dict[str, list[dict[str, str]]]:
    status, _, err = cli(db, "export", "csv", "--out", str(out))
    assert status == 0, err
    tables = {}
    for path in sorted(out.glob("*.csv")):
        raw = path.read_bytes()
        assert b"\r\n" in raw or raw.count(b"\n") == 0
        tables[path.name] = list(csv.DictReader(io.StringIO(raw.decode("utf-8"),
                                                            newline="")))
    return tables


def test_one_file_per_form_with_a_row_per_recorded_form(db: str, tmp_path: Path) -> None:
    tables = export(db, tmp_path / "out")
    assert set(tables) == {f"{form}.csv" for form in FORMS} | {"events.csv"}
    expected: dict[str, int] = dict.fromkeys(FORMS, 0)
    for event in store_of(db).read_all():
        if event.type == T.FORM_RECORDED:
            expected[event.payload["form"]] += 1
        elif event.type in PHASE_EVENTS:
            expected[PHASE_EVENTS[event.type]] += 1
    for form, count in expected.items():
        header = (tmp_path / "out" / f"{form}.csv").read_text(encoding="utf-8").splitlines()[0]
        assert header.split(",") == form_header(form)
        assert len(tables[f"{form}.csv"]) == count, form
    assert expected["disease_activity"] == 26 and expected["causality"] == 2

    crs = [row for row in tables["adverse_event.csv"] if row["category"] == "crs"]
    assert [(r["subject"], r["hypoxia"], r["corrected"]) for r in crs] == [
        ("S-001", "low_flow", "yes"), ("S-002", "low_flow", "yes")]  # the corrected value
    assert crs[0]["serious_criteria"] == "hospitalisation"
    assert {r["corrected"] for r in tables["vitals.csv"]} == {"no"}
    infusion = tables["infusion.csv"][0]
    assert infusion["study_event"] == "D0"
    assert infusion["infused_at"] == "2025-02-05T10:00:00+08:00"
    assert tables["visit.csv"][0]["visit"] == "D1"
    rows = tables["labs.csv"]
    assert [(r["subject"], int(r["position"])) for r in rows] == sorted(
        (r["subject"], int(r["position"])) for r in rows)


def test_events_csv_holds_the_envelope_and_its_hashes_verify(db: str, tmp_path: Path) -> None:
    tables = export(db, tmp_path / "out")
    events = list(store_of(db).read_all())
    rows = tables["events.csv"]
    assert list(rows[0]) == list(ENVELOPE_FIELDS)
    assert [int(r["position"]) for r in rows] == [e.position for e in events]
    ints = {"position", "version", "schema_version"}
    for row in rows:
        fields = {name: (int(value) if name in ints else value or None)
                  for name, value in row.items()}
        assert event_hash(fields) == row["hash"]
        json.loads(row["payload"])


def test_the_manifest_lists_every_file_with_its_sha256(db: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    export(db, out)
    lines = (out / "SHA256SUMS").read_text(encoding="utf-8").splitlines()
    listed = dict(reversed(line.split("  ", 1)) for line in lines)
    assert sorted(listed) == sorted(p.name for p in out.glob("*.csv"))
    for name, digest in listed.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
