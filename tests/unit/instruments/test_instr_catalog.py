"""`trialflow calc` face: every instrument through catalog.run, good and bad input."""

from __future__ import annotations

import json

import pytest

from workflow.errors import InvalidInput
from workflow.instruments.catalog import INPUT_TYPES, INSTRUMENTS, describe_all, run

NAMES = [
    "sledai2k", "eular-acr-2019", "lldas", "renal-response", "crs", "icans", "ctcae",
    "seriousness", "prednisone-equivalent", "bsa", "cart-dose", "lymphodepletion-dose",
    "study-day",
]

# (instrument, words, expected key/values) - the examples first.
GOOD = [
    ("sledai2k", "arthritis proteinuria low_complement", {"score": 10}),
    ("eular-acr-2019", "ana_titer=160 joint_involvement anti_dsdna_or_anti_smith",
     {"classified": True, "points": 12}),
    ("lldas", "rash alopecia pga=0.5 prednisone_mg_per_day=5 new_activity=no "
     "maintenance_tolerated=yes", {"met": True}),
    ("crs", "temperature_c=39 hypotension=one_vasopressor hypoxia=low_flow", {"grade": 3}),
    ("icans", "ice_score=5", {"grade": 2}),
    ("prednisone-equivalent", "drug=methylprednisolone dose_mg=8", {"prednisone_mg": 10.0}),
    ("bsa", "height_cm=170 weight_kg=60", {"bsa_m2": 1.68}),
    ("renal-response", "baseline_upcr=2.0 upcr=0.4 baseline_egfr=80 egfr=78",
     {"response": "complete"}),
    # more of each instrument
    ("sledai2k", "", {"score": 0}),
    ("sledai2k", "seizure=yes rash=no", {"score": 8}),
    ("sledai2k", "arthritis baseline_score=12", {"score": 4, "reduction": 8, "improved": True}),
    ("eular-acr-2019", "ana_titer=1:80 renal_biopsy_class_3_or_4",
     {"classified": True, "points": 10}),
    ("eular-acr-2019", "joint_involvement anti_dsdna_or_anti_smith",
     {"classified": False, "entry_criterion_met": False}),
    ("eular_acr_2019", "ana_titer=40 joint_involvement anti_dsdna_or_anti_smith",
     {"classified": False, "points": 12}),
    ("lldas", "pga=1 prednisone_mg_per_day=7.6 new_activity=no maintenance_tolerated=yes",
     {"met": False}),
    ("lldas", "pga=1 prednisone_mg_per_day=7.5 new_activity=no maintenance_tolerated",
     {"met": True}),
    ("lldas", "fever pga=0 prednisone_mg_per_day=0 new_activity=no maintenance_tolerated=yes",
     {"met": False, "sledai2k": 1}),
    ("renal-response", "baseline_upcr=2 upcr=0.9 baseline_egfr=70 egfr=63",
     {"response": "partial"}),
    ("renal-response", "baseline_upcr=2 upcr=0.4 baseline_egfr=80 egfr=78 rescue_therapy",
     {"response": "none"}),
    ("renal_response", "baseline_upcr=0.3 upcr=0.1 baseline_egfr=80 egfr=78",
     {"response": "not_applicable"}),
    ("crs", "temperature_c=37.9", {"grade": 0}),
    ("crs", "temperature_c=38.0", {"grade": 1}),
    ("crs", "fever_masked hypoxia=positive_pressure", {"grade": 4}),
    ("icans", "ice_score=7", {"grade": 1}),
    ("icans", "ice_score=6", {"grade": 2}),
    ("icans", "ice_score=10", {"grade": 0}),
    ("icans", "ice_score=0 consciousness=unarousable", {"grade": 4}),
    ("icans", "orientation=4 naming=3 commands=1 writing=0 attention=0 seizure=rapidly_resolving",
     {"grade": 3, "ice_score": 8}),
    ("icans", "ice_score=9 cerebral_edema=diffuse", {"grade": 4}),
    ("ctcae", "grade=3", {"grade": 3, "label": "severe or medically significant"}),
    ("ctcae", "grade=5", {"label": "death related to the AE"}),
    ("seriousness", "serious_criteria=death,hospitalisation grade=5",
     {"serious": True, "serious_criteria": ["death", "hospitalisation"]}),
    ("seriousness", "serious_criteria=none grade=2", {"serious": False}),
    ("seriousness", "", {"serious": False, "grade": None}),
    ("seriousness", "serious_criteria=hospitalisation grade=4",
     {"serious": True, "grade_label": "life-threatening"}),
    ("prednisone-equivalent", "drug=methylprednisolone dose_mg=6", {"prednisone_mg": 7.5}),
    ("prednisone-equivalent", "drug=hydrocortisone dose_mg=20", {"prednisone_mg": 5.0}),
    ("bsa", "height_cm=180 weight_kg=80", {"bsa_m2": 2.0}),
    ("cart-dose", "cohort=1 weight_kg=60", {"target_cells": 60_000_000}),
    ("cart-dose", "cohort=2", {"target_cells": 100_000_000, "dose_basis": "flat"}),
    ("cart-dose", "enrolment_order=4 weight_kg=70 cells=1.2e8",
     {"cohort": 2, "within_tolerance": True, "enrolment_order": 4}),
    ("cart-dose", "cohort=1 weight_kg=60 cells=72000001",
     {"within_tolerance": False, "deviation_required": True}),
    ("lymphodepletion-dose", "bsa_m2=1.68",
     {"fludarabine_mg_per_day": 42.0, "cyclophosphamide_mg": 1680.0}),
    ("lymphodepletion-dose", "height_cm=170 weight_kg=60",
     {"bsa_m2": 1.68, "fludarabine_total_mg": 126.0}),
    ("study-day", "infusion_date=2025-03-10 date=2025-04-07",
     {"study_day": 28, "visit_windows": ["D28"]}),
    ("study-day", "infusion_date=2025-03-10 day=-5", {"date": "2025-03-05", "study_day": -5}),
]


