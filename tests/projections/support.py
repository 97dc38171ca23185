"""Snapshots of the read models, and a scripted trial whose steps tests can interleave."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any

from events.store import EventStore
from projections import registry
from projections.views import View, memory_view
from tests.support.clock import FakeClock
from tests.support.study import COORDINATOR, INVESTIGATOR, Desk, on_day, screen_eligible
from workflow.commands import messages as M

Snapshot = dict[str, list[str]]


def _canonical(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True, default=str)


def snapshot(view: View) -> Snapshot:
    """Every read-model table's rows, canonical and sorted (tables and memory compare equal
    when they hold the same values)."""
    out: Snapshot = {}
    for name in registry.NAMES:
        if name == registry.STUDY:
            continue
        for table in registry.TABLES[name]:
            out[table.name] = sorted(_canonical(r) for r in view.rows(table))
    return out


def table_snapshot(store: EventStore, position: int | None = None) -> Snapshot:
    """The read-model tables as stored, with no catch-up first (`position`: the head the
    view is told it is at; default the log's)."""
    from workflow.study import Study

    head = store.last_position() if position is None else position
    return snapshot(View(head, Study(), "tables", engine=store.engine))


def memory_snapshot(store: EventStore, position: int | None = None) -> Snapshot:
    return snapshot(memory_view(store, store.last_position() if position is None
                                else position))


Step = Callable[[], None]


def lifecycle(flow: Desk, clock: FakeClock, subject: str, start: date,
              visit_offsets: list[int]) -> list[Step]:
    """The steps of one subject from consent to follow-up visits, AEs and a correction;
    `visit_offsets[i]` shifts visit i's date (some land outside their window, none before
    D0)."""
    c = COORDINATOR
    coi = f"COI-{subject}"
    d0 = start + timedelta(days=30)
    bsa = 1.62

    def at(day: date) -> None:
        on_day(clock, day)

    def screen() -> None:
        screen_eligible(flow, subject, start, clock=clock)

    def confirm() -> None:
        at(start + timedelta(days=3))
        flow.send(INVESTIGATOR, M.ConfirmEligibility(subject))

    def collect() -> None:
        at(start + timedelta(days=7))
        flow.send(c, M.RecordLeukapheresis(subject, start + timedelta(days=7), coi))

    def release() -> None:
        at(start + timedelta(days=20))
        flow.send(c, M.ReleaseProduct(subject, f"LOT-{subject}", coi, viable_cells=2e8))

    def dose(offset: int, cyclo: float) -> Step:
        def step() -> None:
            at(d0 + timedelta(days=offset))
            flow.send(c, M.GiveLymphodepletion(subject, d0 + timedelta(days=offset),
                                               round(25 * bsa, 1), round(cyclo, 1)))
        return step

    def infuse() -> None:
        at(d0)
        order = flow.subject(subject).enrolment_order
        assert order is not None
        cells = flow.study().protocol.cohort_for(order).target_cells(58)
        flow.send(c, M.Infuse(subject, datetime.fromisoformat(
            f"{d0.isoformat()}T10:00:00+08:00"), cells, coi))

    def adverse_event() -> None:
        onset = d0 + timedelta(days=2)
        at(onset)
        flow.send(c, M.RecordForm(subject, "adverse_event", (
            "term=cytokine release syndrome", "category=crs", f"onset_date={onset}",
            "grade=2", "temperature_c=39.2", "hypotension=no_vasopressors",
            "serious_criteria=hospitalisation", "expected=no",
            f"awareness_at={onset}T09:00:00+08:00", f"sponsor_aware_at={onset}T15:00:00+08:00",
        ), onset))

    def causality() -> None:
        at(d0 + timedelta(days=3))
        ae = [f for f in flow.subject(subject).forms.values() if f.form == "adverse_event"]
        flow.send(INVESTIGATOR, M.RecordForm(subject, "causality", (
            f"ae_position={ae[0].position}", "relatedness=probable")))

    def correct_grade() -> None:
        at(d0 + timedelta(days=4))
        ae = [f for f in flow.subject(subject).forms.values() if f.form == "adverse_event"]
        flow.send(c, M.CorrectRecord(subject, ae[0].position, ("grade=3", "hypoxia=high_flow"),
                                     "source document says grade 3"))

    def visit(code: str, target: int, shift: int) -> Step:
        def step() -> None:
            day = d0 + timedelta(days=max(0, target + shift))  # never before D0 (phase order)
            at(day)
            flow.send(c, M.RecordForm(subject, "disease_activity", (
                "arthritis", "pga=1", "new_activity=no"), day, code))
            flow.send(c, M.RecordVisit(subject, code, "done", day))
        return step

    visits = [("D1", 1), ("D4", 4), ("D7", 7), ("D10", 10), ("D14", 14)]
    return [
        screen, confirm, collect, release,
        dose(-5, 0.0), dose(-4, 0.0), dose(-3, 1000 * bsa), infuse,
        adverse_event, causality, correct_grade,
        *[visit(code, target, visit_offsets[i % len(visit_offsets)])
          for i, (code, target) in enumerate(visits)],
    ]
