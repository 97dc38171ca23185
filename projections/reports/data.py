"""What each report plot shows, as plain values: pure functions, no matplotlib, no I/O.

`load_histories(view, store)` is the one reader: each subject's stream up to the view's
position, folded (`workflow.subject`) with its phase changes. Everything else here is a pure
function of those histories and of read-model rows, so a test checks a plot's content by its
data, and `plots.py` only draws what it is given.

The study-day axis (docs/clinical-rules.md, "Study days"): day 0 is the infusion day (D0), days
before it are negative. A subject never infused has no D0: the swimmer plot draws it on a
consent-relative axis shifted to the left, its consent at the median consent day of the
infused subjects (`SwimmerChart.consent_day`, -30 in the demo; `DEFAULT_CONSENT_DAY` while
nobody is infused), so it sits among the other subjects' pre-infusion phases; its bar is
hatched and the legend says so. SLEDAI-2K and persistence need a D0 and leave such subjects
out (`not_plotted`, with the reason).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from statistics import median, quantiles
from typing import Any, Final

from events.envelope import RecordedEvent
from events.store import EventStore
from projections.progress import Tick
from projections.views import View
from workflow.eligibility import form_date
from workflow.endpoints import persistence_samples, sledai2k_baseline
from workflow.form_places import phase_marks
from workflow.instruments.codes import SLEDAI2K_DESCRIPTORS
from workflow.instruments.sledai2k import sledai2k_score
from workflow.protocol import Protocol, VisitWindow
from workflow.subject import SubjectState, fold_subject

PHASES: Final = ("screening", "cell_collection", "lymphodepletion", "infusion", "follow_up")
EXITS: Final = ("completed", "screen_failed", "off_study")
DEFAULT_CONSENT_DAY: Final = -30  # where a never-infused subject's consent goes, nobody infused
FLOOR_FACTOR: Final = 10.0  # persistence: the axis floor is LLOQ / 10
# SLEDAI-2K summary: a median of one value is that subject's own line, so the median is drawn
# from 2 subjects; quartiles of two values only interpolate between them, so the interquartile
# band is drawn from 3 subjects.
SUMMARY_MEDIAN_MIN: Final = 2
SUMMARY_IQR_MIN: Final = 3
BASELINE_LABEL: Final = "baseline"


# --- the subjects' histories (the only reader) ----------------------------------------------


@dataclass(frozen=True)
class PhaseEntry:
    """A subject entered `phase` on the site's calendar date `on`."""

    phase: str
    on: date


@dataclass(frozen=True)
class SubjectHistory:
    subject: str
    state: SubjectState
    phases: tuple[PhaseEntry, ...]
    protocol: Protocol  # the subject's own protocol version

    @property
    def site(self) -> str | None:
        return self.state.site


def phase_entries(state: SubjectState, protocol: Protocol) -> tuple[PhaseEntry, ...]:
    """Each phase the subject has been in, from the clinical dates of its records as they
    stand (workflow/form_places.py `phase_marks`): a corrected or voided procedure moves or
    removes its phase, as in every read model."""
    return tuple(PhaseEntry(phase, on) for phase, on in phase_marks(state, protocol))


def load_histories(view: View, store: EventStore, tick: Tick | None = None
                   ) -> list[SubjectHistory]:
    """Every subject of the view, folded from its stream up to the view's position (`tick`:
    one unit per subject, for a progress bar)."""
    out = []
    for row in view.subjects():
        events = view.stream(store, row["subject"])
        out.append(history_of(view, row["subject"], events))
        if tick is not None:
            tick("report: subjects read")
    return out


def history_of(view: View, subject: str, events: Sequence[RecordedEvent]) -> SubjectHistory:
    state = fold_subject(subject, events)
    protocol = view.study.protocol_of(state.protocol_version)
    return SubjectHistory(subject, state, phase_entries(state, protocol), protocol)


# --- swimmer ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """Days [start_day, end_day] spent in a phase (the next phase starts on end_day)."""

    phase: str
    start_day: int
    end_day: int


@dataclass(frozen=True)
class AeMarker:
    day: int
    grade: int | None
    serious: bool
    term: str
    position: int


@dataclass(frozen=True)
class ExitMarker:
    day: int
    kind: str  # completed | screen_failed | off_study
    reason: str | None


