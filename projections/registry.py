"""Every projection by name: its version, its tables and its pure fold.

Raise a projection's `version` whenever its rows change shape or meaning: the runner then
drops its tables and rebuilds them from position 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from sqlalchemy import Table

from projections import subject_rows as rows
from projections import tables as t


@dataclass(frozen=True)
class SubjectProjection:
    """Rows per subject: catch-up refolds the subjects whose streams moved."""

    name: str
    version: int
    tables: tuple[Table, ...]
    fold: rows.RowFunction
    description: str


STUDY: Final = "study"  # the study's facts the subject folds need (rm_study_facts)
STUDY_VERSION: Final = 1

SUBJECT_PROJECTIONS: Final[tuple[SubjectProjection, ...]] = (
    SubjectProjection("subjects", 1, (t.subjects,), rows.subject_rows,
                      "phase, dates, cohort and exit of each subject"),
    SubjectProjection("eligibility", 2, (t.eligibility, t.eligibility_criteria),
                      rows.eligibility_rows,  # 2: as of confirmation, post-enrolment findings
                      "inclusion criteria and exclusions"),
    SubjectProjection("adverse_events", 2, (t.adverse_events, t.safety_windows, t.sae_clocks),
                      rows.safety_rows, "adverse events, safety windows, SAE clocks"),
    SubjectProjection("visits", 2, (t.visits,), rows.visit_rows,  # 2: missed_note
                      "planned visits with windows"),
    SubjectProjection("deviations", 1, (t.deviations,), rows.deviation_rows,
                      "protocol deviations"),
    SubjectProjection("endpoints", 1, (t.endpoints,), rows.endpoint_rows,
                      "SLEDAI-2K, LLDAS, renal response, CAR-T persistence"),
)

NAMES: Final[tuple[str, ...]] = (STUDY, *(p.name for p in SUBJECT_PROJECTIONS))
VERSIONS: Final[dict[str, int]] = {STUDY: STUDY_VERSION,
                                   **{p.name: p.version for p in SUBJECT_PROJECTIONS}}
TABLES: Final[dict[str, tuple[Table, ...]]] = {STUDY: (t.study_facts,),
                                               **{p.name: p.tables for p in SUBJECT_PROJECTIONS}}


def subject_projection(name: str) -> SubjectProjection:
    return next(p for p in SUBJECT_PROJECTIONS if p.name == name)
