"""Case report forms: codes of the Forms table, parsing, validation and refusal of bad values."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workflow.errors import InvalidInput
from workflow.forms import (
    FORMS,
    PHASE_FORM_COMMANDS,
    Kind,
    assessment_date,
    describe_forms,
    localise_times,
    parse_form,
    validate_values,
)
from workflow.instruments.codes import (
    EULAR_ACR_2019_CRITERIA,
    EXCLUSION_CHECKLIST,
    SLEDAI2K_DESCRIPTORS,
)

TODAY = date(2025, 3, 1)

# The Forms table of docs/clinical-rules.md, spelt out so a renamed code fails here.
FORMS_TABLE: dict[str, set[str]] = {
    "consent": {"consent_date", "consent_form_version", "protocol_version", "site"},
    "demographics": {"date_of_birth", "sex", "childbearing_potential",
                     "partner_childbearing_potential"},
    "vitals": {"weight_kg", "height_cm", "temperature_c", "systolic_bp", "diastolic_bp",
               "heart_rate"},
    "sle_classification": {"ana_titer", *EULAR_ACR_2019_CRITERIA},
    "disease_activity": {*SLEDAI2K_DESCRIPTORS, "pga", "new_activity", "hemolytic_anemia",
                         "gi_activity", "maintenance_tolerated"},
    "medication": {"drug", "drug_class", "dose_mg_per_day", "start_date", "stop_date",
                   "dose_changed_on"},
    "prior_treatment": {"drug", "drug_class", "start_date", "stop_date", "outcome"},
    "pregnancy_test": {"test_date", "specimen", "result"},
    "contraception": {"agreed"},
    "exclusion_checklist": set(EXCLUSION_CHECKLIST),
    "labs": {"upcr_g_per_g", "egfr_ml_min", "c3_g_l", "c4_g_l", "anti_dsdna_iu_ml", "wbc_10e9_l",
             "neutrophils_10e9_l", "lymphocytes_10e9_l", "platelets_10e9_l", "hemoglobin_g_l"},
    "leukapheresis": {"collected_on", "coi_id"},
    "product_release": {"lot", "coi_id", "qc", "viable_cells"},
    "lymphodepletion": {"given_on", "fludarabine_mg", "cyclophosphamide_mg"},
    "infusion": {"infused_at", "cells", "coi_id", "dosing_weight_kg"},
    "visit": {"visit", "status", "visit_date"},
    "cart_persistence": {"sample_date", "copies_per_ug", "car_cells_per_ul"},
    "adverse_event": {"term", "category", "onset_date", "grade", "serious_criteria", "expected",
                      "awareness_at", "sponsor_aware_at", "outcome", "resolved_on",
                      "temperature_c", "hypotension", "hypoxia", "fever_masked", "ice_score",
                      "consciousness", "seizure", "motor", "cerebral_edema"},
    "causality": {"ae_position", "relatedness"},
    "sae_report": {"ae_position", "report_kind", "sent_at"},
}
ADDED_FIELDS: dict[str, set[str]] = {"medication": {"rescue_therapy"},
                                     "product_release": {"released_on"}}

VALID_INPUT: dict[str, list[str]] = {
    "consent": ["consent_date=2025-01-10", "consent_form_version=2.1", "protocol_version=2",
                "site=PKU3"],
    "demographics": ["date_of_birth=1990-05-17", "sex=female", "childbearing_potential=yes",
                     "partner_childbearing_potential=no"],
    "vitals": ["weight_kg=62.5", "height_cm=165", "temperature_c=36.8", "systolic_bp=120",
               "diastolic_bp=80", "heart_rate=72"],
    "sle_classification": ["ana_titer=1:320", "fever", "joint_involvement",
                           "anti_dsdna_or_anti_smith=yes", "low_c3_and_low_c4"],
    "disease_activity": ["arthritis", "rash", "proteinuria", "low_complement",
                         "increased_dna_binding", "pga=1.5", "new_activity=no",
                         "hemolytic_anemia=no", "gi_activity=no", "maintenance_tolerated=yes"],
    "medication": ["drug=prednisone", "drug_class=glucocorticoid", "dose_mg_per_day=15",
                   "start_date=2023-01-01", "dose_changed_on=2024-12-01"],
    "prior_treatment": ["drug=rituximab", "drug_class=biologic", "start_date=2022-01-01",
                        "stop_date=2022-06-30", "outcome=inadequate_response"],
    "pregnancy_test": ["test_date=2025-02-01", "specimen=serum", "result=negative"],
    "contraception": ["agreed=yes"],
    "exclusion_checklist": [f"{code}=no" for code in EXCLUSION_CHECKLIST],
    "labs": ["upcr_g_per_g=1.2", "egfr_ml_min=95", "c3_g_l=0.6", "c4_g_l=0.08",
             "anti_dsdna_iu_ml=250", "wbc_10e9_l=3.2", "neutrophils_10e9_l=2.1",
             "lymphocytes_10e9_l=0.8", "platelets_10e9_l=140", "hemoglobin_g_l=112"],
    "leukapheresis": ["collected_on=2025-02-10", "coi_id=COI-0001"],
    "product_release": ["lot=L2025-01", "coi_id=COI-0001", "qc=pass", "viable_cells=2.5e8"],
    "lymphodepletion": ["given_on=2025-02-24", "fludarabine_mg=42.5",
                        "cyclophosphamide_mg=1700"],
    "infusion": ["infused_at=2025-03-01T09:30+08:00", "cells=1e8", "coi_id=COI-0001",
                 "dosing_weight_kg=62.5"],
    "visit": ["visit=D28", "status=done", "visit_date=2025-02-27"],
    "cart_persistence": ["sample_date=2025-02-27", "copies_per_ug=12000",
                         "car_cells_per_ul=15.5"],
    "adverse_event": ["term=Cytokine release syndrome", "category=crs", "onset_date=2025-02-02",
                      "grade=2", "serious_criteria=hospitalisation", "expected=yes",
                      "awareness_at=2025-02-02T08:00+08:00",
                      "sponsor_aware_at=2025-02-02T12:00Z", "outcome=recovered",
                      "resolved_on=2025-02-06", "temperature_c=39.1",
                      "hypotension=no_vasopressors", "hypoxia=low_flow", "fever_masked",
                      "ice_score=10", "consciousness=normal", "seizure=none", "motor=none",
                      "cerebral_edema=none"],
    "causality": ["ae_position=17", "relatedness=probable"],
    "sae_report": ["ae_position=17", "report_kind=initial", "sent_at=2025-02-02T20:00+08:00"],
}


# --- codes --------------------------------------------------------------------------------


def test_forms_are_exactly_those_of_the_forms_table() -> None:
    assert set(FORMS) == set(FORMS_TABLE)


@pytest.mark.parametrize("form", sorted(FORMS_TABLE))
def test_each_form_has_the_fields_of_the_table_and_only_documented_additions(form: str) -> None:
    assert set(FORMS[form].field_codes) == FORMS_TABLE[form] | ADDED_FIELDS.get(form, set())


def test_phase_forms_name_their_command() -> None:
    assert PHASE_FORM_COMMANDS == {
        "consent": "trialflow consent",
        "leukapheresis": "trialflow leukapheresis",
        "product_release": "trialflow release",
        "lymphodepletion": "trialflow lymphodepletion",
        "infusion": "trialflow infuse",
        "visit": "trialflow visit",
    }
    assert FORMS["infusion"].command == "trialflow infuse"
    assert FORMS["vitals"].command is None


# --- valid input --------------------------------------------------------------------------


@pytest.mark.parametrize("form", sorted(VALID_INPUT))
def test_every_form_parses_valid_input_into_json_values(form: str) -> None:
    values = parse_form(form, VALID_INPUT[form], today=TODAY)
    given_fields = {token.partition("=")[0] for token in VALID_INPUT[form]}
    assert given_fields <= set(values)
    assert json.loads(json.dumps(values)) == values


def test_every_form_has_a_valid_example() -> None:
    assert set(VALID_INPUT) == set(FORMS)


def test_values_are_typed() -> None:
    vitals = parse_form("vitals", ["weight_kg=62.5", "systolic_bp=120"], today=TODAY)
    assert vitals == {"weight_kg": 62.5, "systolic_bp": 120}
    assert isinstance(vitals["systolic_bp"], int)
    event = parse_form("adverse_event", VALID_INPUT["adverse_event"], today=TODAY)
    assert event["grade"] == 2
    assert event["onset_date"] == "2025-02-02"
    assert event["awareness_at"] == "2025-02-02T08:00:00+08:00"
    assert event["sponsor_aware_at"] == "2025-02-02T12:00:00+00:00"
    assert event["expected"] is True
    assert event["fever_masked"] is True
    assert event["serious_criteria"] == ["hospitalisation"]


def test_output_follows_the_form_field_order() -> None:
    values = parse_form("vitals", ["heart_rate=60", "weight_kg=70"], today=TODAY)
    assert list(values) == ["weight_kg", "heart_rate"]


def test_a_bare_flag_means_yes_and_absent_activity_flags_mean_no() -> None:
    values = parse_form("disease_activity", ["rash", "fever=no", "pga=0.5"], today=TODAY)
    assert values["rash"] is True
    assert values["fever"] is False
    assert values["seizure"] is False
    assert set(SLEDAI2K_DESCRIPTORS) <= set(values)
    assert "new_activity" not in values


def test_absent_classification_criteria_mean_no() -> None:
    values = parse_form("sle_classification", ["ana_titer=80"], today=TODAY)
    assert all(values[code] is False for code in EULAR_ACR_2019_CRITERIA)


def test_absent_ae_flags_stay_absent() -> None:
    values = parse_form(
        "adverse_event", ["term=Rash", "onset_date=2025-02-01", "grade=1"], today=TODAY
    )
    assert "fever_masked" not in values


@pytest.mark.parametrize(
    ("text", "reciprocal"), [("80", 80), ("1:80", 80), ("1:1280", 1280), ("negative", 0)]
)
def test_ana_titer_accepts_reciprocal_and_ratio(text: str, reciprocal: int) -> None:
    values = parse_form("sle_classification", [f"ana_titer={text}"], today=TODAY)
    assert values["ana_titer"] == reciprocal


def test_enum_codes_are_canonical_whatever_the_case() -> None:
    values = parse_form("visit", ["visit=d28", "status=DONE"], today=TODAY)
    assert values == {"visit": "D28", "status": "done"}


@pytest.mark.parametrize(
    ("text", "codes"),
    [
        ("hospitalisation", ["hospitalisation"]),
        ("life_threatening, death", ["death", "life_threatening"]),
        ("none", []),
    ],
)
def test_serious_criteria_is_a_list_in_canonical_order(text: str, codes: list[str]) -> None:
    values = parse_form(
        "adverse_event",
        ["term=Sepsis", "onset_date=2025-02-01", "grade=3", f"serious_criteria={text}",
         "awareness_at=2025-02-01T10:00Z"],
        today=TODAY,
    )
    assert values["serious_criteria"] == codes


def test_text_is_stripped() -> None:
    values = parse_form("causality", ["ae_position= 3 ", "relatedness=possible "], today=TODAY)
    assert values == {"ae_position": 3, "relatedness": "possible"}


def test_a_date_today_is_accepted() -> None:
    values = parse_form("visit", ["visit=D1", "status=done", "visit_date=2025-03-01"], today=TODAY)
    assert values["visit_date"] == "2025-03-01"


# --- bad values ---------------------------------------------------------------------------

BAD_VALUES: list[tuple[str, str, str, list[str]]] = [
    # (form, field, bad value, other tokens the form needs)
    # date
    ("visit", "visit_date", "2025-13-01", ["visit=D1", "status=done"]),
    ("visit", "visit_date", "2025-02-30", ["visit=D1", "status=done"]),
    ("visit", "visit_date", "01/02/2025", ["visit=D1", "status=done"]),
    ("visit", "visit_date", "20250201", ["visit=D1", "status=done"]),
    ("visit", "visit_date", "", ["visit=D1", "status=done"]),
    ("visit", "visit_date", "tomorrow", ["visit=D1", "status=done"]),
    ("visit", "visit_date", "2025-03-02", ["visit=D1", "status=done"]),
    ("demographics", "date_of_birth", "1899-12-31", []),
    ("demographics", "date_of_birth", "2025-02-01T10:00Z", []),
    # datetime
    ("sae_report", "sent_at", "2025-02-01", ["ae_position=1", "report_kind=initial"]),
    ("sae_report", "sent_at", "2025-02-01T10", ["ae_position=1", "report_kind=initial"]),
    ("sae_report", "sent_at", "2025-03-02T00:30", ["ae_position=1", "report_kind=initial"]),
    ("sae_report", "sent_at", "2025-03-02T00:30+08:00", ["ae_position=1", "report_kind=initial"]),
    ("sae_report", "sent_at", "2025-02-01T25:00Z", ["ae_position=1", "report_kind=initial"]),
    ("sae_report", "sent_at", "2025-02-01T10:00+25:00", ["ae_position=1", "report_kind=initial"]),
    ("sae_report", "sent_at", "", ["ae_position=1", "report_kind=initial"]),
    # decimal
    ("vitals", "weight_kg", "abc", []),
    ("vitals", "weight_kg", "", []),
    ("vitals", "weight_kg", "nan", []),
    ("vitals", "weight_kg", "NaN", []),
    ("vitals", "weight_kg", "inf", []),
    ("vitals", "weight_kg", "-Infinity", []),
    ("vitals", "weight_kg", "1e999", []),
    ("vitals", "weight_kg", "1e308", []),
    ("vitals", "weight_kg", "9" * 400, []),
    ("vitals", "weight_kg", "0", []),
    ("vitals", "weight_kg", "-5", []),
    ("vitals", "weight_kg", "400.5", []),
    ("vitals", "weight_kg", "70; DROP TABLE events;--", []),
    ("vitals", "weight_kg", "70' OR '1'='1", []),
    ("vitals", "weight_kg", "0x46", []),
    ("vitals", "weight_kg", "1_000", []),
    ("vitals", "weight_kg", "७०", []),
    ("vitals", "weight_kg", "70 kg", []),
    ("vitals", "temperature_c", "29.9", []),
    ("vitals", "temperature_c", "45.1", []),
    ("labs", "upcr_g_per_g", "-0.1", []),
    ("disease_activity", "pga", "3.5", []),
    # whole number
    ("adverse_event", "grade", "6", ["term=Rash", "onset_date=2025-02-01"]),
    ("adverse_event", "grade", "0", ["term=Rash", "onset_date=2025-02-01"]),
    ("adverse_event", "grade", "2.5", ["term=Rash", "onset_date=2025-02-01"]),
    ("adverse_event", "grade", "two", ["term=Rash", "onset_date=2025-02-01"]),
    ("adverse_event", "grade", "1 OR 1=1", ["term=Rash", "onset_date=2025-02-01"]),
    ("adverse_event", "ice_score", "11", ["term=ICANS", "onset_date=2025-02-01", "grade=1"]),
    ("vitals", "heart_rate", "1e2", []),
    ("causality", "ae_position", "0", ["relatedness=possible"]),
    ("causality", "ae_position", "9" * 40, ["relatedness=possible"]),
    # enum
    ("adverse_event", "category", "mild", ["term=Rash", "onset_date=2025-02-01", "grade=1"]),
    ("adverse_event", "hypoxia", "", ["term=CRS", "onset_date=2025-02-01", "grade=1"]),
    ("causality", "relatedness", "maybe", ["ae_position=1"]),
    ("visit", "visit", "D29", ["status=done"]),
    ("pregnancy_test", "result", "negative'--", ["specimen=serum"]),
    # yes/no
    ("contraception", "agreed", "maybe", []),
    ("contraception", "agreed", "", []),
    ("contraception", "agreed", "1", []),
    # flag
    ("disease_activity", "rash", "present", []),
    # text
    ("adverse_event", "term", "", ["onset_date=2025-02-01", "grade=1"]),
    ("adverse_event", "term", "   ", ["onset_date=2025-02-01", "grade=1"]),
    ("adverse_event", "term", "Rash\x00", ["onset_date=2025-02-01", "grade=1"]),
    ("adverse_event", "term", "Rash\nGrade 5", ["onset_date=2025-02-01", "grade=1"]),
    ("adverse_event", "term", "x" * 201, ["onset_date=2025-02-01", "grade=1"]),
    ("leukapheresis", "coi_id", "COI 1; rm -rf", ["collected_on=2025-02-01"]),
    # list of enum
    ("adverse_event", "serious_criteria", "death,death",
     ["term=Death", "onset_date=2025-02-01", "grade=5", "awareness_at=2025-02-01T10:00Z"]),
    ("adverse_event", "serious_criteria", "death,alive",
     ["term=Death", "onset_date=2025-02-01", "grade=5", "awareness_at=2025-02-01T10:00Z"]),
    ("adverse_event", "serious_criteria", ",",
     ["term=Death", "onset_date=2025-02-01", "grade=5", "awareness_at=2025-02-01T10:00Z"]),
    # titre
    ("sle_classification", "ana_titer", "1:abc", []),
    ("sle_classification", "ana_titer", "-80", []),
    ("sle_classification", "ana_titer", "1:", []),
    ("sle_classification", "ana_titer", "positive", []),
]


@pytest.mark.parametrize(
    ("form", "field", "bad", "others"),
    [pytest.param(*case, id=f"{case[0]}.{case[1]}={case[2][:20]!r}") for case in BAD_VALUES],
)
def test_a_bad_value_is_refused_naming_form_and_field(
    form: str, field: str, bad: str, others: list[str]
) -> None:
    parse_form(form, [*others, *VALID_FOR_FIELD[(form, field)]], today=TODAY)  # others suffice
    with pytest.raises(InvalidInput) as error:
        parse_form(form, [*others, f"{field}={bad}"], today=TODAY)
    assert error.value.field == field
    assert error.value.message.startswith(f"{form}: field {field} must be "), error.value.message
    assert error.value.message.endswith(".")
    assert "\n" not in error.value.message


# A valid value of each field above, so each case proves that only the bad value is refused.
VALID_FOR_FIELD: dict[tuple[str, str], list[str]] = {
    ("visit", "visit_date"): ["visit_date=2025-02-01"],
    ("demographics", "date_of_birth"): ["date_of_birth=1990-01-01"],
    ("sae_report", "sent_at"): ["sent_at=2025-02-01T10:00+08:00"],
    ("vitals", "weight_kg"): ["weight_kg=70"],
    ("vitals", "temperature_c"): ["temperature_c=38"],
    ("vitals", "heart_rate"): ["heart_rate=100"],
    ("labs", "upcr_g_per_g"): ["upcr_g_per_g=0"],
    ("disease_activity", "pga"): ["pga=3"],
    ("adverse_event", "grade"): ["grade=5"],
    ("adverse_event", "ice_score"): ["ice_score=0"],
    ("adverse_event", "category"): ["category=other"],
    ("adverse_event", "hypoxia"): ["hypoxia=positive_pressure"],
    ("adverse_event", "term"): ["term=Rash"],
    ("adverse_event", "serious_criteria"): ["serious_criteria=death"],
    ("causality", "ae_position"): ["ae_position=1"],
    ("causality", "relatedness"): ["relatedness=not_related"],
    ("visit", "visit"): ["visit=D360"],
    ("pregnancy_test", "result"): ["result=positive"],
    ("contraception", "agreed"): ["agreed=no"],
    ("disease_activity", "rash"): ["rash=yes"],
    ("leukapheresis", "coi_id"): ["coi_id=COI-1"],
    ("sle_classification", "ana_titer"): ["ana_titer=1:80"],
}


def test_a_future_date_message_says_so() -> None:
    with pytest.raises(InvalidInput, match="not in the future"):
        parse_form("visit", ["visit=D1", "status=done", "visit_date=2025-03-02"], today=TODAY)


def test_a_datetime_without_offset_is_kept_as_local_time_at_the_site() -> None:
    """The one rule of clinical date-times (workflow/clinical_time.py): a form does not know
    the site, so the value stays naive; the decision gives it the site's offset."""
    values = parse_form("infusion", ["infused_at=2025-02-01T10:00", "cells=1e8",
                                     "coi_id=C1"], today=TODAY)
    assert values["infused_at"] == "2025-02-01T10:00:00"
    assert localise_times("infusion", values, ZoneInfo("Asia/Shanghai"))["infused_at"] == \
        "2025-02-01T10:00:00+08:00"
    typed = parse_form("sae_report", ["ae_position=1", "report_kind=initial",
                                      "sent_at=2025-02-01T10:00Z"], today=TODAY)
    assert localise_times("sae_report", typed, ZoneInfo("Asia/Shanghai")) == typed


