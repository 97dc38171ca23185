"""Adverse-event read model: AE rows, the primary safety window, SAE and SUSAR reporting clocks.

Pure functions over a folded subject (`SubjectState`, corrected values) and its `Protocol`.
`adverse_events`, `safety_window` and `sae_clocks` never look at a clock, so a projection can
store their rows; `window_state` and `clock_state` add what depends on today/now, which the
caller passes in. Safety obligations outlive the phase: nothing here looks at `phase`.

Decisions where docs/clinical-rules.md is silent:
- `study_day` is None only while the subject is not infused; an AE with onset before D0
  (e.g. during lymphodepletion) has a negative study day and is outside the safety window.
- `period` is `pre_treatment` (onset before D0, or no infusion yet), `safety_window` or
  `after_window` (`before_window` only when a protocol starts the window after D0); it is
  derived with `in_safety_window`, never instead of it (workflow/adverse_events.py).
- `crs_grade` / `icans_grade` come from the same derivation as the decision's grade rule
  (workflow/adverse_events.py): the instruments' defaults for inputs left out (hypotension,
  hypoxia, seizure, motor, cerebral edema `none`; consciousness `normal`). Insufficient, hence
  None: no temperature while fever is not masked (CRS); no ICE score (ICANS), except that an
  unarousable patient scores ICE 0 (Lee 2019). Inputs the instrument refuses (ICE > 0 while
  unarousable, which the decision refuses) give None. A grade 0 means inputs recorded but
  ASTCT criteria not met.
- A report that stops a clock is the earliest sent (`sent_at`, then position) of its kind:
  the 24-hour clock only by an `initial` report (a follow-up or expedited report presupposes
  the initial one, so a missing initial record stays visible); `expedited_7d` and
  `expedited_15d` by an `expedited` report; `expedited_complete` by the first `expedited` or
  `follow_up` report sent after the one that stopped `expedited_7d` (never by that one).
- SUSAR needs `expected` recorded as no: an AE whose expectedness is not recorded, or whose
  causality is unassessed, has no expedited clock yet (no row).
- Fatal or life-threatening: serious criterion `death` or `life_threatening`, or grade 5;
  grade 4 alone is not (seriousness is a separate ICH E2A assessment).
- "End of calendar day" is 23:59:59 in the offset of `sponsor_aware_at`.
- A running clock past its due time has negative `hours_left`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any, Final

from workflow.adverse_events import (
    ae_period,
    crs_grade,
    icans_grade,
    shown_grade,
)
from workflow.errors import InvalidInput
from workflow.instruments.codes import RELATED, SERIOUS_CRITERIA
from workflow.instruments.study_days import date_of_day, study_day
from workflow.records import RecordedForm
from workflow.subject import SubjectState

if TYPE_CHECKING:  # only named in annotations: reads need no protocol parser
    from workflow.protocol import Protocol

UNASSESSED: Final = "unassessed"
FATAL_OR_LIFE_THREATENING: Final = ("death", "life_threatening")
DEATH_GRADE: Final = 5
HIGH_GRADE: Final = 3  # grade_3_or_more_subjects
CTCAE_GRADE_KEYS: Final = ("1", "2", "3", "4", "5")
ASTCT_GRADE_KEYS: Final = ("1", "2", "3", "4")

SAE_REPORT: Final = "sae_report"
EXPEDITED_7D: Final = "expedited_7d"
EXPEDITED_15D: Final = "expedited_15d"
EXPEDITED_COMPLETE: Final = "expedited_complete"
CLOCKS: Final = (SAE_REPORT, EXPEDITED_7D, EXPEDITED_15D, EXPEDITED_COMPLETE)
WINDOW_STATES: Final = ("not_started", "open", "closed")
CLOCK_STATES: Final = ("due", "overdue", "stopped")

EU_536_2014: Final = "EU Regulation 536/2014 Art. 41(2)"
ICH_E2A_TIME_FRAMES: Final = "ICH E2A (1994), section III.B, reporting time frames"
END_OF_DAY: Final = time(23, 59, 59)


# --- adverse event rows -------------------------------------------------------------------


def adverse_events(s: SubjectState, protocol: Protocol) -> list[dict[str, Any]]:
    """One row per `adverse_event` form, in position order; nothing depends on today."""
    causality = _latest_causality(s)
    return [_ae_row(s, protocol, ae, causality.get(ae.position)) for ae in _ae_forms(s)]


def _ae_row(
    s: SubjectState, protocol: Protocol, ae: RecordedForm, causality: RecordedForm | None
) -> dict[str, Any]:
    day = _onset_day(s, ae)
    relatedness = _relatedness(causality)
    in_window = _in_safety_window(day, protocol)
    criteria = _serious_criteria(ae)
    return {
        "subject": s.subject,
        "position": ae.position,
        "term": ae.get("term"),
        "category": ae.get("category"),
        "onset_date": ae.get("onset_date"),
        "study_day": day,
        "grade": ae.get("grade"),
        "serious": bool(criteria),
        "serious_criteria": criteria,
        "expected": ae.get("expected"),
        "relatedness": relatedness,
        "relatedness_position": None if causality is None else causality.position,
        "related": _is_related(relatedness),
        "in_safety_window": in_window,
        "period": ae_period(day, protocol.ae_window_start_day, protocol.ae_window_end_day),
        "counts_for_primary": in_window and _is_related(relatedness),
        "crs_grade": _crs_grade(ae),
        "icans_grade": _icans_grade(ae),
        "outcome": ae.get("outcome"),
        "resolved_on": ae.get("resolved_on"),
        "awareness_at": ae.get("awareness_at"),
        "sponsor_aware_at": ae.get("sponsor_aware_at"),
        "corrected": bool(ae.corrected_by),
    }


def _ae_forms(s: SubjectState) -> list[RecordedForm]:
    return sorted(s.forms_of("adverse_event"), key=lambda form: form.position)


# Source: docs/clinical-rules.md, Adverse events: the latest `causality` form, else `unassessed`.
def _latest_causality(s: SubjectState) -> dict[int, RecordedForm]:
    """AE position -> the causality form with the highest position naming it."""
    latest: dict[int, RecordedForm] = {}
    for form in sorted(s.forms_of("causality"), key=lambda form: form.position):
        target = form.get("ae_position")
        if isinstance(target, int):
            latest[target] = form
    return latest


def _relatedness(causality: RecordedForm | None) -> str:
    return UNASSESSED if causality is None else str(causality.get("relatedness"))


# Source: docs/clinical-rules.md, Adverse events: related means possible, probable or definite.
def _is_related(relatedness: str) -> bool:
    return relatedness in RELATED


# Source: IM19-SLE protocol calendar (docs/clinical-rules.md): study day = date − D0, D0 = infusion.
def _onset_day(s: SubjectState, ae: RecordedForm) -> int | None:
    onset = ae.get("onset_date")
    if s.infused_on is None or not isinstance(onset, str):
        return None
    return study_day(s.infused_on, date.fromisoformat(onset))


# Source: docs/clinical-rules.md, Adverse events: primary endpoint onset D0..D28 inclusive.
def _in_safety_window(day: int | None, protocol: Protocol) -> bool:
    return day is not None and protocol.ae_window_start_day <= day <= protocol.ae_window_end_day


# Source: ICH E2A (1994) section II.B: serious when any criterion applies.
def _serious_criteria(ae: RecordedForm) -> list[str]:
    """The recorded criteria in canonical order."""
    recorded = ae.get("serious_criteria") or []
    return [code for code in SERIOUS_CRITERIA if code in recorded]


# Source: Lee et al., Biol Blood Marrow Transplant 2019 (ASTCT grading): workflow/adverse_events.py.
def _crs_grade(ae: RecordedForm) -> int | None:
    return shown_grade(crs_grade, ae.values)


def _icans_grade(ae: RecordedForm) -> int | None:
    return shown_grade(icans_grade, ae.values)


# --- the safety window --------------------------------------------------------------------


# Source: docs/clinical-rules.md, Adverse events and Study days: the window is D{start}..D{end}.
def safety_window(s: SubjectState, protocol: Protocol) -> dict[str, Any] | None:
    """None before infusion; else D0 and the calendar dates of the window's first/last day."""
    if s.infused_on is None:
        return None
    return {
        "subject": s.subject,
        "d0": s.infused_on.isoformat(),
        "window_start": date_of_day(s.infused_on, protocol.ae_window_start_day).isoformat(),
        "window_end": date_of_day(s.infused_on, protocol.ae_window_end_day).isoformat(),
    }


