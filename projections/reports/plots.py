"""The report plots, drawn from the data of `data.py` on matplotlib Figures (Agg, headless).

Figures are built with `matplotlib.figure.Figure` and an Agg canvas, never `pyplot`: no global
figure registry, no GUI backend, nothing to close. Each function returns the Figure before it is
saved, so tests inspect artists (found by their `gid`) instead of pixels; `render` turns a
Figure into file bytes. Import this module only where a plot is made: matplotlib is heavy and
the CLI's start-up stays light without it.

Artist ids (`gid`) the tests rely on:
- swimmer: `bar:SUBJECT:PHASE`, `infusion:SUBJECT`, `ae:SUBJECT:POSITION`, `exit:SUBJECT:KIND`,
  `ongoing:SUBJECT`, `d0`;
- sledai: `sledai:SUBJECT` (one line per subject), `baseline:SUBJECT`, `threshold`
  (and `threshold:VALUE` when the subjects' protocol versions differ), `d0`, `sledai-median`
  (a Line2D through the summary points with a median) and `sledai-iqr` (a fill_between
  PolyCollection, Q1 to Q3, in `ax.collections`);
- persistence: `persistence:SUBJECT` (one line per subject), `below-lloq:SUBJECT`,
  `lloq` (and `lloq:VALUE` for another protocol version's LLOQ), `d0`.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Mapping
from typing import Any, Final

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from projections.reports.data import (
    PHASES,
    SUMMARY_IQR_MIN,
    SUMMARY_MEDIAN_MIN,
    PersistenceChart,
    SledaiChart,
    SledaiSummary,
    SwimmerChart,
)

PHASE_COLOURS: Final = {
    "screening": "#9e9e9e", "cell_collection": "#6baed6", "lymphodepletion": "#fd8d3c",
    "infusion": "#e6550d", "follow_up": "#31a354",
}
PHASE_LABELS: Final = {
    "screening": "screening", "cell_collection": "cell collection",
    "lymphodepletion": "lymphodepletion", "infusion": "infusion (last LD dose to D0)",
    "follow_up": "follow-up",
}
AE_MARKERS: Final = {1: "o", 2: "s", 3: "^", 4: "D", 5: "X"}  # CTCAE grade -> marker
AE_UNGRADED: Final = "."
SERIOUS_COLOUR: Final = "#d62728"  # serious AEs are filled red; others white
EXIT_STYLE: Final = {  # kind -> (marker, colour, legend)
    "completed": ("*", "#006d2c", "completed"),
    "screen_failed": ("x", "black", "screen failure"),
    "off_study": ("P", "#a50f15", "off study"),
}
SLEDAI_STEP: Final = 0.1  # points between neighbouring subjects' lines (drawing only) ...
SLEDAI_SPREAD: Final = 0.3  # ... never farther than this from the score, whatever the count
PERSISTENCE_STYLES: Final = ("-", "--", "-.", ":")  # line style by subject (index % 4)
PERSISTENCE_MARKERS: Final = ("o", "s", "D", "^", "P", "X", "h")  # by subject (index % 7)
PERSISTENCE_ALPHA: Final = 0.8  # a line under another still shows through
NOTE_WIDTH: Final = 150  # characters per line of the "not plotted" note under a plot
NOTE_LINES: Final = 3  # lines of it at most (the HTML caption lists every subject)
MEDIAN_STYLE: Final[dict[str, Any]] = {  # the SLEDAI-2K median: above every subject line
    "color": "black", "linewidth": 3.0, "marker": "s", "markersize": 6, "zorder": 4}
IQR_STYLE: Final[dict[str, Any]] = {  # the interquartile band: behind every subject line
    "facecolor": "#808080", "alpha": 0.25, "edgecolor": "none", "zorder": 1}
LEGEND_ROW_INCHES: Final = 0.2  # height of a legend entry at font size 8 (and spacing)
LEGEND_MAX: Final = 20  # subjects named in a line plot's legend
FORMATS: Final = ("png", "svg", "pdf")
_METADATA: Final[dict[str, dict[str, Any]]] = {  # no timestamps: same data, same bytes
    "png": {}, "svg": {"Date": None}, "pdf": {"CreationDate": None, "ModDate": None},
}


def colours(count: int) -> list[Any]:
    """One colour per subject, fixed by its place in the list (a marker drawn on top of a
    line must not advance matplotlib's colour cycle and shift the next subject's colour)."""
    palette = colormaps["tab10" if count <= 10 else "tab20"]
    size = 10 if count <= 10 else 20
    return [palette(index % size) for index in range(count)]


def sledai_offsets(count: int) -> list[float]:
    """The drawing offset of each subject's SLEDAI-2K line, in score points: SLEDAI_STEP apart,
    centred on 0 and squeezed to stay within ±SLEDAI_SPREAD, so a drawn value is never more
    than a fraction of a point from the score, however many subjects there are."""
    if count <= 1:
        return [0.0] * count
    step = min(SLEDAI_STEP, 2 * SLEDAI_SPREAD / (count - 1))
    return [(index - (count - 1) / 2) * step for index in range(count)]


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def render(figure: Figure, fmt: str = "png") -> bytes:
    """The figure as file bytes (png, svg or pdf)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt}")
    buffer = io.BytesIO()
    figure.savefig(buffer, format=fmt, metadata=_METADATA[fmt])
    return buffer.getvalue()


