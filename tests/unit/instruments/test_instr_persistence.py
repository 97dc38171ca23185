"""CAR-T persistence summary: peak, time of peak, last detectable day, D90/D180/D360."""

from __future__ import annotations

import pytest

from workflow.errors import InvalidInput
from workflow.instruments.persistence import persistence_summary

SERIES = [(-5, 0.0), (4, 800.0), (7, 15000.0), (10, 42000.0), (14, 30000.0), (28, 4000.0),
          (92, 600.0), (180, 49.9), (361, 0.0)]


def test_a_typical_expansion_and_contraction() -> None:
    result = persistence_summary(SERIES)
    assert result.peak_copies_per_ug == 42000.0
    assert result.peak_day == 10
    assert result.last_detectable_day == 92
    assert result.detectable_D90 is True
    assert result.detectable_D180 is False
    assert result.detectable_D360 is False
    assert result.samples == 8
    assert result.detectable_samples == 6
    assert "peak 42000 copies/ug on D10" in result.explanation


def test_lloq_itself_is_detectable_and_just_below_is_not() -> None:
    result = persistence_summary([(90, 50.0), (180, 49.99)])
    assert result.detectable_D90 is True
    assert result.detectable_D180 is False
    assert result.last_detectable_day == 90


def test_lloq_is_a_protocol_setting() -> None:
    assert persistence_summary([(90, 60.0)], lloq_copies_per_ug=100).detectable_D90 is False


def test_no_detectable_sample() -> None:
    result = persistence_summary([(7, 10.0), (14, 0.0)])
    assert result.peak_copies_per_ug is None
    assert result.peak_day is None
    assert result.last_detectable_day is None
    assert "no detectable sample" in result.explanation


def test_without_a_sample_in_the_window_the_checkpoint_is_unknown() -> None:
    result = persistence_summary([(60, 500.0), (100, 400.0), (200, 300.0)])
    assert result.detectable_D90 is None  # D90 window is 83-97
    assert result.detectable_D180 is None  # D180 window is 166-194
    assert result.checkpoints[0].sample_day is None


def test_the_sample_closest_to_the_target_counts_and_the_later_on_a_tie() -> None:
    result = persistence_summary([(85, 500.0), (93, 10.0), (95, 700.0)])
    assert result.checkpoints[0].sample_day == 93
    assert result.detectable_D90 is False
    tie = persistence_summary([(87, 500.0), (93, 10.0)])
    assert tie.checkpoints[0].sample_day == 93


def test_equal_peaks_report_the_first_day() -> None:
    assert persistence_summary([(7, 900.0), (10, 900.0)]).peak_day == 7


def test_pre_infusion_samples_are_not_peaks() -> None:
    assert persistence_summary([(-3, 5000.0), (7, 100.0)]).peak_day == 7


@pytest.mark.parametrize(("samples", "field"), [
    ([(7, -1.0)], "copies_per_ug"),
    ([(7, float("nan"))], "copies_per_ug"),
    ([(7.5, 10.0)], "study_day"),
    ([(7, 10.0), (7, 20.0)], "samples"),
    ([(7,)], "samples"),
])
def test_bad_samples_are_refused(samples: list[object], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        persistence_summary(samples)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_lloq_must_be_positive() -> None:
    with pytest.raises(InvalidInput) as caught:
        persistence_summary([], lloq_copies_per_ug=0)
    assert caught.value.field == "lloq_copies_per_ug"
