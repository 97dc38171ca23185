"""Subject commands: consent, forms, phase changes and status."""

from __future__ import annotations

from datetime import date, datetime

import click

from cli.context import Env
from cli.options import FINITE_FLOAT, POSITION, command_id_option
from cli.render import human, number
from cli.writes import CLINICAL_TIME, DATE, send, show
from workflow.commands import messages as M


@click.command("consent", help="Register a candidate in screening: consent signed on DATE.")
@click.argument("subject")
@click.option("--on", "on", type=DATE, required=True, help="Consent date (site calendar).")
@click.option("--consent-form-version", required=True)
@command_id_option
@click.pass_obj
def consent(env: Env, subject: str, on: date, consent_form_version: str,
            command_id: str | None) -> None:
    show(env, f"Subject {subject} consented on {on}; phase screening",
         send(env, M.ConsentSubject(subject, on, consent_form_version), command_id))


@click.command("reconsent", help="Record re-consent under the protocol version in force.")
@click.argument("subject")
@click.option("--consent-form-version", required=True)
@click.option("--on", "on", type=DATE, default=None)
@command_id_option
@click.pass_obj
def reconsent(env: Env, subject: str, consent_form_version: str, on: date | None,
              command_id: str | None) -> None:
    outcome = send(env, M.ReconsentSubject(subject, consent_form_version, on), command_id)
    show(env, f"Subject {subject} re-consented under protocol version "
         f"{outcome.summary.get('protocol_version')}", outcome)


@click.command("record", context_settings={"ignore_unknown_options": True},
               help="Record a form: trialflow record SUBJECT FORM field=value… [--on DATE].")
@click.argument("subject")
@click.argument("form")
@click.argument("fields", nargs=-1, type=click.UNPROCESSED)
@click.option("--on", "on", type=DATE, default=None, help="Clinical date (default today).")
@click.option("--visit", default=None, help="The visit the form belongs to (e.g. D90).")
@command_id_option
@click.pass_obj
def record(env: Env, subject: str, form: str, fields: tuple[str, ...], on: date | None,
           visit: str | None, command_id: str | None) -> None:
    outcome = send(env, M.RecordForm(subject, form, fields, on, visit), command_id)
    show(env, f"Form {form} recorded for {subject}", outcome)


@click.command("correct", context_settings={"ignore_unknown_options": True},
               help="Correct an earlier record (a form, or a procedure's date or values): "
               "trialflow correct SUBJECT POSITION field=value… --reason TEXT (the original "
               "stays in the log).")
@click.argument("subject")
@click.argument("position", type=POSITION)
@click.argument("fields", nargs=-1, type=click.UNPROCESSED)
@click.option("--reason", required=True)
@command_id_option
@click.pass_obj
def correct(env: Env, subject: str, position: int, fields: tuple[str, ...], reason: str,
            command_id: str | None) -> None:
    outcome = send(env, M.CorrectRecord(subject, position, fields, reason), command_id)
    show(env, f"Record at position {position} of {subject} corrected", outcome)


@click.command("void", help="Mark a record entered in error: trialflow void SUBJECT POSITION "
               "--reason TEXT (a form, procedure, adverse event or visit; the original stays "
               "in the log and every read model leaves it out).")
@click.argument("subject")
@click.argument("position", type=POSITION)
@click.option("--reason", required=True, help="Why the record was entered in error.")
@command_id_option
@click.pass_obj
def void(env: Env, subject: str, position: int, reason: str, command_id: str | None) -> None:
    outcome = send(env, M.VoidRecord(subject, position, reason), command_id)
    show(env, f"Record at position {position} of {subject} voided", outcome)


@click.command("confirm-eligibility", help="Investigator: confirm eligibility and enrol, on "
               "--on DATE (default today at the site); the screening window and eligibility "
               "are judged as of that date.")
@click.argument("subject")
@click.option("--on", "on", type=DATE, default=None,
              help="Date of the confirmation (site calendar; default today).")
