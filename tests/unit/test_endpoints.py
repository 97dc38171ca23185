"""Efficacy endpoints of one subject, from SubjectState and RecordedForm objects (no database)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import date, timedelta
from typing import Any

import pytest

from events.envelope import RecordedEvent
from workflow import event_types as T
from workflow.endpoints import LLDAS_INPUTS, glucocorticoid_dose_on, subject_endpoints
from workflow.instruments.codes import SLEDAI2K_DESCRIPTORS
from workflow.protocol import builtin_protocol, default_protocol
from workflow.records import Consent, RecordedForm
from workflow.subject import SubjectState, apply_subject

PROTOCOL = default_protocol()  # version 2: LLDAS at D180 and D360
SUBJECT = "S-001"
CONSENT_ON = date(2025, 1, 6)
D0 = date(2025, 2, 3)

# SLEDAI-2K descriptor sets and their scores (Gladman 2002 weights).
SCORE_12 = {"arthritis": True, "proteinuria": True, "rash": True, "low_complement": True}
SCORE_9 = {"arthritis": True, "proteinuria": True, "fever": True}
SCORE_8 = {"arthritis": True, "proteinuria": True}
SCORE_2 = {"rash": True}
LLDAS_OK = {"pga": 1.0, "new_activity": False, "maintenance_tolerated": True,
            "hemolytic_anemia": False, "gi_activity": False}


def day(n: int) -> date:
    return D0 + timedelta(days=n)


def rec(position: int, form: str, on: date, *, visit: str | None = None,
        corrected_by: tuple[int, ...] = (), **values: Any) -> RecordedForm:
    return RecordedForm(position, SUBJECT, form, values, on, visit, corrected_by)


def activity(position: int, on: date, descriptors: dict[str, bool], **values: Any) -> RecordedForm:
    """A disease_activity form as forms.py stores it: every descriptor flag given, absent = no."""
    flags = {code: descriptors.get(code, False) for code in SLEDAI2K_DESCRIPTORS}
    merged: dict[str, Any] = {**flags, **values}  # visit= and corrected_by= pass through
    return rec(position, "disease_activity", on, **merged)


def subject(*forms: RecordedForm, infused: bool = True, consented: bool = True,
            lymphodepletion: tuple[date, ...] = ()) -> SubjectState:
    s = SubjectState(SUBJECT)
    if consented:
        s.consent = Consent(SUBJECT, CONSENT_ON, "ICF-2.0", 2, position=1)
        s.phase = "follow_up" if infused else "screening"
    s.infused_on = D0 if infused else None
    s.lymphodepletion_days = list(lymphodepletion)
    s.forms = {form.position: form for form in forms}
    return s


def endpoints(*forms: RecordedForm, protocol: Any = PROTOCOL, **options: Any) -> dict[str, Any]:
    return subject_endpoints(subject(*forms, **options), protocol)


def null_paths(document: dict[str, Any]) -> set[str]:
    sections = ("sledai2k", "lldas", "renal_response", "persistence")
    return {f"{name}.{key}" for name in sections for key, value in document[name].items()
            if value is None}


# --- baseline -----------------------------------------------------------------------------


def test_baseline_is_the_latest_assessment_from_consent_to_d0() -> None:
    doc = endpoints(activity(2, day(-20), SCORE_12), activity(3, day(0), SCORE_9),
                    activity(4, day(1), SCORE_2))
    assert doc["sledai2k"]["baseline"] == 9
    assert doc["evidence"]["sledai2k.baseline"] == [3]


def test_baseline_ignores_an_assessment_before_consent_and_takes_one_on_consent_day() -> None:
    before = activity(2, CONSENT_ON - timedelta(days=1), SCORE_12)
    assert endpoints(before)["sledai2k"]["baseline"] is None
    assert "from consent on 2025-01-06" in endpoints(before)["missing"]["sledai2k.baseline"]
    assert endpoints(before, activity(3, CONSENT_ON, SCORE_8))["sledai2k"]["baseline"] == 8


def test_baseline_on_one_date_takes_the_later_position() -> None:
    doc = endpoints(activity(7, day(-10), SCORE_8), activity(5, day(-10), SCORE_12))
    assert doc["sledai2k"]["baseline"] == 8
    assert doc["evidence"]["sledai2k.baseline"] == [7]


def test_baseline_stops_at_the_first_lymphodepletion_dose() -> None:
    regimen = (day(-5), day(-4), day(-3))
    doc = endpoints(activity(2, day(-9), SCORE_12), activity(3, day(-5), SCORE_9),
                    activity(4, day(-2), SCORE_2), lymphodepletion=regimen)
    assert doc["sledai2k"]["baseline"] == 9  # the D-2 form follows cyclophosphamide


def test_without_consent_there_is_no_baseline() -> None:
    doc = endpoints(activity(2, day(-9), SCORE_12), consented=False)
    assert doc["sledai2k"]["baseline"] is None
    assert "no consent is recorded" in doc["missing"]["sledai2k.baseline"]


# --- visit windows ------------------------------------------------------------------------

WINDOWS = [("D90", 90, 7), ("D180", 180, 14), ("D360", 360, 14)]


@pytest.mark.parametrize(("visit", "target", "width"), WINDOWS)
@pytest.mark.parametrize("side", [-1, 1])
def test_a_form_on_the_window_edge_counts(visit: str, target: int, width: int, side: int) -> None:
    on_edge = activity(3, day(target + side * width), SCORE_8)
    doc = endpoints(activity(2, day(-9), SCORE_12), on_edge)
    assert doc["sledai2k"][visit] == 8
    assert doc["evidence"][f"sledai2k.{visit}"] == [3]


@pytest.mark.parametrize(("visit", "target", "width"), WINDOWS)
@pytest.mark.parametrize("side", [-1, 1])
def test_a_form_one_day_outside_the_window_does_not(
    visit: str, target: int, width: int, side: int
) -> None:
    doc = endpoints(activity(2, day(-9), SCORE_12),
                    activity(3, day(target + side * (width + 1)), SCORE_8))
    assert doc["sledai2k"][visit] is None
    start, end = day(target - width).isoformat(), day(target + width).isoformat()
    assert doc["missing"][f"sledai2k.{visit}"] == (
        f"No disease_activity form is dated inside the {visit} window ({start} to {end}).")


def test_the_date_decides_not_the_visit_tag() -> None:
    tagged_outside = activity(3, day(196), SCORE_2, visit="D180")
    assert endpoints(tagged_outside)["sledai2k"]["D180"] is None
    untagged_inside = activity(4, day(170), SCORE_8)
    assert endpoints(tagged_outside, untagged_inside)["sledai2k"]["D180"] == 8


def test_the_latest_form_in_the_window_counts() -> None:
    doc = endpoints(activity(3, day(185), SCORE_8), activity(4, day(175), SCORE_2))
    assert doc["sledai2k"]["D180"] == 8


# --- change and improvement ---------------------------------------------------------------


@pytest.mark.parametrize(("visit_descriptors", "change", "improved"), [
    (SCORE_8, -4, True),     # a reduction of exactly 4 points
    (SCORE_9, -3, False),    # one point short
    (SCORE_12, 0, False),
])
def test_change_and_improvement_at_the_threshold(
    visit_descriptors: dict[str, bool], change: int, improved: bool
) -> None:
    doc = endpoints(activity(2, day(-9), SCORE_12), activity(3, day(360), visit_descriptors))
    assert doc["sledai2k"]["change_D360"] == change
    assert doc["sledai2k"]["improved_D360"] is improved
    assert doc["evidence"]["sledai2k.change_D360"] == [2, 3]


def test_improvement_points_come_from_the_protocol() -> None:
    stricter = replace(PROTOCOL, sledai2k_improvement_points=5)
    doc = endpoints(activity(2, day(-9), SCORE_12), activity(3, day(90), SCORE_8),
                    protocol=stricter)
    assert doc["sledai2k"]["improved_D90"] is False


def test_change_without_a_baseline_is_missing_with_its_reason() -> None:
    doc = endpoints(activity(3, day(90), SCORE_8))
    assert doc["sledai2k"]["change_D90"] is None
    assert doc["missing"]["sledai2k.improved_D90"].startswith(
        "The baseline SLEDAI-2K is missing. No disease_activity form is dated from consent")


# --- missing values and the document's shape ----------------------------------------------


def test_every_null_has_a_reason_and_every_reason_a_null() -> None:
    for doc in (endpoints(), endpoints(activity(2, day(-9), SCORE_12)),
                endpoints(activity(2, day(-9), SCORE_12), infused=False)):
        assert set(doc["missing"]) == null_paths(doc)
        assert all(isinstance(text, str) and text.endswith(".") for text in
                   doc["missing"].values())


def test_the_document_has_design_keys_and_is_json() -> None:
    doc = endpoints(activity(2, day(-9), SCORE_12))
    assert doc["subject"] == SUBJECT
    assert {"baseline", "D90", "D180", "D360", "change_D360", "improved_D360"} <= set(
        doc["sledai2k"])
    assert set(doc["lldas"]) == {"D180", "D360"}
    assert set(doc["renal_response"]) == {"D180", "D360"}
    assert set(doc["persistence"]) == {"peak_copies_per_ug", "peak_day", "last_detectable_day",
                                       "detectable_D90", "detectable_D180", "detectable_D360"}
    assert json.loads(json.dumps(doc)) == doc


def test_an_endpoint_visit_the_protocol_does_not_assess_is_missing() -> None:
    version_1 = builtin_protocol(1)  # LLDAS at D360 only
    doc = endpoints(activity(3, day(180), SCORE_2, **LLDAS_OK), protocol=version_1)
    assert doc["lldas"]["D180"] is None
    assert doc["missing"]["lldas.D180"] == "D180 is not a LLDAS visit of protocol version 1."


def test_before_infusion_everything_but_the_baseline_is_missing() -> None:
    doc = endpoints(activity(2, day(-20), SCORE_12), activity(3, day(-2), SCORE_9),
                    rec(4, "labs", day(-2), upcr_g_per_g=2.0, egfr_ml_min=80.0),
                    rec(5, "cart_persistence", day(-2), copies_per_ug=0.0), infused=False)
    assert doc["sledai2k"]["baseline"] == 9  # the latest since consent
    assert null_paths(doc) == {
        f"{name}.{key}" for name in ("sledai2k", "lldas", "renal_response", "persistence")
        for key in doc[name] if (name, key) != ("sledai2k", "baseline")
    }
    assert doc["missing"]["sledai2k.D90"].startswith("Not infused yet")
    assert doc["missing"]["persistence.peak_day"].startswith("Not infused yet")
    assert doc["missing"]["renal_response.D180"].startswith("Not infused yet")


# --- LLDAS --------------------------------------------------------------------------------


def steroid(position: int, drug: str, dose: float, start: date, **values: Any) -> RecordedForm:
    return rec(position, "medication", start, drug=drug, drug_class="glucocorticoid",
               dose_mg_per_day=dose, start_date=start.isoformat(), **values)


def lldas_doc(*medication: RecordedForm, **inputs: Any) -> dict[str, Any]:
    values = {**LLDAS_OK, **inputs}
    return endpoints(activity(2, day(-9), SCORE_12), activity(3, day(180), SCORE_2, **values),
                     *medication)


def test_lldas_methylprednisolone_6_mg_is_7_5_mg_and_met() -> None:
    doc = lldas_doc(steroid(4, "methylprednisolone", 6, day(-30)))
    assert doc["lldas"]["D180"] is True
    assert doc["evidence"]["lldas.D180"] == [3, 4]
    assert "7.5 mg prednisone equivalent" in doc["notes"]["lldas.D180"]


def test_lldas_prednisone_8_mg_is_not_met() -> None:
    doc = lldas_doc(steroid(4, "prednisone", 8, day(-30)))
    assert doc["lldas"]["D180"] is False
    assert "prednisone equivalent 8 mg/day > 7.5 mg/day" in doc["notes"]["lldas.D180"]


def test_lldas_without_a_glucocorticoid_line_uses_0_mg_and_says_so() -> None:
    doc = lldas_doc(steroid(4, "prednisone", 20, day(-30), stop_date=day(100).isoformat()))
    assert doc["lldas"]["D180"] is True
    assert doc["evidence"]["lldas.D180"] == [3]
    assert "No glucocorticoid medication line is taken on" in doc["notes"]["lldas.D180"]


def test_lldas_lines_of_two_drugs_add_up() -> None:
    doc = lldas_doc(steroid(4, "prednisone", 5, day(-30)),
                    steroid(5, "methylprednisolone", 2.4, day(-30)))  # 5 + 3 = 8 mg
    assert doc["lldas"]["D180"] is False
    assert doc["evidence"]["lldas.D180"] == [3, 4, 5]


def test_lldas_a_taper_of_one_drug_supersedes_the_earlier_line() -> None:
    doc = lldas_doc(steroid(4, "prednisone", 20, day(-30)),
                    steroid(5, "prednisone", 5, day(-30), dose_changed_on=day(60).isoformat()))
    assert doc["lldas"]["D180"] is True
    assert doc["evidence"]["lldas.D180"] == [3, 5]


@pytest.mark.parametrize("field", LLDAS_INPUTS)
def test_lldas_with_an_input_not_recorded_is_missing(field: str) -> None:
    doc = lldas_doc(**{field: None})
    assert doc["lldas"]["D180"] is None
    assert f"has no {field} recorded" in doc["missing"]["lldas.D180"]
    assert doc["evidence"]["lldas.D180"] == [3]


def test_lldas_counts_a_line_up_to_its_stop_date_and_from_its_start_date() -> None:
    assert lldas_doc(steroid(4, "prednisone", 20, day(-30),
                             stop_date=day(180).isoformat()))["lldas"]["D180"] is False
    assert lldas_doc(steroid(4, "prednisone", 20, day(181)))["lldas"]["D180"] is True


def test_lldas_a_line_without_start_date() -> None:
    stopped = rec(4, "medication", day(-30), drug="prednisone", drug_class="glucocorticoid",
                  dose_mg_per_day=20, stop_date=day(100).isoformat())
    assert lldas_doc(stopped)["lldas"]["D180"] is True  # it ended before the assessment
    ongoing = rec(4, "medication", day(-30), drug="prednisone", drug_class="glucocorticoid",
                  dose_mg_per_day=20)
    doc = lldas_doc(ongoing)
    assert doc["lldas"]["D180"] is None
    assert "no medication.start_date is recorded for prednisone" in doc["missing"]["lldas.D180"]


def test_lldas_with_an_unknown_steroid_dose_is_missing() -> None:
    doc = lldas_doc(steroid(4, "prednisone", 5, day(-30), dose_changed_on=day(200).isoformat()))
    assert doc["lldas"]["D180"] is None
    assert "before its change on" in doc["missing"]["lldas.D180"]
    assert doc["evidence"]["lldas.D180"] == [3, 4]


def test_lldas_blocked_by_major_organ_activity() -> None:
    doc = endpoints(activity(3, day(180), {"proteinuria": True}, **LLDAS_OK))
    assert doc["lldas"]["D180"] is False


def test_the_steroid_dose_is_that_of_the_assessment_day() -> None:
    later = steroid(4, "prednisone", 30, day(181))
    assert glucocorticoid_dose_on([later], day(180)).mg_per_day == 0.0
    assert glucocorticoid_dose_on([later], day(181)).mg_per_day == 30.0


# --- renal response -----------------------------------------------------------------------


def labs(position: int, on: date, upcr: float | None = None, egfr: float | None = None
         ) -> RecordedForm:
    given = (("upcr_g_per_g", upcr), ("egfr_ml_min", egfr))
    values: dict[str, Any] = {key: value for key, value in given if value is not None}
    return rec(position, "labs", on, **values)


@pytest.mark.parametrize(("baseline_upcr", "upcr", "egfr", "response"), [
    (2.0, 0.4, 78.0, "complete"),
    (2.0, 1.0, 72.0, "partial"),         # 50% reduction, eGFR exactly 90% of 80
    (2.0, 1.1, 80.0, "none"),            # reduced by 45% only
    (2.0, 0.4, 71.0, "none"),            # eGFR below 90% of baseline
    (0.49, 0.4, 78.0, "not_applicable"),  # no renal involvement at baseline
])
def test_renal_response(baseline_upcr: float, upcr: float, egfr: float, response: str) -> None:
    doc = endpoints(labs(2, day(-9), baseline_upcr, 80.0), labs(3, day(180), upcr, egfr))
    assert doc["renal_response"]["D180"] == response


def test_renal_involvement_starts_at_the_threshold_itself() -> None:
    doc = endpoints(labs(2, day(-9), 0.5, 80.0), labs(3, day(180), 0.4, 78.0))
    assert doc["renal_response"]["D180"] == "complete"


def test_renal_not_applicable_needs_no_visit_labs() -> None:
    doc = endpoints(labs(2, day(-9), 0.3, 80.0))
    assert doc["renal_response"]["D360"] == "not_applicable"
    assert doc["evidence"]["renal_response.D360"] == [2]


def test_renal_rescue_therapy_means_none() -> None:
    rescue = rec(4, "medication", day(100), drug="rituximab", drug_class="biologic",
                 start_date=day(100).isoformat(), rescue_therapy=True)
    doc = endpoints(labs(2, day(-9), 2.0, 80.0), labs(3, day(180), 0.4, 78.0), rescue)
    assert doc["renal_response"]["D180"] == "none"
    assert doc["evidence"]["renal_response.D180"] == [2, 3, 4]


def test_renal_without_rescue_says_so() -> None:
    doc = endpoints(labs(2, day(-9), 2.0, 80.0), labs(3, day(180), 0.4, 78.0))
    assert "rescue_therapy is false" in doc["notes"]["renal_response.D180"]


def test_renal_values_are_the_latest_of_each_field() -> None:
    doc = endpoints(labs(2, day(-20), 2.0, 80.0), labs(3, day(-9), upcr=4.0),
                    labs(4, day(175), 3.5, 79.0), labs(5, day(190), upcr=1.5))
    assert doc["renal_response"]["D180"] == "partial"  # UPCR 4.0 -> 1.5, eGFR 80 -> 79
    assert doc["evidence"]["renal_response.D180"] == [3, 2, 5, 4]


def test_renal_missing_baseline_or_visit_labs() -> None:
    no_baseline = endpoints(labs(3, day(180), 0.4, 78.0))
    assert no_baseline["renal_response"]["D180"] is None
    assert no_baseline["missing"]["renal_response.D180"].startswith(
        "No labs form with upcr_g_per_g or egfr_ml_min is dated at baseline")
    no_egfr = endpoints(labs(2, day(-9), 2.0, 80.0), labs(3, day(180), upcr=0.4))
    assert no_egfr["missing"]["renal_response.D180"].startswith(
        "No labs form with egfr_ml_min is dated inside the D180 window")


# --- CAR-T persistence --------------------------------------------------------------------


def sample(position: int, study_day: int, copies: float, **values: Any) -> RecordedForm:
    return rec(position, "cart_persistence", day(study_day), copies_per_ug=copies, **values)


def test_persistence_peak_and_last_detectable_day() -> None:
    doc = endpoints(sample(2, -3, 90_000.0), sample(3, 7, 15_000.0), sample(4, 10, 42_000.0),
                    sample(5, 28, 4_000.0), sample(6, 92, 600.0), sample(7, 180, 10.0))
    p = doc["persistence"]
    assert (p["peak_copies_per_ug"], p["peak_day"], p["last_detectable_day"]) == (42_000.0, 10, 92)
    assert (p["detectable_D90"], p["detectable_D180"], p["detectable_D360"]) == (True, False, None)
    assert doc["evidence"]["persistence.peak_day"] == [4]
    assert doc["evidence"]["persistence.last_detectable_day"] == [6]
    assert "D360 window" in doc["missing"]["persistence.detectable_D360"]


@pytest.mark.parametrize(("copies", "detectable"), [(50.0, True), (49.9, False)])
def test_persistence_lloq_boundary(copies: float, detectable: bool) -> None:
    doc = endpoints(sample(2, 90, copies))
    assert doc["persistence"]["detectable_D90"] is detectable
    assert (doc["persistence"]["last_detectable_day"] == 90) is detectable


def test_persistence_nothing_detectable_is_missing_with_reason() -> None:
    doc = endpoints(sample(2, 14, 10.0))
    assert doc["persistence"]["peak_copies_per_ug"] is None
    assert "None of the 1 cart_persistence samples from D0 on reaches the LLOQ of 50" in (
        doc["missing"]["persistence.peak_copies_per_ug"])
    assert "No cart_persistence form" in endpoints()["missing"]["persistence.peak_day"]


def test_persistence_same_study_day_keeps_the_later_position() -> None:
    doc = endpoints(sample(2, 90, 5_000.0), sample(3, 90, 20.0))
    assert doc["persistence"]["detectable_D90"] is False
    assert doc["evidence"]["persistence.detectable_D90"] == [3]
    assert doc["persistence"]["peak_copies_per_ug"] is None
    assert "positions 2 and 3 share study day 90; the later position 3 is kept" in (
        doc["notes"]["persistence.peak_copies_per_ug"])


def test_persistence_is_dated_by_sample_date() -> None:
    drawn_earlier = rec(2, "cart_persistence", day(110), copies_per_ug=700.0,
                        sample_date=day(90).isoformat())
    doc = endpoints(drawn_earlier)
    assert doc["persistence"]["last_detectable_day"] == 90
    assert doc["persistence"]["detectable_D90"] is True


# --- corrections --------------------------------------------------------------------------


def event(position: int, version: int, kind: str, payload: dict[str, Any]) -> RecordedEvent:
    return RecordedEvent(
        position=position, stream_id=SUBJECT, version=version, type=kind, schema_version=1,
        payload_text=json.dumps(payload), occurred_at="2025-08-01T10:00:00+08:00",
        recorded_at="2025-08-01T02:00:00Z", actor="crc", role="coordinator", site="PKU3",
        reason="transcription error" if kind == T.FORM_CORRECTED else None,
        command_id=f"cmd-{position}", correlation_id=f"corr-{position}", causation_id=None,
        prev_hash="", hash="",
    )


def test_a_corrected_value_is_what_counts() -> None:
    s = subject(activity(2, day(-9), SCORE_12))
    flags = {code: code in SCORE_12 for code in SLEDAI2K_DESCRIPTORS}
    apply_subject(s, event(10, 5, T.FORM_RECORDED, {
        "form": "disease_activity", "on": day(360).isoformat(), "values": flags}))
    assert subject_endpoints(s, PROTOCOL)["sledai2k"]["improved_D360"] is False
    apply_subject(s, event(11, 6, T.FORM_CORRECTED, {
        "target_position": 10, "changes": {"rash": False, "low_complement": False}}))
    doc = subject_endpoints(s, PROTOCOL)
    assert (doc["sledai2k"]["D360"], doc["sledai2k"]["improved_D360"]) == (8, True)
    assert doc["evidence"]["sledai2k.D360"] == [10]


def test_a_corrected_sample_date_moves_the_sample_into_a_window() -> None:
    s = subject()
    apply_subject(s, event(10, 5, T.FORM_RECORDED, {
        "form": "cart_persistence", "on": day(130).isoformat(),
        "values": {"copies_per_ug": 800.0, "sample_date": day(130).isoformat()}}))
    assert subject_endpoints(s, PROTOCOL)["persistence"]["detectable_D180"] is None
    apply_subject(s, event(11, 6, T.FORM_CORRECTED, {
        "target_position": 10, "changes": {"sample_date": day(178).isoformat()}}))
    doc = subject_endpoints(s, PROTOCOL)
    assert doc["persistence"]["detectable_D180"] is True
    assert doc["evidence"]["persistence.detectable_D180"] == [10]
