"""Schema versions of workflow's event types, and the upcasters of their old payloads.

Imported by `workflow/__init__.py`, so any code that knows workflow's event types has them
registered before it reads a payload (events/upcasting.py). Every type of
`workflow.event_types` is declared, at version 1 unless listed below; a stored payload of a
version this code does not know is refused on read (exit 4), never guessed at.

LymphodepletionGiven, version 2 (one day of the lymphodepletion regimen)
    v1  {"given_on", "regimen_day", "bsa_m2": 1.62, "fludarabine_mg": 40.5,
         "cyclophosphamide_mg": 0.0, "expected_mg": {"cyclophosphamide": 0.0,
         "fludarabine": 40.5}, "deviation", "protocol_version"}
    v2  {"given_on", "regimen_day", "bsa": {"value": 1.62, "unit": "m2"},
         "doses": {"cyclophosphamide": {"given": {"value": 0.0, "unit": "mg"},
                                        "expected": {"value": 0.0, "unit": "mg"}},
                   "fludarabine": {"given": {"value": 40.5, "unit": "mg"},
                                   "expected": {"value": 40.5, "unit": "mg"}}},
         "deviation", "protocol_version"}
    Why: the regimen is protocol data (a list of drugs with mg/m² and days), but v1 spelled
    two drugs into its key names, so a regimen with another drug could not be recorded
    without new keys, and readers rebuilt key names (`f"{drug}_mg"`) to pair a dose with its
    expected amount. v2 keeps each drug's given and expected dose together, keyed by the
    regimen's drug names, and every amount carries its unit (UCUM: `mg`, `m2`). `expected`
    is null for a drug given outside the regimen (v1 kept no expected amount for it either).
    The lymphodepletion CRF (`fludarabine_mg`, `cyclophosphamide_mg`) is unchanged: exports
    take its fields from `doses` (projections/exports/records.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from events.upcasting import REGISTRY, Upcasters
from workflow import event_types as T

MG: Final = "mg"  # UCUM milligram
M2: Final = "m2"  # UCUM square metre
CURRENT_VERSIONS: Final[dict[str, int]] = {T.LYMPHODEPLETION_GIVEN: 2}

# v1 recorded the doses of these two drugs under these keys, and no other
_V1_DOSE_KEYS: Final = {"fludarabine": "fludarabine_mg", "cyclophosphamide": "cyclophosphamide_mg"}


def quantity(value: float, unit: str) -> dict[str, Any]:
    """An amount with its unit, as payloads store it: `{"value": 40.5, "unit": "mg"}`."""
    return {"value": value, "unit": unit}


def lymphodepletion_doses(given: Mapping[str, float], expected: Mapping[str, float]
                          ) -> dict[str, dict[str, Any]]:
    """`doses` of a LymphodepletionGiven payload (v2): per drug, of the regimen or given, the
    mg given (0 when none) and the mg the regimen expects that day (null when not in it)."""
    drugs = dict.fromkeys([*expected, *given])
    return {drug: {"given": quantity(given.get(drug, 0.0), MG),
                   "expected": quantity(expected[drug], MG) if drug in expected else None}
            for drug in drugs}


def lymphodepletion_payload(*, given_on: str, regimen_day: int, bsa_m2: float | None,
                            given: Mapping[str, float], expected: Mapping[str, float],
                            deviation: bool, protocol_version: int) -> dict[str, Any]:
    """A LymphodepletionGiven payload in the current shape (v2)."""
    return {"given_on": given_on, "regimen_day": regimen_day,
            "bsa": None if bsa_m2 is None else quantity(bsa_m2, M2),
            "doses": lymphodepletion_doses(given, expected), "deviation": deviation,
            "protocol_version": protocol_version}


def lymphodepletion_v1_to_v2(payload: Mapping[str, Any]) -> dict[str, Any]:
    """v1 -> v2: the per-drug keys and `expected_mg` become `doses`, `bsa_m2` becomes `bsa`.
    Other keys are kept as they are; a regimen drug v1 has no dose key for was given 0 mg (as
    v1's readers took it)."""
    expected = dict(payload.get("expected_mg") or {})
    given = {drug: payload[key] for drug, key in _V1_DOSE_KEYS.items() if key in payload}
    moved = {*_V1_DOSE_KEYS.values(), "expected_mg", "bsa_m2"}
    kept = {key: value for key, value in payload.items() if key not in moved}
    bsa = payload.get("bsa_m2")
    return {**kept, "bsa": None if bsa is None else quantity(bsa, M2),
            "doses": lymphodepletion_doses(given, expected)}


def register_upcasters(registry: Upcasters) -> None:
    """Declare every workflow event type at its current version and register the upcasters
    (into `registry`; the process's own at import)."""
    names = [value for name, value in vars(T).items()
             if name.isupper() and isinstance(value, str)]
    for event_type in names:
        registry.declare(event_type, CURRENT_VERSIONS.get(event_type, 1))
    registry.register(T.LYMPHODEPLETION_GIVEN, 1, lymphodepletion_v1_to_v2)
    registry.check()


register_upcasters(REGISTRY)
