"""Exports after records are mended (issue 15, "every record mendable"): a record voided with
`trialflow void` and procedures corrected with `trialflow correct`, all through the CLI as the
PKU3 coordinator on the shared two-subject study (S-002 is completed; its D90 visit and its
first lymphodepletion day are corrected, a fresh adverse event is recorded, signed and voided).

- ODM: still valid against the ODM 1.3.2 schema; the voided record's ItemData end with one
  `Remove` per item it held, each with the void's AuditRecord and its reason; a procedure's
  correction is an `Update` with its reason; replaying the ItemData in order gives the current
  values (none for the voided record).
- CSV: the voided row stays with `voided=yes`; a corrected procedure's row shows the new value,
  `corrected=yes`, and a corrected date moves `recorded_on`.
- FHIR: the voided adverse event is no longer in the Bundle.
- Audit trail: the void is one entry (field null, new `voided`) with its reason.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.bundle import Bundle
from lxml import etree

from events.envelope import RecordedEvent
from projections.exports.values import value_text
from tests.exports.support import ODM_NS, cli, odm_schema_path, store_of
from workflow import event_types as T
from workflow.subject import fold_subject

NS = {"odm": ODM_NS}
COORDINATOR = "cora"  # PKU3's coordinator (tests/support/study.py)
AE_TOKENS = ("term=headache", "category=other", "onset_date=2025-05-01", "grade=1")
AE_VALUES = {"term": "headache", "category": "other", "onset_date": "2025-05-01", "grade": "1"}
VOID_REASON = "entered for the wrong subject"
DOSE_REASON = "pharmacy dispensing record: 41.0 mg"
VISIT_REASON = "visit date per the clinic schedule"
D90_DONE, D90_CORRECTED = "2025-06-10", "2025-06-12"  # S-002's D90 window: 06-03..06-17


@dataclass(frozen=True)
class Mended:
    ae: int  # the adverse event recorded, then voided
    signature: int  # the coordinator's signature of it (before the void)
    void: int
    dose: int  # S-002's first lymphodepletion day (fludarabine corrected)
    dose_correction: int
    visit: int  # S-002's D90 visit (date corrected)
    visit_correction: int


def write(db: str, *argv: str) -> dict[str, Any]:
    status, out, err = cli(db, "--json", *argv, user=COORDINATOR)
    assert status == 0, (argv, out, err)
    body: dict[str, Any] = json.loads(out)
    return body


def record_ae(db: str) -> int:
    body = write(db, "record", "S-002", "adverse_event", *AE_TOKENS, "--on", "2025-05-02")
    (position,) = body["positions"]
    return int(position)


def mend(db: str, ae: int | None = None) -> Mended:
    """Through the CLI: record (unless given) and sign an AE of S-002, void it, correct the
    first lymphodepletion day's fludarabine and the D90 visit's date."""
    ae = record_ae(db) if ae is None else ae
    status, _, err = cli(db, "sign", "S-002", str(ae), "--meaning", "authored",
                         user=COORDINATOR)
    assert status == 0, err
    signature = max(e.position for e in store_of(db).read_stream("S-002"))
    voided = write(db, "void", "S-002", str(ae), "--reason", VOID_REASON)
    assert (voided["voided"], voided["form"], voided["phase"]) == (
        ae, "adverse_event", "completed")
    assert "warnings" not in voided
    events = list(store_of(db).read_stream("S-002"))
    dose = next(e.position for e in events if e.type == T.LYMPHODEPLETION_GIVEN)
    visit = next(e.position for e in events
                 if e.type == T.VISIT_RECORDED and e.payload["visit"] == "D90")
    assert next(e for e in events if e.position == visit).payload["visit_date"] == D90_DONE
    corrected_dose = write(db, "correct", "S-002", str(dose), "fludarabine_mg=41.0",
                           "--reason", DOSE_REASON)
    corrected_visit = write(db, "correct", "S-002", str(visit), f"visit_date={D90_CORRECTED}",
                            "--reason", VISIT_REASON)
    for body in (corrected_dose, corrected_visit):  # within tolerance, within the window
        assert "warnings" not in body and body["deviations_resolved"] == [], body
    return Mended(ae, signature, voided["positions"][0], dose, corrected_dose["positions"][0],
                  visit, corrected_visit["positions"][0])


def event_at(db: str, position: int) -> RecordedEvent:
    return next(e for e in store_of(db).read_all() if e.position == position)


# --- ODM -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(odm_schema_path())))


def export_odm(db: str, tmp_path: Path) -> etree._Element:
    out = tmp_path / "study.xml"
    status, _, err = cli(db, "export", "odm", "--out", str(out))
    assert status == 0, err
    return etree.fromstring(out.read_bytes())


def form_data(document: etree._Element, subject: str, form: str, position: int
              ) -> etree._Element:
    (found,) = document.findall(
        f"odm:ClinicalData/odm:SubjectData[@SubjectKey='{subject}']//odm:FormData"
        f"[@FormOID='F.{form}'][@FormRepeatKey='{position}']", NS)
    return found


def items(form: etree._Element) -> list[etree._Element]:
    return list(form.iterfind("odm:ItemGroupData/odm:ItemData", NS))


def audit(item: etree._Element) -> dict[str, str | None]:
    record = item.find("odm:AuditRecord", NS)
    assert record is not None, item.attrib
    reason = record.find("odm:ReasonForChange", NS)
    return {"user": record.find("odm:UserRef", NS).get("UserOID"),
            "location": record.find("odm:LocationRef", NS).get("LocationOID"),
            "stamp": record.find("odm:DateTimeStamp", NS).text,
            "reason": None if reason is None else reason.text,
            "source": record.find("odm:SourceID", NS).text}


def test_odm_stays_valid_and_ends_the_voided_record_with_removes(
        db: str, tmp_path: Path, schema: etree.XMLSchema) -> None:
    mended = mend(db)
    document = export_odm(db, tmp_path)
    assert schema.validate(document), schema.error_log
    every = document.findall(".//odm:ItemData", NS)
    assert len(document.findall(".//odm:AuditRecord", NS)) == len(every)  # one per ItemData
    assert all(len(i.findall("odm:AuditRecord", NS)) == 1 for i in every)

    ae = form_data(document, "S-002", "adverse_event", mended.ae)
    assert ae.getparent().get("StudyEventOID") == "SE.AE"
    written = items(ae)
    held = len(AE_VALUES)
    assert [i.get("TransactionType") for i in written] == ["Insert"] * held + ["Remove"] * held
    inserts, removes = written[:held], written[held:]
    # each Remove names an item the record held and the value it took away
    assert sorted((i.get("ItemOID"), i.get("Value")) for i in removes) == sorted(
        (i.get("ItemOID"), i.get("Value")) for i in inserts) == sorted(
        (f"I.adverse_event.{code}", value) for code, value in AE_VALUES.items())
    void = event_at(db, mended.void)
    for item in removes:
        entry = audit(item)
        assert (entry["user"], entry["location"]) == ("U.cora", "L.PKU3")
        assert entry["stamp"] == void.recorded_at
        assert entry["source"] == f"trialflow event position {mended.void}"
    assert all(audit(i)["reason"] is None for i in inserts)
    assert len(document.findall(".//odm:ItemData[@TransactionType='Remove']", NS)) == held
    # a signature of a record that is since voided signs nothing the export shows
    assert ae.find("odm:Signature", NS) is None


def test_odm_remove_entries_carry_the_void_reason(db: str, tmp_path: Path) -> None:
    """docs/exports.md: a void adds, for every item the record held, an ItemData
    `TransactionType="Remove"` with the void's AuditRecord, its reason in ReasonForChange."""
    mended = mend(db)
    document = export_odm(db, tmp_path)
    removes = [i for i in items(form_data(document, "S-002", "adverse_event", mended.ae))
               if i.get("TransactionType") == "Remove"]
    assert len(removes) == len(AE_VALUES)
    assert [audit(i)["reason"] for i in removes] == [VOID_REASON] * len(AE_VALUES)


