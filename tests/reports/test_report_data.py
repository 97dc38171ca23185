"""What the plots show, checked through their data (projections/reports/data.py): the demo
study, an as-of moment in the middle of it, and small hand-made histories."""

from __future__ import annotations

from datetime import UTC, date, datetime
from statistics import median

from projections import tables as t
from projections.queries import Clock, ae_list
from projections.reports.data import (
    DEFAULT_CONSENT_DAY,
    PHASES,
    PhaseEntry,
    SledaiPoint,
    SledaiSeries,
    SledaiSummary,
    SubjectHistory,
    SwimmerChart,
    load_histories,
    persistence_series,
    sledai_series,
    sledai_summary,
    sledai_visits,
    swimmer_rows,
)
from projections.views import open_view
from tests.reports.conftest import Demo
from workflow.protocol import VisitWindow, default_protocol
from workflow.records import Consent
from workflow.subject import SubjectState

INFUSED = ("S-001", "S-002", "S-004", "S-005", "S-007", "S-008")


def _swimmer(demo: Demo) -> SwimmerChart:
    return swimmer_rows(demo.histories, ae_list(demo.view, None), demo.clock.today)


def test_swimmer_rows_of_the_demo(demo: Demo) -> None:
    chart = _swimmer(demo)
    rows = {r.subject: r for r in chart.rows}
    assert list(rows) == sorted(rows) and len(rows) == 8
    assert [s for s, r in rows.items() if r.infusion_day == 0] == list(INFUSED)
    assert chart.consent_day == -30  # consent 30 days before D0 for everyone in the story
    for subject in INFUSED:
        row = rows[subject]
        assert row.axis == "infusion" and row.origin == demo.history(subject).state.infused_on
        assert [s.phase for s in row.segments] == list(PHASES)
        spans = [(s.start_day, s.end_day) for s in row.segments]
        assert spans == [(-30, -27), (-27, -10), (-10, -3), (-3, 0), (0, 375)]
        assert row.exit is not None and row.exit.kind == "completed" and row.exit.day == 375
        assert not row.ongoing
    crs = rows["S-001"].adverse_events
    assert [(a.day, a.grade, a.serious) for a in crs] == [(1, 2, False)]
    assert [(a.day, a.grade, a.serious) for a in rows["S-004"].adverse_events] == [(12, 3, True)]
    assert [(a.day, a.grade) for a in rows["S-002"].adverse_events] == [(5, 1)]
    for subject, reason in (("S-003", "weight"), ("S-006", "active_infection")):
        row = rows[subject]
        assert row.axis == "consent" and row.infusion_day is None
        assert [(s.phase, s.start_day, s.end_day) for s in row.segments] == [
            ("screening", -30, -25)]
        assert row.exit is not None
        assert (row.exit.kind, row.exit.reason, row.exit.day) == ("screen_failed", reason, -25)


def test_sledai_series_baseline_then_lower(demo: Demo) -> None:
    chart = sledai_series(demo.histories)
    assert [s.subject for s in chart.series] == list(INFUSED)
    assert set(chart.not_plotted) == {"S-003", "S-006"}
    for series in chart.series:
        base = series.baseline
        assert base is not None and (base.day, base.score) == (-30, 12)
        after = [p for p in series.points if p.day >= 0]
        # one disease_activity form per follow-up visit done (S-005 missed D60)
        assert len(after) == (11 if series.subject == "S-005" else 12)
        assert all(p.score < base.score for p in after)
        assert after[-1].score <= 2 and [p.day for p in after][-1] == 360
    s001 = chart.series[0]
    assert [(p.day, p.score) for p in s001.points][:3] == [(-30, 12), (1, 10), (4, 10)]


def test_persistence_series_peak_above_lloq_last_below(demo: Demo) -> None:
    chart = persistence_series(demo.histories, demo.view.study.protocol.lloq_copies_per_ug)
    assert chart.lloq == 50 and chart.lloqs == (50,) and chart.floor == 5
    assert [s.subject for s in chart.series] == list(INFUSED)
    endpoints = {e["subject"]: e["result"]["persistence"]
                 for e in demo.view.rows(t.endpoints)}
    for series in chart.series:
        peak = series.peak
        assert peak is not None and peak.copies_per_ug > chart.lloq and peak.detected
        assert peak.copies_per_ug == endpoints[series.subject]["peak_copies_per_ug"]
        assert peak.day == endpoints[series.subject]["peak_day"]
        last = series.points[-1]
        assert last.day == 360 and last.copies_per_ug == 0 and not last.detected
        assert chart.plotted(last) == chart.floor
        assert chart.plotted(peak) == peak.copies_per_ug


