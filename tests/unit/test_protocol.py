"""The protocol as data: the shipped IM19-SLE versions and the refusal of broken files."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workflow.errors import InvalidInput
from workflow.instruments.codes import EXCLUSION_CHECKLIST, VISITS
from workflow.protocol import (
    Protocol,
    builtin_protocol,
    builtin_protocol_text,
    default_protocol,
    load_protocol_file,
    load_protocol_text,
    protocol_hash,
)

SOURCE = "protocols/broken.toml"
V2_TEXT = builtin_protocol_text(2)

EXPECTED_WINDOWS = {
    "D1": 0, "D4": 1, "D7": 1, "D10": 1, "D14": 2, "D21": 2, "D28": 2,
    "D60": 7, "D90": 7, "D180": 14, "D270": 14, "D360": 14,
}


# --- the shipped versions -----------------------------------------------------------------


def test_default_protocol_is_version_2() -> None:
    assert default_protocol() == builtin_protocol(2)
    assert default_protocol().version == 2


@pytest.mark.parametrize(
    ("attribute", "expected"),
    [
        ("version", 2),
        ("registry_id", "NCT06513429"),
        ("enrolment_cap", 6),
        ("replace_before_infusion", True),
        ("dose_tolerance_pct", 20),
        ("screening_window_days", 28),
        ("screening_expiring_lead_days", 7),
        ("age_min_years", 18),
        ("age_max_years", 65),
        ("weight_min_kg", 40),
        ("sledai2k_min", 10),
        ("sledai2k_lookback_days", 30),
        ("exclusion_checklist", EXCLUSION_CHECKLIST),
        ("window_opening_lead_days", 3),
        ("ae_window_start_day", 0),
        ("ae_window_end_day", 28),
        ("sae_report_hours", 24),
        ("expedited_fatal_days", 7),
        ("expedited_fatal_complete_days", 8),
        ("expedited_other_days", 15),
        ("lloq_copies_per_ug", 50),
        ("lldas_visits", ("D180", "D360")),
        ("sledai2k_visits", ("D90", "D180", "D360")),
        ("sledai2k_improvement_points", 4),
        ("persistence_visits", ("D90", "D180", "D360")),
    ],
)
def test_version_2_holds_the_registry_and_default_values(attribute: str, expected: object) -> None:
    assert getattr(builtin_protocol(2), attribute) == expected


def test_version_2_has_two_cohorts_by_enrolment_order() -> None:
    protocol = builtin_protocol(2)
    for order in (1, 2, 3):
        cohort = protocol.cohort_for(order)
        assert cohort.dose_per_kg == 1e6
        assert cohort.flat_dose is None
        assert cohort.target_cells(70) == pytest.approx(7e7)
    for order in (4, 5, 6):
        cohort = protocol.cohort_for(order)
        assert cohort.flat_dose == 1e8
        assert cohort.dose_per_kg is None
        assert cohort.target_cells(70) == 1e8
    assert protocol.cohort_for(1).code != protocol.cohort_for(4).code


def test_version_1_has_three_subjects_at_1e6_per_kg_and_lldas_at_d360_only() -> None:
    protocol = builtin_protocol(1)
    assert protocol.version == 1
    assert protocol.enrolment_cap == 3
    assert len(protocol.cohorts) == 1
    assert all(protocol.cohort_for(order).dose_per_kg == 1e6 for order in (1, 2, 3))
    assert protocol.lldas_visits == ("D360",)


def test_versions_differ_only_where_the_amendment_changed_them() -> None:
    first, second = builtin_protocol(1), builtin_protocol(2)
    assert first.visits == second.visits
    assert first.lymphodepletion == second.lymphodepletion
    assert first.background_therapy == second.background_therapy
    assert (first.enrolment_cap, first.lldas_visits) != (second.enrolment_cap, second.lldas_visits)


@pytest.mark.parametrize("order", [0, 7, -1])
def test_an_enrolment_place_outside_the_cap_has_no_cohort(order: int) -> None:
    with pytest.raises(InvalidInput, match=r"outside 1\.\.6") as error:
        builtin_protocol(2).cohort_for(order)
    assert error.value.field == "enrolment_order"


def test_background_therapy_thresholds() -> None:
    therapy = builtin_protocol(2).background_therapy
    assert therapy.glucocorticoid_max_mg_per_day == 30
    assert therapy.glucocorticoid_stable_days == 7
    assert therapy.glucocorticoid_max_change_mg_per_day == 5
    assert therapy.antimalarial_immunosuppressant_started_days == 84
    assert therapy.antimalarial_immunosuppressant_stable_days == 56
    assert therapy.biologic_stopped_days == 28


def test_lymphodepletion_regimen_and_infusion_window() -> None:
    regimen = builtin_protocol(2).lymphodepletion
    fludarabine, cyclophosphamide = regimen.drug("fludarabine"), regimen.drug("cyclophosphamide")
    assert fludarabine is not None
    assert cyclophosphamide is not None
    assert (fludarabine.mg_per_m2, fludarabine.days) == (25, (-5, -4, -3))
    assert (cyclophosphamide.mg_per_m2, cyclophosphamide.days) == (1000, (-3,))
    assert regimen.days == (-5, -4, -3)
    assert (regimen.first_day, regimen.last_day) == (-5, -3)
    assert [drug.drug for drug in regimen.drugs_on(-3)] == ["fludarabine", "cyclophosphamide"]
    assert [drug.drug for drug in regimen.drugs_on(-4)] == ["fludarabine"]
    assert (regimen.infusion_window_min_days, regimen.infusion_window_max_days) == (2, 7)
    assert regimen.drug("bendamustine") is None


def test_visit_schedule_has_every_visit_with_its_window() -> None:
    protocol = builtin_protocol(2)
    assert protocol.visit_codes == VISITS
    for code, window in EXPECTED_WINDOWS.items():
        visit = protocol.visit(code)
        assert visit.target_day == int(code[1:])
        assert visit.window_days == window
        assert (visit.earliest_day, visit.latest_day) == (
            visit.target_day - window, visit.target_day + window,
        )
    assert protocol.final_visit.code == "D360"


def test_endpoint_visits_name_the_forms_they_need() -> None:
    protocol = builtin_protocol(2)
    assert "disease_activity" in protocol.visit("D360").required_forms
    assert "labs" in protocol.visit("D180").required_forms
    assert protocol.visit("D1").required_forms == ()


def test_an_unknown_visit_is_refused() -> None:
    with pytest.raises(InvalidInput, match="D29") as error:
        builtin_protocol(2).visit("D29")
    assert error.value.field == "visit"


def test_renal_thresholds() -> None:
    renal = builtin_protocol(2).renal
    assert renal.visits == ("D180", "D360")
    assert renal.involvement_upcr_min_g_per_g == 0.5
    assert renal.complete_upcr_below_g_per_g == 0.5
    assert renal.partial_reduction_min_pct == 50
    assert renal.partial_upcr_below_g_per_g == 3.0
    assert renal.egfr_min_pct_of_baseline == 90


def test_unknown_builtin_version_is_refused() -> None:
    with pytest.raises(InvalidInput, match="version 3") as error:
        builtin_protocol(3)
    assert error.value.field == "version"


# --- hashing and files --------------------------------------------------------------------


def test_protocol_hash_is_sha256_of_the_utf8_text() -> None:
    text = builtin_protocol_text(2)
    assert protocol_hash(text) == hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", protocol_hash(text))
    assert protocol_hash(builtin_protocol_text(1)) != protocol_hash(text)
    assert protocol_hash("é") == hashlib.sha256("é".encode()).hexdigest()


def test_a_file_loads_like_the_builtin_text(tmp_path: Path) -> None:
    path = tmp_path / "im19.toml"
    path.write_text(builtin_protocol_text(1), encoding="utf-8")
    assert load_protocol_file(path) == builtin_protocol(1)
    assert load_protocol_file(str(path)) == builtin_protocol(1)


def test_a_missing_file_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(InvalidInput, match=r"absent\.toml: the protocol file cannot be read"):
        load_protocol_file(path)


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes("title = 'Sjögren'".encode("latin-1"))
    with pytest.raises(InvalidInput, match=r"latin1\.toml: the protocol file is not UTF-8"):
        load_protocol_file(path)


# --- with_cap -----------------------------------------------------------------------------


@pytest.mark.parametrize(("cap", "per_kg_last"), [(100, 50), (10, 5), (7, 4), (2, 1), (6, 3)])
def test_with_cap_scales_the_cohorts(cap: int, per_kg_last: int) -> None:
    protocol = builtin_protocol(2).with_cap(cap)
    assert protocol.enrolment_cap == cap
    assert protocol.cohort_for(per_kg_last).per_kg
    assert not protocol.cohort_for(per_kg_last + 1).per_kg
    assert not protocol.cohort_for(cap).per_kg
    with pytest.raises(InvalidInput):
        protocol.cohort_for(cap + 1)
    assert builtin_protocol(2).enrolment_cap == 6


def test_with_cap_of_one_keeps_only_the_first_cohort() -> None:
    protocol = builtin_protocol(2).with_cap(1)
    assert [cohort.code for cohort in protocol.cohorts] == ["1e6_per_kg"]


def test_with_cap_on_version_1_keeps_one_per_kg_cohort() -> None:
    protocol = builtin_protocol(1).with_cap(10)
    assert len(protocol.cohorts) == 1
    assert protocol.cohort_for(10).dose_per_kg == 1e6


@pytest.mark.parametrize("cap", [0, -3])
def test_with_cap_refuses_a_cap_below_one(cap: int) -> None:
    with pytest.raises(InvalidInput, match="cap"):
        builtin_protocol(2).with_cap(cap)


# --- broken files -------------------------------------------------------------------------


def _replace(old: str, new: str) -> Callable[[str], str]:
    def mutate(text: str) -> str:
        assert text.count(old) == 1, f"fixture text {old!r} must occur once"
        return text.replace(old, new)

    return mutate


def _in_table(table: str, old: str, new: str) -> Callable[[str], str]:
    """Replace the first `old` after the header `[table]`."""

    def mutate(text: str) -> str:
        start = text.index(f"[{table}]\n")
        at = text.index(old, start)
        return text[:at] + new + text[at + len(old):]

    return mutate


def _remove_table(table: str) -> Callable[[str], str]:
    def mutate(text: str) -> str:
        start = text.index(f"[{table}]\n")
        end = text.index("\n[", start) + 1
        return text[:start] + text[end:]

    return mutate


BROKEN_FILES: list[tuple[str, Callable[[str], str], str, str]] = [
    # (case, mutation, key named, problem named)
    ("missing key", _in_table("screening", "window_days = 28", ""),
     "screening.window_days", "is missing"),
    ("missing section", _remove_table("safety"), "safety", "is missing"),
    ("misspelt key", _in_table("visits.D28", "window_days", "windw_days"),
     "visits.D28.window_days", "windw_days"),
    ("unknown key", _replace('registry_id = "NCT06513429"\n',
                             'registry_id = "NCT06513429"\ncolour = "blue"\n'),
     "protocol.colour", "is not a known key"),
    ("unknown section", lambda text: text + "\n[extras]\nnote = 1\n",
     "extras", "is not a known key"),
    ("wrong type", _in_table("visits.D28", "window_days = 2", 'window_days = "x"'),
     "visits.D28.window_days", "must be a whole number from 0 to 27, got 'x'"),
    ("negative window", _in_table("visits.D28", "window_days = 2", "window_days = -1"),
     "visits.D28.window_days", "must be a whole number from 0 to 27, got -1"),
    ("float for whole number", _replace("cap = 6\n", "cap = 6.5\n"),
     "enrolment.cap", "must be a whole number"),
    ("bool for whole number", _replace("cap = 6\n", "cap = true\n"),
     "enrolment.cap", "got true"),
    ("list for whole number", _replace("cap = 6\n", "cap = [6]\n"),
     "enrolment.cap", "must be a whole number"),
    ("bool for number", _replace("dose_tolerance_pct = 20", "dose_tolerance_pct = true"),
     "enrolment.dose_tolerance_pct", "must be a number >= 0 and <= 100, got true"),
    ("nan", _replace("dose_tolerance_pct = 20", "dose_tolerance_pct = nan"),
     "enrolment.dose_tolerance_pct", "must be a number"),
    ("inf", _replace("lloq_copies_per_ug = 50", "lloq_copies_per_ug = inf"),
     "endpoints.lloq_copies_per_ug", "must be a number"),
    ("huge", _replace("lloq_copies_per_ug = 50", "lloq_copies_per_ug = 1e300"),
     "endpoints.lloq_copies_per_ug", "must be a number"),
    ("string for bool",
     _replace("replace_before_infusion = true", 'replace_before_infusion = "yes"'),
     "enrolment.replace_before_infusion", "must be true or false"),
    ("empty title", lambda text: re.sub(r'^title = ".*"$', 'title = " "', text, flags=re.M),
     "protocol.title", "must be a non-empty text"),
    ("bad registry id", _replace('"NCT06513429"', '"NCT123"'),
     "protocol.registry_id", "must match"),
    ("unknown visit code", _replace("[visits.D270]", "[visits.D29]"),
     "visits.D29", "is not a known visit code"),
    ("target day not the code's", _in_table("visits.D28", "target_day = 28", "target_day = 30"),
     "visits.D28.target_day", "must be 28"),
    ("overlapping visit windows", _in_table("visits.D7", "window_days = 1", "window_days = 3"),
     "visits.D7.window_days", "overlap the window of D4"),
    ("final visit missing", _remove_table("visits.D360"), "visits.D360", "is missing"),
    ("unknown exclusion code", _replace('"active_infection"', '"active_infektion"'),
     "eligibility.exclusion_checklist", "did you mean active_infection"),
    ("repeated exclusion code", _replace('"active_infection"', '"malignancy_5y"'),
     "eligibility.exclusion_checklist", "more than once"),
    ("empty exclusion list", lambda text: re.sub(
        r"exclusion_checklist = \[.*?\]", "exclusion_checklist = []", text, flags=re.S),
     "eligibility.exclusion_checklist", "non-empty list"),
    ("overlapping cohorts", _in_table("[enrolment.cohorts]", "first = 4", "first = 3"),
     "enrolment.cohorts[2].first", "overlaps the previous cohort"),
    ("gap between cohorts", _in_table("[enrolment.cohorts]", "first = 4", "first = 5"),
     "enrolment.cohorts[2].first", "leaves places 4..4 without a cohort"),
    ("cohorts short of the cap", _replace("cap = 6\n", "cap = 7\n"),
     "enrolment.cohorts", "must cover places 1..7"),
    ("cohort ends before it starts", _in_table("[enrolment.cohorts]", "last = 6", "last = 2"),
     "enrolment.cohorts[2].last", "must be a whole number from 4"),
    ("two dose kinds", _replace("flat_dose = 1e8", "flat_dose = 1e8\ndose_per_kg = 1e6"),
     "enrolment.cohorts[2].flat_dose", "must not be given together with dose_per_kg"),
    ("no dose", _replace("flat_dose = 1e8\n", ""),
     "enrolment.cohorts[2].dose_per_kg", "is missing"),
    ("zero dose", _replace("dose_per_kg = 1e6", "dose_per_kg = 0"),
     "enrolment.cohorts[1].dose_per_kg", "must be a number > 0"),
    ("unknown drug", _replace("[lymphodepletion.drugs.cyclophosphamide]",
                              "[lymphodepletion.drugs.bendamustine]"),
     "lymphodepletion.drugs.bendamustine", "is not a lymphodepletion drug"),
    ("dose after D0", _replace("days = [-3]", "days = [3]"),
     "lymphodepletion.drugs.cyclophosphamide.days", "from -60 to -1"),
    ("repeated dose day", _replace("days = [-5, -4, -3]", "days = [-5, -5, -3]"),
     "lymphodepletion.drugs.fludarabine.days", "different whole numbers"),
    ("infusion window misses D0", _replace("infusion_window_max_days = 7",
                                           "infusion_window_max_days = 2"),
     "lymphodepletion.infusion_window_min_days", "must allow D0"),
    ("age range reversed", _replace("age_max_years = 65", "age_max_years = 17"),
     "eligibility.age_max_years", "must be >= age_min_years"),
    ("AE window reversed", _replace("ae_window_end_day = 28", "ae_window_end_day = -1"),
     "safety.ae_window_end_day", "must be >= ae_window_start_day"),
    ("expiring lead beyond the window", _replace("screening_expiring_lead_days = 7",
                                                 "screening_expiring_lead_days = 40"),
     "reminders.screening_expiring_lead_days", "from 0 to 28"),
    ("endpoint at an unscheduled visit", _replace('lldas_visits = ["D180", "D360"]',
                                                  'lldas_visits = ["D180", "D365"]'),
     "endpoints.lldas_visits", "'D365'"),
    ("unknown required form", _replace('"labs", "cart_persistence"]',
                                       '"labs", "cart_persistance"]'),
     "visits.D90.required_forms", "did you mean cart_persistence"),
    ("phase form as required form", _replace('"labs", "cart_persistence"]',
                                             '"labs", "infusion"]'),
     "visits.D90.required_forms", "not a known recordable form"),
    ("table where a value belongs", _replace("[screening]\nwindow_days = 28",
                                             "[screening]\n[screening.window_days]"),
     "screening.window_days", "must be a whole number"),
]


@pytest.mark.parametrize(
    ("mutate", "key", "problem"),
    [pytest.param(mutate, key, problem, id=case) for case, mutate, key, problem in BROKEN_FILES],
)
def test_a_broken_file_is_refused_naming_file_key_and_problem(
    mutate: Callable[[str], str], key: str, problem: str
) -> None:
    broken = mutate(V2_TEXT)
    assert broken != V2_TEXT
    with pytest.raises(InvalidInput) as error:
        load_protocol_text(broken, SOURCE)
    message = error.value.message
    assert message.startswith(f"{SOURCE}: key {key} "), message
    assert problem in message, message
    assert error.value.field == key
    assert message.endswith(".") and "\n" not in message


@pytest.mark.parametrize(
    "text",
    ["[protocol\nversion = 2", "cap = = 6", "version = 2\nversion = 3", 'title = "open'],
)
def test_a_toml_syntax_error_is_refused_naming_file_and_place(text: str) -> None:
    with pytest.raises(InvalidInput) as error:
        load_protocol_text(text, SOURCE)
    assert error.value.message.startswith(f"{SOURCE}: the file is not valid TOML")
    assert re.search(r"\(at (line \d+, column \d+|end of document)\)", error.value.message)


def test_an_empty_file_is_refused_naming_the_first_missing_section() -> None:
    with pytest.raises(InvalidInput, match=re.escape(f"{SOURCE}: key protocol is missing.")):
        load_protocol_text("", SOURCE)


def test_the_builtin_text_loads_under_any_source_name() -> None:
    protocol = load_protocol_text(V2_TEXT, "elsewhere.toml")
    assert isinstance(protocol, Protocol)
    assert protocol == builtin_protocol(2)


# --- property tests -----------------------------------------------------------------------

VALUE_LINES = [
    index for index, line in enumerate(V2_TEXT.splitlines())
    if re.match(r"[a-z_0-9]+ = ", line) and not line.startswith("exclusion_checklist")
]
TOML_VALUES = st.one_of(
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(
        lambda number: {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(str(number), repr(number))
    ),
    st.sampled_from(["true", "false", '""', '"x"', "[]", "[1, 2]", '["D1"]', "{}", "{ a = 1 }"]),
    st.text(max_size=20).map(lambda text: '"' + text.replace("\\", "").replace('"', "") + '"'),
)


@settings(max_examples=300, deadline=None)
@given(index=st.sampled_from(VALUE_LINES), value=TOML_VALUES)
def test_any_value_in_any_key_loads_or_raises_invalid_input(index: int, value: str) -> None:
    lines = V2_TEXT.splitlines()
    key = lines[index].split(" = ")[0]
    lines[index] = f"{key} = {value}"
    try:
        load_protocol_text("\n".join(lines), SOURCE)
    except InvalidInput as error:
        assert error.message.startswith(f"{SOURCE}: ")


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=300))
def test_random_text_raises_only_invalid_input(text: str) -> None:
    with pytest.raises(InvalidInput):
        load_protocol_text(text, SOURCE)
