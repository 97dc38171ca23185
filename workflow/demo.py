"""Synthetic studies: one subject's complete history through the real commands, and copies of
it for large studies (benchmarks, `trialflow demo --subjects N`).

`run_subject` drives one subject from consent to completion through `Workflow`, so every
guard runs and every event is what the commands write. `clone_subjects` copies such a history
to many subjects, each shifted by whole days (dates and times in payloads and `occurred_at`
move together, so study days, windows and ages stay the same) and with the positions that
payloads name (`target_position`, `ae_position`) renumbered. Copies are appended in large
batches through `EventStore.append_streams`, recorded by the generator's own identity, so the
audit trail says they are synthetic.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Final

from events.envelope import NewEvent, RecordedEvent
from events.store import AppendContext, EventStore, StreamAppend
from events.streams import STUDY_STREAM
from workflow import event_types as T
from workflow.commands import Workflow

COORDINATOR: Final = "cora"
INVESTIGATOR: Final = "ivan"
GENERATOR: Final = AppendContext(actor="demo-generator", role="admin")
EXCLUSIONS: Final = ("prior_cart_or_gene_therapy", "active_infection", "hbv_hcv_hiv_syphilis",
                     "active_cns_lupus", "malignancy_5y", "pregnant_or_lactating",
                     "live_vaccine_4w", "other_trial_3m", "severe_organ_dysfunction")
SCREENING: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    ("demographics", ("date_of_birth=1990-05-01", "sex=female", "childbearing_potential=yes",
                      "partner_childbearing_potential=no")),
    ("vitals", ("weight_kg=58", "height_cm=162", "temperature_c=36.8")),
    ("sle_classification", ("ana_titer=320", "joint_involvement", "anti_dsdna_or_anti_smith",
                            "low_c3_and_low_c4")),
    ("disease_activity", ("arthritis", "proteinuria", "low_complement", "increased_dna_binding",
                          "pga=2", "new_activity=yes", "hemolytic_anemia=no", "gi_activity=no",
                          "maintenance_tolerated=yes")),
    ("labs", ("upcr_g_per_g=1.2", "egfr_ml_min=92", "c3_g_l=0.6", "c4_g_l=0.08")),
    ("prior_treatment", ("drug=prednisone", "drug_class=glucocorticoid", "start_date=2019-01-01",
                         "outcome=inadequate_response")),
    ("prior_treatment", ("drug=mycophenolate mofetil", "drug_class=immunosuppressant",
                         "start_date=2020-01-01", "stop_date=2022-01-01",
                         "outcome=inadequate_response")),
    ("prior_treatment", ("drug=rituximab", "drug_class=biologic", "start_date=2022-02-01",
                         "stop_date=2023-06-01", "outcome=relapse")),
    ("medication", ("drug=prednisone", "drug_class=glucocorticoid", "dose_mg_per_day=15",
                    "start_date=2023-01-01")),
    ("medication", ("drug=hydroxychloroquine", "drug_class=antimalarial", "dose_mg_per_day=400",
                    "start_date=2022-06-01")),
    ("pregnancy_test", ("specimen=serum", "result=negative")),
    ("contraception", ("agreed=yes",)),
    ("exclusion_checklist", tuple(f"{code}=no" for code in EXCLUSIONS)),
)
# follow-up: (visit, SLEDAI-2K flags, UPCR g/g, copies/ug of CAR-T transgene)
FOLLOW_UP: Final[tuple[tuple[str, tuple[str, ...], float, float], ...]] = (
    ("D1", ("arthritis", "proteinuria"), 1.1, 900.0),
    ("D4", ("arthritis",), 1.0, 8400.0),
    ("D7", ("arthritis",), 0.9, 21000.0),
    ("D10", (), 0.8, 15500.0),
    ("D14", (), 0.7, 9000.0),
    ("D21", (), 0.6, 4100.0),
    ("D28", (), 0.5, 2200.0),
    ("D60", (), 0.4, 640.0),
    ("D90", (), 0.35, 180.0),
    ("D180", (), 0.3, 60.0),
    ("D270", (), 0.25, 20.0),
    ("D360", (), 0.2, 0.0),
)

Clock = Callable[[date], None]  # moves the application's clock to a site day


def run_subject(flow: Workflow, subject: str, start: date, at: Clock) -> None:
    """One subject from consent on `start` to completion after D360, through the commands."""
    c = COORDINATOR
    at(start)
    flow.consent(c, subject, start, "2.0", None)
    for form, tokens in SCREENING:
        flow.record(c, subject, form, list(tokens), start, None, None)
    at(start + timedelta(days=3))
    flow.confirm_eligibility(INVESTIGATOR, subject, None)
    coi = f"COI-{subject}"
    at(start + timedelta(days=7))
    flow.leukapheresis(c, subject, start + timedelta(days=7), coi, None)
    at(start + timedelta(days=20))
    flow.release(c, subject, f"LOT-{subject}", coi, failed=False, reason=None,
                 viable_cells=2e8, command_id=None)
    d0 = start + timedelta(days=30)
    bsa = 1.62  # Mosteller: sqrt(162 cm * 58 kg / 3600)
    for offset, cyclophosphamide in ((-5, 0.0), (-4, 0.0), (-3, 1000 * bsa)):
        day = d0 + timedelta(days=offset)
        at(day)
        flow.lymphodepletion(c, subject, day, round(25 * bsa, 1), round(cyclophosphamide, 1),
                             deviation=False, reason=None, command_id=None)
    order = flow.subject(subject).enrolment_order
    assert order is not None
    cells = flow.study().protocol.cohort_for(order).target_cells(58)
    at(d0)
    flow.infuse(c, subject, datetime.fromisoformat(f"{d0.isoformat()}T10:00:00+08:00"), cells,
                coi, deviation=False, reason=None, command_id=None)
    _safety(flow, subject, d0, at)
    for visit, flags, upcr, copies in FOLLOW_UP:
        day = d0 + timedelta(days=int(visit[1:]))
        at(day)
        flow.record(c, subject, "disease_activity", [*flags, "pga=0.5", "new_activity=no",
                    "hemolytic_anemia=no", "gi_activity=no", "maintenance_tolerated=yes"],
                    day, visit, None)
        flow.record(c, subject, "labs", [f"upcr_g_per_g={upcr}", "egfr_ml_min=95"], day, visit,
                    None)
        flow.record(c, subject, "cart_persistence", [f"copies_per_ug={copies}"], day, visit,
                    None)
        if visit in ("D180", "D360"):
            flow.record(c, subject, "medication", [
                "drug=prednisone", "drug_class=glucocorticoid", "dose_mg_per_day=5",
                f"start_date={day - timedelta(days=30)}"], day, visit, None)
        flow.visit(c, subject, visit, "done", day, None)
    flow.complete(c, subject, None)


def _safety(flow: Workflow, subject: str, d0: date, at: Clock) -> None:
    """CRS on D1 (serious, reported), assessed and then corrected; a later infection."""
    c = COORDINATOR
    onset = d0 + timedelta(days=1)
    at(onset)
    flow.record(c, subject, "adverse_event", [
        "term=cytokine release syndrome", "category=crs", f"onset_date={onset}", "grade=2",
        "temperature_c=39.1", "hypotension=no_vasopressors", "hypoxia=none",
        "serious_criteria=hospitalisation", "expected=yes",
        f"awareness_at={onset}T09:30:00+08:00"], onset, None, None)
    ae = max(f.position for f in flow.subject(subject).forms.values()
             if f.form == "adverse_event")
    flow.record(c, subject, "sae_report", [f"ae_position={ae}", "report_kind=initial",
                f"sent_at={onset}T20:00:00+08:00"], onset, None, None)
    at(onset + timedelta(days=1))
    flow.record(INVESTIGATOR, subject, "causality", [f"ae_position={ae}",
                "relatedness=probable"], None, None, None)
    flow.correct(c, subject, ae, ["hypoxia=low_flow"], "oxygen 2 L/min per nursing chart",
                 None)
    onset = d0 + timedelta(days=40)
    at(onset)
    flow.record(c, subject, "adverse_event", [
        "term=upper respiratory tract infection", "category=infection",
        f"onset_date={onset}", "grade=1"], onset, None, None)


# --- copies ---------------------------------------------------------------------------------

_DATE: Final = re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ][0-9:.]+(?:Z|[+-]\d{2}:\d{2})?)?")


def _shift(value: Any, days: timedelta, names: tuple[str, str] | None = None) -> Any:
    """`value` with every date moved by `days` (and a subject id renamed inside strings)."""
    if isinstance(value, str) and names is not None and names[0] in value:
        return value.replace(*names)
    if isinstance(value, str) and _DATE.fullmatch(value):
        if len(value) == 10:
            return (date.fromisoformat(value) + days).isoformat()
        moment = datetime.fromisoformat(value.replace("Z", "+00:00")) + days
        return moment.isoformat()
    if isinstance(value, dict):
        return {k: _shift(v, days, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_shift(v, days, names) for v in value]
    return value


def _renumber(payload: dict[str, Any], moved: dict[int, int]) -> dict[str, Any]:
    out = dict(payload)
    if "target_position" in out:
        out["target_position"] = moved[int(out["target_position"])]
    values = out.get("values")
    if isinstance(values, dict) and "ae_position" in values:
        out["values"] = {**values, "ae_position": moved[int(values["ae_position"])]}
    return out


@dataclass(frozen=True)
class Template:
    """One subject's recorded history, and the study events its enrolment wrote."""

    events: tuple[RecordedEvent, ...]
    place: RecordedEvent | None