def test_as_of_mid_study_bars_end_at_that_moment(demo: Demo) -> None:
    """On 2024-12-10 S-008 has just consented (still screening) and S-007 is in cell
    collection: their bars run to that day, drawn consent-relative."""
    view = open_view(demo.app.engine, demo.app.store, as_of="2024-12-10T12:00:00Z")
    histories = load_histories(view, demo.app.store)
    clock = Clock(view, datetime(2024, 12, 10, 12, tzinfo=UTC))
    rows = {r.subject: r for r in swimmer_rows(histories, ae_list(view, None),
                                               clock.today).rows}
    s008, s007 = rows["S-008"], rows["S-007"]
    assert s008.ongoing and s008.exit is None and s008.axis == "consent"
    assert [(s.phase, s.start_day, s.end_day) for s in s008.segments] == [
        ("screening", -30, -29)]
    assert [s.phase for s in s007.segments] == ["screening", "cell_collection"]
    assert s007.end_day == -30 + 15  # consented 2024-11-25, today 2024-12-10
    assert rows["S-005"].ongoing and rows["S-005"].segments[-1].phase == "follow_up"
    assert sledai_series(histories).not_plotted.keys() == {"S-003", "S-006", "S-007", "S-008"}


def _history(subject: str, consent: date, phases: list[tuple[str, date]],
             infused_on: date | None = None, exit_reason: str | None = None) -> SubjectHistory:
    state = SubjectState(subject, site="PKU3", consent=Consent(subject, consent, "1.0", 1, 1),
                         infused_on=infused_on, exit_reason=exit_reason)
    entries = (PhaseEntry("screening", consent), *(PhaseEntry(p, on) for p, on in phases))
    return SubjectHistory(subject, state, entries, default_protocol())


def test_never_infused_without_anyone_infused_uses_the_default_consent_day() -> None:
    histories = [
        _history("A-1", date(2025, 1, 1), [("cell_collection", date(2025, 1, 10)),
                                           ("off_study", date(2025, 1, 20))],
                 exit_reason="manufacturing_failure"),
        _history("A-2", date(2025, 1, 5), []),
    ]
    chart = swimmer_rows(histories, [], lambda site: date(2025, 2, 1))
    assert chart.consent_day == DEFAULT_CONSENT_DAY
    first, second = chart.rows
    assert [(s.phase, s.start_day, s.end_day) for s in first.segments] == [
        ("screening", -30, -21), ("cell_collection", -21, -11)]
    assert first.exit is not None
    assert (first.exit.kind, first.exit.reason) == ("off_study", "manufacturing_failure")
    assert second.ongoing and second.end_day == -30 + 27 and second.exit is None


def test_ae_before_infusion_has_a_negative_day() -> None:
    d0 = date(2025, 2, 1)
    history = _history("B-1", date(2025, 1, 1), [("cell_collection", date(2025, 1, 5)),
                                                 ("lymphodepletion", date(2025, 1, 20)),
                                                 ("infusion", date(2025, 1, 29)),
                                                 ("follow_up", d0)], infused_on=d0)
    ae = {"subject": "B-1", "onset_date": "2025-01-27", "grade": 4, "serious": True,
          "term": "febrile neutropenia", "position": 9}
    (row,) = swimmer_rows([history], [ae], lambda site: date(2025, 3, 1)).rows
    assert [(a.day, a.grade, a.serious) for a in row.adverse_events] == [(-5, 4, True)]
    assert row.ongoing and row.end_day == 28 and row.segments[-1].end_day == 28


# --- the SLEDAI-2K summary (median and interquartile range per time point) -------------------


def _series(subject: str, *points: tuple[int, int, int]) -> SledaiSeries:
    """(day, score, log position); a negative day is the baseline."""
    return SledaiSeries(subject, tuple(SledaiPoint(day, score, date(2025, 1, 1), position,
                                                   day < 0)
                                       for day, score, position in points))