def test_a_bare_date_is_no_datetime_and_the_message_says_so() -> None:
    with pytest.raises(InvalidInput, match="a date alone is not a time") as error:
        parse_form("infusion", ["infused_at=2025-02-01", "cells=1e8", "coi_id=C1"],
                   today=TODAY)
    assert error.value.field == "infused_at"


def test_a_long_bad_value_is_shortened_in_the_message() -> None:
    with pytest.raises(InvalidInput) as error:
        parse_form("vitals", ["weight_kg=" + "9" * 5000], today=TODAY)
    assert len(error.value.message) < 200


# --- unknown, repeated, missing -----------------------------------------------------------


def test_an_unknown_form_is_refused() -> None:
    with pytest.raises(InvalidInput, match="did you mean vitals") as error:
        parse_form("vital", ["weight_kg=70"], today=TODAY)
    assert error.value.field == "form"


def test_an_unknown_field_is_refused_with_a_suggestion() -> None:
    with pytest.raises(InvalidInput, match="did you mean weight_kg") as error:
        parse_form("vitals", ["weigth_kg=70"], today=TODAY)
    assert error.value.field == "weigth_kg"
    assert error.value.message.startswith("vitals: field 'weigth_kg' is not a field")


def test_a_field_given_twice_is_refused() -> None:
    with pytest.raises(InvalidInput, match="more than once") as error:
        parse_form("vitals", ["weight_kg=70", "weight_kg=71"], today=TODAY)
    assert error.value.field == "weight_kg"