def window_state(window: Mapping[str, Any], today: date) -> dict[str, Any]:
    """The window row plus `state` (not_started, open inclusive, closed) and `days_left`."""
    if not isinstance(today, date) or isinstance(today, datetime):
        raise InvalidInput(f"today must be a calendar date, got {today!r}.", field="today")
    start = date.fromisoformat(window["window_start"])
    end = date.fromisoformat(window["window_end"])
    if today < start:
        state = "not_started"
    elif today <= end:
        state = "open"
    else:
        state = "closed"
    days_left = (end - today).days if state == "open" else None
    return {**window, "state": state, "days_left": days_left}


# --- reporting clocks ---------------------------------------------------------------------


def sae_clocks(s: SubjectState, protocol: Protocol) -> list[dict[str, Any]]:
    """Every reporting obligation of the subject's AEs, in AE position order; time-independent."""
    causality = _latest_causality(s)
    reports = _reports_by_ae(s)
    rows: list[dict[str, Any]] = []
    for ae in _ae_forms(s):
        sent = reports.get(ae.position, [])
        rows.extend(_sae_report_clock(s.subject, ae, sent, protocol))
        rows.extend(_expedited_clocks(s.subject, ae, causality.get(ae.position), sent, protocol))
    return rows


def _reports_by_ae(s: SubjectState) -> dict[int, list[RecordedForm]]:
    """AE position -> its `sae_report` forms, earliest sent first (then by position)."""
    reports: dict[int, list[RecordedForm]] = {}
    for form in s.forms_of("sae_report"):
        target = form.get("ae_position")
        if isinstance(target, int) and isinstance(form.get("sent_at"), str):
            reports.setdefault(target, []).append(form)
    for forms in reports.values():
        forms.sort(key=lambda form: (datetime.fromisoformat(form.get("sent_at")), form.position))
    return reports