def test_odm_procedure_corrections_are_updates_with_their_reasons(
        db: str, tmp_path: Path) -> None:
    mended = mend(db)
    document = export_odm(db, tmp_path)
    expectations = (
        ("lymphodepletion", mended.dose, mended.dose_correction, "fludarabine_mg", "40.5",
         "41.0", DOSE_REASON, "SE.LYMPHODEPLETION"),
        ("visit", mended.visit, mended.visit_correction, "visit_date", D90_DONE, D90_CORRECTED,
         VISIT_REASON, "SE.D90"),
    )
    for form, position, correction, field, old, new, reason, study_event in expectations:
        data = form_data(document, "S-002", form, position)
        assert data.getparent().get("StudyEventOID") == study_event
        written = [i for i in items(data) if i.get("ItemOID") == f"I.{form}.{field}"]
        assert [(i.get("TransactionType"), i.get("Value")) for i in written] == [
            ("Insert", old), ("Update", new)], form
        entry = audit(written[1])
        assert entry["reason"] == reason
        assert (entry["user"], entry["location"]) == ("U.cora", "L.PKU3")
        assert entry["source"] == f"trialflow event position {correction}"
        assert entry["stamp"] == event_at(db, correction).recorded_at
        assert [i.get("TransactionType") for i in items(data)].count("Update") == 1


