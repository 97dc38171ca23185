"""`trialflow export fhir`: an R5 Bundle the `fhir.resources` R5 models parse, with counts from
the log, pseudonymised patients, phases as progress, AEs with grade and causality, SLEDAI-2K."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import fhir.resources
import pytest
from fhir.resources.bundle import Bundle

from tests.exports.support import cli, store_of
from tests.support.clock import FakeClock
from tests.support.study import new_study
from workflow import event_types as T

HL7_STATES = {"candidate", "eligible", "follow-up", "ineligible", "not-registered", "off-study",
              "on-study", "on-study-intervention", "on-study-observation", "pending-on-study",
              "potential-candidate", "screening", "withdrawn"}


def export(db: str, tmp_path: Path) -> dict[str, Any]:
    out = tmp_path / "bundle.json"
    status, _, err = cli(db, "export", "fhir", "--out", str(out))
    assert status == 0, err
    text = out.read_text(encoding="utf-8")
    Bundle.model_validate_json(text)  # raises on anything R5 does not allow
    document: dict[str, Any] = json.loads(text)
    return document


def resources(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def test_the_models_are_r5() -> None:
    assert fhir.resources.__fhir_version__.startswith("5.")


def test_bundle_parses_as_r5_with_the_log_counts(db: str, tmp_path: Path) -> None:
    bundle = export(db, tmp_path)
    events = list(store_of(db).read_all())
    forms = [e.payload["form"] for e in events if e.type == T.FORM_RECORDED]
    assert bundle["type"] == "collection"
    assert bundle["timestamp"] == events[-1].recorded_at
    assert len(resources(bundle, "ResearchStudy")) == 1
    assert len(resources(bundle, "Patient")) == 2
    assert len(resources(bundle, "ResearchSubject")) == 2
    assert len(resources(bundle, "AdverseEvent")) == forms.count("adverse_event") == 4
    assert len(resources(bundle, "Observation")) == forms.count("disease_activity") == 26
    full_urls = [e["fullUrl"] for e in bundle["entry"]]
    assert len(set(full_urls)) == len(full_urls)
    references = {value for entry in bundle["entry"] for value in _references(entry)}
    assert references and references <= set(full_urls)


def _references(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["reference"]] if isinstance(node.get("reference"), str) else []
        return found + [r for value in node.values() for r in _references(value)]
    if isinstance(node, list):
        return [r for value in node for r in _references(value)]
    return []


def test_study_subjects_and_pseudonymised_patients(db: str, tmp_path: Path) -> None:
    bundle = export(db, tmp_path)
    study = resources(bundle, "ResearchStudy")[0]
    assert study["identifier"][0]["value"] == "NCT06513429"
    assert study["title"] == "IM19 CAR-T cells in refractory systemic lupus erythematosus"
    assert study["recruitment"] == {"targetNumber": 6, "actualNumber": 2}

    patients = resources(bundle, "Patient")
    for patient, subject in zip(patients, ("S-001", "S-002"), strict=True):
        assert "name" not in patient
        digest = hashlib.sha256(f"NCT06513429/{subject}".encode()).hexdigest()
        assert [i["value"] for i in patient["identifier"]] == [digest]
        assert subject not in json.dumps(patient)
        assert patient["birthDate"] == "1990"  # the year only (born 1990-05-01)
        assert patient["gender"] == "female"

    subject = resources(bundle, "ResearchSubject")[0]
    assert subject["identifier"][0]["value"] == "S-001"
    states = [(p["subjectState"]["coding"][0]["code"], p["subjectState"]["text"], p["startDate"],
               p.get("endDate")) for p in subject["progress"]]
    assert states == [
        ("screening", "screening", "2025-01-06", "2025-01-09"),
        ("on-study", "cell_collection", "2025-01-09", "2025-01-26"),
        ("on-study-intervention", "lymphodepletion", "2025-01-26", "2025-02-02"),
        ("on-study-intervention", "infusion", "2025-02-02", "2025-02-05"),
        ("on-study-observation", "follow_up", "2025-02-05", "2026-01-31"),
        ("off-study", "completed", "2026-01-31", None),
    ]
    assert {p["subjectState"]["coding"][0]["code"] for p in subject["progress"]} <= HL7_STATES
    assert subject["period"] == {"start": "2025-01-06", "end": "2026-01-31"}
    patient_urls = {e["fullUrl"] for e in bundle["entry"]
                    if e["resource"]["resourceType"] == "Patient"}
    assert subject["subject"]["reference"] in patient_urls


def test_adverse_events_carry_seriousness_grade_and_causality(db: str, tmp_path: Path) -> None:
    bundle = export(db, tmp_path)
    crs, infection = resources(bundle, "AdverseEvent")[:2]
    assert crs["code"]["text"] == "cytokine release syndrome"
    assert crs["occurrenceDateTime"] == "2025-02-06"
    assert crs["seriousness"]["coding"][0]["code"] == "serious"
    assert "hospitalisation" in crs["seriousness"]["text"]
    grade = crs["extension"][0]
    assert grade["url"] == "http://hl7.org/fhir/uv/ae-research-ig/StructureDefinition/ae-grade"
    assert grade["valueCodeableConcept"]["coding"][0]["code"] == "C41339"  # CTCAE grade 2
    causality = crs["suspectEntity"][0]["causality"]
    assert causality["entityRelatedness"]["coding"][0]["code"] == "probable"
    assert crs["expectedInResearchStudy"] is True
    assert infection["seriousness"]["coding"][0]["code"] == "non-serious"
    assert infection["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] == "C41338"
    assert "causality" not in infection["suspectEntity"][0]  # never assessed


def test_sledai2k_observations_have_date_and_score(db: str, tmp_path: Path) -> None:
    bundle = export(db, tmp_path)
    observations = resources(bundle, "Observation")[:13]  # S-001
    first, d1, d360 = observations[0], observations[1], observations[-1]
    # screening: arthritis 4 + proteinuria 4 + low complement 2 + increased DNA binding 2
    assert (first["effectiveDateTime"], first["valueInteger"]) == ("2025-01-06", 12)
    assert (d1["effectiveDateTime"], d1["valueInteger"]) == ("2025-02-06", 8)
    assert d1["note"] == [{"text": "visit D1"}]
    assert (d360["effectiveDateTime"], d360["valueInteger"]) == ("2026-01-31", 0)
    assert {o["status"] for o in observations} == {"final"}


def test_an_empty_study_gives_a_valid_bundle(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    new_study(url, FakeClock()).store.engine.dispose()
    bundle = export(url, tmp_path)
    assert [e["resource"]["resourceType"] for e in bundle["entry"]] == ["ResearchStudy"]
    assert bundle["entry"][0]["resource"]["recruitment"]["actualNumber"] == 0


def test_a_broken_bundle_is_refused_by_the_models(db: str, tmp_path: Path) -> None:
    bundle = export(db, tmp_path)
    event = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "AdverseEvent")
    del event["resource"]["subject"]  # required in R5
    with pytest.raises(ValueError):
        Bundle.model_validate(bundle)