def _first(reports: Sequence[RecordedForm], kinds: Sequence[str]) -> RecordedForm | None:
    return next((form for form in reports if form.get("report_kind") in kinds), None)


def _after(reports: Sequence[RecordedForm], report: RecordedForm | None) -> list[RecordedForm]:
    """The reports sent after `report` (none when it is None)."""
    if report is None:
        return []
    return list(reports[reports.index(report) + 1:])


def _clock(
    subject: str,
    ae: RecordedForm,
    clock: str,
    due: datetime,
    starts_at: str,
    stop: RecordedForm | None,
    basis: str,
) -> dict[str, Any]:
    return {
        "subject": subject,
        "ae_position": ae.position,
        "clock": clock,
        "due_at": due.isoformat(),
        "starts_at": starts_at,
        "stopped_at": None if stop is None else stop.get("sent_at"),
        "stopped_by": None if stop is None else stop.position,
        "basis": basis,
    }


# Source: EU Regulation 536/2014 Art. 41(2): investigator to sponsor within 24 h (a default).
def _sae_report_clock(
    subject: str, ae: RecordedForm, reports: Sequence[RecordedForm], protocol: Protocol
) -> list[dict[str, Any]]:
    criteria = _serious_criteria(ae)
    awareness = ae.get("awareness_at")
    if not criteria or not isinstance(awareness, str):
        return []
    due = datetime.fromisoformat(awareness) + timedelta(hours=protocol.sae_report_hours)
    basis = (
        f"Serious AE ({', '.join(criteria)}) known to the site at awareness_at {awareness}: "
        f"the investigator reports it to the sponsor within {protocol.sae_report_hours} hours "
        f"({EU_536_2014}), stopped by the first initial sae_report."
    )
    return [_clock(subject, ae, SAE_REPORT, due, awareness, _first(reports, ("initial",)), basis)]


# Source: ICH E2A (1994) section III.A: a SUSAR is serious, related and unexpected.
def _susar(ae: RecordedForm, causality: RecordedForm | None) -> str | None:
    """Why the AE is a SUSAR, None when it is not (or not yet assessed)."""
    criteria = _serious_criteria(ae)
    relatedness = _relatedness(causality)
    if not criteria or not _is_related(relatedness) or ae.get("expected") is not False:
        return None
    where = "" if causality is None else f" at position {causality.position}"
    return (
        f"SUSAR: serious ({', '.join(criteria)}), {relatedness} by the causality "
        f"assessment{where}, expected = no"
    )


# Source: ICH E2A (1994) section III.B.1: fatal or life-threatening unexpected ADRs.
def _fatal_or_life_threatening(ae: RecordedForm) -> str | None:
    """Which recorded value makes the AE fatal or life-threatening, None when none does."""
    found = [code for code in FATAL_OR_LIFE_THREATENING if code in _serious_criteria(ae)]
    if found:
        return "serious criteria " + " and ".join(found)
    return f"grade {DEATH_GRADE}" if ae.get("grade") == DEATH_GRADE else None


