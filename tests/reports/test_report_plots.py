"""The drawn figures, inspected through their matplotlib artists (found by `gid`); the SLEDAI-2K
summary also through the pixels of the rendered PNG."""

from __future__ import annotations

import io
import warnings
from datetime import date
from typing import Any

import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

from projections.queries import ae_list
from projections.reports.data import (
    AeMarker,
    ExitMarker,
    PersistenceChart,
    PersistencePoint,
    PersistenceSeries,
    Segment,
    SledaiChart,
    SledaiPoint,
    SledaiSeries,
    SledaiSummary,
    SwimmerChart,
    SwimmerRow,
    persistence_series,
    sledai_series,
    sledai_summary,
    swimmer_rows,
)
from projections.reports.plots import (
    AE_MARKERS,
    EXIT_STYLE,
    LEGEND_MAX,
    NOTE_LINES,
    NOTE_WIDTH,
    SERIOUS_COLOUR,
    SLEDAI_SPREAD,
    note_text,
    persistence_figure,
    render,
    sledai_figure,
    sledai_offsets,
    swimmer_figure,
)
from tests.reports.conftest import Demo
from workflow.protocol import VisitWindow

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def swim(demo: Demo) -> SwimmerChart:
    return swimmer_rows(demo.histories, ae_list(demo.view, None), demo.clock.today)


@pytest.fixture(scope="module")
def scores(demo: Demo) -> SledaiChart:
    return sledai_series(demo.histories)


@pytest.fixture(scope="module")
def copies(demo: Demo) -> PersistenceChart:
    return persistence_series(demo.histories, demo.view.study.protocol.lloq_copies_per_ug)


def _artists(figure: Figure, prefix: str) -> dict[str, Any]:
    (ax,) = figure.axes
    found = {}
    for artist in [*ax.patches, *ax.lines, *ax.collections]:
        gid = artist.get_gid()
        if gid is not None and (gid == prefix or gid.startswith(prefix + ":")):
            found[gid] = artist
    return found


def test_swimmer_figure(swim: SwimmerChart) -> None:
    figure = swimmer_figure(swim)
    bars = _artists(figure, "bar")
    assert len(bars) == sum(len(r.segments) for r in swim.rows) == 6 * 5 + 2
    follow_up = bars["bar:S-001:follow_up"]
    assert (follow_up.get_x(), follow_up.get_width()) == (0, 375)
    assert bars["bar:S-003:screening"].get_hatch() == "//"  # never infused: hatched
    assert bars["bar:S-001:screening"].get_hatch() is None
    infusions = _artists(figure, "infusion")
    assert sorted(infusions) == [f"infusion:{s}" for s in
                                 ("S-001", "S-002", "S-004", "S-005", "S-007", "S-008")]
    assert all(list(line.get_xdata()) == [0] for line in infusions.values())
    aes = _artists(figure, "ae")
    assert len(aes) == 3
    (crs,) = [line for gid, line in aes.items() if gid.startswith("ae:S-001:")]
    assert list(crs.get_xdata()) == [1] and crs.get_marker() == AE_MARKERS[2]
    (sae,) = [line for gid, line in aes.items() if gid.startswith("ae:S-004:")]
    assert sae.get_marker() == AE_MARKERS[3] and sae.get_markerfacecolor() == SERIOUS_COLOUR
    assert crs.get_markerfacecolor() == "white"
    exits = _artists(figure, "exit")
    assert sorted(gid.split(":", 2)[2] for gid in exits) == ["completed"] * 6 + \
        ["screen_failed"] * 2
    assert exits["exit:S-003:screen_failed"].get_marker() == EXIT_STYLE["screen_failed"][0]
    assert not _artists(figure, "ongoing")
    (ax,) = figure.axes
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[2] == "S-003*" and labels[0] == "S-001"
    legend_box = ax.get_legend()
    assert legend_box is not None
    legend = [t.get_text() for t in legend_box.get_texts()]
    assert any("never infused" in text and "-30" in text for text in legend)


