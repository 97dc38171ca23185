"""Renal response in lupus nephritis: complete, partial, none or not applicable."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from typing import Final

from workflow.instruments import _validate as check
from workflow.instruments.sources import KDIGO_2024

# Protocol defaults (docs/clinical-rules.md, renal response); every one is a protocol setting.
DEFAULT_INVOLVEMENT_UPCR: Final = 0.5
DEFAULT_COMPLETE_UPCR_BELOW: Final = 0.5
DEFAULT_PARTIAL_REDUCTION: Final = 0.5
DEFAULT_PARTIAL_UPCR_BELOW: Final = 3.0
DEFAULT_EGFR_FRACTION: Final = 0.9
UPCR_MAX: Final = 50.0
EGFR_MAX: Final = 250.0

RENAL_RESPONSES: Final = ("complete", "partial", "none", "not_applicable")


@dataclass(frozen=True)
class RenalResponseResult:
    response: str
    upcr_reduction_percent: float | None
    egfr_percent_of_baseline: float | None
    explanation: str


# Source: KDIGO 2024 lupus nephritis guideline, Kidney Int 2024;105(1S):S1-S69 (response).
def assess_renal_response(
    *,
    baseline_upcr: float,
    upcr: float,
    baseline_egfr: float,
    egfr: float,
    rescue_therapy: bool = False,
    involvement_upcr: float = DEFAULT_INVOLVEMENT_UPCR,
    complete_upcr_below: float = DEFAULT_COMPLETE_UPCR_BELOW,
    partial_reduction: float = DEFAULT_PARTIAL_REDUCTION,
    partial_upcr_below: float = DEFAULT_PARTIAL_UPCR_BELOW,
    egfr_fraction: float = DEFAULT_EGFR_FRACTION,
) -> RenalResponseResult:
    """UPCR in g/g, eGFR in mL/min/1.73 m²; boundaries are compared in exact decimals."""
    base_upcr = check.exact(
        check.number(baseline_upcr, "baseline_upcr", minimum=0, maximum=UPCR_MAX, unit="g/g")
    )
    now_upcr = check.exact(check.number(upcr, "upcr", minimum=0, maximum=UPCR_MAX, unit="g/g"))
    base_egfr = check.exact(check.number(
        baseline_egfr, "baseline_egfr", minimum=0, minimum_exclusive=True, maximum=EGFR_MAX,
        unit="mL/min",
    ))
    now_egfr = check.exact(
        check.number(egfr, "egfr", minimum=0, maximum=EGFR_MAX, unit="mL/min")
    )
    rescue = check.boolean(rescue_therapy, "rescue_therapy")
    involvement = check.exact(
        check.number(involvement_upcr, "involvement_upcr", minimum=0, unit="g/g")
    )
    complete_below = check.exact(
        check.number(complete_upcr_below, "complete_upcr_below", minimum=0, unit="g/g")
    )
    reduction_needed = check.exact(
        check.number(partial_reduction, "partial_reduction", minimum=0, maximum=1)
    )
    partial_below = check.exact(
        check.number(partial_upcr_below, "partial_upcr_below", minimum=0, unit="g/g")
    )
    fraction = check.exact(check.number(egfr_fraction, "egfr_fraction", minimum=0, maximum=1))

    if base_upcr < involvement or base_upcr == 0:
        return RenalResponseResult(
            "not_applicable",
            None,
            None,
            f"Not applicable: baseline UPCR {_fmt(base_upcr)} g/g is below {_fmt(involvement)} g/g,"
            f" so there is no renal involvement at baseline (after {KDIGO_2024}).",
        )

    reduction = (base_upcr - now_upcr) / base_upcr
    egfr_floor = fraction * base_egfr
    egfr_kept = now_egfr >= egfr_floor
    egfr_text = (
        f"eGFR {_fmt(now_egfr)} is {'at least' if egfr_kept else 'below'} "
        f"{_fmt(fraction * 100)}% of baseline {_fmt(base_egfr)} ({_fmt(egfr_floor)} mL/min)"
    )
    reduced_enough = now_upcr <= base_upcr * (1 - reduction_needed)
    upcr_text = (
        f"UPCR {_fmt(base_upcr)} -> {_fmt(now_upcr)} g/g ({_fmt(_percent(reduction))}% reduction)"
    )

    if rescue:
        response = "none"
        rule = "none: rescue therapy for nephritis was given"
    elif now_upcr < complete_below and egfr_kept:
        response = "complete"
        rule = f"complete: UPCR < {_fmt(complete_below)} g/g and {egfr_text}"
    elif reduced_enough and now_upcr < partial_below and egfr_kept:
        response = "partial"
        rule = (
            f"partial: UPCR reduced by at least {_fmt(reduction_needed * 100)}% and "
            f"< {_fmt(partial_below)} g/g, and {egfr_text}"
        )
    else:
        response = "none"
        missing = []
        if not reduced_enough:
            missing.append(f"UPCR not reduced by {_fmt(reduction_needed * 100)}%")
        if now_upcr >= partial_below:
            missing.append(f"UPCR not < {_fmt(partial_below)} g/g")
        if not egfr_kept:
            missing.append(egfr_text)
        rule = "none: " + "; ".join(missing)
    explanation = f"Renal response {rule}; {upcr_text} (after {KDIGO_2024})."
    return RenalResponseResult(
        response,
        float(_percent(reduction)),
        float(_percent(now_egfr / base_egfr)),
        explanation,
    )


def _percent(ratio: Decimal) -> Decimal:
    """Percent to 2 decimals, rounded down so a shown 90.00 is never really 89.999."""
    return (ratio * 100).quantize(Decimal("0.01"), rounding=ROUND_FLOOR)


def _fmt(value: Decimal) -> str:
    """A decimal without trailing zeros or exponent: 90.0 -> 90, 0.50 -> 0.5."""
    return f"{value.normalize():f}"