# Source: ICH E2A (1994) section III.B: day 0 is the day the sponsor learns of the event.
def _end_of_day(aware: datetime, days: int) -> datetime:
    """The end of calendar day `days` after day 0, in the offset of `aware`."""
    return datetime.combine(aware.date() + timedelta(days=days), END_OF_DAY, aware.tzinfo)


# Source: ICH E2A (1994) section III.B: 7 days (+8, complete) if fatal or life-threatening, else 15.
def _expedited_clocks(
    subject: str,
    ae: RecordedForm,
    causality: RecordedForm | None,
    reports: Sequence[RecordedForm],
    protocol: Protocol,
) -> list[dict[str, Any]]:
    why = _susar(ae, causality)
    aware_at = ae.get("sponsor_aware_at")
    if why is None or not isinstance(aware_at, str):
        return []
    aware = datetime.fromisoformat(aware_at)
    since = f"after sponsor_aware_at {aware_at} (day 0, {ICH_E2A_TIME_FRAMES})"
    first = _first(reports, ("expedited",))
    fatal = _fatal_or_life_threatening(ae)
    if fatal is None:
        days = protocol.expedited_other_days
        basis = f"{why}: expedited report by the end of day {days} {since}."
        return [_clock(subject, ae, EXPEDITED_15D, _end_of_day(aware, days), aware_at, first,
                       basis)]
    days = protocol.expedited_fatal_days
    total = days + protocol.expedited_fatal_complete_days
    complete = _first(_after(reports, first), ("expedited", "follow_up"))
    return [
        _clock(subject, ae, EXPEDITED_7D, _end_of_day(aware, days), aware_at, first,
               f"{why}, fatal or life-threatening ({fatal}): expedited report by the end of "
               f"day {days} {since}."),
        _clock(subject, ae, EXPEDITED_COMPLETE, _end_of_day(aware, total), aware_at, complete,
               f"{why}, fatal or life-threatening ({fatal}): complete report (a later "
               f"expedited or follow_up sae_report) by the end of day {total} {since}."),
    ]


def clock_state(clock: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The clock row plus `state`, `overdue`, `late` (stopped after due) and `hours_left`."""
    if not isinstance(now, datetime) or now.utcoffset() is None:
        raise InvalidInput(f"now must be a date-time with a UTC offset, got {now!r}.",
                           field="now")
    due = datetime.fromisoformat(clock["due_at"])
    stopped_at = clock.get("stopped_at")
    if stopped_at is not None:
        late = datetime.fromisoformat(stopped_at) > due
        return {**clock, "state": "stopped", "overdue": False, "late": late, "hours_left": None}
    overdue = now > due
    hours_left = round((due - now).total_seconds() / 3600, 1) + 0.0  # + 0.0: no -0.0
    return {**clock, "state": "overdue" if overdue else "due", "overdue": overdue,
            "late": False, "hours_left": hours_left}


# --- primary safety endpoint --------------------------------------------------------------


# Source: docs/clinical-rules.md, Adverse events: primary endpoint = related AEs with onset D0..D28.
def primary_safety_counts(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts over AE rows (several subjects) of the events that count for the primary endpoint."""
    events = [row for row in rows if row["counts_for_primary"]]
    return {
        "events": len(events),
        "subjects": len({row["subject"] for row in events}),
        "by_grade": _count_grades(events, "grade", CTCAE_GRADE_KEYS),
        "serious": sum(1 for row in events if row["serious"]),
        "crs": _count_grades(events, "crs_grade", ASTCT_GRADE_KEYS),
        "icans": _count_grades(events, "icans_grade", ASTCT_GRADE_KEYS),
        "grade_3_or_more_subjects": len(
            {row["subject"] for row in events if (row["grade"] or 0) >= HIGH_GRADE}
        ),
    }


def _count_grades(
    events: Sequence[Mapping[str, Any]], key: str, grades: Sequence[str]
) -> dict[str, int]:
    """Grade (as a JSON key) -> number of events; every grade listed, grade 0 and None left out."""
    counts = dict.fromkeys(grades, 0)
    for row in events:
        grade = str(row[key])
        if grade in counts:
            counts[grade] += 1
    return counts