def test_sledai_figure_one_line_per_subject(scores: SledaiChart) -> None:
    figure = sledai_figure(scores)
    lines = _artists(figure, "sledai")
    assert len(lines) == 6
    assert len(_artists(figure, "baseline")) == 6
    s001 = lines["sledai:S-001"]
    series = scores.series[0]
    assert list(s001.get_xdata()) == [p.day for p in series.points]
    # drawn values are the scores, nudged by less than half a point so equal lines stay visible
    assert all(abs(y - p.score) < 0.5 for y, p in zip(s001.get_ydata(), series.points,
                                                       strict=True))
    colours = {line.get_color() for line in lines.values()}
    assert len(colours) == 6  # every subject its own colour


def test_persistence_figure_log_scale_with_lloq(copies: PersistenceChart) -> None:
    figure = persistence_figure(copies)
    (ax,) = figure.axes
    assert ax.get_yscale() == "log"
    lloq = _artists(figure, "lloq")
    assert list(lloq) == ["lloq"] and list(lloq["lloq"].get_ydata()) == [50, 50]
    assert ax.get_ylim()[0] == pytest.approx(copies.floor)
    lines = _artists(figure, "persistence")
    assert len(lines) == 6
    below = _artists(figure, "below-lloq")
    assert len(below) == 6  # every subject's D360 sample is below the LLOQ
    for line in below.values():
        assert set(line.get_ydata()) == {copies.floor} and line.get_marker() == "v"
    s001 = lines["persistence:S-001"]
    assert max(s001.get_ydata()) == copies.series[0].peak.copies_per_ug  # type: ignore[union-attr]


def test_render_png_and_svg(scores: SledaiChart) -> None:
    figure = sledai_figure(scores)
    png = render(figure)
    assert png.startswith(PNG)
    assert render(sledai_figure(scores)) == png  # the same data, the same bytes
    assert b"<svg" in render(figure, "svg")[:500]
    with pytest.raises(ValueError):
        render(figure, "gif")


def test_an_empty_study_draws_empty_plots_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figures = [swimmer_figure(SwimmerChart((), -30)), sledai_figure(SledaiChart((), {})),
                   persistence_figure(PersistenceChart((), 50.0, (50.0,), {}))]
        assert all(render(figure).startswith(PNG) for figure in figures)


# --- at any number of subjects (synthetic charts: 0, 1, 6, 50, 300 subjects) -------------------


def _subjects(count: int) -> list[str]:
    return [f"S-{index + 1:03d}" for index in range(count)]


WINDOWS = (VisitWindow("D90", 90, 7), VisitWindow("D360", 360, 14))


def _sledai_chart(count: int, skipped: int = 0) -> SledaiChart:
    """Every subject at 12 on day -30 (the baseline), 4 on D90 and 0 on D360: equal scores;
    the summary (median and IQR) of those, drawn from 2 and 3 subjects."""
    def points(index: int) -> tuple[SledaiPoint, ...]:
        return tuple(SledaiPoint(day, score, date(2025, 1, 1), 10 * index + k, k == 0)
                     for k, (day, score) in enumerate(((-30, 12), (90, 4), (360, 0))))
    series = tuple(SledaiSeries(s, points(i)) for i, s in enumerate(_subjects(count)))
    return SledaiChart(series, {f"X-{i:03d}": "not infused" for i in range(skipped)}, (10,),
                       sledai_summary(series, {s.subject: WINDOWS for s in series}))


def _swimmer_chart(count: int, never_infused: int = 0) -> SwimmerChart:
    def row(subject: str, index: int) -> SwimmerRow:
        if index < never_infused:
            return SwimmerRow(subject, "consent", date(2025, 1, 1),
                              (Segment("screening", -30, -10),), None, (),
                              ExitMarker(-10, "screen_failed", "x"), False, -10)
        return SwimmerRow(subject, "infusion", date(2025, 1, 1),
                          (Segment("screening", -30, -5), Segment("follow_up", 0, 375)), 0,
                          (AeMarker(3, 2, index % 2 == 0, "crs", 100 + index),),
                          ExitMarker(375, "completed", None), False, 375)
    return SwimmerChart(tuple(row(s, i) for i, s in enumerate(_subjects(count))), -30)


