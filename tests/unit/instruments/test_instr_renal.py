"""Renal response: complete, partial, none, not applicable, and each boundary."""

from __future__ import annotations

from typing import Any

import pytest

from workflow.errors import InvalidInput
from workflow.instruments.renal import assess_renal_response


def response(baseline_upcr: float, upcr: float, baseline_egfr: float = 80.0,
             egfr: float = 80.0, **kwargs: Any) -> str:
    return assess_renal_response(
        baseline_upcr=baseline_upcr, upcr=upcr, baseline_egfr=baseline_egfr, egfr=egfr, **kwargs
    ).response


def test_calc_example_is_complete() -> None:
    result = assess_renal_response(baseline_upcr=2.0, upcr=0.4, baseline_egfr=80, egfr=78)
    assert result.response == "complete"
    assert result.upcr_reduction_percent == 80.0
    assert result.egfr_percent_of_baseline == 97.5
    assert "complete" in result.explanation


@pytest.mark.parametrize(("baseline", "now"), [(80.0, 72.0), (70.0, 63.0), (90.0, 81.0),
                                               (110.0, 99.0), (33.3, 29.97)])
def test_egfr_exactly_90_percent_of_baseline_is_kept(baseline: float, now: float) -> None:
    # 0.9 * 70 is 63.00000000000001 in binary floating point; the rule must still hold.
    assert response(2.0, 0.4, baseline, now) == "complete"


def test_egfr_just_below_90_percent_is_not_a_response() -> None:
    assert response(2.0, 0.4, 70.0, 62.99) == "none"
    assert response(2.0, 0.9, 70.0, 62.99) == "none"


@pytest.mark.parametrize(("upcr", "expected"), [(0.49, "complete"), (0.5, "partial")])
def test_complete_needs_upcr_below_0_5(upcr: float, expected: str) -> None:
    assert response(2.0, upcr) == expected


@pytest.mark.parametrize(("upcr", "expected"), [(1.0, "partial"), (1.01, "none")])
def test_partial_needs_a_reduction_of_at_least_half(upcr: float, expected: str) -> None:
    assert response(2.0, upcr) == expected


@pytest.mark.parametrize(("upcr", "expected"), [(2.99, "partial"), (3.0, "none")])
def test_partial_needs_upcr_below_3(upcr: float, expected: str) -> None:
    assert response(7.0, upcr) == expected


def test_partial_also_needs_egfr_kept() -> None:
    assert response(2.0, 0.9, 80.0, 71.9) == "none"


@pytest.mark.parametrize(("baseline", "expected"), [(0.49, "not_applicable"), (0.5, "complete")])
def test_renal_involvement_needs_baseline_upcr_of_0_5(baseline: float, expected: str) -> None:
    assert response(baseline, 0.1) == expected


def test_not_applicable_has_no_percentages() -> None:
    result = assess_renal_response(baseline_upcr=0.2, upcr=0.1, baseline_egfr=90, egfr=90)
    assert result.response == "not_applicable"
    assert result.upcr_reduction_percent is None


def test_rescue_therapy_means_no_response() -> None:
    assert response(2.0, 0.1, rescue_therapy=True) == "none"
    assert response(2.0, 0.1, rescue_therapy=False) == "complete"


def test_worsening_is_no_response() -> None:
    result = assess_renal_response(baseline_upcr=1.0, upcr=2.0, baseline_egfr=80, egfr=60)
    assert result.response == "none"
    assert result.upcr_reduction_percent == -100.0


def test_thresholds_are_protocol_parameters() -> None:
    # EULAR/ERA-EDTA-like stricter complete response and a 60% eGFR floor.
    assert response(2.0, 0.4, complete_upcr_below=0.3) == "partial"
    assert response(2.0, 0.4, 80.0, 50.0, egfr_fraction=0.6) == "complete"
    assert response(0.4, 0.1, involvement_upcr=0.3) == "complete"
    assert response(2.0, 1.2, partial_reduction=0.25) == "partial"
    assert response(10.0, 4.0, partial_upcr_below=5.0) == "partial"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"baseline_upcr": -0.1}, "baseline_upcr"),
        ({"upcr": float("nan")}, "upcr"),
        ({"baseline_egfr": 0.0}, "baseline_egfr"),
        ({"egfr": -5.0}, "egfr"),
        ({"egfr": float("inf")}, "egfr"),
        ({"egfr": "78"}, "egfr"),
        ({"rescue_therapy": "yes"}, "rescue_therapy"),
        ({"egfr_fraction": 1.5}, "egfr_fraction"),
    ],
)
def test_bad_inputs_are_refused(change: dict[str, Any], field: str) -> None:
    values: dict[str, Any] = {"baseline_upcr": 2.0, "upcr": 0.4, "baseline_egfr": 80.0,
                              "egfr": 78.0, **change}
    with pytest.raises(InvalidInput) as caught:
        assess_renal_response(**values)
    assert caught.value.field == field
