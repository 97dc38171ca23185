"""FHIR R5 export: one Bundle of type `collection` (JSON).

Entries, in this order: the ResearchStudy; then per subject (by subject id) its Patient,
its ResearchSubject, an AdverseEvent per `adverse_event` form and an Observation per
SLEDAI-2K assessment (`disease_activity` form), each by log position. Every entry's `fullUrl`
is a `urn:uuid:` derived (UUID 5) from the registry id and what the resource stands for, the
resource's `id` is the same UUID, and references point at those URNs, so the Bundle resolves
on its own and the same log gives the same bytes.

- ResearchStudy: identifier (the ClinicalTrials.gov number), title, protocol version in force,
  status `active`, recruitment target (the enrolment cap) and actual number (places taken).
- Patient (pseudonymised): no name, no other identifier than SHA-256(`registry/subject`);
  `meta.security` PSEUDED; sex from `demographics` (`gender`); the birth year only (not the
  date), left out for a subject 90 or older at consent (HIPAA Safe Harbor counts ages over 89
  as identifying). The subject id is itself the study's pseudonymous code; it appears on the
  ResearchSubject, where the study needs it, not on the Patient.
- ResearchSubject: identifier = the subject id, `period` from consent to completion or exit,
  one `progress` entry per phase (HL7 research-subject-state code, trialflow's phase as
  the text, start and end dates, the reason of an exit), the study and the Patient.
- AdverseEvent: term (`code.text`), category, onset (`occurrenceDateTime`), awareness
  (`detected`), when it was recorded (`recordedDate`, the log's recorded_at), seriousness
  (HL7 adverse-event-seriousness, the ICH E2A criteria in the text), the CTCAE grade in the
  HL7 AE Clinical Research IG `ae-grade` extension (NCI Thesaurus codes), expectedness,
  outcome, status (`completed` once resolved, recovered or fatal) and the investigator's
  causality on the suspect entity (IM19 CAR-T cells); an unassessed AE has no causality.
- Observation: the SLEDAI-2K total (`valueInteger`) on the assessment's date
  (`effectiveDateTime`), status `amended` when its form was corrected, the visit in a note.

Codes of trialflow's own lists use `urn:trialflow:…` systems (docs/exports.md).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from datetime import date
from typing import Any, Final

from events.envelope import RecordedEvent
from projections.exports.snapshot import Snapshot
from projections.progress import Progress, ticker
from workflow.eligibility import form_date
from workflow.form_places import phase_marks
from workflow.instruments.codes import SLEDAI2K_DESCRIPTORS
from workflow.instruments.sledai2k import sledai2k_score
from workflow.protocol import Protocol
from workflow.safety import adverse_events
from workflow.subject import SubjectState

NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "urn:trialflow:fhir-export")
STATE_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/research-subject-state"
SERIOUSNESS_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/adverse-event-seriousness"
AE_GRADE_URL: Final = "http://hl7.org/fhir/uv/ae-research-ig/StructureDefinition/ae-grade"
NCIT: Final = "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl"
OBSERVATION_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/observation-category"
SECURITY_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
CLINICALTRIALS_GOV: Final = "https://clinicaltrials.gov"
PRODUCT: Final = "IM19 CAR-T cells"
OLDEST_AGE_SHOWN: Final = 89  # HIPAA Safe Harbor: ages over 89 are identifying

# trialflow phase -> HL7 research-subject-state (code, display)
PHASE_STATES: Final[dict[str, tuple[str, str]]] = {
    "screening": ("screening", "Screening"),
    "cell_collection": ("on-study", "On-study"),
    "lymphodepletion": ("on-study-intervention", "On-study-intervention"),
    "infusion": ("on-study-intervention", "On-study-intervention"),
    "follow_up": ("on-study-observation", "On-study-observation"),
    "completed": ("off-study", "Off-study"),
    "screen_failed": ("ineligible", "Ineligible"),
    "off_study": ("off-study", "Off-study"),
}
WITHDRAWN: Final = ("withdrawn", "Withdrawn")
TERMINAL: Final = frozenset({"completed", "screen_failed", "off_study"})
# CTCAE v5.0 grade -> NCI Thesaurus concept (HL7 adverse-event-clinical-research-grades)
CTCAE_GRADES: Final[dict[int, tuple[str, str]]] = {
    1: ("C41338", "Grade 1 Mild Adverse Event"),
    2: ("C41339", "Grade 2 Moderate Adverse Event"),
    3: ("C41340", "Grade 3 Severe Adverse Event"),
    4: ("C41337", "Grade 4 Life Threatening or Disabling Adverse Event"),
    5: ("C48275", "Grade 5 Death Related to Adverse Event"),
}
FINISHED_OUTCOMES: Final = frozenset({"recovered", "recovered_with_sequelae", "fatal"})


def pseudonym(registry_id: str, subject: str) -> str:
    """The Patient's identifier: SHA-256 (hex) of `registry/subject`."""
    return hashlib.sha256(f"{registry_id}/{subject}".encode()).hexdigest()