@dataclass(frozen=True)
class SwimmerRow:
    subject: str
    axis: str  # "infusion": day 0 is D0; "consent": never infused, consent at consent_day
    origin: date  # the calendar date drawn at day 0
    segments: tuple[Segment, ...]
    infusion_day: int | None  # 0 when infused
    adverse_events: tuple[AeMarker, ...]
    exit: ExitMarker | None
    ongoing: bool  # still in an active phase: the bar runs to today
    end_day: int


@dataclass(frozen=True)
class SwimmerChart:
    rows: tuple[SwimmerRow, ...]
    consent_day: int  # where the never-infused subjects' consent is drawn


def consent_day_of(histories: Sequence[SubjectHistory]) -> int:
    """The median consent study day of the infused subjects (rounded), else the default."""
    days = [(h.state.consent.consent_date - h.state.infused_on).days for h in histories
            if h.state.infused_on is not None and h.state.consent is not None]
    return round(median(days)) if days else DEFAULT_CONSENT_DAY


def swimmer_rows(histories: Sequence[SubjectHistory], adverse_events: Iterable[Mapping[str, Any]],
                 today: Callable[[str | None], date]) -> SwimmerChart:
    """One row per consented subject: its phases as day spans, D0, AEs and its exit.

    `adverse_events` are rows of rm_adverse_events (`ae list`); `today(site)` ends the bar of
    a subject still in an active phase."""
    consent_day = consent_day_of(histories)
    aes: dict[str, list[Mapping[str, Any]]] = {}
    for ae in adverse_events:
        aes.setdefault(ae["subject"], []).append(ae)
    rows = [_swimmer_row(h, aes.get(h.subject, []), today(h.site), consent_day)
            for h in histories if h.state.consent is not None]
    return SwimmerChart(tuple(sorted(rows, key=lambda r: r.subject)), consent_day)


def _swimmer_row(h: SubjectHistory, aes: Sequence[Mapping[str, Any]], today: date,
                 consent_day: int) -> SwimmerRow:
    assert h.state.consent is not None
    if h.state.infused_on is not None:
        axis, origin = "infusion", h.state.infused_on
    else:
        axis = "consent"
        origin = date.fromordinal(h.state.consent.consent_date.toordinal() - consent_day)

    def day(on: date) -> int:
        return (on - origin).days

    segments: list[Segment] = []
    exit_marker: ExitMarker | None = None
    entries = h.phases
    for index, entry in enumerate(entries):
        if entry.phase in EXITS:
            reason = None if entry.phase == "completed" else h.state.exit_reason
            exit_marker = ExitMarker(day(entry.on), entry.phase, reason)
            break
        end = entries[index + 1].on if index + 1 < len(entries) else max(today, entry.on)
        segments.append(Segment(entry.phase, day(entry.on), day(end)))
    markers = tuple(sorted(
        (AeMarker(day(date.fromisoformat(str(ae["onset_date"])[:10])), ae["grade"],
                  bool(ae["serious"]), str(ae["term"]), int(ae["position"]))
         for ae in aes if ae.get("onset_date")),
        key=lambda m: (m.day, m.position)))
    end_day = exit_marker.day if exit_marker else (segments[-1].end_day if segments else 0)
    return SwimmerRow(h.subject, axis, origin, tuple(segments),
                      0 if h.state.infused_on is not None else None, markers, exit_marker,
                      exit_marker is None, end_day)


# --- SLEDAI-2K ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SledaiPoint:
    day: int
    score: int
    on: date
    position: int
    baseline: bool


@dataclass(frozen=True)
class SledaiSeries:
    subject: str
    points: tuple[SledaiPoint, ...]  # by study day, then log order

    @property
    def baseline(self) -> SledaiPoint | None:
        return next((p for p in self.points if p.baseline), None)


@dataclass(frozen=True)
class SledaiSummary:
    """The subjects' SLEDAI-2K at one time point: the baseline, or a protocol visit.

    `n` subjects contribute one score each; `median` is None below SUMMARY_MEDIAN_MIN
    subjects, `q1`/`q3` (statistics.quantiles, method="inclusive") below SUMMARY_IQR_MIN."""

    label: str  # "baseline" or the visit code
    day: float  # the visit's target study day; baseline: the median of the baseline days
    n: int
    median: float | None
    q1: float | None
    q3: float | None


@dataclass(frozen=True)
class SledaiChart:
    series: tuple[SledaiSeries, ...]
    not_plotted: dict[str, str]  # subject -> why it has no line
    thresholds: tuple[int, ...] = ()  # the eligibility minimum of the subjects' protocols
    summary: tuple[SledaiSummary, ...] = ()  # by day: baseline, then each visit with data


