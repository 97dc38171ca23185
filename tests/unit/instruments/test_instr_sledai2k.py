"""SLEDAI-2K: every descriptor alone, the maximum, the look-back window, monotonicity."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workflow.errors import InvalidInput
from workflow.instruments.codes import SLEDAI2K_DESCRIPTORS, SLEDAI2K_WEIGHTS
from workflow.instruments.sledai2k import (
    SLEDAI2K_MAX_SCORE,
    SLEDAI2K_ORGAN_SYSTEMS,
    sledai2k_improvement,
    sledai2k_in_window,
    sledai2k_score,
)

# Gladman 2002 weights, written out again so a changed code table cannot pass unnoticed.
PUBLISHED_WEIGHTS = {
    **dict.fromkeys(
        ["seizure", "psychosis", "organic_brain_syndrome", "visual_disturbance",
         "cranial_nerve_disorder", "lupus_headache", "cva", "vasculitis"], 8),
    **dict.fromkeys(
        ["arthritis", "myositis", "urinary_casts", "hematuria", "proteinuria", "pyuria"], 4),
    **dict.fromkeys(
        ["rash", "alopecia", "mucosal_ulcers", "pleurisy", "pericarditis", "low_complement",
         "increased_dna_binding"], 2),
    **dict.fromkeys(["fever", "thrombocytopenia", "leukopenia"], 1),
}


def test_code_table_matches_the_published_weights() -> None:
    assert SLEDAI2K_WEIGHTS == PUBLISHED_WEIGHTS
    assert len(SLEDAI2K_DESCRIPTORS) == 24


@pytest.mark.parametrize(("code", "weight"), sorted(PUBLISHED_WEIGHTS.items()))
def test_each_descriptor_alone_scores_its_weight(code: str, weight: int) -> None:
    result = sledai2k_score([code])
    assert result.score == weight
    assert [(item.code, item.weight) for item in result.counted] == [(code, weight)]
    assert f"{code} {weight}" in result.explanation


def test_no_descriptor_scores_zero() -> None:
    result = sledai2k_score([])
    assert result.score == 0
    assert result.counted == ()
    assert "no descriptor present" in result.explanation


def test_all_descriptors_score_the_maximum_105() -> None:
    assert SLEDAI2K_MAX_SCORE == 105
    assert sledai2k_score(SLEDAI2K_DESCRIPTORS).score == 105


def test_calc_example_arthritis_proteinuria_low_complement_is_10() -> None:
    result = sledai2k_score(["arthritis", "proteinuria", "low_complement"])
    assert result.score == 10
    points = {p.organ_system: p.points for p in result.points_by_organ_system}
    assert points["musculoskeletal"] == 4
    assert points["renal"] == 4
    assert points["immunologic"] == 2
    assert sum(points.values()) == 10


def test_a_repeated_descriptor_counts_once() -> None:
    assert sledai2k_score(["rash", "rash"]).score == 2


def test_organ_systems_cover_every_descriptor_once() -> None:
    members = [code for codes in SLEDAI2K_ORGAN_SYSTEMS.values() for code in codes]
    assert sorted(members) == sorted(SLEDAI2K_DESCRIPTORS)


@pytest.mark.parametrize("bad", [["arthritus"], ["Arthritis"], [""], [4], [None]])
def test_unknown_descriptor_is_refused(bad: list[object]) -> None:
    with pytest.raises(InvalidInput) as caught:
        sledai2k_score(bad)  # type: ignore[arg-type]
    assert caught.value.field == "descriptors"
    assert "not a SLEDAI-2K descriptor" in caught.value.message


def test_a_single_string_is_refused_not_split_into_letters() -> None:
    with pytest.raises(InvalidInput) as caught:
        sledai2k_score("rash")
    assert caught.value.field == "descriptors"


@given(st.sets(st.sampled_from(SLEDAI2K_DESCRIPTORS)), st.sampled_from(SLEDAI2K_DESCRIPTORS))
def test_adding_a_descriptor_never_lowers_the_score(present: set[str], extra: str) -> None:
    before = sledai2k_score(present).score
    after = sledai2k_score(present | {extra}).score
    assert after >= before
    assert after - before == (0 if extra in present else SLEDAI2K_WEIGHTS[extra])


@given(st.sets(st.sampled_from(SLEDAI2K_DESCRIPTORS)))
def test_score_is_the_sum_of_weights_and_within_range(present: set[str]) -> None:
    result = sledai2k_score(present)
    assert result.score == sum(SLEDAI2K_WEIGHTS[c] for c in present)
    assert 0 <= result.score <= SLEDAI2K_MAX_SCORE
    assert sum(p.points for p in result.points_by_organ_system) == result.score


VISIT = date(2025, 6, 30)


def test_look_back_window_includes_day_30_and_excludes_day_31() -> None:
    result = sledai2k_in_window(
        [
            (VISIT - timedelta(days=30), "arthritis"),
            (VISIT - timedelta(days=31), "seizure"),
            (VISIT, "rash"),
            (VISIT + timedelta(days=1), "fever"),
        ],
        VISIT,
    )
    assert result.result.score == 6
    assert result.window_start == date(2025, 5, 31)
    assert result.window_end == VISIT
    assert result.excluded == (
        (date(2025, 5, 30), "seizure"), (date(2025, 7, 1), "fever"),
    )
    assert "seizure on 2025-05-30" in result.explanation


def test_original_ten_day_look_back_is_a_parameter() -> None:
    observations = [(VISIT - timedelta(days=11), "arthritis"), (VISIT - timedelta(days=10), "rash")]
    assert sledai2k_in_window(observations, VISIT, lookback_days=10).result.score == 2
    assert sledai2k_in_window(observations, VISIT).result.score == 6


@pytest.mark.parametrize(
    ("observations", "field"),
    [
        ([(VISIT, "arthritus")], "observations"),
        ([("2025-06-30", "rash")], "observations"),
        ([(VISIT,)], "observations"),
    ],
)
def test_window_refuses_bad_observations(observations: list[object], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        sledai2k_in_window(observations, VISIT)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_window_refuses_negative_look_back() -> None:
    with pytest.raises(InvalidInput) as caught:
        sledai2k_in_window([], VISIT, lookback_days=-1)
    assert caught.value.field == "lookback_days"


@pytest.mark.parametrize(
    ("baseline", "score", "improved"), [(12, 8, True), (12, 9, False), (12, 0, True), (4, 6, False)]
)
def test_improvement_needs_a_drop_of_at_least_4(baseline: int, score: int, improved: bool) -> None:
    result = sledai2k_improvement(baseline, score)
    assert result.improved is improved
    assert result.reduction == baseline - score


@pytest.mark.parametrize("bad", [-1, 106, 2.5, True])
def test_improvement_refuses_impossible_scores(bad: object) -> None:
    with pytest.raises(InvalidInput) as caught:
        sledai2k_improvement(bad, 0)  # type: ignore[arg-type]
    assert caught.value.field == "baseline_score"


def test_none_instead_of_descriptors_is_refused() -> None:
    with pytest.raises(InvalidInput) as caught:
        sledai2k_score(None)  # type: ignore[arg-type]
    assert caught.value.field == "descriptors"