# --- swimmer -----------------------------------------------------------------------------------


def swimmer_figure(chart: SwimmerChart) -> Figure:
    rows = chart.rows
    legend = _swimmer_legend(chart)
    # tall enough for the bars and for the legend beside them (one subject: the legend)
    entries = sum(1 + str(h.get_label()).count("\n") for h in legend)
    height = max(2.2 + 0.45 * max(len(rows), 1), 1.4 + LEGEND_ROW_INCHES * entries)
    figure = _figure(11, min(60.0, height))
    ax = figure.add_subplot()
    for y, row in enumerate(rows):
        hatch = "//" if row.axis == "consent" else None
        for segment in row.segments:
            ax.barh(y, segment.end_day - segment.start_day, left=segment.start_day, height=0.5,
                    color=PHASE_COLOURS.get(segment.phase, "#cccccc"), hatch=hatch,
                    edgecolor="white" if hatch is None else "#555555", linewidth=0.5,
                    gid=f"bar:{row.subject}:{segment.phase}")
        if row.infusion_day is not None:
            ax.plot([row.infusion_day], [y], marker="|", markersize=16, markeredgewidth=2.5,
                    color="black", linestyle="none", gid=f"infusion:{row.subject}")
        for ae in row.adverse_events:
            ax.plot([ae.day], [y - 0.42], marker=AE_MARKERS.get(ae.grade or 0, AE_UNGRADED),
                    markersize=8, linestyle="none", markeredgecolor="black",
                    markerfacecolor=SERIOUS_COLOUR if ae.serious else "white",
                    gid=f"ae:{row.subject}:{ae.position}")
        if row.exit is not None:
            marker, colour, _ = EXIT_STYLE[row.exit.kind]
            ax.plot([row.exit.day], [y], marker=marker, markersize=13, markeredgewidth=2,
                    color=colour, linestyle="none", gid=f"exit:{row.subject}:{row.exit.kind}")
        elif row.ongoing:
            ax.plot([row.end_day], [y], marker=">", markersize=9, color="#444444",
                    linestyle="none", gid=f"ongoing:{row.subject}")
    ax.axvline(0, color="black", linewidth=0.8, linestyle=":", gid="d0")
    ax.set_yticks(range(len(rows)),
                  [r.subject + ("*" if r.axis == "consent" else "") for r in rows])
    ax.set_ylim(len(rows) - 0.4, -0.9)
    ax.set_xlabel("Study day (day 0 = CAR-T infusion; negative days before it)")
    ax.set_title("Subjects through the study phases")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(handles=legend, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              fontsize=8, frameon=False)
    return figure


