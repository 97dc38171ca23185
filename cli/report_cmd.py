"""`trialflow report swimmer|sledai|persistence|html --out FILE`: the data manager's plots and
the monitoring page (projections/reports/).

Each writes its file (cli/output_files.py: atomically, a temporary file beside it, then
renamed; never through a symbolic link, which is refused before any work), prints the path,
and with --json prints {"file", "sha256"}. matplotlib is imported inside the commands only, so
the CLI's start-up stays light. `--as-of` without `--now` sets the clock to the as-of moment
(bars of subjects still on study end there, not today).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from cli.context import Env
from cli.render import emit
from cli.writes import DATETIME

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from projections.progress import Progress, Tick
    from projections.queries import Clock
    from projections.reports.data import SubjectHistory
    from projections.views import View

F = TypeVar("F", bound=Callable[..., Any])
PLOT_FORMATS = ("png", "svg", "pdf")


def report_options(function: F) -> F:
    function = click.option("--now", "now", type=DATETIME, default=None,
                            help="The clock: today for subjects still on study, due and "
                            "overdue (default now; with --as-of, that moment).")(function)
    function = click.option("--as-of", "as_of", default=None, metavar="TIME|@N",
                            help="What the system showed then: ISO 8601 recorded time "
                            "(UTC if no offset) or @POSITION.")(function)
    function = click.option("--out", "out", required=True, metavar="FILE",
                            type=click.Path(dir_okay=False, path_type=Path),
                            help="The file to write (replaced if it exists).")(function)
    return function


@click.group("report", help="Plots and the monitoring page for data managers: swimmer, "
             "sledai, persistence (PNG, SVG or PDF by the file's extension) and html.")
def report() -> None:
    pass


class _Context:
    """The view, the clock and the subjects' histories one report reads."""

    def __init__(self, env: Env, now: datetime | None, as_of: str | None,
                 advance: Progress | None = None, units: int = 1, extra: int = 1) -> None:
        """`advance`: a progress bar, moved `units` times per subject and `extra` times for
        the rest (the caller ticks `self.tick` for those)."""
        from projections.audit_trail import resolve_moment
        from projections.progress import ticker
        from projections.queries import Clock
        from projections.reports.data import load_histories
        from projections.views import open_view

        app = env.app
        self.as_of = as_of
        self.view: View = open_view(app.engine, app.store, as_of=as_of)
        moment = _utc(now)
        if moment is None and as_of is not None:
            moment = resolve_moment(as_of, app.store).at
        self.now: datetime = moment or app.clock()
        self.clock: Clock = Clock(self.view, self.now)
        self.tick: Tick = ticker(advance, units * len(self.view.subjects()) + extra)
        self.histories: list[SubjectHistory] = load_histories(self.view, app.store, self.tick)

    def swimmer(self) -> Figure:
        from projections.queries import ae_list
        from projections.reports.data import swimmer_rows
        from projections.reports.plots import swimmer_figure

        return swimmer_figure(swimmer_rows(self.histories, ae_list(self.view, None),
                                           self.clock.today))

    def sledai(self) -> Figure:
        from projections.reports.data import sledai_series
        from projections.reports.plots import sledai_figure

        return sledai_figure(sledai_series(self.histories))

    def persistence(self) -> Figure:
        from projections.reports.data import persistence_series
        from projections.reports.plots import persistence_figure

        lloq = self.view.study.protocol.lloq_copies_per_ug
        return persistence_figure(persistence_series(self.histories, lloq))


def _utc(now: datetime | None) -> datetime | None:
    if now is not None and now.tzinfo is None:
        return now.replace(tzinfo=UTC)
    return now


def _plot_format(out: Path) -> str:
    from workflow.errors import InvalidInput

    fmt = out.suffix.lower().lstrip(".")
    if fmt not in PLOT_FORMATS:
        raise InvalidInput(f"--out {out}: the file name must end in .png, .svg or .pdf (the "
                           "format is taken from it).", field="out")
    return fmt