NOT_INFUSED: Final = "not infused: no D0, so no study day"


def sledai_visits(protocol: Protocol) -> tuple[VisitWindow, ...]:
    """The visits the SLEDAI-2K summary is computed at: every follow-up visit where the
    protocol places a disease_activity form (`[forms.disease_activity] visits`; every visit when
    the protocol does not restrict forms), and always the SLEDAI-2K endpoint visits. In IM19-SLE
    that is the whole schedule (D1 ... D360), so the median follows the subjects' lines rather
    than jumping from the baseline to D90."""
    place = protocol.form_place("disease_activity")
    codes = set(protocol.sledai2k_visits)
    codes |= {v.code for v in protocol.visits} if place is None else set(place.visits)
    return tuple(v for v in protocol.visits if v.code in codes)


def _summary(label: str, day: float, scores: Sequence[int]) -> SledaiSummary:
    n = len(scores)
    middle = float(median(scores)) if n >= SUMMARY_MEDIAN_MIN else None
    q1 = q3 = None
    if n >= SUMMARY_IQR_MIN:
        q1, _, q3 = quantiles(scores, n=4, method="inclusive")
    return SledaiSummary(label, day, n, middle, q1, q3)


def sledai_summary(series: Sequence[SledaiSeries],
                   visits: Mapping[str, Sequence[VisitWindow]]) -> tuple[SledaiSummary, ...]:
    """The median and quartiles of the subjects' scores at the baseline and at each visit.

    Baseline: each subject's baseline point (the endpoints' baseline), drawn at the median of
    the subjects' baseline days. A visit: `visits[subject]` are the windows of that subject's
    protocol; a subject contributes the latest point inside the window [earliest_day,
    latest_day] (by day, then log position: the rule of the endpoints, workflow/endpoints.py
    `sledai2k_at`, so a median here is the median of the endpoint values), and nothing when no
    point falls inside. A visit is keyed by (code, target day),
    so two protocol versions scheduling the same code on another day give two points. Points
    nobody contributes to are left out."""
    out = []
    baselines = [b for b in (s.baseline for s in series) if b is not None]
    if baselines:
        out.append(_summary(BASELINE_LABEL, float(median(b.day for b in baselines)),
                            [b.score for b in baselines]))
    by_visit: dict[tuple[int, str], list[int]] = {}
    for s in series:
        for visit in visits.get(s.subject, ()):
            inside = [p for p in s.points if visit.earliest_day <= p.day <= visit.latest_day]
            if inside:
                latest = max(inside, key=lambda p: (p.day, p.position))
                by_visit.setdefault((visit.target_day, visit.code), []).append(latest.score)
    for (day, code), scores in sorted(by_visit.items()):
        out.append(_summary(code, float(day), scores))
    return tuple(sorted(out, key=lambda m: m.day))


def sledai_series(histories: Sequence[SubjectHistory]) -> SledaiChart:
    """The SLEDAI-2K of every disease_activity form (its own date) on the study-day axis; the
    baseline is the form the endpoints use (workflow.endpoints.sledai2k_baseline); the summary
    is `sledai_summary` at each subject's own protocol's `sledai_visits`."""
    series, skipped = [], {}
    thresholds = {h.protocol.sledai2k_min for h in histories}
    visits = {h.subject: sledai_visits(h.protocol) for h in histories}
    for h in histories:
        d0 = h.state.infused_on
        if d0 is None:
            skipped[h.subject] = NOT_INFUSED
            continue
        chosen = sledai2k_baseline(h.state).evidence
        points = []
        for form in h.state.forms_of("disease_activity"):
            present = [code for code in SLEDAI2K_DESCRIPTORS if form.get(code) is True]
            on = form_date(form)
            points.append(SledaiPoint((on - d0).days, sledai2k_score(present).score, on,
                                      form.position, form.position in chosen))
        if not points:
            skipped[h.subject] = "no disease_activity form"
            continue
        series.append(SledaiSeries(h.subject, tuple(sorted(points, key=lambda p: (p.day,
                                                                                  p.position)))))
    return SledaiChart(tuple(series), skipped, tuple(sorted(thresholds)),
                       sledai_summary(series, visits))


# --- CAR-T persistence -------------------------------------------------------------------------


@dataclass(frozen=True)
class PersistencePoint:
    day: int
    copies_per_ug: float
    detected: bool  # at or above the subject's LLOQ
    position: int