def _persistence_chart(count: int, skipped: int = 0) -> PersistenceChart:
    """Every subject with the same samples: lines exactly on top of each other."""
    points = (PersistencePoint(0, 120.0, True, 1), PersistencePoint(10, 9000.0, True, 2),
              PersistencePoint(180, 60.0, True, 3), PersistencePoint(360, 0.0, False, 4))
    series = tuple(PersistenceSeries(s, 50.0, points) for s in _subjects(count))
    return PersistenceChart(series, 50.0, (50.0,),
                            {f"X-{i:03d}": "not infused" for i in range(skipped)})


@pytest.mark.parametrize("count", [1, 6, 300])
def test_sledai_values_drawn_within_a_fraction_of_a_point(count: int) -> None:
    """Equal scores are told apart by a bounded offset: whatever the number of subjects, every
    y value drawn (lines and baseline circles) is within 0.3 (< 0.4) of its exact score."""
    chart = _sledai_chart(count)
    figure = sledai_figure(chart)
    lines, baselines = _artists(figure, "sledai"), _artists(figure, "baseline")
    assert len(lines) == len(baselines) == count
    drawn: list[float] = []
    for series in chart.series:
        ys = list(lines[f"sledai:{series.subject}"].get_ydata())
        assert len(ys) == len(series.points)
        for y, point in zip(ys, series.points, strict=True):
            assert abs(y - point.score) <= SLEDAI_SPREAD + 1e-9 < 0.4
        (base,) = baselines[f"baseline:{series.subject}"].get_ydata()
        assert abs(base - 12) <= SLEDAI_SPREAD + 1e-9
        drawn.append(ys[0])
    assert min(drawn) > 11.6 and max(drawn) < 12.4  # all the baselines of 12 drawn near 12
    if count > 1:  # equal scores still told apart
        assert len(set(drawn)) == count
    else:
        assert drawn == [12]
    assert sledai_offsets(count) == sorted(sledai_offsets(count))
    threshold = _artists(figure, "threshold")
    assert list(threshold["threshold"].get_ydata()) == [10, 10]


def test_sledai_threshold_of_the_demo(scores: SledaiChart) -> None:
    assert scores.thresholds == (10,)
    figure = sledai_figure(scores)
    assert list(_artists(figure, "threshold")["threshold"].get_ydata()) == [10, 10]


@pytest.mark.parametrize(("count", "never_infused"), [(0, 0), (1, 0), (1, 1), (6, 2), (50, 2)])
def test_swimmer_legend_inside_the_rendered_figure(count: int, never_infused: int) -> None:
    figure = swimmer_figure(_swimmer_chart(count, never_infused))
    assert render(figure).startswith(PNG)  # drawn: the extents below are those of the image
    (ax,) = figure.axes
    legend = ax.get_legend()
    assert legend is not None
    box, page = legend.get_window_extent(), figure.bbox
    assert page.x0 <= box.x0 and box.x1 <= page.x1, (box, page)
    assert page.y0 <= box.y0 and box.y1 <= page.y1, (box, page)


def test_persistence_lines_told_apart_and_values_exact(copies: PersistenceChart) -> None:
    """Six subjects: each line its own colour, line style and marker, slightly transparent;
    the values drawn are the data (the floor for a value below the LLOQ), never offset."""
    figure = persistence_figure(copies)
    lines = _artists(figure, "persistence")
    styles = {(str(line.get_color()), line.get_linestyle(), line.get_marker())
              for line in lines.values()}
    assert len(styles) == len(lines) == 6
    assert len({line.get_linestyle() for line in lines.values()}) == 4
    assert len({line.get_marker() for line in lines.values()}) == 6
    for series in copies.series:
        line = lines[f"persistence:{series.subject}"]
        assert (line.get_alpha() or 1.0) < 1
        assert list(line.get_ydata()) == [copies.plotted(p) for p in series.points]
        assert list(line.get_xdata()) == [p.day for p in series.points]