class _Ids:
    """Deterministic resource ids (UUID 5 of the registry id and a key) and references."""

    def __init__(self, registry_id: str) -> None:
        self.registry_id = registry_id

    def id(self, kind: str, key: str) -> str:
        return str(uuid.uuid5(NAMESPACE, f"{self.registry_id}/{kind}/{key}"))

    def ref(self, kind: str, key: str) -> dict[str, str]:
        return {"reference": f"urn:uuid:{self.id(kind, key)}"}


def _system(name: str, registry_id: str) -> str:
    return f"urn:trialflow:{registry_id}:{name}"


def _concept(system: str, code: str, display: str | None = None,
             text: str | None = None) -> dict[str, Any]:
    coding: dict[str, Any] = {"system": system, "code": code}
    if display is not None:
        coding["display"] = display
    concept: dict[str, Any] = {"coding": [coding]}
    if text is not None:
        concept["text"] = text
    return concept


def _entry(ids: _Ids, kind: str, key: str, resource: dict[str, Any]) -> dict[str, Any]:
    resource_id = ids.id(kind, key)
    return {"fullUrl": f"urn:uuid:{resource_id}",
            "resource": {"resourceType": kind, "id": resource_id, **resource}}


# --- study and subjects -------------------------------------------------------------------


def _research_study(snapshot: Snapshot, ids: _Ids) -> dict[str, Any]:
    protocol = snapshot.protocol
    return _entry(ids, "ResearchStudy", "study", {
        "identifier": [{"system": CLINICALTRIALS_GOV, "value": protocol.registry_id}],
        "version": str(protocol.version),
        "title": protocol.title,
        "status": "active",
        "recruitment": {"targetNumber": protocol.enrolment_cap,
                        "actualNumber": len(snapshot.study.taken_places())},
    })


def _birth_year(state: SubjectState) -> str | None:
    born = state.latest_value("demographics", "date_of_birth")
    if not isinstance(born, str) or state.consent is None:
        return None
    birth = date.fromisoformat(born)
    consented = state.consent.consent_date
    age = consented.year - birth.year - ((consented.month, consented.day)
                                         < (birth.month, birth.day))
    return None if age > OLDEST_AGE_SHOWN else f"{birth.year:04d}"


def _patient(snapshot: Snapshot, ids: _Ids, state: SubjectState) -> dict[str, Any]:
    registry = snapshot.registry_id
    resource: dict[str, Any] = {
        "meta": {"security": [{"system": SECURITY_SYSTEM, "code": "PSEUDED",
                               "display": "pseudonymized"}]},
        "identifier": [{"system": _system("pseudonym", registry),
                        "value": pseudonym(registry, state.subject)}],
    }
    sex = state.latest_value("demographics", "sex")
    if sex in ("female", "male"):
        resource["gender"] = sex
    year = _birth_year(state)
    if year is not None:
        resource["birthDate"] = year
    return _entry(ids, "Patient", state.subject, resource)


def phase_history(state: SubjectState, protocol: Protocol
                  ) -> list[tuple[str, date, str | None]]:
    """(phase, first day, exit reason) for each phase the subject has been in, in order, from
    the clinical dates of its records as they stand (corrections and voids applied)."""
    return [(phase, on, state.exit_reason if phase in ("screen_failed", "off_study") else None)
            for phase, on in phase_marks(state, protocol)]


def _progress(history: list[tuple[str, date, str | None]]) -> list[dict[str, Any]]:
    progress = []
    for index, (phase, start, reason) in enumerate(history):
        code, display = PHASE_STATES.get(phase, ("off-study", "Off-study"))
        if phase == "off_study" and reason == "consent_withdrawn":
            code, display = WITHDRAWN
        entry: dict[str, Any] = {
            "subjectState": _concept(STATE_SYSTEM, code, display, phase),
            "startDate": start.isoformat(),
        }
        if index + 1 < len(history) and phase not in TERMINAL:
            entry["endDate"] = history[index + 1][1].isoformat()
        if reason is not None:
            entry["reason"] = {"text": reason}
        progress.append(entry)
    return progress


def _research_subject(snapshot: Snapshot, ids: _Ids, state: SubjectState) -> dict[str, Any]:
    history = phase_history(state, snapshot.study.protocol_of(state.protocol_version))
    period = {"start": history[0][1].isoformat()}
    if history[-1][0] in TERMINAL:
        period["end"] = history[-1][1].isoformat()
    return _entry(ids, "ResearchSubject", state.subject, {
        "identifier": [{"system": _system("subject", snapshot.registry_id),
                        "value": state.subject}],
        "status": "active",
        "progress": _progress(history),
        "period": period,
        "study": ids.ref("ResearchStudy", "study"),
        "subject": ids.ref("Patient", state.subject),
    })


# --- adverse events and SLEDAI-2K ---------------------------------------------------------


def _seriousness(row: Mapping[str, Any]) -> dict[str, Any]:
    if row["serious"]:
        criteria = ", ".join(row["serious_criteria"])
        return _concept(SERIOUSNESS_SYSTEM, "serious", "Serious",
                        f"serious (ICH E2A): {criteria}")
    return _concept(SERIOUSNESS_SYSTEM, "non-serious", "Non-serious", "non-serious")