def _swimmer_legend(chart: SwimmerChart) -> list[Any]:
    handles: list[Any] = [Patch(color=PHASE_COLOURS[p], label=PHASE_LABELS[p]) for p in PHASES]
    handles.append(Line2D([], [], marker="|", markersize=12, markeredgewidth=2.5,
                          color="black", linestyle="none", label="CAR-T infusion (D0)"))
    for grade, marker in AE_MARKERS.items():
        handles.append(Line2D([], [], marker=marker, linestyle="none", markeredgecolor="black",
                              markerfacecolor="white", label=f"AE grade {grade}"))
    handles.append(Line2D([], [], marker="o", linestyle="none", markeredgecolor="black",
                          markerfacecolor=SERIOUS_COLOUR, label="serious AE (filled red)"))
    for marker, colour, label in EXIT_STYLE.values():
        handles.append(Line2D([], [], marker=marker, markersize=10, markeredgewidth=2,
                              color=colour, linestyle="none", label=label))
    handles.append(Line2D([], [], marker=">", color="#444444", linestyle="none",
                          label="ongoing (to today)"))
    if any(r.axis == "consent" for r in chart.rows):
        handles.append(Patch(facecolor="white", edgecolor="#555555", hatch="//",
                             label=f"* never infused: consent-relative,\n  consent drawn at "
                             f"day {chart.consent_day} (median of infused)"))
    return handles


# --- SLEDAI-2K ---------------------------------------------------------------------------------


def sledai_figure(chart: SledaiChart) -> Figure:
    figure = _figure(10, 5.5)
    ax = figure.add_subplot()
    count = len(chart.series)
    offsets = sledai_offsets(count)
    for series, colour, dodge in zip(chart.series, colours(count), offsets, strict=True):
        days = [p.day for p in series.points]
        ax.plot(days, [p.score + dodge for p in series.points], marker="o", markersize=4,
                linewidth=1.4, color=colour, label=series.subject,
                gid=f"sledai:{series.subject}")
        base = series.baseline
        if base is not None:
            ax.plot([base.day], [base.score + dodge], marker="o", markersize=11,
                    linestyle="none", markerfacecolor="none", markeredgecolor=colour,
                    markeredgewidth=1.5, gid=f"baseline:{series.subject}")
    for value in chart.thresholds:
        ax.axhline(value, color="#777777", linestyle="--", linewidth=1,
                   gid="threshold" if len(chart.thresholds) == 1 else f"threshold:{value}",
                   label=f"eligibility: SLEDAI-2K ≥ {value}")
    summary = _sledai_summary(ax, chart.summary)
    ax.axvline(0, color="black", linewidth=0.8, linestyle=":", gid="d0")
    ax.set_xlabel("Study day (day 0 = CAR-T infusion)")
    ax.set_ylabel("SLEDAI-2K score")
    ax.set_ylim(bottom=-0.5)
    spread = max((abs(o) for o in offsets), default=0.0)
    title = "SLEDAI-2K per subject" + (f" with the {summary}" if summary else "")
    ax.set_title(title + "\n(large hollow circle: baseline"
                 + (f"; subject lines offset by at most ±{spread:.2g} point so equal scores "
                    "stay visible" if spread else "") + ")", fontsize=10)
    ax.grid(alpha=0.3)
    _subject_legend(ax, len(chart.series), outside=True)
    _note(ax, chart.not_plotted)
    return figure


def _sledai_summary(ax: Any, summary: tuple[SledaiSummary, ...]) -> str:
    """The median (thick black line, drawn exactly, above the subject lines) and the Q1-Q3
    band (translucent grey, behind them) of the summary points; what was drawn, for the title."""
    drawn = []
    with_iqr = [m for m in summary if m.q1 is not None and m.q3 is not None]
    if with_iqr:
        # one fill over the points with quartiles; `where` leaves a gap over a point without
        days = [m.day for m in summary]
        q1 = [m.q1 if m.q1 is not None else float("nan") for m in summary]
        q3 = [m.q3 if m.q3 is not None else float("nan") for m in summary]
        ax.fill_between(days, q1, q3, where=[m.q1 is not None for m in summary],
                        interpolate=False, gid="sledai-iqr",
                        label=f"interquartile range Q1–Q3 (n ≥ {SUMMARY_IQR_MIN})", **IQR_STYLE)
        drawn.append("interquartile band (grey)")
    with_median = [m for m in summary if m.median is not None]
    if with_median:
        ax.plot([m.day for m in with_median], [m.median for m in with_median],
                gid="sledai-median", label=f"median (n ≥ {SUMMARY_MEDIAN_MIN})", **MEDIAN_STYLE)
        drawn.insert(0, "median (black)")
    return " and ".join(drawn) + (" by visit" if drawn else "")