@pytest.mark.parametrize(("form", "token"), [("vitals", "weight_kg"), ("contraception", "agreed")])
def test_only_flags_may_be_bare(form: str, token: str) -> None:
    with pytest.raises(InvalidInput, match="needs a value") as error:
        parse_form(form, [token], today=TODAY)
    assert error.value.field == token


@pytest.mark.parametrize(
    ("form", "tokens", "missing"),
    [
        ("adverse_event", ["term=Rash", "onset_date=2025-02-01"], "grade"),
        ("adverse_event", ["grade=1", "onset_date=2025-02-01"], "term"),
        ("adverse_event", ["term=Rash", "grade=1"], "onset_date"),
        ("causality", ["ae_position=1"], "relatedness"),
        ("causality", ["relatedness=possible"], "ae_position"),
        ("sae_report", ["ae_position=1", "report_kind=initial"], "sent_at"),
        ("sae_report", ["ae_position=1", "sent_at=2025-02-01T10:00Z"], "report_kind"),
        ("infusion", ["infused_at=2025-02-01T10:00Z", "cells=1e8"], "coi_id"),
        ("exclusion_checklist", [f"{code}=no" for code in EXCLUSION_CHECKLIST[1:]],
         EXCLUSION_CHECKLIST[0]),
        ("medication", ["drug=hydroxychloroquine"], "drug_class"),
        ("consent", ["consent_form_version=2"], "consent_date"),
    ],
)
def test_a_missing_required_field_is_named(form: str, tokens: list[str], missing: str) -> None:
    with pytest.raises(InvalidInput) as error:
        parse_form(form, tokens, today=TODAY)
    assert error.value.message == f"{form}: required field {missing} is missing."
    assert error.value.field == missing