WINDOWS = (VisitWindow("V10", 10, 2), VisitWindow("V30", 30, 3), VisitWindow("V60", 60, 0),
           VisitWindow("V90", 90, 5))


def test_sledai_summary_median_and_quartiles_by_visit_window() -> None:
    series = [
        # V10: day 9 and day 11 both inside: the latest day counts (day 11, score 2), though
        # day 9 was recorded later (the endpoints' rule: latest by date, then position)
        _series("A", (-30, 4, 1), (9, 6, 5), (11, 2, 4), (30, 7, 6)),
        # V10: day 12 is the window's edge, inside; day 13 is outside; V30: day 28
        _series("B", (-28, 8, 1), (12, 4, 2), (13, 1, 3), (28, 9, 4)),
        # V10: day 10 is later than day 8; V60: alone
        _series("C", (-30, 12, 1), (8, 10, 2), (10, 0, 3), (60, 3, 4)),
        # no point inside any window (day 7 before V10's, day 45 between V30 and V60)
        _series("D", (-20, 16, 1), (7, 9, 2), (45, 9, 3)),
        # day 10 twice: the later log position
        _series("E", (-29, 20, 1), (10, 3, 20), (10, 5, 21)),
    ]
    summary = sledai_summary(series, {s.subject: WINDOWS for s in series})
    assert summary == (
        # baseline: scores 4, 8, 12, 16, 20 at days -30, -28, -30, -20, -29
        SledaiSummary("baseline", -29.0, 5, 12.0, 8.0, 16.0),
        # V10: A 2, B 4, C 0, E 5 (D outside): sorted 0 2 4 5, inclusive quartiles
        SledaiSummary("V10", 10.0, 4, 3.0, 1.5, 4.25),
        SledaiSummary("V30", 30.0, 2, 8.0, None, None),  # 2 subjects: no band
        SledaiSummary("V60", 60.0, 1, None, None, None),  # 1 subject: no median either
    )  # V90: nobody inside its window, no point


def test_sledai_summary_windows_are_each_subjects_own() -> None:
    """A subject not given a visit (another protocol version) does not count at it; the same
    code on another target day is another point."""
    series = [_series("A", (-10, 6, 1), (10, 2, 2)), _series("B", (-10, 8, 1), (10, 4, 2)),
              _series("C", (-10, 9, 1), (14, 5, 2))]
    summary = sledai_summary(series, {"A": WINDOWS, "B": WINDOWS[1:],
                                      "C": (VisitWindow("V10", 14, 1),)})
    assert [(m.label, m.day, m.n) for m in summary] == [
        ("baseline", -10.0, 3), ("V10", 10.0, 1), ("V10", 14.0, 1)]
    assert summary[0].median == 8 and summary[0].q1 == 7 and summary[0].q3 == 8.5
    assert sledai_summary([], {}) == ()
    assert sledai_summary([_series("A", (5, 1, 1))], {}) == ()  # no baseline, no visit


def test_sledai_summary_of_the_demo_agrees_with_the_endpoints(demo: Demo) -> None:
    protocol = demo.view.study.protocol
    assert [v.code for v in sledai_visits(protocol)] == [v.code for v in protocol.visits]
    chart = sledai_series(demo.histories)
    by_label = {m.label: m for m in chart.summary}
    assert list(by_label) == ["baseline", *(v.code for v in protocol.visits)]
    assert [m.day for m in chart.summary] == sorted(m.day for m in chart.summary)
    assert by_label["baseline"] == SledaiSummary("baseline", -30.0, 6, 12.0, 12.0, 12.0)
    # S-005 missed D60; S-002's D14 form is dated day 17, outside D14's window (14 ± 2)
    assert {m.label: m.n for m in chart.summary if m.n != 6} == {"D14": 5, "D60": 5}
    endpoints = {e["subject"]: e["result"]["sledai2k"] for e in demo.view.rows(t.endpoints)}
    for code in protocol.sledai2k_visits:
        values = [r[code] for r in endpoints.values() if r[code] is not None]
        assert by_label[code].n == len(values) == 6
        assert by_label[code].median == median(values)
