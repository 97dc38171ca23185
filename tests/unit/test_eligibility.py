"""Eligibility: the nine inclusion criteria, the exclusion checklist, JSON shape and the guard."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workflow.eligibility import (
    CRITERIA,
    Eligibility,
    blocking_reason,
    completed_years,
    evaluate_eligibility,
)
from workflow.instruments.codes import EXCLUSION_CHECKLIST, INCLUSION_CRITERIA
from workflow.protocol import default_protocol
from workflow.records import Consent, RecordedForm

PROTOCOL = default_protocol()
CONSENT_DATE = date(2025, 3, 10)  # screening starts here; S - N days below
TODAY = date(2025, 3, 20)
CONSENT = Consent("S-001", CONSENT_DATE, "ICF-2.0", 2, position=1)


def days_before(n: int) -> str:
    return (CONSENT_DATE - timedelta(days=n)).isoformat()


def rec(position: int, form: str, on: str, **values: Any) -> RecordedForm:
    return RecordedForm(position, "S-001", form, values, date.fromisoformat(on))


def subject(sex: str = "female") -> list[RecordedForm]:
    """A subject meeting every criterion: forms at positions 2..14 (consent is position 1)."""
    if sex == "female":
        demographics = {"sex": "female", "childbearing_potential": True}
    else:
        demographics = {"sex": "male", "partner_childbearing_potential": True}
    return [
        rec(2, "demographics", "2025-03-10", date_of_birth="1990-05-20", **demographics),
        rec(3, "sle_classification", "2025-03-10", ana_titer=160, joint_involvement=True,
            anti_dsdna_or_anti_smith=True, low_c3_and_low_c4=True, fever=False),
        rec(4, "prior_treatment", "2025-03-10", drug="prednisone", drug_class="glucocorticoid",
            start_date="2022-01-01", outcome="relapse"),
        rec(5, "prior_treatment", "2025-03-10", drug="cyclophosphamide",
            drug_class="immunosuppressant", outcome="inadequate_response"),
        rec(6, "prior_treatment", "2025-03-10", drug="belimumab", drug_class="biologic",
            outcome="inadequate_response"),
        rec(7, "medication", "2025-03-10", drug="prednisone", drug_class="glucocorticoid",
            dose_mg_per_day=10, start_date="2024-06-01"),
        rec(8, "medication", "2025-03-10", drug="hydroxychloroquine", drug_class="antimalarial",
            dose_mg_per_day=400, start_date="2024-01-01"),
        rec(9, "medication", "2025-03-10", drug="belimumab", drug_class="biologic",
            start_date="2024-01-15", stop_date="2024-10-01"),
        rec(10, "vitals", "2025-03-11", weight_kg=55.0, height_cm=160.0),
        rec(11, "disease_activity", "2025-03-12", arthritis=True, proteinuria=True, rash=True,
            low_complement=True, fever=False),
        rec(12, "pregnancy_test", "2025-03-12", test_date="2025-03-12", specimen="serum",
            result="negative"),
        rec(13, "contraception", "2025-03-12", agreed=True),
        rec(14, "exclusion_checklist", "2025-03-12", **dict.fromkeys(EXCLUSION_CHECKLIST, False)),
    ]


def evaluate(
    forms: Sequence[RecordedForm], consent: Consent | None = CONSENT, today: date = TODAY
) -> Eligibility:
    return evaluate_eligibility(forms, consent, PROTOCOL, today=today)


def status(forms: Sequence[RecordedForm], code: str, consent: Consent | None = CONSENT) -> str:
    return evaluate(forms, consent).criterion(code).status


def changed(forms: Sequence[RecordedForm], position: int, **values: Any) -> list[RecordedForm]:
    """The forms with new current values at `position` (None removes a field)."""
    result = []
    for form in forms:
        if form.position == position:
            merged = {**form.values, **values}
            form = replace(form, values={k: v for k, v in merged.items() if v is not None})
        result.append(form)
    return result


def without(forms: Sequence[RecordedForm], *codes: str) -> list[RecordedForm]:
    return [form for form in forms if form.form not in codes]


def added(forms: Sequence[RecordedForm], form: str, on: str, **values: Any) -> list[RecordedForm]:
    position = max(item.position for item in forms) + 1
    return [*forms, rec(position, form, on, **values)]


# --- whole subjects -----------------------------------------------------------------------


def test_fully_eligible_female_subject() -> None:
    result = evaluate(subject("female"))
    assert result.overall == "eligible"
    assert [c.code for c in result.criteria] == list(INCLUSION_CRITERIA)
    statuses = {c.code: c.status for c in result.criteria}
    assert statuses == {**dict.fromkeys(INCLUSION_CRITERIA, "met"),
                        "contraception_male": "not_applicable"}
    assert result.exclusions == tuple((code, "no") for code in EXCLUSION_CHECKLIST)
    assert blocking_reason(result) is None
    assert all(c.reason.endswith(".") and c.reason[0].isupper() for c in result.criteria)


def test_fully_eligible_male_subject() -> None:
    result = evaluate(without(subject("male"), "pregnancy_test"))
    assert result.overall == "eligible"
    assert result.criterion("pregnancy_contraception_female").status == "not_applicable"
    assert result.criterion("contraception_male").status == "met"
    assert blocking_reason(result) is None


def test_screening_window_and_days_left() -> None:
    result = evaluate(subject())
    assert result.screening_window_ends == date(2025, 4, 7)  # consent + 28 days
    assert result.days_left(TODAY) == 18
    assert result.days_left(date(2025, 4, 7)) == 0
    assert result.days_left(date(2025, 4, 8)) == -1
    no_consent = evaluate(subject(), consent=None)
    assert no_consent.screening_window_ends is None
    assert no_consent.days_left(TODAY) is None


# --- 1. EULAR/ACR 2019 --------------------------------------------------------------------


def test_eular_met_not_met_pending() -> None:
    forms = subject()
    assert status(forms, "eular_acr_2019") == "met"
    assert status(changed(forms, 3, ana_titer=40), "eular_acr_2019") == "not_met"
    assert status(changed(forms, 3, ana_titer=0), "eular_acr_2019") == "not_met"  # negative
    assert status(changed(forms, 3, ana_titer="1:160"), "eular_acr_2019") == "met"
    only_six = changed(forms, 3, anti_dsdna_or_anti_smith=False, low_c3_and_low_c4=False)
    assert status(only_six, "eular_acr_2019") == "not_met"
    assert status(changed(forms, 3, ana_titer=None), "eular_acr_2019") == "pending"
    result = evaluate(without(forms, "sle_classification")).criterion("eular_acr_2019")
    assert result.status == "pending"
    assert "sle_classification" in result.reason


def test_eular_takes_the_union_of_items_and_the_highest_titre() -> None:
    base = without(subject(), "sle_classification")
    forms = [*base, rec(30, "sle_classification", "2025-03-10", ana_titer=40,
                        joint_involvement=True),
             rec(31, "sle_classification", "2025-03-11", ana_titer=320,
                 anti_dsdna_or_anti_smith=False),
             rec(32, "sle_classification", "2025-03-12", low_c3_and_low_c4=True)]
    result = evaluate(forms).criterion("eular_acr_2019")
    assert result.status == "met"  # 6 + 4 = 10 with ANA 1:320 from another form
    cited = {(e.position, e.field, e.value) for e in result.evidence}
    assert cited == {(31, "ana_titer", 320), (30, "joint_involvement", True),
                     (32, "low_c3_and_low_c4", True)}


def test_eular_cites_the_first_form_recording_an_item() -> None:
    forms = added(subject(), "sle_classification", "2025-03-12", joint_involvement=True)
    result = evaluate(forms).criterion("eular_acr_2019")
    assert result.status == "met"
    assert [e.position for e in result.evidence if e.field == "joint_involvement"] == [3]


# --- 2. age -------------------------------------------------------------------------------


@pytest.mark.parametrize(("born", "expected"), [
    ("2007-03-11", "not_met"),  # 17, turns 18 the day after consent
    ("2007-03-10", "met"),      # 18th birthday on the consent date
    ("1960-03-10", "met"),      # 65th birthday on the consent date
    ("1959-03-11", "met"),      # 65, turns 66 the day after consent
    ("1959-03-10", "not_met"),  # 66th birthday on the consent date
])
def test_age_boundaries_in_completed_years(born: str, expected: str) -> None:
    assert status(changed(subject(), 2, date_of_birth=born), "age") == expected


def test_age_pending_and_evidence() -> None:
    forms = subject()
    result = evaluate(forms).criterion("age")
    assert "34" in result.reason
    assert {(e.position, e.field) for e in result.evidence} == {(2, "date_of_birth"),
                                                                (1, "consent_date")}
    missing = evaluate(changed(forms, 2, date_of_birth=None)).criterion("age")
    assert missing.status == "pending"
    assert "demographics.date_of_birth" in missing.reason
    assert status(forms, "age", consent=None) == "pending"


def test_completed_years_on_29_february() -> None:
    assert completed_years(date(2004, 2, 29), date(2022, 2, 28)) == 17
    assert completed_years(date(2004, 2, 29), date(2022, 3, 1)) == 18
    assert completed_years(date(2004, 2, 29), date(2024, 2, 29)) == 20


def _reference_age(born: date, on: date) -> int:
    """Count the birthdays up to `on` (29 February celebrated on 1 March in common years)."""
    years = 0
    while True:
        year = born.year + years + 1
        try:
            birthday = born.replace(year=year)
        except ValueError:
            birthday = date(year, 3, 1)
        if birthday > on:
            return years
        years += 1


@settings(max_examples=300, deadline=None)
@given(born=st.dates(date(1930, 1, 1), date(2015, 12, 31)),
       on=st.dates(date(2015, 12, 31), date(2030, 12, 31)))
def test_age_property_matches_counted_birthdays(born: date, on: date) -> None:
    age = completed_years(born, on)
    assert age == _reference_age(born, on)
    consent = Consent("S-001", on, "ICF-2.0", 2, position=1)
    forms = [replace(form, recorded_on=on) if form.position == 2 else form  # dated at consent
             for form in changed(subject(), 2, date_of_birth=born.isoformat())]
    result = evaluate(forms, consent, on)
    assert result.criterion("age").status == ("met" if 18 <= age <= 65 else "not_met")


# --- 3. weight ----------------------------------------------------------------------------


@pytest.mark.parametrize(("weight", "expected"), [(39.9, "not_met"), (40.0, "met"),
                                                  (40, "met"), (120.5, "met")])
def test_weight_boundary(weight: float, expected: str) -> None:
    assert status(changed(subject(), 10, weight_kg=weight), "weight") == expected


def test_weight_pending_when_not_recorded_during_screening() -> None:
    forms = without(subject(), "vitals")
    result = evaluate(forms).criterion("weight")
    assert result.status == "pending"
    assert "vitals.weight_kg" in result.reason
    assert status(added(forms, "vitals", "2025-03-11", height_cm=160.0), "weight") == "pending"
    before_consent = added(forms, "vitals", "2025-03-01", weight_kg=60.0)
    assert status(before_consent, "weight") == "pending"
    after_window = added(forms, "vitals", "2025-04-08", weight_kg=60.0)
    assert status(after_window, "weight") == "pending"


def test_weight_uses_the_latest_screening_weight_by_date() -> None:
    forms = without(subject(), "vitals")
    # Recorded late: the 2025-03-15 weight is entered before the 2025-03-12 one.
    forms = [*forms, rec(40, "vitals", "2025-03-15", weight_kg=39.5),
             rec(41, "vitals", "2025-03-12", weight_kg=60.0)]
    result = evaluate(forms).criterion("weight")
    assert result.status == "not_met"
    assert result.evidence[0].position == 40
    assert result.evidence[0].value == 39.5


# --- 4. refractory ------------------------------------------------------------------------


def test_refractory_met_not_met_pending() -> None:
    forms = subject()
    assert status(forms, "refractory") == "met"
    intolerant = forms
    for position in (4, 5, 6):
        intolerant = changed(intolerant, position, outcome="intolerance")
    result = evaluate(intolerant).criterion("refractory")
    assert result.status == "not_met"
    assert {e.position for e in result.evidence} == {4, 5, 6}
    unknown = changed(changed(changed(forms, 4, outcome="intolerance"), 5, outcome=None),
                      6, outcome="intolerance")
    assert status(unknown, "refractory") == "pending"
    no_biologic = [f for f in forms if f.position != 6]
    result = evaluate(no_biologic).criterion("refractory")
    assert result.status == "pending"
    assert "belimumab or rituximab" in result.reason
    assert status(without(forms, "prior_treatment"), "refractory") == "pending"


@pytest.mark.parametrize("name", ["Mycophenolate Mofetil", "MYCOPHENOLATE",
                                  "mycophenolate_mofetil", "Cyclophosphamide"])
def test_refractory_accepts_drug_names_case_insensitively(name: str) -> None:
    forms = changed(subject(), 5, drug=name)
    assert status(forms, "refractory") == "met"


def test_refractory_rejects_other_immunosuppressants_and_accepts_rituximab() -> None:
    forms = subject()
    assert status(changed(forms, 5, drug="azathioprine"), "refractory") == "pending"
    assert status(changed(forms, 6, drug="Rituximab"), "refractory") == "met"


# --- 5. stable background therapy ---------------------------------------------------------

CODE5 = "stable_background_therapy"


@pytest.mark.parametrize(("drug", "dose", "expected"), [
    ("prednisone", 30, "met"),
    ("prednisone", 30.5, "not_met"),
    ("methylprednisolone", 24, "met"),      # 24 / 0.8 = 30 mg prednisone
    ("methylprednisolone", 24.4, "not_met"),  # 30.5 mg prednisone
    ("dexamethasone", 4.5, "met"),          # 4.5 / 0.15 = 30 mg prednisone
])
def test_glucocorticoid_maximum_in_prednisone_equivalent(
    drug: str, dose: float, expected: str
) -> None:
    result = evaluate(changed(subject(), 7, drug=drug, dose_mg_per_day=dose)).criterion(CODE5)
    assert result.status == expected
    if expected == "not_met":
        assert "30.5 mg/day prednisone equivalent" in result.reason
        assert any(e.position == 7 for e in result.evidence)


@pytest.mark.parametrize(("started", "expected"), [(84, "met"), (83, "not_met"),
                                                   (200, "met"), (0, "not_met")])
def test_antimalarial_started_days_before_screening(started: int, expected: str) -> None:
    forms = changed(subject(), 8, start_date=days_before(started))
    assert status(forms, CODE5) == expected


@pytest.mark.parametrize(("stopped", "expected"), [(28, "met"), (27, "not_met"),
                                                   (365, "met"), (1, "not_met")])
def test_biologic_stopped_days_before_screening(stopped: int, expected: str) -> None:
    result = evaluate(changed(subject(), 9, stop_date=days_before(stopped))).criterion(CODE5)
    assert result.status == expected
    if expected == "not_met":
        assert [(e.position, e.field) for e in result.evidence] == [(9, "drug"),
                                                                    (9, "stop_date")]


@pytest.mark.parametrize(("stopped", "expected"), [
    (57, "met"),        # last dose 57 days before: unchanged for the 56 days before screening
    (56, "not_met"),    # the stop is a dose change 55 days before screening
    (-3, "not_met"),    # stopped during screening
])
def test_antimalarial_stopped_is_a_dose_change(stopped: int, expected: str) -> None:
    result = evaluate(changed(subject(), 8, stop_date=days_before(stopped))).criterion(CODE5)
    assert result.status == expected
    if expected == "not_met":
        assert result.reason.startswith("Antimalarial hydroxychloroquine")


def test_ongoing_biologic_is_not_met() -> None:
    assert status(changed(subject(), 9, stop_date=None), CODE5) == "not_met"


@pytest.mark.parametrize(("changed_days", "expected"), [(7, "met"), (6, "not_met"),
                                                        (30, "met")])
def test_glucocorticoid_unchanged_seven_days_before_screening(
    changed_days: int, expected: str
) -> None:
    # The dose before the change is recorded on its own line, stopped the day before.
    forms = changed(subject(), 7, dose_mg_per_day=15,
                    stop_date=days_before(changed_days + 1))
    forms = added(forms, "medication", "2025-03-10", drug="prednisone",
                  drug_class="glucocorticoid", dose_mg_per_day=10,
                  start_date=days_before(changed_days))
    assert status(forms, CODE5) == expected


def test_glucocorticoid_dose_changed_on_field_gives_the_change_date() -> None:
    forms = subject()
    assert status(changed(forms, 7, dose_changed_on=days_before(7)), CODE5) == "met"
    result = evaluate(changed(forms, 7, dose_changed_on=days_before(6))).criterion(CODE5)
    assert result.status == "not_met"
    assert (7, "dose_changed_on", days_before(6)) in {
        (e.position, e.field, e.value) for e in result.evidence
    }


@pytest.mark.parametrize(("new_dose", "expected"), [(15, "met"), (14.5, "not_met"),
                                                    (25, "met"), (25.5, "not_met")])
def test_glucocorticoid_change_during_screening_at_most_5_mg(
    new_dose: float, expected: str
) -> None:
    # 20 mg until 2025-03-14, then the new dose: a change on 2025-03-15 during screening.
    # The new line supersedes the old one, which is not stopped (same drug, later dose start).
    forms = changed(subject(), 7, dose_mg_per_day=20)
    forms = added(forms, "medication", "2025-03-15", drug="prednisone",
                  drug_class="glucocorticoid", dose_mg_per_day=new_dose,
                  start_date="2024-06-01", dose_changed_on="2025-03-15")
    assert status(forms, CODE5) == expected


def test_glucocorticoid_change_during_screening_with_unknown_previous_dose_is_pending() -> None:
    result = evaluate(changed(subject(), 7, dose_changed_on="2025-03-15")).criterion(CODE5)
    assert result.status == "pending"
    assert "before its change on 2025-03-15" in result.reason


@pytest.mark.parametrize(("changed_days", "expected"), [(56, "met"), (55, "not_met")])
def test_antimalarial_dose_unchanged_56_days_before_screening(
    changed_days: int, expected: str
) -> None:
    forms = changed(subject(), 8, dose_changed_on=days_before(changed_days))
    assert status(forms, CODE5) == expected


def test_antimalarial_dose_changed_during_screening_is_not_met() -> None:
    assert status(changed(subject(), 8, dose_changed_on="2025-03-15"), CODE5) == "not_met"


def test_background_therapy_pending_and_not_met_without_background_drug() -> None:
    forms = subject()
    result = evaluate(without(forms, "medication")).criterion(CODE5)
    assert result.status == "pending"
    assert "medication" in result.reason
    assert status(changed(forms, 7, dose_mg_per_day=None), CODE5) == "pending"
    assert status(changed(forms, 8, start_date=None), CODE5) == "pending"
    only_other = [f for f in forms if f.position not in (7, 8)]
    only_other = added(only_other, "medication", "2025-03-10", drug="vitamin D",
                       drug_class="other", start_date="2020-01-01")
    result = evaluate(only_other).criterion(CODE5)
    assert result.status == "not_met"
    assert "Not on a glucocorticoid" in result.reason
    # One stable background drug is enough.
    assert status([f for f in forms if f.position != 7], CODE5) == "met"
    assert status([f for f in forms if f.position != 8], CODE5) == "met"


def test_background_therapy_evidence_cites_the_lines_used() -> None:
    result = evaluate(subject()).criterion(CODE5)
    assert result.status == "met"
    assert {e.position for e in result.evidence} == {7, 8}
    assert (7, "dose_mg_per_day", 10) in {(e.position, e.field, e.value) for e in result.evidence}


# --- 6. SLEDAI-2K at screening ------------------------------------------------------------


@pytest.mark.parametrize(("descriptors", "expected"), [
    ({"arthritis": True, "proteinuria": True, "rash": True}, "met"),    # 4 + 4 + 2 = 10
    ({"arthritis": True, "proteinuria": True, "fever": True}, "not_met"),  # 4 + 4 + 1 = 9
])
def test_sledai2k_boundary(descriptors: dict[str, bool], expected: str) -> None:
    forms = without(subject(), "disease_activity")
    forms = added(forms, "disease_activity", "2025-03-12", **descriptors)
    result = evaluate(forms).criterion("sledai2k_screening")
    assert result.status == expected
    assert {e.field for e in result.evidence} == set(descriptors)
    assert {e.position for e in result.evidence} == {15}


def test_sledai2k_uses_the_latest_screening_assessment() -> None:
    forms = added(subject(), "disease_activity", "2025-03-14", arthritis=True)
    result = evaluate(forms).criterion("sledai2k_screening")
    assert result.status == "not_met"  # 4, although the earlier form scored 12
    assert [e.position for e in result.evidence] == [15]


def test_sledai2k_pending_without_a_screening_assessment() -> None:
    forms = without(subject(), "disease_activity")
    result = evaluate(forms).criterion("sledai2k_screening")
    assert result.status == "pending"
    assert "disease_activity" in result.reason
    old = added(forms, "disease_activity", "2025-02-01", arthritis=True, proteinuria=True,
                rash=True)
    assert status(old, "sledai2k_screening") == "pending"


# --- 7. pregnancy and contraception (women) -----------------------------------------------

CODE7 = "pregnancy_contraception_female"


def test_female_criterion_met_not_met_pending() -> None:
    forms = subject("female")
    assert status(forms, CODE7) == "met"
    assert status(changed(forms, 12, result="positive"), CODE7) == "not_met"
    assert status(changed(forms, 13, agreed=False), CODE7) == "not_met"
    assert status(without(forms, "contraception"), CODE7) == "pending"
    urine = changed(forms, 12, specimen="urine")
    result = evaluate(urine).criterion(CODE7)
    assert result.status == "pending"
    assert "serum pregnancy_test" in result.reason
    before_consent = changed(forms, 12, test_date="2025-03-01")
    assert status(before_consent, CODE7) == "pending"
    assert status(changed(forms, 2, sex=None), CODE7) == "pending"
    assert status(changed(forms, 2, childbearing_potential=None), CODE7) == "pending"


def test_serum_test_on_the_consent_date_counts() -> None:
    forms = changed(subject("female"), 12, test_date=CONSENT_DATE.isoformat())
    assert status(forms, CODE7) == "met"
    day_before = changed(forms, 12, test_date=days_before(1))
    assert status(day_before, CODE7) == "pending"


def test_female_without_childbearing_potential_is_not_applicable() -> None:
    forms = without(changed(subject("female"), 2, childbearing_potential=False),
                    "pregnancy_test", "contraception")
    result = evaluate(forms)
    assert result.criterion(CODE7).status == "not_applicable"
    assert result.overall == "eligible"


def test_the_latest_serum_test_counts() -> None:
    forms = changed(subject("female"), 12, result="positive")
    forms = added(forms, "pregnancy_test", "2025-03-15", test_date="2025-03-15",
                  specimen="serum", result="negative")
    result = evaluate(forms).criterion(CODE7)
    assert result.status == "met"
    assert 15 in {e.position for e in result.evidence}


# --- 8. contraception (men) ---------------------------------------------------------------


def test_male_criterion_met_not_met_pending_not_applicable() -> None:
    forms = without(subject("male"), "pregnancy_test")
    assert status(forms, "contraception_male") == "met"
    assert status(changed(forms, 13, agreed=False), "contraception_male") == "not_met"
    assert status(without(forms, "contraception"), "contraception_male") == "pending"
    assert status(changed(forms, 2, partner_childbearing_potential=None),
                  "contraception_male") == "pending"
    no_partner = without(changed(forms, 2, partner_childbearing_potential=False),
                         "contraception")
    assert status(no_partner, "contraception_male") == "not_applicable"
    assert evaluate(no_partner).overall == "eligible"
    assert status(subject("female"), "contraception_male") == "not_applicable"


# --- 9. informed consent ------------------------------------------------------------------


def test_informed_consent_met_with_consent_evidence_and_pending_without() -> None:
    result = evaluate(subject()).criterion("informed_consent")
    assert result.status == "met"
    assert [(e.position, e.field, e.value) for e in result.evidence] == [
        (1, "consent_date", "2025-03-10"), (1, "consent_form_version", "ICF-2.0"),
    ]
    without_consent = evaluate(subject(), consent=None)
    assert without_consent.criterion("informed_consent").status == "pending"
    assert without_consent.overall == "pending"
    assert blocking_reason(without_consent) is not None


# --- exclusions ---------------------------------------------------------------------------


@pytest.mark.parametrize("code", EXCLUSION_CHECKLIST)
def test_any_exclusion_yes_makes_the_subject_ineligible(code: str) -> None:
    result = evaluate(changed(subject(), 14, **{code: True}))
    assert result.overall == "ineligible"
    assert dict(result.exclusions)[code] == "yes"
    reason = blocking_reason(result)
    assert reason is not None
    assert reason[0] == code
    assert "position 14" in reason[1]


def test_unanswered_exclusions_keep_eligibility_pending() -> None:
    forms = subject()
    missing = evaluate(without(forms, "exclusion_checklist"))
    assert missing.overall == "pending"
    assert missing.exclusions == tuple((code, None) for code in EXCLUSION_CHECKLIST)
    reason = blocking_reason(missing)
    assert reason is not None
    assert reason[0] == EXCLUSION_CHECKLIST[0]
    one_missing = evaluate(changed(forms, 14, active_infection=None))
    assert one_missing.overall == "pending"
    assert dict(one_missing.exclusions)["active_infection"] is None


def test_the_latest_exclusion_checklist_counts() -> None:
    forms = changed(subject(), 14, active_infection=True)
    forms = added(forms, "exclusion_checklist", "2025-03-18",
                  **dict.fromkeys(EXCLUSION_CHECKLIST, False))
    assert evaluate(forms).overall == "eligible"


# --- corrections, overall, the guard ------------------------------------------------------


def test_corrections_are_reflected_through_current_values() -> None:
    forms = changed(subject(), 10, weight_kg=39.0)
    assert evaluate(forms).criterion("weight").status == "not_met"
    # Position 10 corrected by the event at position 20: the current value is 41 kg.
    corrected = [replace(f, values={**f.values, "weight_kg": 41.0}, corrected_by=(20,))
                 if f.position == 10 else f for f in forms]
    result = evaluate(corrected)
    assert result.criterion("weight").status == "met"
    assert result.criterion("weight").evidence[0].position == 10  # the original record
    assert result.criterion("weight").evidence[0].value == 41.0
    assert result.overall == "eligible"


def test_not_met_outranks_pending_and_the_guard_names_it() -> None:
    forms = without(changed(subject(), 10, weight_kg=39.9), "sle_classification")
    result = evaluate(forms)
    assert result.criterion("eular_acr_2019").status == "pending"
    assert result.overall == "ineligible"
    reason = blocking_reason(result)
    assert reason is not None
    assert reason[0] == "weight"
    assert "39.9 kg" in reason[1]


def test_not_met_criterion_comes_before_an_exclusion_yes() -> None:
    forms = changed(changed(subject(), 14, malignancy_5y=True), 10, weight_kg=30)
    reason = blocking_reason(evaluate(forms))
    assert reason is not None
    assert reason[0] == "weight"
    assert reason[1].startswith("Inclusion criterion weight is not met: ")


def test_to_json_shape() -> None:
    document = evaluate(subject()).to_json()
    assert set(document) == {"overall", "criteria", "exclusions", "screening_window_ends",
                             "days_left", "confirmed_on", "post_enrolment_findings"}
    assert document["confirmed_on"] is None
    assert document["post_enrolment_findings"] == []
    assert document["overall"] == "eligible"
    assert document["screening_window_ends"] == "2025-04-07"
    assert document["days_left"] == 18
    criteria = document["criteria"]
    assert isinstance(criteria, list)
    assert [c["code"] for c in criteria] == list(INCLUSION_CRITERIA)
    for criterion in criteria:
        assert set(criterion) == {"code", "status", "reason", "evidence"}
        assert criterion["evidence"], criterion["code"]
        for evidence in criterion["evidence"]:
            assert set(evidence) == {"position", "field", "value"}
    assert document["exclusions"] == [{"code": c, "answer": "no"} for c in EXCLUSION_CHECKLIST]
    assert json.loads(json.dumps(document)) == document
    no_consent = evaluate(subject(), consent=None).to_json()
    assert no_consent["screening_window_ends"] is None
    assert no_consent["days_left"] is None


def test_evidence_positions_point_at_the_forms_used() -> None:
    forms = subject()
    result = evaluate(forms)
    by_position = {f.position: f for f in forms}
    expected_forms = {
        "eular_acr_2019": {"sle_classification"}, "age": {"demographics", "consent"},
        "weight": {"vitals"}, "refractory": {"prior_treatment"},
        "stable_background_therapy": {"medication"}, "sledai2k_screening": {"disease_activity"},
        "pregnancy_contraception_female": {"demographics", "pregnancy_test", "contraception"},
        "contraception_male": {"demographics"}, "informed_consent": {"consent"},
    }
    for criterion in result.criteria:
        used = {"consent" if e.position == CONSENT.position else by_position[e.position].form
                for e in criterion.evidence}
        assert used == expected_forms[criterion.code], criterion.code
        for e in criterion.evidence:
            if e.position != CONSENT.position:
                assert by_position[e.position].values[e.field] == e.value


# --- properties ---------------------------------------------------------------------------

_CRITERION_POSITIONS = list(range(2, 15))


@settings(max_examples=150, deadline=None)
@given(
    dropped=st.sets(st.sampled_from(_CRITERION_POSITIONS)),
    answers=st.dictionaries(st.sampled_from(EXCLUSION_CHECKLIST), st.booleans()),
    weight=st.sampled_from([39.9, 40.0, 70.0]),
    sex=st.sampled_from(["female", "male"]),
)
def test_overall_agrees_with_the_guard_and_the_parts(
    dropped: set[int], answers: dict[str, bool], weight: float, sex: str
) -> None:
    forms = changed(changed(subject(sex), 14, **answers), 10, weight_kg=weight)
    result = evaluate([f for f in forms if f.position not in dropped])
    statuses = [c.status for c in result.criteria]
    answered = [a for _, a in result.exclusions]
    if "not_met" in statuses or "yes" in answered:
        assert result.overall == "ineligible"
    elif set(statuses) <= {"met", "not_applicable"} and set(answered) == {"no"}:
        assert result.overall == "eligible"
    else:
        assert result.overall == "pending"
    reason = blocking_reason(result)
    assert (reason is None) == (result.overall == "eligible")
    if reason is not None:
        assert reason[0] in INCLUSION_CRITERIA or reason[0] in EXCLUSION_CHECKLIST
        assert reason[1].endswith(".")


@settings(max_examples=50, deadline=None)
@given(order=st.permutations(list(range(15))))
def test_the_order_forms_are_given_in_does_not_matter(order: list[int]) -> None:
    forms = added(subject(), "vitals", "2025-03-13", weight_kg=39.0)
    forms = added(forms, "disease_activity", "2025-03-13", arthritis=True)
    shuffled = [forms[i] for i in order]
    assert evaluate(shuffled) == evaluate(forms)


def test_criteria_registry_follows_inclusion_criteria() -> None:
    assert tuple(CRITERIA) == INCLUSION_CRITERIA


_DAY0 = date(2025, 3, 1)
_line_days = st.one_of(st.none(), st.integers(-40, 40).map(lambda n: _DAY0 + timedelta(n)))


@st.composite
def _medication_lines(draw: st.DrawFn) -> list[Any]:
    from workflow.eligibility import _Line

    lines = []
    for position in range(1, draw(st.integers(0, 5)) + 1):
        values: dict[str, Any] = {
            "drug": draw(st.sampled_from(["prednisone", "methylprednisolone", "hydrocortisone",
                                          "unknownol"])),
            "drug_class": "glucocorticoid",
            "dose_mg_per_day": draw(st.one_of(st.none(), st.sampled_from([0, 2.5, 5, 7.5, 20]))),
        }
        for field in ("start_date", "stop_date", "dose_changed_on"):
            day = draw(_line_days)
            if day is not None:
                values[field] = day.isoformat()
        lines.append(_Line.of(RecordedForm(position, "S-001", "medication", values, _DAY0)))
    return lines


# Guard: `_steroid_doses` works out the dose only on the days a line starts, changes or has
# stopped, and carries it over the days between: the same answer as asking every day.
@given(lines=_medication_lines(), first=st.integers(-45, 0), length=st.integers(1, 90))
@settings(max_examples=300, deadline=None)
def test_steroid_doses_equal_the_dose_asked_of_every_day(lines: list[Any], first: int,
                                                          length: int) -> None:
    from workflow.eligibility import _drug_dose_on, _steroid_doses

    days = [_DAY0 + timedelta(first + n) for n in range(length)]
    expected = {}
    for day in days:
        total: Decimal | None = Decimal(0)
        why = ""
        for drug in sorted({line.drug for line in lines}):
            dose, why = _drug_dose_on([line for line in lines if line.drug == drug], day)
            if dose is None:
                total = None
                break
            assert total is not None
            total += dose
        expected[day] = (total, why if total is None else "")
    assert _steroid_doses(lines, days) == expected
