"""EULAR/ACR 2019: entry criterion, every criterion alone, domain maxima, the 10-point rule."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workflow.errors import InvalidInput
from workflow.instruments.codes import EULAR_ACR_2019_CRITERIA, EULAR_ACR_2019_DOMAINS
from workflow.instruments.eular_acr_2019 import classify_eular_acr_2019, parse_ana_titer

# Aringer 2019, Figure 1, written out again: domain -> (criterion, weight, clinical?).
PUBLISHED = {
    "fever": (2, True), "leukopenia": (3, True), "thrombocytopenia": (4, True),
    "autoimmune_hemolysis": (4, True), "delirium": (2, True), "psychosis": (3, True),
    "seizure": (5, True), "non_scarring_alopecia": (2, True), "oral_ulcers": (2, True),
    "subacute_cutaneous_or_discoid_lupus": (4, True), "acute_cutaneous_lupus": (6, True),
    "pleural_or_pericardial_effusion": (5, True), "acute_pericarditis": (6, True),
    "joint_involvement": (6, True), "proteinuria": (4, True),
    "renal_biopsy_class_2_or_5": (8, True), "renal_biopsy_class_3_or_4": (10, True),
    "antiphospholipid_antibodies": (2, False), "low_c3_or_low_c4": (3, False),
    "low_c3_and_low_c4": (4, False), "anti_dsdna_or_anti_smith": (6, False),
}


def test_code_table_matches_the_published_weights() -> None:
    table = {code: weight for domain in EULAR_ACR_2019_DOMAINS.values()
             for code, weight in domain.items()}
    assert table == {code: weight for code, (weight, _) in PUBLISHED.items()}


@pytest.mark.parametrize(("code", "weight", "clinical"),
                         [(c, w, k) for c, (w, k) in PUBLISHED.items()])
def test_each_criterion_alone(code: str, weight: int, clinical: bool) -> None:
    result = classify_eular_acr_2019(80, [code])
    assert result.points == weight
    assert result.clinical_points == (weight if clinical else 0)
    assert result.immunologic_points == (0 if clinical else weight)
    # Only biopsy-proven class III/IV nephritis reaches 10 points on its own.
    assert result.classified is (code == "renal_biopsy_class_3_or_4")


@pytest.mark.parametrize("domain", list(EULAR_ACR_2019_DOMAINS))
def test_domain_counts_only_its_highest_criterion(domain: str) -> None:
    weights = EULAR_ACR_2019_DOMAINS[domain]
    result = classify_eular_acr_2019(80, list(weights))
    assert result.points == max(weights.values())
    scored = next(d for d in result.domains if d.domain == domain)
    assert scored.points == max(weights.values())
    assert set(scored.present) == set(weights)


@pytest.mark.parametrize(
    ("pair", "expected"),
    [
        (pair, max(w for c, (w, _) in PUBLISHED.items() if c in pair))
        for domain in EULAR_ACR_2019_DOMAINS.values()
        for pair in itertools.combinations(domain, 2)
    ],
)
def test_every_pair_within_a_domain_scores_the_higher(pair: tuple[str, str], expected: int) -> None:
    assert classify_eular_acr_2019("1:80", list(pair)).points == expected


def test_calc_example_is_classified_with_12_points() -> None:
    result = classify_eular_acr_2019(160, ["joint_involvement", "anti_dsdna_or_anti_smith"])
    assert result.classified is True
    assert result.points == 12
    assert result.ana_titer == "1:160"
    assert "classified as SLE" in result.explanation


def test_all_criteria_give_the_sum_of_domain_maxima() -> None:
    expected = sum(max(d.values()) for d in EULAR_ACR_2019_DOMAINS.values())
    result = classify_eular_acr_2019(1280, EULAR_ACR_2019_CRITERIA)
    assert result.points == expected == 2 + 4 + 5 + 6 + 6 + 6 + 10 + 2 + 4 + 6
    assert result.classified


def test_nine_points_are_not_enough_and_ten_are() -> None:
    assert not classify_eular_acr_2019(80, ["joint_involvement", "low_c3_or_low_c4"]).classified
    ten = classify_eular_acr_2019(80, ["joint_involvement", "low_c3_and_low_c4"])
    assert ten.points == 10
    assert ten.classified


def test_immunologic_criteria_alone_never_classify() -> None:
    result = classify_eular_acr_2019(
        640, ["anti_dsdna_or_anti_smith", "low_c3_and_low_c4", "antiphospholipid_antibodies"]
    )
    assert result.points == 12
    assert not result.classified
    assert "no clinical criterion" in result.explanation


@pytest.mark.parametrize("titer", [None, 40, "1:40", 79])
def test_without_ana_at_least_1_80_never_classified(titer: int | str | None) -> None:
    result = classify_eular_acr_2019(titer, EULAR_ACR_2019_CRITERIA)
    assert not result.entry_criterion_met
    assert not result.classified
    assert "entry criterion is not met" in result.explanation


@pytest.mark.parametrize(
    ("text", "reciprocal"),
    [(80, 80), ("80", 80), ("1:80", 80), (" 1 : 160 ", 160), ("1:100", 100), (5120, 5120)],
)
def test_ana_titre_forms(text: int | str, reciprocal: int) -> None:
    assert parse_ana_titer(text) == reciprocal


@pytest.mark.parametrize(
    "bad", ["abc", "1:0", -5, 0, "0", "", "1:", "2:80", "1:80.5", 80.5, True, "1:-80", None]
)
def test_a_value_that_is_not_a_titre_is_refused(bad: object) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_ana_titer(bad)
    assert caught.value.field == "ana_titer"
    assert "titre" in caught.value.message


def test_classify_refuses_bad_titre_and_unknown_criterion() -> None:
    with pytest.raises(InvalidInput) as titre:
        classify_eular_acr_2019("abc", [])
    assert titre.value.field == "ana_titer"
    with pytest.raises(InvalidInput) as criterion:
        classify_eular_acr_2019(80, ["arthritis"])
    assert criterion.value.field == "criteria"


@given(st.sets(st.sampled_from(EULAR_ACR_2019_CRITERIA)),
       st.sampled_from(EULAR_ACR_2019_CRITERIA))
def test_adding_a_criterion_never_lowers_points_or_unclassifies(
    present: set[str], extra: str
) -> None:
    before = classify_eular_acr_2019(80, present)
    after = classify_eular_acr_2019(80, present | {extra})
    assert after.points >= before.points
    assert after.classified or not before.classified