@pytest.mark.parametrize("form", ["vitals", "labs", "disease_activity", "sle_classification",
                                  "lymphodepletion", "cart_persistence", "demographics"])
def test_a_form_without_any_value_is_refused(form: str) -> None:
    needed = {"lymphodepletion": ["given_on=2025-02-01"]}.get(form, [])
    with pytest.raises(InvalidInput, match="at least one of the fields"):
        parse_form(form, needed, today=TODAY)


# --- cross-field rules --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("form", "tokens", "field"),
    [
        ("medication", ["drug=azathioprine", "drug_class=immunosuppressant",
                        "start_date=2024-05-01", "stop_date=2024-04-30"], "stop_date"),
        ("medication", ["drug=azathioprine", "drug_class=immunosuppressant",
                        "start_date=2024-05-01", "dose_changed_on=2024-01-01"], "dose_changed_on"),
        ("prior_treatment", ["drug=rituximab", "drug_class=biologic", "start_date=2024-05-01",
                             "stop_date=2024-04-30"], "stop_date"),
        ("adverse_event", ["term=Rash", "onset_date=2025-02-10", "grade=1",
                           "resolved_on=2025-02-09"], "resolved_on"),
        ("adverse_event", ["term=Sepsis", "onset_date=2025-02-10", "grade=3",
                           "serious_criteria=hospitalisation"], "awareness_at"),
        ("medication", ["drug=aspirin", "drug_class=glucocorticoid"], "drug"),
    ],
)
def test_cross_field_rules(form: str, tokens: list[str], field: str) -> None:
    with pytest.raises(InvalidInput) as error:
        parse_form(form, tokens, today=TODAY)
    assert error.value.field == field
    assert error.value.message.startswith(f"{form}: field {field} ")


