"""`trialflow export odm`: valid against the official ODM 1.3.2 schema, references that
resolve, counts taken from the log itself, and an audit trail that replays to the current
values."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from projections.exports.values import value_text
from tests.exports.support import CORRECTION_REASON, ODM_NS, cli, odm_schema_path, store_of
from workflow import event_types as T
from workflow.forms import FORMS, Kind
from workflow.protocol import default_protocol
from workflow.subject import fold_subject

NS = {"odm": ODM_NS}
# the lexical forms of XML Schema's decimal, integer, date and dateTime (with an offset)
TYPE_PATTERNS = {
    "float": r"-?\d+(\.\d+)?", "integer": r"-?\d+", "date": r"\d{4}-\d{2}-\d{2}",
    "datetime": r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})",
}
PHASE_FORMS = {T.SUBJECT_CONSENTED: "consent", T.LEUKAPHERESIS_RECORDED: "leukapheresis",
               T.PRODUCT_RELEASED: "product_release", T.LYMPHODEPLETION_GIVEN: "lymphodepletion",
               T.INFUSION_GIVEN: "infusion", T.VISIT_RECORDED: "visit"}


@pytest.fixture(scope="module")
def schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(odm_schema_path())))


def export(db: str, tmp_path: Path, name: str = "study.xml") -> etree._Element:
    out = tmp_path / name
    status, _, err = cli(db, "export", "odm", "--out", str(out))
    assert status == 0, err
    return etree.fromstring(out.read_bytes())


def expected_from_log(db: str) -> dict[str, Any]:
    """What the document must hold, counted from the stored events (not from the builder)."""
    items = updates = 0
    subjects = set()
    for event in store_of(db).read_all():
        payload = event.payload
        if event.type == T.FORM_RECORDED:
            items += sum(1 for value in payload["values"].values() if value is not None)
        elif event.type in PHASE_FORMS:
            fields = FORMS[PHASE_FORMS[event.type]].field_codes
            if event.type == T.LYMPHODEPLETION_GIVEN:  # schema version 2: the mg of each drug
                doses = payload["doses"].items()
                payload = {"given_on": payload["given_on"],
                           **{f"{drug}_mg": dose["given"]["value"] for drug, dose in doses}}
            items += sum(1 for k, v in payload.items() if k in fields and v is not None)
            if event.type == T.PRODUCT_RELEASED:
                items += 1  # released_on: the release's clinical date (its occurred_at)
            subjects.add(event.stream_id)
        elif event.type == T.FORM_CORRECTED:
            updates += len(payload["changes"])
    return {"subjects": subjects, "items": items + updates, "updates": updates}


def test_valid_against_the_odm_132_schema_with_the_log_counts(
        db: str, tmp_path: Path, schema: etree.XMLSchema) -> None:
    document = export(db, tmp_path)
    assert schema.validate(document), schema.error_log
    expected = expected_from_log(db)

    subjects = document.findall("odm:ClinicalData/odm:SubjectData", NS)
    assert {s.get("SubjectKey") for s in subjects} == expected["subjects"] == {"S-001", "S-002"}
    items = document.findall(".//odm:ItemData", NS)
    assert len(items) == expected["items"]
    # ODM's audit trail: every value carries the AuditRecord of the write that set it
    audits = document.findall(".//odm:ItemData/odm:AuditRecord", NS)
    assert len(audits) == len(items) == len(document.findall(".//odm:AuditRecord", NS))
    updates = [i for i in items if i.get("TransactionType") == "Update"]
    assert len(updates) == expected["updates"] == 2  # one correction per subject
    reasons = document.findall(".//odm:ReasonForChange", NS)
    assert [r.text for r in reasons] == [CORRECTION_REASON] * 2
    assert all(u.find("odm:AuditRecord/odm:ReasonForChange", NS) is not None for u in updates)
    assert document.get("ODMVersion") == "1.3.2"
    assert document.get("FileType") == "Transactional"

    # the schema does reject a broken document (the check above can fail)
    broken = etree.fromstring(etree.tostring(document))
    del broken.find(".//odm:ItemData", NS).attrib["ItemOID"]
    assert not schema.validate(broken)


def test_the_correction_is_an_update_after_the_original_with_its_audit_record(
        db: str, tmp_path: Path) -> None:
    document = export(db, tmp_path)
    hypoxia = [i for i in document.iterfind(".//odm:ItemData", NS)
               if i.get("ItemOID") == "I.adverse_event.hypoxia"]
    assert [(i.get("TransactionType"), i.get("Value")) for i in hypoxia] == [
        ("Insert", "none"), ("Update", "low_flow")] * 2
    original, correction = hypoxia[0].find("odm:AuditRecord", NS), hypoxia[1].find(
        "odm:AuditRecord", NS)
    assert original.find("odm:ReasonForChange", NS) is None
    assert correction.find("odm:UserRef", NS).get("UserOID") == "U.cora"
    assert correction.find("odm:LocationRef", NS).get("LocationOID") == "L.PKU3"
    stamps = [a.find("odm:DateTimeStamp", NS).text for a in (original, correction)]
    assert stamps[0] < stamps[1]
    corrections = [e for e in store_of(db).read_all() if e.type == T.FORM_CORRECTED]
    assert stamps[1] == corrections[0].recorded_at
    assert correction.find("odm:SourceID", NS).text.endswith(f" {corrections[0].position}")


def test_every_reference_resolves_to_a_definition(db: str, tmp_path: Path) -> None:
    document = export(db, tmp_path)
    mdv = document.find("odm:Study/odm:MetaDataVersion", NS)

    def defined(tag: str) -> dict[str, etree._Element]:
        return {e.get("OID"): e for e in mdv.findall(f"odm:{tag}", NS)}

    events, forms, groups = defined("StudyEventDef"), defined("FormDef"), defined("ItemGroupDef")
    items, code_lists = defined("ItemDef"), defined("CodeList")
    units = {e.get("OID") for e in document.findall(".//odm:MeasurementUnit", NS)}
    users = {e.get("OID") for e in document.findall("odm:AdminData/odm:User", NS)}
    locations = {e.get("OID") for e in document.findall("odm:AdminData/odm:Location", NS)}
    assert {r.get("StudyEventOID") for r in mdv.findall("odm:Protocol/odm:StudyEventRef", NS)
            } == set(events)
    for item in items.values():
        for ref in item.findall("odm:MeasurementUnitRef", NS):
            assert ref.get("MeasurementUnitOID") in units
    for ref in document.iter(f"{{{ODM_NS}}}UserRef"):
        assert ref.get("UserOID") in users
    for ref in document.iter(f"{{{ODM_NS}}}LocationRef"):
        assert ref.get("LocationOID") in locations
    for ref in document.iter(f"{{{ODM_NS}}}SiteRef"):
        assert ref.get("LocationOID") in locations

    checked = 0
    for event_data in document.iterfind(".//odm:StudyEventData", NS):
        event_def = events[event_data.get("StudyEventOID")]
        allowed_forms = {r.get("FormOID") for r in event_def.findall("odm:FormRef", NS)}
        for form_data in event_data.findall("odm:FormData", NS):
            assert form_data.get("FormOID") in allowed_forms
            form_def = forms[form_data.get("FormOID")]
            allowed_groups = {r.get("ItemGroupOID")
                              for r in form_def.findall("odm:ItemGroupRef", NS)}
            for group_data in form_data.findall("odm:ItemGroupData", NS):
                assert group_data.get("ItemGroupOID") in allowed_groups
                group_def = groups[group_data.get("ItemGroupOID")]
                allowed_items = {r.get("ItemOID") for r in group_def.findall("odm:ItemRef", NS)}
                for item_data in group_data.findall("odm:ItemData", NS):
                    assert item_data.get("ItemOID") in allowed_items
                    item_def = items[item_data.get("ItemOID")]
                    pattern = TYPE_PATTERNS.get(item_def.get("DataType"))
                    if pattern is not None:
                        assert re.fullmatch(pattern, item_data.get("Value")), item_data.attrib
                    code_list_ref = item_def.find("odm:CodeListRef", NS)
                    if code_list_ref is not None:
                        codes = {c.get("CodedValue") for c in code_lists[
                            code_list_ref.get("CodeListOID")].findall("odm:CodeListItem", NS)}
                        assert item_data.get("Value") in codes
                    checked += 1
    assert checked == len(document.findall(".//odm:ItemData", NS)) > 0


def test_metadata_follows_the_forms_and_the_protocol(db: str, tmp_path: Path) -> None:
    document = export(db, tmp_path)
    mdv = document.find("odm:Study/odm:MetaDataVersion", NS)
    protocol = default_protocol()
    event_oids = [e.get("OID") for e in mdv.findall("odm:StudyEventDef", NS)]
    assert event_oids == ["SE.SCREENING", "SE.CELL_COLLECTION", "SE.LYMPHODEPLETION", "SE.D0",
                          *(f"SE.{code}" for code in protocol.visit_codes), "SE.UNSCHEDULED",
                          "SE.AE"]
    assert [f.get("Name") for f in mdv.findall("odm:FormDef", NS)] == list(FORMS)
    item_defs = {i.get("OID"): i for i in mdv.findall("odm:ItemDef", NS)}
    assert len(item_defs) == sum(len(spec.fields) for spec in FORMS.values())
    expected_types = {Kind.DATE: "date", Kind.DATETIME: "datetime", Kind.DECIMAL: "float",
                      Kind.INTEGER: "integer", Kind.TEXT: "text", Kind.ENUM: "text"}
    for spec in FORMS.values():
        for field in spec.fields:
            item = item_defs[f"I.{spec.code}.{field.code}"]
            if field.kind in expected_types:
                assert item.get("DataType") == expected_types[field.kind], item.get("OID")
            has_codes = item.find("odm:CodeListRef", NS) is not None
            assert has_codes == (field.kind in (Kind.ENUM, Kind.YES_NO, Kind.FLAG))
    d90 = next(e for e in mdv.findall("odm:StudyEventDef", NS) if e.get("OID") == "SE.D90")
    mandatory = {r.get("FormOID") for r in d90.findall("odm:FormRef", NS)
                 if r.get("Mandatory") == "Yes"}
    assert mandatory == {"F.visit", *(f"F.{f}" for f in protocol.visit("D90").required_forms)}
    weight = item_defs["I.vitals.weight_kg"].find("odm:MeasurementUnitRef", NS)
    assert weight is not None and weight.get("MeasurementUnitOID") == "MU.kg"


def test_replaying_the_item_data_gives_the_current_values(db: str, tmp_path: Path) -> None:
    document = export(db, tmp_path)
    store = store_of(db)
    for subject_data in document.findall("odm:ClinicalData/odm:SubjectData", NS):
        subject = subject_data.get("SubjectKey")
        state = fold_subject(subject, store.read_stream(subject))
        replayed: dict[int, dict[str, str]] = {}
        event_of: Counter[str] = Counter()
        for event_data in subject_data.findall("odm:StudyEventData", NS):
            for form_data in event_data.findall("odm:FormData", NS):
                values = replayed.setdefault(int(form_data.get("FormRepeatKey")), {})
                event_of[event_data.get("StudyEventOID")] += 1
                for item in form_data.iterfind(".//odm:ItemData", NS):
                    values[item.get("ItemOID").rsplit(".", 1)[1]] = item.get("Value")
        assert state.forms, subject
        for position, form in state.forms.items():  # every FormRecorded, corrections applied
            assert replayed[position] == {k: value_text(v) for k, v in form.values.items()}
        assert event_of["SE.SCREENING"] == 14  # consent and 13 screening forms
        assert event_of["SE.AE"] == 4  # two AEs, a causality, an SAE report
        assert event_of["SE.LYMPHODEPLETION"] == 3