@pytest.mark.parametrize(("name", "words", "expected"), GOOD)
def test_run(name: str, words: str, expected: dict[str, object]) -> None:
    answer = run(name, words.split())
    for key, value in expected.items():
        assert answer[key] == value, key
    assert isinstance(answer["explanation"], str) and answer["explanation"]
    assert answer["instrument"] == name.replace("_", "-")
    assert json.loads(json.dumps(answer)) == answer


def test_every_instrument_is_listed_in_order() -> None:
    assert list(INSTRUMENTS) == NAMES
    listed = describe_all()
    assert [item["name"] for item in listed] == NAMES
    for item in listed:
        assert item["description"] and item["source"]
        inputs = item["inputs"]
        assert isinstance(inputs, list) and inputs
        for spec in inputs:
            assert set(spec) >= {"name", "type", "unit", "allowed", "default", "required"}
    json.dumps(listed)


def test_every_instrument_has_a_good_example() -> None:
    assert {name.replace("_", "-") for name, _, _ in GOOD} == set(NAMES)


def test_study_day_without_date_lists_every_visit_window() -> None:
    answer = run("study-day", ["infusion_date=2025-03-10"])
    visits = answer["visits"]
    assert isinstance(visits, list) and len(visits) == 12
    assert visits[6] == {
        "visit": "D28", "target_day": 28, "window_days": 2, "target_date": "2025-04-07",
        "window_start": "2025-04-05", "window_end": "2025-04-09",
    }


def test_lymphodepletion_schedule_is_dated_with_an_infusion_date() -> None:
    answer = run("lymphodepletion-dose", ["bsa_m2=1.7", "infusion_date=2025-03-10"])
    schedule = answer["schedule"]
    assert isinstance(schedule, list)
    assert schedule[0] == {"day": -5, "date": "2025-03-05", "drug": "fludarabine",
                           "dose_mg": 42.5}