def test_a_known_glucocorticoid_in_any_case_is_accepted() -> None:
    values = parse_form(
        "medication", ["drug=Methylprednisolone", "drug_class=glucocorticoid",
                       "dose_mg_per_day=6"], today=TODAY,
    )
    assert values["drug"] == "Methylprednisolone"


def test_a_non_serious_event_needs_no_awareness_time() -> None:
    values = parse_form(
        "adverse_event", ["term=Rash", "onset_date=2025-02-10", "grade=1", "serious_criteria=none"],
        today=TODAY,
    )
    assert values["serious_criteria"] == []


# --- typed input and corrections ----------------------------------------------------------


def test_validate_values_accepts_typed_values() -> None:
    values = validate_values(
        "adverse_event",
        {
            "term": "CRS",
            "onset_date": date(2025, 2, 1),
            "grade": 3,
            "serious_criteria": ["life_threatening"],
            "awareness_at": datetime(2025, 2, 1, 9, 0, tzinfo=timezone(timedelta(hours=8))),
            "expected": False,
            "temperature_c": 39,
        },
        today=TODAY,
    )
    assert values["onset_date"] == "2025-02-01"
    assert values["awareness_at"] == "2025-02-01T09:00:00+08:00"
    assert values["temperature_c"] == 39.0
    assert values["expected"] is False


