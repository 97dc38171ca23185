"""Electronic signatures in the ODM export: a Signature on the signed form, pointing at its
SignatureDef (meaning), still valid against the ODM 1.3.2 schema."""

from __future__ import annotations

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