BAD = [
    ("sledai2k", "arthritus", "arthritus"),
    ("sledai2k", "arthritis arthritis", "arthritis"),
    ("sledai2k", "arthritis=maybe", "arthritis"),
    ("sledai2k", "baseline_score=200", "baseline_score"),
    ("eular-acr-2019", "ana_titer=abc joint_involvement", "ana_titer"),
    ("eular-acr-2019", "ana_titer=1:0", "ana_titer"),
    ("eular-acr-2019", "ana_titer=-5", "ana_titer"),
    ("eular-acr-2019", "ana_titer", "ana_titer"),
    ("lldas", "pga=0.5 prednisone_mg_per_day=5 new_activity=no", "maintenance_tolerated"),
    ("lldas", "pga=abc prednisone_mg_per_day=5 new_activity=no maintenance_tolerated=yes", "pga"),
    ("lldas", "pga=4 prednisone_mg_per_day=5 new_activity=no maintenance_tolerated=yes", "pga"),
    ("renal-response", "baseline_upcr=2 upcr=0.4 baseline_egfr=80", "egfr"),
    ("renal-response", "baseline_upcr=2 upcr=nan baseline_egfr=80 egfr=78", "upcr"),
    ("renal-response", "baseline_upcr=2 upcr=0.4 baseline_egfr=0 egfr=78", "baseline_egfr"),
    ("crs", "hypotension=one_vasopressor", "temperature_c"),
    ("crs", "temperature_c=inf", "temperature_c"),
    ("crs", "temperature_c=39 hypoxia=nasal", "hypoxia"),
    ("icans", "ice_score=11", "ice_score"),
    ("icans", "", "ice_score"),
    ("icans", "ice_score=2.5", "ice_score"),
    ("icans", "orientation=4 naming=3", "commands"),
    ("icans", "ice_score=9 orientation=4 naming=3 commands=1 writing=1 attention=1", "ice_score"),
    ("icans", "ice_score=5 consciousness=unarousable", "ice_score"),
    ("ctcae", "grade=7", "grade"),
    ("ctcae", "", "grade"),
    ("ctcae", "grade=", "grade"),
    ("seriousness", "serious_criteria=hospitalisation grade=5", "serious_criteria"),
    ("seriousness", "serious_criteria=death grade=3", "grade"),
    ("seriousness", "serious_criteria=death,admission", "serious_criteria"),
    ("prednisone-equivalent", "drug=cortisol dose_mg=5", "drug"),
    ("prednisone-equivalent", "drug=prednisone dose_mg=-5", "dose_mg"),
    ("prednisone-equivalent", "drug=prednisone", "dose_mg"),
    ("bsa", "height_cm=170 weight_kg=-60", "weight_kg"),
    ("bsa", "height_cm=170", "weight_kg"),
    ("bsa", "height_cm=1_70 weight_kg=60", "height_cm"),
    ("cart-dose", "cohort=3 weight_kg=60", "cohort"),
    ("cart-dose", "cohort=1", "weight_kg"),
    ("cart-dose", "weight_kg=60", "cohort"),
    ("cart-dose", "cohort=1 enrolment_order=1 weight_kg=60", "cohort"),
    ("cart-dose", "enrolment_order=7 weight_kg=60", "enrolment_order"),
    ("cart-dose", "cohort=2 cells=6.5", "cells"),
    ("lymphodepletion-dose", "", "bsa_m2"),
    ("lymphodepletion-dose", "bsa_m2=1.7 height_cm=170", "bsa_m2"),
    ("lymphodepletion-dose", "height_cm=170", "weight_kg"),
    ("lymphodepletion-dose", "bsa_m2=-1", "bsa_m2"),
    ("study-day", "date=2025-03-10", "infusion_date"),
    ("study-day", "infusion_date=2025-02-30", "infusion_date"),
    ("study-day", "infusion_date=10/03/2025", "infusion_date"),
    ("study-day", "infusion_date=2025-03-10 date=2025-03-11 day=1", "date"),
    ("study-day", "infusion_date=2025-03-10 day=1.5", "day"),
]


@pytest.mark.parametrize(("name", "words", "field"), BAD)
def test_bad_input(name: str, words: str, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        run(name, words.split())
    assert caught.value.field == field
    message = caught.value.message
    assert message.endswith(".")
    assert field in message


def test_every_instrument_refuses_an_unknown_input() -> None:
    for name in NAMES:
        with pytest.raises(InvalidInput) as caught:
            run(name, ["colour=blue"])
        assert caught.value.field == "colour"


def test_unknown_instrument() -> None:
    with pytest.raises(InvalidInput) as caught:
        run("sledai", [])
    assert caught.value.field == "instrument"
    assert "sledai2k" in caught.value.message


def test_a_single_string_of_args_is_refused() -> None:
    with pytest.raises(InvalidInput) as caught:
        run("sledai2k", "arthritis")
    assert caught.value.field == "args"


def test_missing_name_before_equals() -> None:
    with pytest.raises(InvalidInput) as caught:
        run("bsa", ["=170"])
    assert caught.value.field == "args"


def test_hyphenated_input_names_are_accepted() -> None:
    assert run("sledai2k", ["low-complement"])["score"] == 2


def test_every_input_has_a_known_type_and_described_range() -> None:
    for spec in INSTRUMENTS.values():
        for item in spec.inputs:
            assert item.type in INPUT_TYPES, (spec.name, item.name)
            if item.type == "choice":
                assert item.allowed, (spec.name, item.name)
            if item.minimum is not None and item.maximum is not None:
                assert item.minimum <= item.maximum
