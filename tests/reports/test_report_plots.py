"""The drawn figures, inspected through their matplotlib artists (found by `gid`), not pixels."""

from __future__ import annotations

import warnings
from datetime import date
from typing import Any

import pytest
from matplotlib.figure import Figure

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
    SwimmerChart,
    SwimmerRow,
    persistence_series,
    sledai_series,
    swimmer_rows,
)
from projections.reports.plots import (
    AE_MARKERS,
    EXIT_STYLE,
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
    for artist in [*ax.patches, *ax.lines]:
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


def _sledai_chart(count: int, skipped: int = 0) -> SledaiChart:
    """Every subject at 12 on day -30 (the baseline), 4 on D90 and 0 on D360: equal scores."""
    def points(index: int) -> tuple[SledaiPoint, ...]:
        return tuple(SledaiPoint(day, score, date(2025, 1, 1), 10 * index + k, k == 0)
                     for k, (day, score) in enumerate(((-30, 12), (90, 4), (360, 0))))
    series = tuple(SledaiSeries(s, points(i)) for i, s in enumerate(_subjects(count)))
    return SledaiChart(series, {f"X-{i:03d}": "not infused" for i in range(skipped)}, (10,))


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