def _adverse_event(snapshot: Snapshot, ids: _Ids, state: SubjectState, row: Mapping[str, Any],
                   recorded: Mapping[int, RecordedEvent]) -> dict[str, Any]:
    registry = snapshot.registry_id
    position = int(row["position"])
    resource: dict[str, Any] = {}
    grade = row.get("grade")
    if isinstance(grade, int) and grade in CTCAE_GRADES:
        code, display = CTCAE_GRADES[grade]
        resource["extension"] = [{"url": AE_GRADE_URL, "valueCodeableConcept": _concept(
            NCIT, code, display, f"CTCAE v5.0 grade {grade}")}]
    resource["identifier"] = [{"system": _system("position", registry), "value": str(position)}]
    finished = row.get("resolved_on") is not None or row.get("outcome") in FINISHED_OUTCOMES
    resource["status"] = "completed" if finished else "in-progress"
    resource["actuality"] = "actual"
    if row.get("category"):
        resource["category"] = [_concept(_system("ae-category", registry), row["category"],
                                         text=row["category"])]
    resource["code"] = {"text": row["term"]}
    resource["subject"] = ids.ref("Patient", state.subject)
    resource["occurrenceDateTime"] = row["onset_date"]
    if row.get("awareness_at"):
        resource["detected"] = row["awareness_at"]
    resource["recordedDate"] = recorded[position].recorded_at
    resource["seriousness"] = _seriousness(row)
    if row.get("outcome"):
        resource["outcome"] = [_concept(_system("ae-outcome", registry), row["outcome"],
                                        text=row["outcome"])]
    resource["study"] = [ids.ref("ResearchStudy", "study")]
    if row.get("expected") is not None:
        resource["expectedInResearchStudy"] = bool(row["expected"])
    suspect: dict[str, Any] = {"instanceCodeableConcept": {"text": PRODUCT}}
    if row["relatedness"] != "unassessed":
        suspect["causality"] = {
            "assessmentMethod": {"text": "investigator assessment (causality form)"},
            "entityRelatedness": _concept(_system("relatedness", registry),
                                          row["relatedness"], text=row["relatedness"]),
        }
    resource["suspectEntity"] = [suspect]
    return _entry(ids, "AdverseEvent", f"{state.subject}/{position}", resource)


def _sledai_observations(snapshot: Snapshot, ids: _Ids, state: SubjectState
                         ) -> list[dict[str, Any]]:
    registry = snapshot.registry_id
    entries = []
    for form in sorted(state.forms_of("disease_activity"), key=lambda f: f.position):
        present = [code for code in SLEDAI2K_DESCRIPTORS if form.get(code) is True]
        score = sledai2k_score(present).score
        resource: dict[str, Any] = {
            "identifier": [{"system": _system("position", registry),
                            "value": str(form.position)}],
            "status": "amended" if form.corrected_by else "final",
            "category": [_concept(OBSERVATION_CATEGORY, "survey", "Survey")],
            "code": _concept(_system("instrument", registry), "sledai2k",
                             "SLEDAI-2K total score", "SLEDAI-2K"),
            "subject": ids.ref("Patient", state.subject),
            "effectiveDateTime": form_date(form).isoformat(),
            "valueInteger": score,
        }
        if form.visit:
            resource["note"] = [{"text": f"visit {form.visit}"}]
        entries.append(_entry(ids, "Observation", f"{state.subject}/{form.position}",
                              resource))
    return entries


# --- the bundle ---------------------------------------------------------------------------


def build_bundle(snapshot: Snapshot, progress: Progress | None = None) -> dict[str, Any]:
    """The Bundle as a JSON-ready dict (`progress`: per subject)."""
    tick = ticker(progress, len(snapshot.subjects))
    ids = _Ids(snapshot.registry_id)
    entries = [_research_study(snapshot, ids)]
    for subject, state in snapshot.subjects.items():
        protocol = snapshot.study.protocol_of(state.protocol_version)
        recorded = {event.position: event for event in snapshot.streams[subject]}
        entries.append(_patient(snapshot, ids, state))
        entries.append(_research_subject(snapshot, ids, state))
        entries.extend(_adverse_event(snapshot, ids, state, row, recorded)
                       for row in adverse_events(state, protocol))
        entries.extend(_sledai_observations(snapshot, ids, state))
        tick("FHIR: resources (subjects)")
    return {
        "resourceType": "Bundle",
        "id": ids.id("Bundle", f"position-{snapshot.position}"),
        "identifier": {"system": _system("export", snapshot.registry_id),
                       "value": f"position-{snapshot.position}"},
        "type": "collection",
        "timestamp": snapshot.as_of,
        "entry": entries,
    }


def build_fhir(snapshot: Snapshot, progress: Progress | None = None) -> bytes:
    """The Bundle as UTF-8 JSON, indented, ending in a newline."""
    text = json.dumps(build_bundle(snapshot, progress), indent=2, ensure_ascii=False,
                      allow_nan=False)
    return (text + "\n").encode("utf-8")
