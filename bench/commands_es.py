"""The `eventsourcing` side of `python -m bench.commands` (PyPI `eventsourcing` 9.x, the
`bench` extra): a `Subject` aggregate with the equivalent of each command of the mix.

Each command is what the library's documentation shows for an application command:
`repository.get(id)` (the aggregate's events selected and replayed), a method that checks a
simple rule and triggers an event, and `save()` (its new event inserted in a transaction of
its own). Library defaults throughout: no snapshots, no aggregate cache, the JSON transcoder,
`Application`'s recorder (the one with notification ids); SQLite through
`eventsourcing.sqlite` (a file, journal_mode=WAL set by the library; synchronous is checked to
be FULL, as trialflow's engine sets it), PostgreSQL through `eventsourcing.postgres`
(psycopg, the server's settings). The subjects are prepared untimed with as many events as
the trialflow subjects of the same role have, so `get` replays streams of the same length.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

PHASES: Final = ("screening", "cell_collection", "infused")


class RuleBroken(Exception):
    """A command refused by the aggregate's rule."""


def subject_uuid(subject: str) -> UUID:
    return uuid5(NAMESPACE_URL, f"trialflow-bench/{subject}")


class Subject(Aggregate):
    """A trial subject: its phase, forms (by sequence number), visits and adverse events."""

    @event("Consented")
    def __init__(self, subject: str, phase: str) -> None:
        self.subject = subject
        self.phase = phase
        self.forms: dict[int, dict[str, Any]] = {}
        self.visits: dict[str, str] = {}
        self.adverse_events = 0

    @staticmethod
    def create_id(subject: str, phase: str) -> UUID:
        return subject_uuid(subject)

    # ---- commands: a rule, then an event
    def record_form(self, form: str, values: Mapping[str, Any], on: str) -> int:
        if self.phase not in PHASES:
            raise RuleBroken(f"{self.subject}: no forms in phase {self.phase}")
        number = len(self.forms) + 1
        self._form_recorded(number=number, form=form, values=dict(values), on=on)
        return number

    def correct_form(self, number: int, values: Mapping[str, Any], reason: str) -> None:
        form = self.forms.get(number)
        if form is None or not reason:
            raise RuleBroken(f"{self.subject}: no form {number} to correct")
        if all(form["values"].get(k) == v for k, v in values.items()):
            raise RuleBroken(f"{self.subject}: the correction changes nothing")
        self._form_corrected(number=number, values=dict(values), reason=reason)

    def record_visit(self, visit: str, status: str, on: str) -> None:
        if self.phase != "infused":
            raise RuleBroken(f"{self.subject}: follow-up visits start after the infusion")
        if visit in self.visits:
            raise RuleBroken(f"{self.subject}: visit {visit} is already recorded")
        self._visit_recorded(visit=visit, status=status, on=on)

    def record_adverse_event(self, term: str, grade: int, onset: str) -> None:
        if not 1 <= grade <= 5:
            raise RuleBroken(f"{self.subject}: grade {grade} is not 1 to 5")
        self._adverse_event_recorded(term=term, grade=grade, onset=onset)

    def confirm_eligibility(self, on: str) -> None:
        if self.phase != "screening" or not self.forms:
            raise RuleBroken(f"{self.subject}: not a screened subject")
        self._eligibility_confirmed(on=on)

    # ---- events
    @event("FormRecorded")
    def _form_recorded(self, number: int, form: str, values: dict[str, Any], on: str) -> None:
        self.forms[number] = {"form": form, "values": values, "on": on}

    @event("FormCorrected")
    def _form_corrected(self, number: int, values: dict[str, Any], reason: str) -> None:
        self.forms[number]["values"].update(values)

    @event("VisitRecorded")
    def _visit_recorded(self, visit: str, status: str, on: str) -> None:
        self.visits[visit] = status

    @event("AdverseEventRecorded")
    def _adverse_event_recorded(self, term: str, grade: int, onset: str) -> None:
        self.adverse_events += 1

    @event("EligibilityConfirmed")
    def _eligibility_confirmed(self, on: str) -> None:
        self.phase = "cell_collection"


