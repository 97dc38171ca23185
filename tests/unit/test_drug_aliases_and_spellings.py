"""Drug aliases (MMF, CYC, RTX, …) and British/American spellings of codes (issue 16)."""

from __future__ import annotations

from datetime import date

import pytest

from tests.unit.test_eligibility import changed, evaluate, status, subject
from workflow.code_lists import describe_codes, other_spelling
from workflow.errors import InvalidInput
from workflow.forms import parse_form, validate_values
from workflow.instruments import _validate as check
from workflow.instruments.codes import (
    DRUG_ALIASES,
    SERIOUS_CRITERIA,
    canonical_code,
    canonical_drug,
    spelling_key,
)

TODAY = date(2025, 3, 20)


@pytest.mark.parametrize(("alias", "drug"), [
    ("MMF", "mycophenolate mofetil"), ("mmf", "mycophenolate mofetil"),
    ("MPA", "mycophenolate"), ("CYC", "cyclophosphamide"), ("HCQ", "hydroxychloroquine"),
    ("RTX", "rituximab"), ("Mycophenolate_Mofetil", "mycophenolate mofetil"),
    ("  Benlysta ", "belimumab"), ("azathioprine", "azathioprine"),
])
def test_aliases_name_their_drug_in_any_case(alias: str, drug: str) -> None:
    assert canonical_drug(alias) == drug


def test_every_alias_names_a_drug_that_is_no_alias() -> None:
    assert all(key == key.lower().strip() for key in DRUG_ALIASES)
    assert not set(DRUG_ALIASES.values()) & set(DRUG_ALIASES)


def test_mmf_counts_as_mycophenolate_for_the_refractory_criterion() -> None:
    forms = subject()  # position 5: cyclophosphamide, the criterion's second class
    without_it = changed(forms, 5, drug="azathioprine")
    assert status(without_it, "refractory") == "pending"
    assert status(changed(forms, 5, drug="MMF"), "refractory") == "met"
    assert status(changed(forms, 5, drug="mpa"), "refractory") == "met"
    assert status(changed(forms, 5, drug="CYC"), "refractory") == "met"
    assert status(changed(forms, 6, drug="RTX"), "refractory") == "met"
    result = evaluate(changed(forms, 5, drug="MMF")).criterion("refractory")
    assert "MMF" in result.reason  # the drug as recorded is what the evidence shows


def test_a_glucocorticoid_alias_is_known_to_the_medication_form() -> None:
    values = parse_form("medication", ["drug=Pred", "drug_class=glucocorticoid",
                                       "dose_mg_per_day=10"], today=TODAY)
    assert values["drug"] == "Pred"  # stored as typed, compared as prednisone
    with pytest.raises(InvalidInput, match="glucocorticoid"):
        parse_form("medication", ["drug=HCQ", "drug_class=glucocorticoid"], today=TODAY)


@pytest.mark.parametrize(("typed", "code"), [
    ("hospitalization", "hospitalisation"), ("Hospitalisation", "hospitalisation"),
    ("haematuria", "hematuria"), ("leucopenia", "leukopenia"),
    ("cerebral_oedema", "cerebral_edema"), ("haemolytic_anaemia", "hemolytic_anemia"),
    ("ana_titre", "ana_titer"),
])
def test_spellings_compare_equal(typed: str, code: str) -> None:
    assert spelling_key(typed) == spelling_key(code)
    assert other_spelling(code) is not None


def test_forms_take_either_spelling_and_store_the_code() -> None:
    values = parse_form("adverse_event", [
        "term=pneumonia", "onset_date=2025-03-01", "grade=3",
        "serious_criteria=Hospitalization,death", "awareness_at=2025-03-01T10:00Z",
        "cerebral_oedema=focal"], today=TODAY)
    assert values["serious_criteria"] == ["death", "hospitalisation"]
    assert values["cerebral_edema"] == "focal" and "cerebral_oedema" not in values
    activity = parse_form("disease_activity", ["haematuria", "leucopenia",
                                               "haemolytic_anaemia=no"], today=TODAY)
    assert activity["hematuria"] is True and activity["leukopenia"] is True
    assert activity["hemolytic_anemia"] is False
    assert validate_values("labs", {"haemoglobin_g_l": "120"}, today=TODAY, partial=True) == {
        "hemoglobin_g_l": 120.0}
    assert parse_form("sle_classification", ["ana_titre=1:160"], today=TODAY)["ana_titer"] == 160


def test_both_spellings_of_one_field_are_the_same_field() -> None:
    with pytest.raises(InvalidInput, match="more than once"):
        parse_form("labs", ["hemoglobin_g_l=120", "haemoglobin_g_l=121"], today=TODAY)


def test_a_refusal_suggests_the_code() -> None:
    with pytest.raises(InvalidInput, match=r"did you mean hospitalisation\?"):
        parse_form("adverse_event", ["term=x", "onset_date=2025-03-01", "grade=3",
                                     "serious_criteria=hospitalizaton",
                                     "awareness_at=2025-03-01T10:00Z"], today=TODAY)
    with pytest.raises(InvalidInput, match=r"did you mean recovered\?"):
        parse_form("adverse_event", ["term=x", "onset_date=2025-03-01", "grade=1",
                                     "outcome=recoverd"], today=TODAY)
    with pytest.raises(InvalidInput, match=r"did you mean hemoglobin_g_l\?"):
        parse_form("labs", ["haemoglobin_gl=120"], today=TODAY)


def test_instruments_take_the_other_spelling_but_stay_case_sensitive() -> None:
    assert check.codes(["hospitalization"], "serious_criteria", SERIOUS_CRITERIA,
                       "seriousness") == {"hospitalisation"}
    assert check.choice("cerebral_oedema", "x", ("cerebral_edema",)) == "cerebral_edema"
    with pytest.raises(InvalidInput):
        check.choice("Hospitalisation", "x", SERIOUS_CRITERIA)
    assert canonical_code("nothing", SERIOUS_CRITERIA) is None


def test_the_code_lists_show_the_rules_own_lists() -> None:
    codes = describe_codes()
    lists = {group["list"]: {d["drug"]: d["aliases"] for d in group["drugs"]}
             for group in codes["drug_lists"]}  # type: ignore[attr-defined]
    assert "mmf" in lists["cytotoxic_drugs"]["mycophenolate mofetil"]
    assert "rtx" in lists["b_cell_biologics"]["rituximab"]
    assert "prednisone" in lists["glucocorticoids"]
    spelled = {item["code"]: item["also"] for item in codes["spellings"]}  # type: ignore[attr-defined]
    assert spelled["hospitalisation"] == "hospitalization"
    assert spelled["cerebral_edema"] == "cerebral_oedema"
