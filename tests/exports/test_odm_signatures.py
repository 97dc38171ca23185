"""Electronic signatures in the ODM export: a Signature on the signed form, pointing at its
SignatureDef (meaning), still valid against the ODM 1.3.2 schema."""

from __future__ import annotations

import json
from pathlib import Path

from lxml import etree

from tests.exports.support import ODM_NS, cli, odm_schema_path, store_of
from workflow import event_types as T

NS = {"odm": ODM_NS}


def test_a_signed_form_carries_its_signature(db: str, tmp_path: Path) -> None:
    vitals = next(e for e in store_of(db).read_stream("S-001")
                  if e.type == T.FORM_RECORDED and e.payload["form"] == "vitals")
    status, _, err = cli(db, "sign", "S-001", str(vitals.position), "--meaning", "approved",
                         user="ivan")
    assert status == 0, err
    out = tmp_path / "signed.xml"
    status, _, err = cli(db, "export", "odm", "--out", str(out))
    assert status == 0, err
    document = etree.fromstring(out.read_bytes())
    schema = etree.XMLSchema(etree.parse(str(odm_schema_path())))
    assert schema.validate(document), schema.error_log
    definitions = document.findall(".//odm:AdminData/odm:SignatureDef", NS)
    assert sorted(d.get("OID") for d in definitions) == [
        "SD.approved", "SD.authored", "SD.reviewed"]
    signatures = document.findall(".//odm:Signature", NS)
    assert len(signatures) == 1
    form = signatures[0].getparent()
    assert (form.get("FormOID"), form.get("FormRepeatKey")) == ("F.vitals",
                                                                 str(vitals.position))
    assert signatures[0].find("odm:UserRef", NS).get("UserOID") == "U.ivan"
    assert signatures[0].find("odm:SignatureRef", NS).get("SignatureOID") == "SD.approved"
    signed = next(e for e in store_of(db).read_stream("S-001")
                  if e.type == T.SIGNATURE_RECORDED)
    assert signatures[0].find("odm:DateTimeStamp", NS).text == signed.recorded_at


def test_a_query_answered_with_a_correction_is_an_audited_update(db: str,
                                                                tmp_path: Path) -> None:
    vitals = next(e for e in store_of(db).read_stream("S-001")
                  if e.type == T.FORM_RECORDED and e.payload["form"] == "vitals")
    status, opened, err = cli(db, "--json", "query", "open", "S-001", str(vitals.position),
                              "--field", "weight_kg", "--text", "Source says 58.4 kg.",
                              user="mona")
    assert status == 0, err
    query_id = json.loads(opened)["query"]
    status, _, err = cli(db, "query", "answer", query_id, "--text", "Corrected.",
                         "weight_kg=58.4", user="cora")
    assert status == 0, err
    out = tmp_path / "queried.xml"
    assert cli(db, "export", "odm", "--out", str(out))[0] == 0
    document = etree.fromstring(out.read_bytes())
    schema = etree.XMLSchema(etree.parse(str(odm_schema_path())))
    assert schema.validate(document), schema.error_log
    form = next(f for f in document.findall(".//odm:FormData", NS)
                if f.get("FormRepeatKey") == str(vitals.position))
    updates = [i for i in form.findall(".//odm:ItemData", NS)
               if i.get("TransactionType") == "Update"]
    assert [(i.get("ItemOID"), i.get("Value")) for i in updates] == [("I.vitals.weight_kg",
                                                                      "58.4")]
    reason = updates[0].find("odm:AuditRecord/odm:ReasonForChange", NS).text
    assert query_id in reason


def test_a_signature_on_a_corrected_version_leaves_the_export(db: str, tmp_path: Path) -> None:
    """ODM carries one Signature per FormData, and it must sign what the FormData shows: a
    signature whose version was corrected afterwards is left out; one on the correction that
    is current is exported on the record's FormData."""
    vitals = next(e for e in store_of(db).read_stream("S-001")
                  if e.type == T.FORM_RECORDED and e.payload["form"] == "vitals")

    def exported() -> list[tuple[str | None, str | None]]:
        out = tmp_path / "odm.xml"
        assert cli(db, "export", "odm", "--out", str(out))[0] == 0
        document = etree.fromstring(out.read_bytes())
        schema = etree.XMLSchema(etree.parse(str(odm_schema_path())))
        assert schema.validate(document), schema.error_log
        return [(s.getparent().get("FormRepeatKey"),
                 s.find("odm:SignatureRef", NS).get("SignatureOID"))
                for s in document.findall(".//odm:Signature", NS)]

    assert cli(db, "sign", "S-001", str(vitals.position), "--meaning", "approved",
               user="ivan")[0] == 0
    assert exported() == [(str(vitals.position), "SD.approved")]
    status, _, err = cli(db, "correct", "S-001", str(vitals.position), "weight_kg=58.1",
                         "--reason", "Transcription error.", user="cora")
    assert status == 0, err
    assert exported() == []  # the approval signs the version before the correction
    correction = store_of(db).read_stream("S-001")[-1]
    assert correction.type == T.FORM_CORRECTED
    assert cli(db, "sign", "S-001", str(correction.position), "--meaning", "reviewed",
               user="ivan")[0] == 0
    assert exported() == [(str(vitals.position), "SD.reviewed")]
    status, _, err = cli(db, "correct", "S-001", str(vitals.position), "weight_kg=58.2",
                         "--reason", "Second transcription error.", user="cora")
    assert status == 0, err
    assert exported() == []  # the review signs the first correction, now superseded