@pytest.mark.parametrize(
    ("form", "field", "value"),
    [
        ("vitals", "weight_kg", True),
        ("vitals", "weight_kg", float("nan")),
        ("vitals", "weight_kg", float("inf")),
        ("vitals", "weight_kg", None),
        ("vitals", "weight_kg", [70]),
        ("vitals", "heart_rate", 72.0),
        ("visit", "visit_date", datetime(2025, 2, 1, 10, 0, tzinfo=UTC)),
        ("visit", "visit_date", date(2025, 3, 2)),
        ("sae_report", "sent_at", date(2025, 2, 1)),
        ("sae_report", "sent_at", datetime(2025, 3, 2, 10, 0, tzinfo=UTC)),
        ("adverse_event", "term", 42),
        ("adverse_event", "serious_criteria", ["death", 3]),
        ("contraception", "agreed", 1),
        ("causality", "relatedness", None),
    ],
)
def test_validate_values_refuses_wrong_types(form: str, field: str, value: object) -> None:
    with pytest.raises(InvalidInput) as error:
        validate_values(form, {field: value}, today=TODAY, partial=True)
    assert error.value.field == field
    assert error.value.message.startswith(f"{form}: field {field} must be ")


def test_a_partial_correction_checks_only_the_fields_given() -> None:
    assert validate_values("adverse_event", {"grade": "4"}, today=TODAY, partial=True) == {
        "grade": 4
    }
    assert parse_form("disease_activity", ["pga=1"], today=TODAY, partial=True) == {"pga": 1.0}
    with pytest.raises(InvalidInput, match="required field"):
        validate_values("adverse_event", {"grade": 4}, today=TODAY)