def _subject_legend(ax: Any, subjects: int, outside: bool = False) -> None:
    """A legend naming each subject, up to LEGEND_MAX subjects (beyond, it would hide the plot:
    only the artists not named per subject, such as the LLOQ or the SLEDAI-2K median and IQR
    band, stay in it). `outside`: beside the axes, on the right, where it covers nothing."""
    labelled, _ = ax.get_legend_handles_labels()  # lines, and the SLEDAI-2K IQR band
    place: dict[str, Any] = {"loc": "upper right"}
    if outside:
        place = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "frameon": False}
    if subjects <= LEGEND_MAX:
        if labelled:
            ax.legend(fontsize=8, **place)
        return
    handles = [h for h in labelled if not str(h.get_gid() or "").startswith(
        ("sledai:", "persistence:", "baseline:", "below-lloq:"))]
    ax.legend(handles=handles, fontsize=8, **place,
              title=f"{subjects} subjects\n(not named above {LEGEND_MAX})", title_fontsize=8)


def note_text(skipped: Mapping[str, str]) -> str:
    """The subjects not plotted, grouped by reason, wrapped to NOTE_WIDTH characters and cut
    after NOTE_LINES lines (a long list would squeeze the axes to nothing)."""
    by_reason: dict[str, list[str]] = {}
    for subject, why in sorted(skipped.items()):
        by_reason.setdefault(why, []).append(subject)
    text = "Not plotted " + "; ".join(f"({why}): {', '.join(subjects)}"
                                      for why, subjects in by_reason.items())
    lines = textwrap.wrap(text, NOTE_WIDTH, break_on_hyphens=False)
    if len(lines) > NOTE_LINES:
        lines = [*lines[:NOTE_LINES - 1], textwrap.shorten(
            lines[NOTE_LINES - 1] + " " + " ".join(lines[NOTE_LINES:]), NOTE_WIDTH - 30,
            placeholder="") + f" … ({len(skipped)} subjects in all)"]
    return "\n".join(lines)


def _note(ax: Any, skipped: dict[str, str]) -> None:
    if skipped:
        ax.annotate(note_text(skipped), xy=(0, -0.16), xycoords="axes fraction", fontsize=7,
                    color="#555555", va="top")


# --- persistence -------------------------------------------------------------------------------


def persistence_figure(chart: PersistenceChart) -> Figure:
    figure = _figure(10, 5.5)
    ax = figure.add_subplot()
    ax.set_yscale("log")
    floor = chart.floor
    top = max((p.copies_per_ug for s in chart.series for p in s.points), default=chart.lloq)
    for index, (series, colour) in enumerate(zip(chart.series, colours(len(chart.series)),
                                                 strict=True)):
        days = [p.day for p in series.points]
        ax.plot(days, [chart.plotted(p) for p in series.points], linewidth=1.4, color=colour,
                linestyle=PERSISTENCE_STYLES[index % len(PERSISTENCE_STYLES)],
                marker=PERSISTENCE_MARKERS[index % len(PERSISTENCE_MARKERS)], markersize=5,
                markevery=[p.detected for p in series.points], alpha=PERSISTENCE_ALPHA,
                label=series.subject, gid=f"persistence:{series.subject}", clip_on=False)
        below = [p for p in series.points if not p.detected]
        if below:
            ax.plot([p.day for p in below], [floor] * len(below), marker="v", markersize=7,
                    linestyle="none", markerfacecolor="white", markeredgecolor=colour,
                    clip_on=False, gid=f"below-lloq:{series.subject}")
    for value in chart.lloqs:
        in_force = value == chart.lloq
        ax.axhline(value, color="black", linestyle="--" if in_force else ":", linewidth=1,
                   gid="lloq" if in_force else f"lloq:{value:g}",
                   label=f"LLOQ {value:g} copies/µg" + ("" if in_force else " (other version)"))
    ax.axvline(0, color="black", linewidth=0.8, linestyle=":", gid="d0")
    ax.set_ylim(floor, max(top, chart.lloq) * 3)
    ax.set_xlabel("Study day (day 0 = CAR-T infusion)")
    ax.set_ylabel("CAR transgene copies/µg genomic DNA (log)")
    ax.set_title(f"CAR-T persistence (hollow ▽ at the floor, LLOQ/10 = {floor:g}: "
                 "below LLOQ, not detected; each subject its own colour, line style and "
                 "marker)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    _subject_legend(ax, len(chart.series))
    _note(ax, chart.not_plotted)
    return figure
