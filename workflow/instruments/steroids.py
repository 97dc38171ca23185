"""Glucocorticoid doses converted to prednisone-equivalent milligrams."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from workflow.instruments import _validate as check
from workflow.instruments.codes import GLUCOCORTICOID_FACTORS
from workflow.instruments.sources import STEROID_TABLE

DOSE_MAX_MG: Final = 5000.0


@dataclass(frozen=True)
class PrednisoneEquivalentResult:
    drug: str
    dose_mg: float
    factor: float
    prednisone_mg: float
    explanation: str


# Source: prednisolone label equivalence table (docs/clinical-rules.md): mg = 1 mg prednisone.
def prednisone_equivalent(drug: str, dose_mg: float) -> PrednisoneEquivalentResult:
    """Prednisone mg = dose / factor, in exact decimals (methylprednisolone 6 mg -> 7.5 mg)."""
    name = check.choice(drug, "drug", GLUCOCORTICOID_FACTORS)
    dose = check.number(dose_mg, "dose_mg", minimum=0, maximum=DOSE_MAX_MG, unit="mg")
    factor = GLUCOCORTICOID_FACTORS[name]
    prednisone = float(check.exact(dose) / check.exact(factor))
    explanation = (
        f"{check.shown(dose)} mg {name} / {check.shown(factor)} mg per mg prednisone = "
        f"{round(prednisone, 4):g} mg prednisone equivalent ({STEROID_TABLE})."
    )
    return PrednisoneEquivalentResult(name, dose, factor, prednisone, explanation)