def test_persistence_identical_lines_differ_in_style() -> None:
    figure = persistence_figure(_persistence_chart(12))
    lines = list(_artists(figure, "persistence").values())
    assert len({(ln.get_linestyle(), ln.get_marker()) for ln in lines}) == 12
    assert len({tuple(ln.get_ydata()) for ln in lines}) == 1  # same data, same values drawn


@pytest.mark.parametrize("count", [0, 1, 6, 50])
def test_no_matplotlib_warning_at_any_subject_count(count: int) -> None:
    """`constrained_layout not applied` came from a long "not plotted" note: it is wrapped and
    cut now. Warnings are errors here, with a third of the subjects not plotted."""
    skipped = count // 3 + 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figures = [swimmer_figure(_swimmer_chart(count, count // 3)),
                   sledai_figure(_sledai_chart(count, skipped)),
                   persistence_figure(_persistence_chart(count, skipped))]
        for figure in figures:
            assert render(figure).startswith(PNG)


def test_not_plotted_note_is_bounded() -> None:
    text = note_text({f"X-{i:03d}": "not infused" for i in range(300)})
    lines = text.splitlines()
    assert len(lines) <= NOTE_LINES and all(len(line) <= NOTE_WIDTH for line in lines)
    assert lines[0].startswith("Not plotted (not infused): X-000, X-001")
    assert lines[-1].endswith("(300 subjects in all)")
    assert note_text({"S-003": "why", "S-006": "why"}) == "Not plotted (why): S-003, S-006"


# --- the SLEDAI-2K summary: median line and interquartile band --------------------------------


def _band_vertices(band: Any) -> set[tuple[float, float]]:
    return {(float(x), float(y)) for path in band.get_paths() for x, y in path.vertices}


def _legend_texts(figure: Figure) -> list[str]:
    (ax,) = figure.axes
    legend = ax.get_legend()
    assert legend is not None
    return [t.get_text() for t in legend.get_texts()]


def test_sledai_median_and_band_drawn_are_the_summary(scores: SledaiChart) -> None:
    """The demo: the median line's points are the computed medians, exactly (no offset); the
    band's vertices are the computed Q1 and Q3; the band lies behind the subject lines, the
    median above them; both are named in the legend and the title."""
    assert len(scores.summary) == 13  # the baseline and the 12 follow-up visits
    figure = sledai_figure(scores)
    median = _artists(figure, "sledai-median")["sledai-median"]
    with_median = [m for m in scores.summary if m.median is not None]
    assert list(median.get_xdata()) == [m.day for m in with_median] != []
    assert list(median.get_ydata()) == [m.median for m in with_median]
    assert median.get_color() == "black" and median.get_linewidth() >= 2.5
    band = _artists(figure, "sledai-iqr")["sledai-iqr"]
    assert _band_vertices(band) == {(m.day, q) for m in scores.summary
                                    for q in (m.q1, m.q3) if q is not None}
    lines = _artists(figure, "sledai").values()
    assert band.get_zorder() < min(ln.get_zorder() for ln in lines) < median.get_zorder()
    assert 0 < (band.get_alpha() or 1.0) < 1
    texts = _legend_texts(figure)
    assert "median (n ≥ 2)" in texts and "interquartile range Q1–Q3 (n ≥ 3)" in texts
    (ax,) = figure.axes
    assert "median" in ax.get_title() and "interquartile" in ax.get_title()


