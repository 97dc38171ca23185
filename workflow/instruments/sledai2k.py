"""SLEDAI-2K: the weighted sum of 24 lupus activity descriptors (0-105)."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Final

from workflow.errors import InvalidInput
from workflow.instruments import _validate as check
from workflow.instruments.codes import SLEDAI2K_DESCRIPTORS, SLEDAI2K_WEIGHTS
from workflow.instruments.sources import GLADMAN_2000, GLADMAN_2002, TOUMA_2010

SLEDAI2K_MAX_SCORE: Final = sum(SLEDAI2K_WEIGHTS.values())
DEFAULT_LOOKBACK_DAYS: Final = 30
DEFAULT_MIN_REDUCTION: Final = 4

# Organ systems of the SLEDAI-2K form, in form order (used for points per organ system).
SLEDAI2K_ORGAN_SYSTEMS: Final[dict[str, tuple[str, ...]]] = {
    "cns": (
        "seizure", "psychosis", "organic_brain_syndrome", "visual_disturbance",
        "cranial_nerve_disorder", "lupus_headache", "cva",
    ),
    "vascular": ("vasculitis",),
    "musculoskeletal": ("arthritis", "myositis"),
    "renal": ("urinary_casts", "hematuria", "proteinuria", "pyuria"),
    "mucocutaneous": ("rash", "alopecia", "mucosal_ulcers"),
    "serosal": ("pleurisy", "pericarditis"),
    "immunologic": ("low_complement", "increased_dna_binding"),
    "constitutional": ("fever",),
    "hematologic": ("thrombocytopenia", "leukopenia"),
}
_ORGAN_OF: Final[dict[str, str]] = {
    code: organ for organ, members in SLEDAI2K_ORGAN_SYSTEMS.items() for code in members
}


@dataclass(frozen=True)
class ScoredDescriptor:
    code: str
    organ_system: str
    weight: int


@dataclass(frozen=True)
class OrganSystemPoints:
    organ_system: str
    points: int


@dataclass(frozen=True)
class Sledai2kResult:
    score: int
    counted: tuple[ScoredDescriptor, ...]
    points_by_organ_system: tuple[OrganSystemPoints, ...]
    explanation: str


@dataclass(frozen=True)
class Sledai2kWindowResult:
    result: Sledai2kResult
    window_start: date
    window_end: date
    lookback_days: int
    excluded: tuple[tuple[date, str], ...]
    explanation: str


@dataclass(frozen=True)
class Sledai2kImprovement:
    baseline_score: int
    score: int
    reduction: int
    improved: bool
    explanation: str


# Source: Gladman DD et al., SLEDAI-2K, J Rheumatol 2002;29:288-91 (descriptor weights).
def sledai2k_score(descriptors: Iterable[str]) -> Sledai2kResult:
    """Score the descriptors present in the look-back window (each code counts once)."""
    return _scored(check.codes(descriptors, "descriptors", SLEDAI2K_WEIGHTS,
                               "SLEDAI-2K descriptor"))


@functools.lru_cache(maxsize=512)  # a pure function of the set; a fold scores a form ~twice
def _scored(present: frozenset[str]) -> Sledai2kResult:
    counted = tuple(
        ScoredDescriptor(code, _ORGAN_OF[code], SLEDAI2K_WEIGHTS[code])
        for code in SLEDAI2K_DESCRIPTORS
        if code in present
    )
    score = sum(item.weight for item in counted)
    by_organ = tuple(
        OrganSystemPoints(organ, sum(SLEDAI2K_WEIGHTS[c] for c in members if c in present))
        for organ, members in SLEDAI2K_ORGAN_SYSTEMS.items()
    )
    if counted:
        terms = " + ".join(f"{item.code} {item.weight}" for item in counted)
        what = f"{terms} = {score}"
    else:
        what = "no descriptor present"
    organs = ", ".join(f"{o.organ_system} {o.points}" for o in by_organ if o.points)
    explanation = f"SLEDAI-2K {score} of {SLEDAI2K_MAX_SCORE}: {what} (weights of {GLADMAN_2002})."
    if organs:
        explanation += f" Points by organ system: {organs}."
    return Sledai2kResult(score, counted, by_organ, explanation)


# Source: Touma Z et al., SLEDAI-2K for a 30-day window, Lupus 2010;19:49-51 (look-back).
def sledai2k_in_window(
    observations: Iterable[tuple[date, str]],
    assessment_date: date,
    *,
    lookback_days: int = DEFAULT_LOOKBACK_DAYS,
) -> Sledai2kWindowResult:
    """Score descriptors observed from `lookback_days` before the assessment up to its day."""
    assessed = check.calendar_date(assessment_date, "assessment_date")
    days = check.whole_number(lookback_days, "lookback_days", minimum=0)
    start = assessed - timedelta(days=days)
    inside: list[str] = []
    excluded: list[tuple[date, str]] = []
    for observation in observations:
        if not isinstance(observation, tuple) or len(observation) != 2:
            raise InvalidInput(
                f"observations must hold (date, descriptor) pairs, got {check.shown(observation)}.",
                field="observations",
            )
        seen = check.calendar_date(observation[0], "observations")
        code = check.choice(observation[1], "observations", SLEDAI2K_WEIGHTS)
        if start <= seen <= assessed:
            inside.append(code)
        else:
            excluded.append((seen, code))
    result = sledai2k_score(inside)
    left_out = "; ".join(f"{code} on {seen.isoformat()}" for seen, code in sorted(excluded))
    explanation = (
        f"Look-back window {start.isoformat()} to {assessed.isoformat()} ({days} days, "
        f"{TOUMA_2010}). {result.explanation}"
        + (f" Outside the window, not counted: {left_out}." if left_out else "")
    )
    return Sledai2kWindowResult(result, start, assessed, days, tuple(sorted(excluded)), explanation)


# Source: Gladman DD et al., J Rheumatol 2000;27:377-9 (clinically meaningful change).
def sledai2k_improvement(
    baseline_score: int, score: int, *, min_reduction: int = DEFAULT_MIN_REDUCTION
) -> Sledai2kImprovement:
    """Improved when the score fell by at least `min_reduction` points from baseline."""
    base = check.whole_number(
        baseline_score, "baseline_score", minimum=0, maximum=SLEDAI2K_MAX_SCORE
    )
    now = check.whole_number(score, "score", minimum=0, maximum=SLEDAI2K_MAX_SCORE)
    needed = check.whole_number(min_reduction, "min_reduction", minimum=1)
    reduction = base - now
    improved = reduction >= needed
    explanation = (
        f"SLEDAI-2K fell by {reduction} points ({base} -> {now}); a reduction of at least "
        f"{needed} is clinically meaningful ({GLADMAN_2000}), so "
        + ("improved." if improved else "not improved.")
    )
    return Sledai2kImprovement(base, now, reduction, improved, explanation)
