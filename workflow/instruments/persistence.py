"""CAR-T persistence in blood: peak, time of peak, last detectable day, detectable at visits."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from workflow.errors import InvalidInput
from workflow.instruments import _validate as check
from workflow.instruments.sources import PROTOCOL_PERSISTENCE
from workflow.instruments.study_days import DAY_LIMIT, DEFAULT_VISIT_SCHEDULE

DEFAULT_LLOQ_COPIES_PER_UG: Final = 50.0
CHECKPOINT_VISITS: Final = ("D90", "D180", "D360")


@dataclass(frozen=True)
class Checkpoint:
    visit: str
    sample_day: int | None
    copies_per_ug: float | None
    detectable: bool | None


@dataclass(frozen=True)
class PersistenceSummary:
    lloq_copies_per_ug: float
    samples: int
    detectable_samples: int
    peak_copies_per_ug: float | None
    peak_day: int | None
    last_detectable_day: int | None
    detectable_D90: bool | None
    detectable_D180: bool | None
    detectable_D360: bool | None
    checkpoints: tuple[Checkpoint, ...]
    explanation: str


# Source: IM19-SLE protocol (docs/clinical-rules.md): qPCR copies/ug gDNA, LLOQ 50 copies/ug.
def persistence_summary(
    samples: Iterable[tuple[int, float]],
    *,
    lloq_copies_per_ug: float = DEFAULT_LLOQ_COPIES_PER_UG,
    schedule: Mapping[str, tuple[int, int]] = DEFAULT_VISIT_SCHEDULE,
) -> PersistenceSummary:
    """Summarise (study_day, copies/ug) samples; below the LLOQ a value is not detected.

    Peak and last detectable day use samples from D0 on. At D90, D180 and D360 the sample
    inside the visit's window closest to its target day counts (the later one on a tie);
    without such a sample the answer is None (unknown).
    """
    lloq = check.number(
        lloq_copies_per_ug, "lloq_copies_per_ug", minimum=0, minimum_exclusive=True,
        unit="copies/ug",
    )
    by_day: dict[int, float] = {}
    for sample in samples:
        if not isinstance(sample, tuple) or len(sample) != 2:
            raise InvalidInput(
                f"samples must hold (study_day, copies_per_ug) pairs, got {check.shown(sample)}.",
                field="samples",
            )
        day = check.whole_number(sample[0], "study_day", minimum=-DAY_LIMIT, maximum=DAY_LIMIT)
        copies = check.number(sample[1], "copies_per_ug", minimum=0, unit="copies/ug")
        if day in by_day:
            raise InvalidInput(
                f"samples has two values for study day {day}; give one value per day.",
                field="samples",
            )
        by_day[day] = copies
    after = sorted((day, copies) for day, copies in by_day.items() if day >= 0)
    detected = [(day, copies) for day, copies in after if copies >= lloq]
    peak_day: int | None = None
    peak: float | None = None
    for day, copies in detected:
        if peak is None or copies > peak:
            peak_day, peak = day, copies
    last = detected[-1][0] if detected else None

    checkpoints = []
    for visit in CHECKPOINT_VISITS:
        target, width = schedule[visit]
        inside = [(day, copies) for day, copies in after if abs(day - target) <= width]
        if not inside:
            checkpoints.append(Checkpoint(visit, None, None, None))
            continue
        day, copies = min(inside, key=lambda item: (abs(item[0] - target), -item[0]))
        checkpoints.append(Checkpoint(visit, day, copies, copies >= lloq))

    def show(copies: float) -> str:
        return f"{copies:g}"

    parts = [
        f"LLOQ {show(lloq)} copies/ug; {len(after)} samples from D0, {len(detected)} at or "
        f"above it"
    ]
    if peak is not None:
        parts.append(f"peak {show(peak)} copies/ug on D{peak_day}; last detectable on D{last}")
    else:
        parts.append("no detectable sample")
    for point in checkpoints:
        if point.sample_day is None or point.copies_per_ug is None:
            parts.append(f"{point.visit}: no sample in the visit window")
        else:
            parts.append(
                f"{point.visit}: D{point.sample_day} {show(point.copies_per_ug)} copies/ug, "
                + ("detectable" if point.detectable else "not detected")
            )
    explanation = "; ".join(parts) + f" ({PROTOCOL_PERSISTENCE})."
    return PersistenceSummary(
        lloq, len(after), len(detected), peak, peak_day, last,
        checkpoints[0].detectable, checkpoints[1].detectable, checkpoints[2].detectable,
        tuple(checkpoints), explanation,
    )
