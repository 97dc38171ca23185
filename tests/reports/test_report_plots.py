"""The drawn figures, inspected through their matplotlib artists (found by `gid`), not pixels."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from matplotlib.figure import Figure

from projections.queries import ae_list
from projections.reports.data import (
    PersistenceChart,
    SledaiChart,
    SwimmerChart,
    persistence_series,
    sledai_series,
    swimmer_rows,
)
from projections.reports.plots import (
    AE_MARKERS,
    EXIT_STYLE,
    SERIOUS_COLOUR,
    persistence_figure,
    render,
    sledai_figure,
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