def test_a_partial_correction_still_refuses_unknown_fields() -> None:
    with pytest.raises(InvalidInput, match="is not a field of this form"):
        validate_values("adverse_event", {"severity": 4}, today=TODAY, partial=True)


# --- assessment dates ---------------------------------------------------------------------

RECORDED_ON = date(2025, 2, 20)


@pytest.mark.parametrize(
    "form",
    ["consent", "demographics", "sle_classification", "medication", "prior_treatment",
     "product_release", "adverse_event", "causality", "sae_report"],
)
def test_history_and_safety_forms_have_no_assessment_date(form: str) -> None:
    values = parse_form(form, VALID_INPUT[form], today=TODAY)
    assert assessment_date(form, values, RECORDED_ON) is None


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        ("vitals", RECORDED_ON),
        ("labs", RECORDED_ON),
        ("disease_activity", RECORDED_ON),
        ("exclusion_checklist", RECORDED_ON),
        ("contraception", RECORDED_ON),
        ("pregnancy_test", date(2025, 2, 1)),
        ("cart_persistence", date(2025, 2, 27)),
        ("leukapheresis", date(2025, 2, 10)),
        ("lymphodepletion", date(2025, 2, 24)),
        ("infusion", date(2025, 3, 1)),
        ("visit", date(2025, 2, 27)),
    ],
)
def test_assessments_are_dated_by_their_date_field_or_the_record(
    form: str, expected: date
) -> None:
    values = parse_form(form, VALID_INPUT[form], today=TODAY)
    assert assessment_date(form, values, RECORDED_ON) == expected