def template_of(store: EventStore, subject: str) -> Template:
    events = tuple(store.read_stream(subject))
    place = next((e for e in store.read_stream(STUDY_STREAM)
                  if e.type == T.ENROLMENT_PLACE_TAKEN and e.payload["subject"] == subject), None)
    return Template(events, place)


def clone_subjects(store: EventStore, template: Template, subjects: Sequence[str], *,
                   first_order: int, spread_days: int = 365, batch: int = 40) -> int:
    """Append a copy of `template` for each subject (enrolment order from `first_order`);
    returns the number of events appended. The caller must be the only writer meanwhile:
    positions named in payloads are computed from the log's head before each batch."""
    appended = 0
    for start in range(0, len(subjects), batch):
        chunk = subjects[start:start + batch]
        head = store.last_position()
        expected_first = head + 1
        appends, places = [], []
        for index, subject in enumerate(chunk, start=start):
            shift = timedelta(days=index % spread_days)
            events, place = _copy(template, subject, shift, head, first_order + index)
            head += len(events)
            appends.append(StreamAppend(subject, 0, events))
            if place is not None:
                places.append(place)
        if places:
            appends.append(StreamAppend(STUDY_STREAM, None, places))
        result = store.append_streams(appends, GENERATOR)
        if result.positions[0] != expected_first:
            raise RuntimeError("Another writer appended while the generator ran: positions "
                               "named in payloads would be wrong.")
        appended += len(result.positions)
    return appended


def _copy(template: Template, subject: str, shift: timedelta, head: int, order: int
          ) -> tuple[list[NewEvent], NewEvent | None]:
    moved = {e.position: head + i + 1 for i, e in enumerate(template.events)}
    names = (template.events[0].stream_id, subject)
    events = []
    for event in template.events:
        payload = _renumber(_shift(event.payload, shift, names), moved)
        if event.type == T.ELIGIBILITY_CONFIRMED:
            payload["order"] = order
        # `payload` is in its type's current shape (upcast on read), so is written as such
        events.append(NewEvent(event.type, payload, occurred_at=_shift(event.occurred_at, shift),
                               reason=event.reason))
    place = None
    if template.place is not None:
        place = NewEvent(T.ENROLMENT_PLACE_TAKEN, {**template.place.payload, "subject": subject,
                                                   "order": order})
    return events, place


def subject_ids(count: int, *, prefix: str = "S") -> Iterator[str]:
    width = max(3, len(str(count)))
    for number in range(1, count + 1):
        yield f"{prefix}-{number:0{width}d}"
