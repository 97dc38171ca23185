"""LLDAS: each of the five conditions on its own, blocking descriptors, dose boundary."""

from __future__ import annotations

from typing import Any

import pytest

from workflow.errors import InvalidInput
from workflow.instruments.codes import LLDAS_BLOCKING_DESCRIPTORS, SLEDAI2K_DESCRIPTORS
from workflow.instruments.lldas import assess_lldas
from workflow.instruments.steroids import prednisone_equivalent

WELL: dict[str, Any] = {
    "pga": 0.5, "prednisone_mg_per_day": 5.0, "new_activity": False,
    "maintenance_tolerated": True,
}


def conditions(descriptors: list[str], **changes: Any) -> dict[str, bool]:
    result = assess_lldas(descriptors, **{**WELL, **changes})
    return {c.condition: c.met for c in result.conditions}


def test_calc_example_rash_alopecia_is_met() -> None:
    result = assess_lldas(["rash", "alopecia"], **WELL)
    assert result.met is True
    assert result.sledai2k == 4
    assert all(c.met for c in result.conditions)
    assert "LLDAS met" in result.explanation


def test_nothing_active_is_met() -> None:
    assert assess_lldas([], **WELL).met


@pytest.mark.parametrize("code", sorted(LLDAS_BLOCKING_DESCRIPTORS))
def test_each_major_organ_descriptor_blocks_whatever_the_score(code: str) -> None:
    result = assess_lldas([code], **WELL)
    assert not result.met
    activity = result.conditions[0]
    assert not activity.met
    assert code in activity.reason or ">" in activity.reason


@pytest.mark.parametrize("code", ["pleurisy", "pericarditis", "fever"])
def test_low_weight_blockers_block_although_score_is_at_most_4(code: str) -> None:
    result = assess_lldas([code], **WELL)
    assert result.sledai2k <= 4
    assert not result.met
    assert "major organ activity" in result.conditions[0].reason


@pytest.mark.parametrize(
    "code", [c for c in SLEDAI2K_DESCRIPTORS if c not in LLDAS_BLOCKING_DESCRIPTORS]
)
def test_each_non_blocking_descriptor_alone_is_met(code: str) -> None:
    assert assess_lldas([code], **WELL).met


def test_score_above_4_from_non_blocking_descriptors_is_not_met() -> None:
    result = assess_lldas(["arthritis", "rash"], **WELL)
    assert result.sledai2k == 6
    assert not result.met


@pytest.mark.parametrize("flag", ["hemolytic_anemia", "gi_activity"])
def test_hemolysis_and_gi_activity_block(flag: str) -> None:
    assert not conditions([], **{flag: True})["sledai2k_without_major_organ_activity"]


def test_new_activity_fails_condition_2() -> None:
    met = conditions([], new_activity=True)
    assert met == {**dict.fromkeys(met, True), "no_new_activity": False}


@pytest.mark.parametrize(("pga", "ok"), [(0.0, True), (1.0, True), (1.01, False), (3.0, False)])
def test_pga_at_most_1(pga: float, ok: bool) -> None:
    assert conditions([], pga=pga)["pga"] is ok


@pytest.mark.parametrize(("dose", "ok"), [(0.0, True), (7.5, True), (7.6, False), (7.51, False)])
def test_prednisone_at_most_7_5_mg(dose: float, ok: bool) -> None:
    assert conditions([], prednisone_mg_per_day=dose)["prednisone"] is ok
    assert assess_lldas([], **{**WELL, "prednisone_mg_per_day": dose}).met is ok


def test_methylprednisolone_6_mg_is_exactly_the_boundary() -> None:
    dose = prednisone_equivalent("methylprednisolone", 6).prednisone_mg
    assert dose == 7.5
    assert conditions([], prednisone_mg_per_day=dose)["prednisone"]


def test_maintenance_not_tolerated_fails_condition_5() -> None:
    assert not conditions([], maintenance_tolerated=False)["maintenance_tolerated"]


def test_thresholds_are_parameters() -> None:
    assert assess_lldas([], **{**WELL, "prednisone_mg_per_day": 5.0},
                        max_prednisone_mg_per_day=5.0).met
    assert not assess_lldas(["rash"], **WELL, max_sledai2k=1).met


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"pga": 3.5}, "pga"), ({"pga": -0.1}, "pga"), ({"pga": float("nan")}, "pga"),
        ({"prednisone_mg_per_day": -1.0}, "prednisone_mg_per_day"),
        ({"prednisone_mg_per_day": float("inf")}, "prednisone_mg_per_day"),
        ({"new_activity": "no"}, "new_activity"),
        ({"maintenance_tolerated": 1}, "maintenance_tolerated"),
    ],
)
def test_bad_inputs_are_refused(change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        assess_lldas([], **{**WELL, **change})
    assert caught.value.field == field


def test_unknown_descriptor_is_refused() -> None:
    with pytest.raises(InvalidInput) as caught:
        assess_lldas(["sunburn"], **WELL)
    assert caught.value.field == "descriptors"
