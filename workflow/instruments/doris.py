"""DORIS 2021 remission in SLE (clinical SLEDAI-2K 0, PGA < 0.5, prednisolone <= 5 mg/day)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from workflow.instruments import _validate as check
from workflow.instruments.lldas import PGA_MAX, PREDNISONE_MG_PER_DAY_MAX
from workflow.instruments.sledai2k import sledai2k_score
from workflow.instruments.sources import DORIS_2021

# Serological descriptors left out of the clinical SLEDAI-2K.
SEROLOGIC_DESCRIPTORS: Final = frozenset({"low_complement", "increased_dna_binding"})
DEFAULT_PGA_BELOW: Final = 0.5
DEFAULT_MAX_PREDNISONE_MG_PER_DAY: Final = 5.0


@dataclass(frozen=True)
class DorisResult:
    remission: bool
    clinical_sledai2k: int
    explanation: str


# Source: van Vollenhoven R et al., Ann Rheum Dis 2021;80:181-8, DORIS 2021 remission definition.
def assess_doris_remission(
    descriptors: Iterable[str],
    *,
    pga: float,
    prednisone_mg_per_day: float,
    pga_below: float = DEFAULT_PGA_BELOW,
    max_prednisone_mg_per_day: float = DEFAULT_MAX_PREDNISONE_MG_PER_DAY,
) -> DorisResult:
    """Remission: clinical SLEDAI-2K 0, PGA < `pga_below`, prednisone <= the limit."""
    scored = sledai2k_score(descriptors)
    global_assessment = check.number(pga, "pga", minimum=0, maximum=PGA_MAX)
    prednisone = check.number(
        prednisone_mg_per_day,
        "prednisone_mg_per_day",
        minimum=0,
        maximum=PREDNISONE_MG_PER_DAY_MAX,
        unit="mg/day",
    )
    pga_limit = check.number(pga_below, "pga_below", minimum=0, maximum=PGA_MAX)
    dose_limit = check.number(max_prednisone_mg_per_day, "max_prednisone_mg_per_day", minimum=0)
    clinical = [item for item in scored.counted if item.code not in SEROLOGIC_DESCRIPTORS]
    clinical_score = sum(item.weight for item in clinical)
    checks = [
        (clinical_score == 0, f"clinical SLEDAI-2K {clinical_score}"
         + ("" if not clinical else " (" + ", ".join(i.code for i in clinical) + ")")),
        (global_assessment < pga_limit,
         f"PGA {check.shown(global_assessment)} "
         + ("<" if global_assessment < pga_limit else ">=") + f" {check.shown(pga_limit)}"),
        (check.exact(prednisone) <= check.exact(dose_limit),
         f"prednisone equivalent {check.shown(prednisone)} mg/day "
         + ("<=" if check.exact(prednisone) <= check.exact(dose_limit) else ">")
         + f" {check.shown(dose_limit)} mg/day"),
    ]
    remission = all(ok for ok, _ in checks)
    explanation = (
        ("DORIS remission" if remission else "Not in DORIS remission")
        + f" ({DORIS_2021}): " + "; ".join(text for _, text in checks)
        + ". Serology (low_complement, increased_dna_binding) is not counted."
    )
    return DorisResult(remission, clinical_score, explanation)
