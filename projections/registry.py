"""Every projection by name: its version, its tables and its pure fold.

Raise a projection's `version` whenever its rows change shape or meaning: the runner then
drops its tables and rebuilds them from position 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from sqlalchemy import Table

from projections import tables as t

if TYPE_CHECKING:
    from projections.subject_rows import RowFunction, Rows, SubjectContext


@dataclass(frozen=True)
class SubjectProjection:
    """Rows per subject: catch-up refolds the subjects whose streams moved."""

    name: str
    version: int
    tables: tuple[Table, ...]
    fold: RowFunction
    description: str


def _fold(name: str) -> RowFunction:
    """`projections.subject_rows.<name>`, imported at the first fold: every query reads the
    versions above at start-up, only a catch-up folds (and the folds import the clinical
    rules, a good part of a query's start-up: issue 17)."""
    def fold(ctx: SubjectContext) -> Rows:
        from projections import subject_rows

        function: RowFunction = getattr(subject_rows, name)
        return function(ctx)

    fold.__name__ = fold.__qualname__ = name
    return fold


STUDY: Final = "study"  # the study's facts the subject folds need (rm_study_facts)
STUDY_VERSION: Final = 1

SUBJECT_PROJECTIONS: Final[tuple[SubjectProjection, ...]] = (
    SubjectProjection("subjects", 1, (t.subjects,), _fold("subject_rows"),
                      "phase, dates, cohort and exit of each subject"),
    SubjectProjection("eligibility", 2, (t.eligibility, t.eligibility_criteria),
                      _fold("eligibility_rows"),  # 2: as of confirmation, post-enrolment findings
                      "inclusion criteria and exclusions"),
    SubjectProjection("adverse_events", 2, (t.adverse_events, t.safety_windows, t.sae_clocks),
                      _fold("safety_rows"), "adverse events, safety windows, SAE clocks"),
    SubjectProjection("visits", 2, (t.visits,), _fold("visit_rows"),  # 2: missed_note
                      "planned visits with windows"),
    SubjectProjection("deviations", 1, (t.deviations,), _fold("deviation_rows"),
                      "protocol deviations"),
    SubjectProjection("endpoints", 1, (t.endpoints,), _fold("endpoint_rows"),
                      "SLEDAI-2K, LLDAS, renal response, CAR-T persistence"),
    SubjectProjection("tasks", 1, (t.task_inputs,), _fold("task_rows"),
                      "each subject's open tasks without the clock (todo, subjects)"),
)

NAMES: Final[tuple[str, ...]] = (STUDY, *(p.name for p in SUBJECT_PROJECTIONS))
VERSIONS: Final[dict[str, int]] = {STUDY: STUDY_VERSION,
                                   **{p.name: p.version for p in SUBJECT_PROJECTIONS}}
TABLES: Final[dict[str, tuple[Table, ...]]] = {STUDY: (t.study_facts,),
                                               **{p.name: p.tables for p in SUBJECT_PROJECTIONS}}


@dataclass(frozen=True)
class TableSet:
    """Where the runner keeps the read models: the live tables (`LIVE`), or the shadow tables
    a rebuild under new code fills beside them (`projections/shadow.py`), each with its own
    checkpoints. Rows are folded by the live table's name; `projections[name]` lists the
    tables of projection `name` in the order of `TABLES[name]`."""

    checkpoints: Table
    projections: dict[str, tuple[Table, ...]]

    @property
    def study_facts(self) -> Table:
        return self.projections[STUDY][0]

    def all(self) -> list[Table]:
        return [self.checkpoints, *(table for name in NAMES for table in self.projections[name])]


LIVE: Final = TableSet(t.checkpoints, TABLES)


def subject_projection(name: str) -> SubjectProjection:
    return next(p for p in SUBJECT_PROJECTIONS if p.name == name)