@command_id_option
@click.pass_obj
def confirm_eligibility(env: Env, subject: str, on: date | None, command_id: str | None
                        ) -> None:
    outcome = send(env, M.ConfirmEligibility(subject, on), command_id)
    show(env, f"Subject {subject} enrolled as number {outcome.summary.get('enrolment_order')} "
         f"(cohort {outcome.summary.get('cohort')}); phase cell_collection", outcome)


@click.command("screen-fail", help="Record a screen failure with the criterion or reason code.")
@click.argument("subject")
@click.option("--reason", required=True, metavar="CODE",
              help="The failing inclusion criterion or exclusion, or screening_window_expired, "
                   "consent_withdrawn, investigator_decision, lost_to_follow_up, other "
                   "(`trialflow forms --codes` lists them).")
@click.option("--note", default=None, help="Free text: what the code leaves out.")
@click.option("--on", "on", type=DATE, default=None,
              help="Clinical date of the screen failure (default today at the site).")
@command_id_option
@click.pass_obj
def screen_fail(env: Env, subject: str, reason: str, note: str | None, on: date | None,
                command_id: str | None) -> None:
    outcome = send(env, M.RecordScreenFailure(subject, reason, on, note), command_id)
    show(env, f"Subject {subject} screen-failed ({outcome.summary.get('reason', reason)})",
         outcome)


@click.command("leukapheresis", help="Record the cell collection and its chain-of-identity id.")
@click.argument("subject")
@click.option("--on", "on", type=DATE, required=True)
@click.option("--coi-id", required=True)
@command_id_option
@click.pass_obj
def leukapheresis(env: Env, subject: str, on: date, coi_id: str, command_id: str | None) -> None:
    show(env, f"Leukapheresis of {subject} recorded (coi {coi_id})",
         send(env, M.RecordLeukapheresis(subject, on, coi_id), command_id))


@click.command("release", help="Record product release (or --fail with --reason).")
@click.argument("subject")
@click.option("--lot", required=True)
@click.option("--coi-id", required=True)
@click.option("--viable-cells", type=FINITE_FLOAT, default=None)
@click.option("--fail", "failed", is_flag=True)
@click.option("--reason", default=None)
@click.option("--on", "on", type=DATE, default=None,
              help="Date of the release (site calendar; default today).")
@command_id_option
@click.pass_obj
def release(env: Env, subject: str, lot: str, coi_id: str, viable_cells: float | None,
            failed: bool, reason: str | None, on: date | None, command_id: str | None) -> None:
    outcome = send(env, M.ReleaseProduct(subject, lot, coi_id, failed, reason, viable_cells,
                                         on), command_id)
    show(env, f"Product {lot} of {subject} {'failed QC' if failed else 'released'}", outcome)


@click.command("lymphodepletion", context_settings={"ignore_unknown_options": True},
               help="Record one day's lymphodepletion doses: fludarabine_mg=… "
               "cyclophosphamide_mg=… (a dose off the regimen needs --deviation --reason).")
@click.argument("subject")
@click.argument("doses", nargs=-1, type=click.UNPROCESSED)
@click.option("--on", "on", type=DATE, required=True)
@click.option("--deviation", is_flag=True)
@click.option("--reason", default=None)
@command_id_option
@click.pass_obj
def lymphodepletion(env: Env, subject: str, doses: tuple[str, ...], on: date, deviation: bool,
                    reason: str | None, command_id: str | None) -> None:
    values = _doses(doses)
    outcome = send(env, M.GiveLymphodepletion(
        subject, on, values.get("fludarabine_mg", 0.0), values.get("cyclophosphamide_mg", 0.0),
        deviation, reason), command_id)
    summary = outcome.summary
    expected = _expected_text(summary.get("expected_mg"), summary.get("bsa_m2"))
    show(env, f"Lymphodepletion day {human(summary.get('regimen_day'))} of {subject} recorded"
         f"{f' ({expected})' if expected else ''}; phase {human(summary.get('phase'))}",
         outcome)


