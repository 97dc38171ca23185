"""Synthetic studies: one subject's complete history through the real commands, and copies of
it for large studies (benchmarks, `trialflow demo --subjects N`).

`run_subject` drives one subject from consent to completion through the executor, each step
sent by the user who would do it, so every guard and role check runs and every event is what
the commands write. `copy_history` copies such a history to another subject, shifted by whole
days (dates and times in payloads and `occurred_at` move together, so study days, windows and
ages stay the same) and with the positions that payloads name (`target_position`,
`ae_position`) renumbered: the decision of `CopySubjects` (workflow/commands/copies.py) uses
it, in studies made by `trialflow demo` only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from events.envelope import NewEvent, RecordedEvent
from workflow import event_types as T
from workflow.commands import messages as M
from workflow.study import load_study
from workflow.subject import load_subject

if TYPE_CHECKING:
    from workflow.commands.actors import Actors

COORDINATOR: Final = "cora"
INVESTIGATOR: Final = "ivan"
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


def run_subject(actors: Actors, subject: str, start: date, at: Clock) -> None:
    """One subject from consent on `start` to completion after D360, through the executor."""
    def send(user: str, message: M.Message) -> None:
        actors.send(user, message)

    c = COORDINATOR
    at(start)
    send(c, M.ConsentSubject(subject, start, "2.0"))
    for form, tokens in SCREENING:
        send(c, M.RecordForm(subject, form, tokens, start))
    at(start + timedelta(days=3))
    send(INVESTIGATOR, M.ConfirmEligibility(subject))
    coi = f"COI-{subject}"
    at(start + timedelta(days=7))
    send(c, M.RecordLeukapheresis(subject, start + timedelta(days=7), coi))
    at(start + timedelta(days=20))
    send(c, M.ReleaseProduct(subject, f"LOT-{subject}", coi, viable_cells=2e8))
    d0 = start + timedelta(days=30)
    bsa = 1.62  # Mosteller: sqrt(162 cm * 58 kg / 3600)
    for offset, cyclophosphamide in ((-5, 0.0), (-4, 0.0), (-3, 1000 * bsa)):
        day = d0 + timedelta(days=offset)
        at(day)
        send(c, M.GiveLymphodepletion(subject, day, round(25 * bsa, 1),
                                      round(cyclophosphamide, 1)))
    store = actors.executor.store
    order = load_subject(store, subject).enrolment_order
    assert order is not None
    cells = load_study(store).protocol.cohort_for(order).target_cells(58)
    at(d0)
    send(c, M.Infuse(subject, datetime.fromisoformat(f"{d0.isoformat()}T10:00:00+08:00"), cells,
                     coi))
    _safety(actors, subject, d0, at)
    for visit, flags, upcr, copies in FOLLOW_UP:
        day = d0 + timedelta(days=int(visit[1:]))
        at(day)
        send(c, M.RecordForm(subject, "disease_activity", (
            *flags, "pga=0.5", "new_activity=no", "hemolytic_anemia=no", "gi_activity=no",
            "maintenance_tolerated=yes"), day, visit))
        send(c, M.RecordForm(subject, "labs", (f"upcr_g_per_g={upcr}", "egfr_ml_min=95"), day,
                             visit))
        send(c, M.RecordForm(subject, "cart_persistence", (f"copies_per_ug={copies}",), day,
                             visit))
        if visit in ("D180", "D360"):
            send(c, M.RecordForm(subject, "medication", (
                "drug=prednisone", "drug_class=glucocorticoid", "dose_mg_per_day=5",
                f"start_date={day - timedelta(days=30)}"), day, visit))
        send(c, M.RecordVisit(subject, visit, "done", day))
    send(c, M.CompleteStudy(subject))


def _safety(actors: Actors, subject: str, d0: date, at: Clock) -> None:
    """CRS on D1 (serious, reported), assessed and then corrected; a later infection."""
    c = COORDINATOR
    onset = d0 + timedelta(days=1)
    at(onset)
    recorded = actors.send(c, M.RecordForm(subject, "adverse_event", (
        "term=cytokine release syndrome", "category=crs", f"onset_date={onset}", "grade=2",
        "temperature_c=39.1", "hypotension=no_vasopressors", "hypoxia=none",
        "serious_criteria=hospitalisation", "expected=yes",
        f"awareness_at={onset}T09:30:00+08:00"), onset))
    ae = recorded.result.positions[0]
    actors.send(c, M.RecordForm(subject, "sae_report", (
        f"ae_position={ae}", "report_kind=initial", f"sent_at={onset}T20:00:00+08:00"), onset))
    at(onset + timedelta(days=1))
    actors.send(INVESTIGATOR, M.RecordForm(subject, "causality", (
        f"ae_position={ae}", "relatedness=probable")))
    actors.send(c, M.CorrectRecord(subject, ae, ("hypoxia=low_flow",),
                                   "oxygen 2 L/min per nursing chart"))
    onset = d0 + timedelta(days=40)
    at(onset)
    actors.send(c, M.RecordForm(subject, "adverse_event", (
        "term=upper respiratory tract infection", "category=infection",
        f"onset_date={onset}", "grade=1"), onset))


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


def copy_history(template: Sequence[RecordedEvent], subject: str, shift: timedelta, head: int,
                 order: int) -> list[NewEvent]:
    """`template` (one subject's events) as `subject`'s, dates moved by `shift`, the positions
    payloads name renumbered as if appended right after position `head`, and the enrolment
    order set to `order`."""
    moved = {e.position: head + i + 1 for i, e in enumerate(template)}
    names = (template[0].stream_id, subject)
    events = []
    for event in template:
        payload = _renumber(_shift(event.payload, shift, names), moved)
        if event.type == T.ELIGIBILITY_CONFIRMED:
            payload["order"] = order
        # `payload` is in its type's current shape (upcast on read), so is written as such
        events.append(NewEvent(event.type, payload, occurred_at=_shift(event.occurred_at, shift),
                               reason=event.reason))
    return events


def subject_ids(count: int, *, prefix: str = "S") -> Iterator[str]:
    width = max(3, len(str(count)))
    for number in range(1, count + 1):
        yield f"{prefix}-{number:0{width}d}"