def check_out(out: Path) -> Path:
    """The folder `out` goes to, refused (exit 2) before any work when it does not exist, or
    when `out` is a symbolic link (cli/output_files.py)."""
    from cli.output_files import output_file

    return output_file(out, "--out")


def write_output(env: Env, out: Path, data: bytes) -> None:
    """Write `data` to `out` atomically, never through a symbolic link, and say where (and its
    SHA-256 with --json)."""
    from cli.output_files import write_file

    check_out(out)
    write_file(out, data, "--out")
    digest = hashlib.sha256(data).hexdigest()
    emit(env, {"file": str(out), "sha256": digest}, str(out))


def _plot(env: Env, out: Path, now: datetime | None, as_of: str | None, which: str) -> None:
    fmt = _plot_format(out)
    check_out(out)
    from cli.progress import progress_bar

    with progress_bar(env, f"report {which}") as advance:
        context = _Context(env, now, as_of, advance)
        context.tick(f"report: drawing {which}", 0)
        figure: Figure = getattr(context, which)()
        from projections.reports.plots import render

        data = render(figure, fmt)
        context.tick(f"report: {which} drawn")
    write_output(env, out, data)


@report.command("swimmer", help="One bar per subject through its phases on the study-day axis "
                "(day 0 = infusion), infusion, adverse events by grade (serious in red) and "
                "exits marked.")
@report_options
@click.pass_obj
def swimmer(env: Env, out: Path, now: datetime | None, as_of: str | None) -> None:
    _plot(env, out, now, as_of, "swimmer")


@report.command("sledai", help="SLEDAI-2K of each disease_activity form over study days, one "
                "line per infused subject, baseline marked.")
@report_options
@click.pass_obj
def sledai(env: Env, out: Path, now: datetime | None, as_of: str | None) -> None:
    _plot(env, out, now, as_of, "sledai")


@report.command("persistence", help="CAR-T transgene copies/µg over study days per infused "
                "subject, log scale, with the protocol's LLOQ; values below it at the axis "
                "floor (LLOQ/10) as hollow down-triangles.")
@report_options
@click.pass_obj
def persistence(env: Env, out: Path, now: datetime | None, as_of: str | None) -> None:
    _plot(env, out, now, as_of, "persistence")


@report.command("html", help="One self-contained page for a monitoring visit: study status, "
                "subjects, visits due or overdue, adverse events, deviations, endpoints, "
                "data queries by state, source-verification progress, signatures pending and "
                "the three plots (embedded PNGs).")
@report_options
@click.pass_obj
def html(env: Env, out: Path, now: datetime | None, as_of: str | None) -> None:
    from cli.progress import progress_bar
    from projections.reports import data as d
    from projections.reports.html import monitoring_data, render_html
    from projections.reports.plots import (
        persistence_figure,
        render,
        sledai_figure,
        swimmer_figure,
    )

    check_out(out)
    with progress_bar(env, "report html") as advance:
        # per subject: its history, its data review; then the overdue tasks and three plots
        context = _Context(env, now, as_of, advance, units=2, extra=4)
        view, histories, tick = context.view, context.histories, context.tick
        page = monitoring_data(view, context.clock, now=context.now.isoformat(), as_of=as_of,
                               store=env.app.store, tick=tick)
        swim = d.swimmer_rows(histories, page.adverse_events, context.clock.today)
        scores = d.sledai_series(histories)
        copies = d.persistence_series(histories, view.study.protocol.lloq_copies_per_ug)
        page.notes = {"swimmer": d.swimmer_caption(swim), "sledai": d.sledai_caption(scores),
                      "persistence": d.persistence_caption(copies)}
        figures: dict[str, Callable[[], Figure]] = {
            "swimmer": lambda: swimmer_figure(swim), "sledai": lambda: sledai_figure(scores),
            "persistence": lambda: persistence_figure(copies)}
        images = {}
        for name, figure in figures.items():
            tick(f"report: drawing {name}", 0)
            images[name] = (render(figure()), "png")
            tick(f"report: {name} drawn")
    write_output(env, out, render_html(page, images).encode("utf-8"))