def _expected_text(expected: object, bsa: object) -> str:
    """`expected fludarabine 39.25 mg (BSA 1.57 m²)`, the drugs due that day, numbers as
    `trialflow calc` shows them."""
    if not isinstance(expected, dict):
        return ""
    due = {drug: mg for drug, mg in expected.items() if mg}
    doses = ", ".join(f"{drug} {number(mg)} mg" for drug, mg in due.items()) or "no dose"
    return f"expected {doses}" + ("" if bsa is None else f", BSA {human(bsa)} m²")


def _doses(tokens: tuple[str, ...]) -> dict[str, float]:
    values: dict[str, float] = {}
    for token in tokens:
        name, _, raw = token.partition("=")
        if name not in ("fludarabine_mg", "cyclophosphamide_mg") or not raw:
            raise click.UsageError(f"{token!r}: give fludarabine_mg=N and cyclophosphamide_mg=N.")
        try:
            values[name] = FINITE_FLOAT.convert(raw, None, None)
        except click.BadParameter:
            raise click.UsageError(f"{name} must be a finite number of mg, got {raw!r}."
                                   ) from None
    return values


@click.command("infuse", help="Record the CAR-T infusion (D0), checking window, chain of "
               "identity and dose.")
@click.argument("subject")
@click.option("--at", "at", type=CLINICAL_TIME, required=True,
              help="Time of the infusion, ISO 8601 (without an offset: local time at the "
              "subject's site).")
@click.option("--cells", type=FINITE_FLOAT, required=True)
@click.option("--coi-id", required=True)
@click.option("--deviation", is_flag=True)
@click.option("--reason", default=None)
@command_id_option
@click.pass_obj
def infuse(env: Env, subject: str, at: datetime, cells: float, coi_id: str, deviation: bool,
           reason: str | None, command_id: str | None) -> None:
    outcome = send(env, M.Infuse(subject, at, cells, coi_id, deviation, reason), command_id)
    show(env, f"Subject {subject} infused; D0 is {outcome.summary.get('d0')}; phase follow_up",
         outcome)


@click.command("visit", help="Record a follow-up visit as done or missed. A visit done "
               "outside its window is recorded with a warning naming the window and the "
               "deviation it makes; a visit is marked missed only after its window has closed, "
               "with --reason.")
@click.argument("subject")
@click.argument("visit")
@click.option("--done", "status", flag_value="done")
@click.option("--missed", "status", flag_value="missed")
@click.option("--on", "on", type=DATE, default=None,
              help="Date of the visit (site calendar; default today).")
@click.option("--reason", default=None,
              help="Why the visit was missed (required with --missed); with --done, kept in "
              "the deviation of a visit outside its window.")
@command_id_option
@click.pass_obj
def visit(env: Env, subject: str, visit: str, status: str | None, on: date | None,
          reason: str | None, command_id: str | None) -> None:
    if status is None:
        raise click.UsageError("Say --done or --missed.")
    show(env, f"Visit {visit} of {subject} recorded {status}",
         send(env, M.RecordVisit(subject, visit, status, on, reason), command_id))


@click.command("complete", help="Complete the study after the D360 visit is done or missed.")
@click.argument("subject")
@click.option("--on", "on", type=DATE, default=None,
              help="Date of completion (site calendar; default today).")
@command_id_option
@click.pass_obj
def complete(env: Env, subject: str, on: date | None, command_id: str | None) -> None:
    show(env, f"Subject {subject} completed the study",
         send(env, M.CompleteStudy(subject, on), command_id))


@click.command("off-study", help="Take a subject off study with a reason.")
@click.argument("subject")
@click.option("--reason", required=True, help="consent_withdrawn, investigator_decision, "
              "lost_to_follow_up, death or manufacturing_failure.")
@click.option("--on", "on", type=DATE, default=None,
              help="Date the subject left the study (site calendar; default today).")
@command_id_option
@click.pass_obj
def off_study(env: Env, subject: str, reason: str, on: date | None,
              command_id: str | None) -> None:
    show(env, f"Subject {subject} is off study ({reason})",
         send(env, M.TakeOffStudy(subject, reason, on), command_id))