def test_replaying_the_odm_item_data_gives_the_current_values(db: str, tmp_path: Path) -> None:
    mended = mend(db)
    document = export_odm(db, tmp_path)
    (subject,) = document.findall("odm:ClinicalData/odm:SubjectData[@SubjectKey='S-002']", NS)
    replayed: dict[int, dict[str, str]] = {}
    for data in subject.iterfind(".//odm:FormData", NS):
        values = replayed.setdefault(int(data.get("FormRepeatKey")), {})
        for item in items(data):
            code, value = item.get("ItemOID").rsplit(".", 1)[1], item.get("Value")
            if item.get("TransactionType") == "Remove":
                assert values.pop(code) == value  # removes what was there
            else:
                values[code] = value
    assert [position for position, values in replayed.items() if not values] == [mended.ae]
    assert replayed[mended.dose]["fludarabine_mg"] == "41.0"
    assert replayed[mended.visit]["visit_date"] == D90_CORRECTED
    state = fold_subject("S-002", store_of(db).read_stream("S-002"))
    assert mended.ae not in state.forms  # the fold drops the voided record
    for position, form in state.forms.items():
        assert replayed[position] == {k: value_text(v) for k, v in form.values.items()}


# --- CSV -------------------------------------------------------------------------------------


def export_csv(db: str, out: Path) -> dict[str, list[dict[str, str]]]:
    status, _, err = cli(db, "export", "csv", "--out", str(out))
    assert status == 0, err
    return {path.name: list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"),
                                                       newline="")))
            for path in sorted(out.glob("*.csv")) if path.name != "events.csv"}


def test_csv_keeps_the_voided_row_flagged_and_shows_corrected_procedures(
        db: str, tmp_path: Path) -> None:
    mended = mend(db)
    tables = export_csv(db, tmp_path / "out")
    rows = {(r["subject"], int(r["position"])): r for r in tables["adverse_event.csv"]}
    voided = rows[("S-002", mended.ae)]
    assert voided["voided"] == "yes" and voided["corrected"] == "no"
    assert {code: voided[code] for code in AE_VALUES} == AE_VALUES  # the values it held
    assert (voided["study_event"], voided["recorded_on"]) == ("AE", "2025-05-02")
    assert len(rows) == 5  # the demo's four AEs and the voided one: the row stays
    others = [(name, r) for name, table in tables.items() for r in table
              if (name, r["subject"], int(r["position"])) != (
                  "adverse_event.csv", "S-002", mended.ae)]
    assert others and {r["voided"] for _, r in others} == {"no"}

    doses = {(r["subject"], int(r["position"])): r for r in tables["lymphodepletion.csv"]}
    dose = doses[("S-002", mended.dose)]
    assert (dose["fludarabine_mg"], dose["corrected"], dose["voided"]) == ("41.0", "yes", "no")
    assert [key for key, r in doses.items() if r["corrected"] == "yes"] == [
        ("S-002", mended.dose)]
    visits = {(r["subject"], int(r["position"])): r for r in tables["visit.csv"]}
    visit = visits[("S-002", mended.visit)]
    assert (visit["visit"], visit["visit_date"], visit["corrected"]) == (
        "D90", D90_CORRECTED, "yes")
    assert visit["recorded_on"] == D90_CORRECTED  # the clinical date follows the correction
    s1_d90 = next(r for r in visits.values() if (r["subject"], r["visit"]) == ("S-001", "D90"))
    assert s1_d90["corrected"] == "no" and s1_d90["recorded_on"] == s1_d90["visit_date"]