def test_an_assessment_without_its_date_field_takes_the_record_date() -> None:
    values = parse_form("pregnancy_test", ["specimen=urine", "result=negative"], today=TODAY)
    assert assessment_date("pregnancy_test", values, RECORDED_ON) == RECORDED_ON


def test_every_form_is_classified() -> None:
    history = {"consent", "demographics", "sle_classification", "medication", "prior_treatment",
               "product_release", "adverse_event", "causality", "sae_report"}
    assert {code for code, spec in FORMS.items() if not spec.assessment} == history


# --- describe -----------------------------------------------------------------------------


def _described_field(form: str, field: str) -> dict[str, object]:
    entry = next(entry for entry in describe_forms() if entry["form"] == form)
    fields = entry["fields"]
    assert isinstance(fields, list)
    found: dict[str, object] = next(item for item in fields if item["field"] == field)
    return found


def test_describe_forms_lists_every_form_field_and_command() -> None:
    described = {entry["form"]: entry for entry in describe_forms()}
    assert set(described) == set(FORMS)
    assert described["infusion"]["command"] == "trialflow infuse"
    assert described["vitals"]["command"] is None
    weight = _described_field("vitals", "weight_kg")
    assert (weight["kind"], weight["unit"], weight["maximum"]) == ("decimal", "kg", 400)
    assert _described_field("demographics", "sex")["allowed"] == ["female", "male"]
    assert _described_field("adverse_event", "grade")["required"] is True
    json.dumps(describe_forms())


def test_every_field_kind_is_used() -> None:
    used = {field.kind for spec in FORMS.values() for field in spec.fields}
    assert used == set(Kind)


# --- property tests -----------------------------------------------------------------------

FORM_NAMES = sorted(FORMS)
FIELDS = sorted({(form, field) for form in FORMS for field in FORMS[form].field_codes})


@settings(max_examples=400, deadline=None)
@given(form=st.sampled_from(FORM_NAMES), tokens=st.lists(st.text(max_size=40), max_size=5))
def test_random_tokens_raise_only_invalid_input(form: str, tokens: list[str]) -> None:
    try:
        values = parse_form(form, tokens, today=TODAY)
    except InvalidInput as error:
        assert "\n" not in error.message
    else:
        json.dumps(values)


@settings(max_examples=600, deadline=None)
@given(case=st.sampled_from(FIELDS), value=st.text(max_size=40))
def test_random_values_of_every_field_raise_only_invalid_input(
    case: tuple[str, str], value: str
) -> None:
    form, field = case
    try:
        values = parse_form(form, [f"{field}={value}"], today=TODAY, partial=True)
    except InvalidInput as error:
        assert error.field == field
        assert "\n" not in error.message
    else:
        json.dumps(values)


TYPED_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
    st.dates(), st.datetimes(timezones=st.none() | st.timezones()),
    st.lists(st.text(max_size=10), max_size=3),
)


@settings(max_examples=600, deadline=None)
@given(case=st.sampled_from(FIELDS), value=TYPED_VALUES)
def test_random_typed_values_raise_only_invalid_input(case: tuple[str, str], value: object) -> None:
    form, field = case
    try:
        values = validate_values(form, {field: value}, today=TODAY, partial=True)
    except InvalidInput as error:
        assert error.field == field
    else:
        json.dumps(values)


@settings(max_examples=100, deadline=None)
@given(form=st.text(max_size=30))
def test_random_form_names_raise_only_invalid_input(form: str) -> None:
    if form in FORMS:
        return
    with pytest.raises(InvalidInput):
        parse_form(form, [], today=TODAY)