@dataclass(frozen=True)
class PersistenceSeries:
    subject: str
    lloq: float
    points: tuple[PersistencePoint, ...]

    @property
    def peak(self) -> PersistencePoint | None:
        detected = [p for p in self.points if p.detected and p.day >= 0]
        return max(detected, key=lambda p: (p.copies_per_ug, -p.day), default=None)


@dataclass(frozen=True)
class PersistenceChart:
    series: tuple[PersistenceSeries, ...]
    lloq: float  # the protocol in force's LLOQ (the line drawn)
    lloqs: tuple[float, ...]  # every LLOQ in use (one line each; one value unless amended)
    not_plotted: dict[str, str]

    @property
    def floor(self) -> float:
        """The axis floor, where values below the LLOQ are drawn: LLOQ / 10."""
        return min(self.lloqs) / FLOOR_FACTOR

    def plotted(self, point: PersistencePoint) -> float:
        return point.copies_per_ug if point.detected else self.floor


def persistence_series(histories: Sequence[SubjectHistory], lloq_in_force: float
                       ) -> PersistenceChart:
    """cart_persistence copies/ug by study day (one sample per day, as the endpoints keep:
    workflow.endpoints.persistence_samples); detected means at or above the subject's LLOQ."""
    series, skipped = [], {}
    for h in histories:
        d0 = h.state.infused_on
        if d0 is None:
            skipped[h.subject] = NOT_INFUSED
            continue
        lloq = h.protocol.lloq_copies_per_ug
        by_day, _ = persistence_samples(h.state, d0)
        points = tuple(PersistencePoint(day, float(form.get("copies_per_ug")),
                                        float(form.get("copies_per_ug")) >= lloq, form.position)
                       for day, form in sorted(by_day.items()))
        if not points:
            skipped[h.subject] = "no cart_persistence sample with copies_per_ug"
            continue
        series.append(PersistenceSeries(h.subject, lloq, points))
    lloqs = tuple(sorted({lloq_in_force, *(s.lloq for s in series)}))
    return PersistenceChart(tuple(series), lloq_in_force, lloqs, skipped)


# --- captions (said under each plot in the HTML page) ------------------------------------------


def swimmer_caption(chart: SwimmerChart) -> str:
    text = ("One bar per subject, coloured by phase, on the study-day axis (day 0 = CAR-T "
            "infusion). AE markers sit above the bar: shape by CTCAE grade, filled red when "
            "serious. The bar's end shows the exit (completed, screen failure, off study) or "
            "an arrow when the subject is still on study.")
    if any(r.axis == "consent" for r in chart.rows):
        text += (f" Subjects never infused (*, hatched) are drawn consent-relative: consent "
                 f"at day {chart.consent_day}, the median consent day of the infused subjects.")
    return text


def sledai_caption(chart: SledaiChart) -> str:
    text = ("SLEDAI-2K of every disease_activity form, at the form's own date; the large "
            "hollow circle is the baseline the endpoints use (last assessment before the "
            "first lymphodepletion dose). Lines sharing a score are drawn a fixed fraction of a "
            "point apart (never more than 0.3 from the exact score, whatever the number of "
            "subjects); the dashed grey line is the eligibility minimum.")
    if chart.summary:
        text += (" The thick black line is the median of the subjects' scores at the baseline "
                 "and at each protocol visit (each subject's latest form inside the visit "
                 "window, as the endpoints take it; drawn from 2 subjects), the grey band the "
                 "interquartile range Q1–Q3 (drawn from 3 subjects); both are drawn exactly, "
                 "without offset. Subjects per point (n): " + ", ".join(
                     f"{m.label} {m.n}" for m in chart.summary) + ".")
    return text + _skipped(chart.not_plotted)


def persistence_caption(chart: PersistenceChart) -> str:
    text = (f"qPCR CAR transgene copies/µg genomic DNA, log scale; dashed line: LLOQ "
            f"{chart.lloq:g} copies/µg of the protocol in force. A value below the LLOQ (not "
            f"detected, 0 included) is drawn at the axis floor, LLOQ/10 = {chart.floor:g}, as "
            "a hollow down-triangle. Each subject has its own colour, line style and marker "
            "(lines are slightly transparent) so overlapping lines stay distinguishable; the "
            "values are drawn exactly.")
    return text + _skipped(chart.not_plotted)


def _skipped(skipped: Mapping[str, str]) -> str:
    if not skipped:
        return ""
    return " Not plotted: " + "; ".join(f"{s} ({why})" for s, why in sorted(skipped.items())) \
        + "."