class Trial(Application[UUID]):
    """The application: one method per command, each get → method → save."""

    def prepare(self, subject: str, phase: str, events: int) -> None:
        """A subject with `events` events in all (untimed)."""
        aggregate = Subject(subject, phase)
        for n in range(events - 1):
            aggregate.record_form("screening", {"item": n, "value": "yes"}, "2025-01-06")
        self.save(aggregate)

    def record_form(self, subject: str, form: str, values: Mapping[str, Any], on: str) -> int:
        aggregate: Subject = self.repository.get(subject_uuid(subject))
        number = aggregate.record_form(form, values, on)
        self.save(aggregate)
        return number

    def correct_form(self, subject: str, number: int, values: Mapping[str, Any],
                     reason: str) -> None:
        aggregate: Subject = self.repository.get(subject_uuid(subject))
        aggregate.correct_form(number, values, reason)
        self.save(aggregate)

    def record_visit(self, subject: str, visit: str, status: str, on: str) -> None:
        aggregate: Subject = self.repository.get(subject_uuid(subject))
        aggregate.record_visit(visit, status, on)
        self.save(aggregate)

    def record_adverse_event(self, subject: str, term: str, grade: int, onset: str) -> None:
        aggregate: Subject = self.repository.get(subject_uuid(subject))
        aggregate.record_adverse_event(term, grade, onset)
        self.save(aggregate)

    def confirm_eligibility(self, subject: str, on: str) -> None:
        aggregate: Subject = self.repository.get(subject_uuid(subject))
        aggregate.confirm_eligibility(on)
        self.save(aggregate)


VISITS: Final = ("D1", "D4", "D7", "D10", "D14", "D21", "D28")


@dataclass
class EsMix:
    """The prepared application and the mix's state; the same rounds as `FlowMix`."""

    app: Trial
    subjects: list[str]
    screened: list[str]
    done: int = 0

    def __post_init__(self) -> None:
        self.visits_done: dict[str, int] = {}

    def round(self, r: int) -> None:
        app = self.app
        subject = self.subjects[r % len(self.subjects)]
        number = app.record_form(subject, "vitals", {"heart_rate": 60 + r % 40}, "2025-03-07")
        app.correct_form(subject, number, {"heart_rate": 101 + r % 40}, "transcription error")
        index = self.visits_done.get(subject, 0)
        self.visits_done[subject] = index + 1
        app.record_visit(subject, VISITS[index], "done", "2025-02-06")
        app.record_adverse_event(subject, f"headache {r}", 1, "2025-03-07")
        app.confirm_eligibility(self.screened[r], "2025-03-07")
        self.done += 5

    def close(self) -> None:
        self.app.close()


def sqlite_env(path: str) -> dict[str, str]:
    return {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": path}


def postgres_env(dbname: str, host: str, port: int, user: str) -> dict[str, str]:
    return {"PERSISTENCE_MODULE": "eventsourcing.postgres", "POSTGRES_DBNAME": dbname,
            "POSTGRES_HOST": host, "POSTGRES_PORT": str(port), "POSTGRES_USER": user,
            "POSTGRES_PASSWORD": ""}


def sqlite_synchronous(app: Trial) -> int:
    """`PRAGMA synchronous` of the application's SQLite connection (2 is FULL)."""
    recorder: Any = app.recorder
    with recorder.datastore.transaction(commit=False) as cursor:
        cursor.execute("PRAGMA synchronous")
        return int(cursor.fetchone()[0])


def prepare(env: Mapping[str, str], subjects: list[str], screened: list[str],
            infused_events: int, screened_events: int) -> EsMix:
    app = Trial(env=dict(env))
    for subject in subjects:
        app.prepare(subject, "infused", infused_events)
    for subject in screened:
        app.prepare(subject, "screening", screened_events)
    return EsMix(app, subjects, screened)
