"""Prednisone equivalents from the prednisolone label table."""

from __future__ import annotations

import pytest

from workflow.errors import InvalidInput
from workflow.instruments.codes import GLUCOCORTICOID_FACTORS
from workflow.instruments.steroids import prednisone_equivalent


# The classical equivalence: each of these doses equals 5 mg prednisone.
@pytest.mark.parametrize(("drug", "dose"), [
    ("prednisone", 5), ("prednisolone", 5), ("methylprednisolone", 4), ("triamcinolone", 4),
    ("hydrocortisone", 20), ("cortisone", 25), ("dexamethasone", 0.75), ("betamethasone", 0.75),
])
def test_each_drug_equivalent_of_5_mg_prednisone(drug: str, dose: float) -> None:
    result = prednisone_equivalent(drug, dose)
    assert result.prednisone_mg == 5.0
    assert result.factor == GLUCOCORTICOID_FACTORS[drug]


@pytest.mark.parametrize(("dose", "expected"), [(6, 7.5), (8, 10.0), (0, 0.0), (1000, 1250.0)])
def test_methylprednisolone(dose: float, expected: float) -> None:
    assert prednisone_equivalent("methylprednisolone", dose).prednisone_mg == expected


def test_calc_example_methylprednisolone_8_mg_is_10_mg() -> None:
    result = prednisone_equivalent("methylprednisolone", 8)
    assert result.prednisone_mg == 10.0
    assert "0.8" in result.explanation


def test_dexamethasone_is_not_rounded_to_a_boundary() -> None:
    assert prednisone_equivalent("dexamethasone", 1.125).prednisone_mg == 7.5
    assert prednisone_equivalent("dexamethasone", 1.126).prednisone_mg > 7.5


@pytest.mark.parametrize(("drug", "dose", "field"), [
    ("cortisol", 5, "drug"), ("Prednisone", 5, "drug"), ("prednisone", -1, "dose_mg"),
    ("prednisone", float("nan"), "dose_mg"), ("prednisone", "5", "dose_mg"),
    ("prednisone", float("inf"), "dose_mg"),
])
def test_bad_inputs_are_refused(drug: str, dose: object, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        prednisone_equivalent(drug, dose)  # type: ignore[arg-type]
    assert caught.value.field == field
