"""`trialflow scheduler run|tick` and `trialflow reminders`."""

from __future__ import annotations

import signal
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import click

from cli.context import Env
from cli.render import emit, table
from cli.writes import DATETIME
from workflow.errors import RuleViolation

if TYPE_CHECKING:
    from workflow.identity import Credential

F = TypeVar("F", bound=Callable[..., Any])


def notifier_options(function: F) -> F:
    function = click.option("--webhook", default=None, metavar="URL",
                            help="POST each reminder as JSON (env TRIALFLOW_WEBHOOK).")(function)
    function = click.option("--mail-to", "mail_to", multiple=True, metavar="ADDRESS",
                            help="E-mail recipient, repeatable (env TRIALFLOW_MAIL_TO, "
                            "comma-separated).")(function)
    function = click.option("--mail-from", "mail_from", default=None, metavar="ADDRESS",
                            help="Sender (env TRIALFLOW_MAIL_FROM).")(function)
    return click.option("--smtp", default=None, metavar="HOST:PORT",
                        help="SMTP server for e-mail (env TRIALFLOW_SMTP).")(function)


def _notifiers(env: Env, smtp: str | None, mail_from: str | None, mail_to: tuple[str, ...],
               webhook: str | None) -> list[Any]:
    from projections.notifiers import from_settings

    return from_settings(env.environ, smtp=smtp, mail_from=mail_from, mail_to=mail_to,
                         webhook=webhook)


def _utc(now: datetime | None) -> datetime | None:
    return now.replace(tzinfo=UTC) if now is not None and now.tzinfo is None else now


def _credential(env: Env) -> Credential:
    """The scheduler's own credential: its secret file (--secret-file, TRIALFLOW_SECRET_FILE,
    systemd's $CREDENTIALS_DIRECTORY/trialflow-scheduler) or its PostgreSQL login. --user
    defaults to `scheduler`, the service account `trialflow init` creates."""
    from cli.auth import credential

    if env.user is None and env.app.engine.dialect.name != "postgresql":
        env.user = "scheduler"
    try:
        return credential(env)
    except RuleViolation as error:
        if error.rule != "unknown_user" or env.user is not None:
            raise
        env.user = "scheduler"  # PostgreSQL, and the login is not a user of the study
        return credential(env)


@click.group("scheduler", help="Visit reminders, overdue alerts and SAE deadlines: issued "
             "exactly once, delivered at least once.")
def scheduler() -> None:
    pass


@scheduler.command("tick", help="One pass: issue what came due, cancel what is obsolete, "
                   "deliver what is pending; then exit (for cron and tests).")
@click.option("--now", "now", type=DATETIME, default=None, help="The clock (default now).")
@notifier_options
@click.pass_obj
def tick(env: Env, now: datetime | None, smtp: str | None, mail_from: str | None,
         mail_to: tuple[str, ...], webhook: str | None) -> None:
    from projections.scheduler import tick as one_pass

    notifiers = _notifiers(env, smtp, mail_from, mail_to, webhook)
    report = one_pass(env.app, _credential(env), _utc(now) or env.app.clock(), notifiers)
    data = report.to_json()
    refused = "".join(f"\nNot issued: {e}" for _, e in report.refused)
    emit(env, data, f"Issued {len(report.issued)} reminders ({report.already_issued} already "
         f"issued by another scheduler), cancelled {len(report.cancelled)}, delivered "
         f"{len(report.delivered)}, failed {len(report.failed)} (will retry).{refused}")


@scheduler.command("run", help="Run passes every --interval seconds until SIGINT or SIGTERM "
                   "(the pass in progress finishes first).")
@click.option("--interval", type=click.IntRange(1, 86400), default=60, show_default=True,
              help="Seconds between passes.")
@notifier_options
@click.pass_obj
def run(env: Env, interval: int, smtp: str | None, mail_from: str | None,
        mail_to: tuple[str, ...], webhook: str | None) -> None:
    from apscheduler.schedulers.blocking import BlockingScheduler

    from projections.scheduler import tick as one_pass

    notifiers = _notifiers(env, smtp, mail_from, mail_to, webhook)
    app = env.app
    proof = _credential(env)
    env.executor.authenticate(proof)  # a wrong secret stops here, not at the first pass
    runner = BlockingScheduler(timezone=UTC)

    def job() -> None:
        try:
            one_pass(app, proof, app.clock(), notifiers)
        except Exception as error:  # a failed pass is logged; the next one retries
            import structlog

            structlog.get_logger("trialflow.scheduler").error(
                "scheduler pass failed", error=f"{type(error).__name__}: {error}")

    runner.add_job(job, "interval", seconds=interval, next_run_time=datetime.now(UTC),
                   max_instances=1, coalesce=True, id="tick")

    stopping: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        if stopping:  # a second signal while the pass in progress finishes: keep waiting
            return
        stopping.append(signum)
        runner.shutdown(wait=True)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    runner.start()
    emit(env, {"stopped": True}, "Scheduler stopped.")


@click.command("reminders", help="Issued, delivered and failed reminders, and what will come "
               "due next (state upcoming).")
@click.argument("subject", required=False)
@click.option("--pending", is_flag=True, help="Only reminders not delivered yet.")
@click.option("--now", "now", type=DATETIME, default=None, help="The clock (default now).")
@notifier_options
@click.pass_obj
def reminders(env: Env, subject: str | None, pending: bool, now: datetime | None,
              smtp: str | None, mail_from: str | None, mail_to: tuple[str, ...],
              webhook: str | None) -> None:
    from projections.scheduler import reminder_list
    from projections.views import open_view

    channels = [n.channel for n in _notifiers(env, smtp, mail_from, mail_to, webhook)]
    view = open_view(env.app.engine, env.app.store)
    if subject is not None:
        from projections.queries import require_subject

        require_subject(view, subject)
    data = reminder_list(env.app.store, view, _utc(now) or env.app.clock(), channels, subject,
                         pending=pending)
    emit(env, data, lambda: table(["subject", "kind", "obligation", "due_at", "state", "id"],
                                  [[r["subject"], r["kind"], r["obligation"], r["due_at"],
                                    r["state"], r["id"]] for r in data])
         if data else "No reminders.")
