"""Immune effector cell-associated neurotoxicity syndrome (ICANS) grade, ASTCT, adults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from workflow.errors import InvalidInput
from workflow.instruments import _validate as check
from workflow.instruments.codes import (
    ICANS_CEREBRAL_EDEMA,
    ICANS_CONSCIOUSNESS,
    ICANS_MOTOR,
    ICANS_SEIZURE,
)
from workflow.instruments.sources import LEE_2019

ICE_MAX: Final = 10
# ICE tasks and their maximum points.
ICE_TASKS: Final[dict[str, int]] = {
    "orientation": 4, "naming": 3, "commands": 1, "writing": 1, "attention": 1,
}
CONSCIOUSNESS_GRADE: Final[dict[str, int]] = {
    "normal": 0, "awakens_spontaneously": 1, "awakens_to_voice": 2,
    "awakens_to_tactile": 3, "unarousable": 4,
}
SEIZURE_GRADE: Final[dict[str, int]] = {
    "none": 0, "rapidly_resolving": 3, "prolonged_or_repetitive": 4,
}
MOTOR_GRADE: Final[dict[str, int]] = {"none": 0, "deep_focal_weakness": 4}
CEREBRAL_EDEMA_GRADE: Final[dict[str, int]] = {"none": 0, "focal": 3, "diffuse": 4}


@dataclass(frozen=True)
class IceResult:
    ice_score: int
    explanation: str


@dataclass(frozen=True)
class DomainGrade:
    domain: str
    finding: str
    grade: int


@dataclass(frozen=True)
class IcansResult:
    grade: int
    ice_score: int
    domains: tuple[DomainGrade, ...]
    explanation: str


# Source: Lee DW et al., Biol Blood Marrow Transplant 2019;25:625-38, ICE (encephalopathy) score.
def ice_total(
    *, orientation: int, naming: int, commands: int, writing: int, attention: int
) -> IceResult:
    """ICE: orientation 0-4, naming 0-3, commands, writing and attention 0-1 each; total 0-10."""
    given = {
        "orientation": orientation, "naming": naming, "commands": commands,
        "writing": writing, "attention": attention,
    }
    points = {
        task: check.whole_number(value, task, minimum=0, maximum=ICE_TASKS[task])
        for task, value in given.items()
    }
    total = sum(points.values())
    parts = ", ".join(f"{task} {points[task]}/{ICE_TASKS[task]}" for task in ICE_TASKS)
    return IceResult(total, f"ICE score {total}/10: {parts} ({LEE_2019}).")


def _ice_grade(score: int) -> int:
    if score == ICE_MAX:
        return 0
    if score >= 7:
        return 1
    if score >= 3:
        return 2
    return 3


# Source: Lee DW et al., Biol Blood Marrow Transplant 2019;25:625-38, ASTCT ICANS grading (adults).
def grade_icans(
    *,
    ice_score: int,
    consciousness: str = "normal",
    seizure: str = "none",
    motor: str = "none",
    cerebral_edema: str = "none",
) -> IcansResult:
    """The most severe domain decides; ICE 10 with nothing else is grade 0 (no ICANS).

    An unarousable patient cannot perform the ICE assessment, so the score must then be 0
    (ICE 0 while unarousable is grade 4; while awake, e.g. global aphasia, grade 3).
    """
    ice = check.whole_number(ice_score, "ice_score", minimum=0, maximum=ICE_MAX)
    level = check.choice(consciousness, "consciousness", ICANS_CONSCIOUSNESS)
    fit = check.choice(seizure, "seizure", ICANS_SEIZURE)
    weakness = check.choice(motor, "motor", ICANS_MOTOR)
    edema = check.choice(cerebral_edema, "cerebral_edema", ICANS_CEREBRAL_EDEMA)
    if level == "unarousable" and ice != 0:
        raise InvalidInput(
            f"ice_score must be 0 when consciousness is unarousable, got {ice}.",
            field="ice_score",
        )
    domains = (
        DomainGrade("ice_score", str(ice), _ice_grade(ice)),
        DomainGrade("consciousness", level, CONSCIOUSNESS_GRADE[level]),
        DomainGrade("seizure", fit, SEIZURE_GRADE[fit]),
        DomainGrade("motor", weakness, MOTOR_GRADE[weakness]),
        DomainGrade("cerebral_edema", edema, CEREBRAL_EDEMA_GRADE[edema]),
    )
    grade = max(d.grade for d in domains)
    if grade == 0:
        explanation = f"No ICANS: ICE score 10 and no other finding ({LEE_2019})."
    else:
        deciding = [d for d in domains if d.grade == grade]
        found = "; ".join(f"{d.domain} {d.finding} -> grade {d.grade}" for d in domains if d.grade)
        explanation = (
            f"ICANS grade {grade}, decided by "
            + " and ".join(d.domain for d in deciding)
            + f" (the most severe domain): {found} ({LEE_2019})."
        )
    return IcansResult(grade, ice, domains, explanation)
