"""Lupus Low Disease Activity State (LLDAS): five conditions, all of which must hold."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from workflow.instruments import _validate as check
from workflow.instruments.codes import LLDAS_BLOCKING_DESCRIPTORS, SLEDAI2K_DESCRIPTORS
from workflow.instruments.sledai2k import sledai2k_score
from workflow.instruments.sources import FRANKLYN_2016

# Protocol defaults (docs/clinical-rules.md, LLDAS).
DEFAULT_MAX_SLEDAI2K: Final = 4
DEFAULT_MAX_PGA: Final = 1.0
DEFAULT_MAX_PREDNISONE_MG_PER_DAY: Final = 7.5
PGA_MAX: Final = 3.0
PREDNISONE_MG_PER_DAY_MAX: Final = 2000.0


@dataclass(frozen=True)
class LldasCondition:
    condition: str
    met: bool
    reason: str


@dataclass(frozen=True)
class LldasResult:
    met: bool
    sledai2k: int
    conditions: tuple[LldasCondition, ...]
    explanation: str


# Source: Franklyn K et al., Ann Rheum Dis 2016;75:1615-21, LLDAS definition (five criteria).
def assess_lldas(
    descriptors: Iterable[str],
    *,
    pga: float,
    prednisone_mg_per_day: float,
    new_activity: bool,
    maintenance_tolerated: bool,
    hemolytic_anemia: bool = False,
    gi_activity: bool = False,
    max_sledai2k: int = DEFAULT_MAX_SLEDAI2K,
    max_pga: float = DEFAULT_MAX_PGA,
    max_prednisone_mg_per_day: float = DEFAULT_MAX_PREDNISONE_MG_PER_DAY,
) -> LldasResult:
    """LLDAS is met when all five conditions hold; each condition says why it holds or not."""
    scored = sledai2k_score(descriptors)
    global_assessment = check.number(pga, "pga", minimum=0, maximum=PGA_MAX)
    prednisone = check.number(
        prednisone_mg_per_day,
        "prednisone_mg_per_day",
        minimum=0,
        maximum=PREDNISONE_MG_PER_DAY_MAX,
        unit="mg/day",
    )
    new = check.boolean(new_activity, "new_activity")
    tolerated = check.boolean(maintenance_tolerated, "maintenance_tolerated")
    hemolysis = check.boolean(hemolytic_anemia, "hemolytic_anemia")
    gi = check.boolean(gi_activity, "gi_activity")
    score_limit = check.whole_number(max_sledai2k, "max_sledai2k", minimum=0)
    pga_limit = check.number(max_pga, "max_pga", minimum=0, maximum=PGA_MAX)
    dose_limit = check.number(max_prednisone_mg_per_day, "max_prednisone_mg_per_day", minimum=0)

    present = {item.code for item in scored.counted}
    blocking = [code for code in SLEDAI2K_DESCRIPTORS if code in LLDAS_BLOCKING_DESCRIPTORS
                and code in present]
    blockers = blocking + (["hemolytic_anemia"] if hemolysis else []) + (
        ["gi_activity"] if gi else []
    )
    if scored.score > score_limit:
        activity_reason = f"SLEDAI-2K {scored.score} > {score_limit}"
    elif blockers:
        activity_reason = (
            f"SLEDAI-2K {scored.score} <= {score_limit} but major organ activity: "
            + ", ".join(blockers)
        )
    else:
        activity_reason = (
            f"SLEDAI-2K {scored.score} <= {score_limit} without major organ, haemolytic "
            "or gastrointestinal activity"
        )
    conditions = (
        LldasCondition(
            "sledai2k_without_major_organ_activity",
            scored.score <= score_limit and not blockers,
            activity_reason,
        ),
        LldasCondition(
            "no_new_activity",
            not new,
            "new lupus activity since the previous assessment" if new
            else "no new lupus activity since the previous assessment",
        ),
        LldasCondition(
            "pga",
            global_assessment <= pga_limit,
            f"PGA {check.shown(global_assessment)} "
            + ("<=" if global_assessment <= pga_limit else ">")
            + f" {check.shown(pga_limit)} (0-3 scale)",
        ),
        LldasCondition(
            "prednisone",
            check.exact(prednisone) <= check.exact(dose_limit),
            f"prednisone equivalent {check.shown(prednisone)} mg/day "
            + ("<=" if check.exact(prednisone) <= check.exact(dose_limit) else ">")
            + f" {check.shown(dose_limit)} mg/day",
        ),
        LldasCondition(
            "maintenance_tolerated",
            tolerated,
            "standard maintenance immunosuppression well tolerated" if tolerated
            else "maintenance immunosuppression not well tolerated or not standard",
        ),
    )
    met = all(c.met for c in conditions)
    failed = [c.condition for c in conditions if not c.met]
    verdict = "LLDAS met: all five conditions hold" if met else (
        "LLDAS not met: fails " + ", ".join(failed)
    )
    details = "; ".join(f"{c.condition}: {c.reason}" for c in conditions)
    explanation = f"{verdict} ({FRANKLYN_2016}). {details}."
    return LldasResult(met, scored.score, conditions, explanation)