def test_sledai_median_from_two_band_from_three_subjects() -> None:
    """Points without a median (n < 2) are left out of the line; points without quartiles
    (n < 3) out of the band, which stops there instead of bridging the gap."""
    summary = (SledaiSummary("baseline", -30.0, 4, 12.0, 10.5, 13.0),
               SledaiSummary("D10", 10.0, 3, 6.0, 5.0, 7.0),
               SledaiSummary("D30", 30.0, 2, 5.5, None, None),
               SledaiSummary("D60", 60.0, 1, None, None, None),
               SledaiSummary("D90", 90.0, 3, 2.0, 1.0, 4.0))
    figure = sledai_figure(SledaiChart((), {}, (10,), summary))
    median = _artists(figure, "sledai-median")["sledai-median"]
    assert list(zip(median.get_xdata(), median.get_ydata(), strict=True)) == [
        (-30, 12), (10, 6), (30, 5.5), (90, 2)]
    band = _artists(figure, "sledai-iqr")["sledai-iqr"]
    runs = [{(float(x), float(y)) for x, y in path.vertices} for path in band.get_paths()]
    assert runs == [{(-30, 10.5), (-30, 13), (10, 5), (10, 7)}, {(90, 1), (90, 4)}]
    # one subject: nothing to summarise, nothing drawn, nothing in the legend but the threshold
    single = sledai_figure(_sledai_chart(1))
    assert not _artists(single, "sledai-median") and not _artists(single, "sledai-iqr")
    assert _legend_texts(single) == ["S-001", "eligibility: SLEDAI-2K ≥ 10"]


@pytest.mark.parametrize("count", [2, 6, LEGEND_MAX, LEGEND_MAX + 1, 300])
def test_sledai_summary_stays_in_the_legend_at_any_subject_count(count: int) -> None:
    figure = sledai_figure(_sledai_chart(count))
    texts = _legend_texts(figure)
    assert "median (n ≥ 2)" in texts and "eligibility: SLEDAI-2K ≥ 10" in texts
    assert ("interquartile range Q1–Q3 (n ≥ 3)" in texts) == (count >= 3)
    assert ("S-001" in texts) == (count <= LEGEND_MAX)
    assert render(figure).startswith(PNG)  # drawn: the legend's extent is that of the image
    (ax,) = figure.axes
    legend = ax.get_legend()
    assert legend is not None
    box, plot, page = legend.get_window_extent(), ax.get_window_extent(), figure.bbox
    assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1
    assert box.x0 >= plot.x1  # beside the axes: it covers no line


def test_sledai_summary_in_the_rendered_png() -> None:
    """Five subjects at 0, 2, 4, 6 and 8 from the baseline to D100: median 4, Q1 2, Q3 6. In the
    PNG, the pixel at a score of 4 is the black median; at 2.5, 3, 5 and 5.5 (inside the band,
    between subject lines) the grey of the band over white; at 1 and 7 (outside) white."""
    series = tuple(SledaiSeries(f"S-{i}", (SledaiPoint(-30, score, date(2025, 1, 1), 1, True),
                                           SledaiPoint(10, score, date(2025, 1, 1), 2, False),
                                           SledaiPoint(100, score, date(2025, 1, 1), 3, False)))
                   for i, score in enumerate((0, 2, 4, 6, 8)))
    windows = (VisitWindow("D10", 10, 2), VisitWindow("D100", 100, 5))
    summary = sledai_summary(series, {s.subject: windows for s in series})
    assert {(m.median, m.q1, m.q3) for m in summary} == {(4, 2, 6)} and len(summary) == 3
    figure = sledai_figure(SledaiChart(series, {}, (10,), summary))
    image = imread(io.BytesIO(render(figure)))
    (ax,) = figure.axes
    ticks = [x for x in ax.get_xticks() if 10 <= x <= 100]
    x = (ticks[0] + ticks[1]) / 2  # between two grid lines, between D10 and D100

    def pixel(y: float) -> tuple[float, ...]:
        column, row = ax.transData.transform((x, y))
        return tuple(float(v) for v in image[round(image.shape[0] - row), round(column)][:3])

    assert all(v < 0.15 for v in pixel(4)), pixel(4)  # the median, drawn over the line at 4
    grey = 1 - 0.25 * (1 - 0x80 / 255)  # IQR_STYLE's grey at alpha 0.25 over white
    for y in (2.5, 3, 5, 5.5):
        assert all(abs(v - grey) < 0.02 for v in pixel(y)), (y, pixel(y))
    for y in (1, 7):
        assert all(v > 0.98 for v in pixel(y)), (y, pixel(y))