# --- FHIR ------------------------------------------------------------------------------------


def export_fhir(db: str, out: Path) -> dict[str, Any]:
    status, _, err = cli(db, "export", "fhir", "--out", str(out))
    assert status == 0, err
    text = out.read_text(encoding="utf-8")
    Bundle.model_validate_json(text)  # still an R5 Bundle
    bundle: dict[str, Any] = json.loads(text)
    return bundle


def adverse_event_positions(bundle: dict[str, Any]) -> list[str]:
    return [identifier["value"] for entry in bundle["entry"]
            if entry["resource"]["resourceType"] == "AdverseEvent"
            for identifier in entry["resource"]["identifier"]
            if identifier["system"].endswith(":position")]


def test_fhir_no_longer_holds_the_voided_adverse_event(db: str, tmp_path: Path) -> None:
    ae = record_ae(db)
    before = export_fhir(db, tmp_path / "before.json")
    assert str(ae) in adverse_event_positions(before)
    assert len(adverse_event_positions(before)) == 5
    (resource,) = [e["resource"] for e in before["entry"]
                   if e["resource"]["resourceType"] == "AdverseEvent"
                   and e["resource"]["code"]["text"] == "headache"]
    full_url = next(e["fullUrl"] for e in before["entry"] if e["resource"] is resource)

    mend(db, ae)
    after = export_fhir(db, tmp_path / "after.json")
    positions = adverse_event_positions(after)
    assert str(ae) not in positions and len(positions) == 4
    assert full_url not in {e["fullUrl"] for e in after["entry"]}
    assert full_url not in json.dumps(after)  # nothing refers to it either


# --- audit trail -----------------------------------------------------------------------------


def test_the_audit_trail_shows_the_void_with_its_reason(db: str) -> None:
    mended = mend(db)
    status, out, err = cli(db, "--json", "audit", "log", "S-002")
    assert status == 0, err
    entries = {e["position"]: e for e in json.loads(out)["events"]}
    void = entries[mended.void]
    assert (void["type"], void["reason"], void["actor"], void["role"]) == (
        T.RECORD_VOIDED, VOID_REASON, "cora", "coordinator")
    assert void["changes"] == [{"form": "adverse_event", "field": None, "old": None,
                                "new": "voided", "target_position": mended.ae}]
    assert void["payload"] == {"target_position": mended.ae, "form": "adverse_event"}
    dose = entries[mended.dose_correction]
    assert (dose["type"], dose["reason"]) == (T.FORM_CORRECTED, DOSE_REASON)
    assert dose["changes"] == [{"form": "lymphodepletion", "field": "fludarabine_mg",
                                "old": 40.5, "new": 41.0, "target_position": mended.dose}]
    visit = entries[mended.visit_correction]
    assert visit["changes"] == [{"form": "visit", "field": "visit_date", "old": D90_DONE,
                                 "new": D90_CORRECTED, "target_position": mended.visit}]

    status, out, err = cli(db, "audit", "log", "S-002")
    assert status == 0, err
    (line,) = [row for row in out.splitlines() if row.startswith(f"{mended.void} ")]
    assert f"RecordVoided of @{mended.ae}" in line and VOID_REASON in line, line
