"""`trialflow export odm|fhir|csv|ics`: write an export, then record it in the study's log.

With `--user`, the acting user proves who acts first (password, session or personal login:
cli/auth.py), so nothing is exported in a name that was not proven; then the file is written
(`cli/output_files.py`: atomically, a temporary file renamed over the target, and never
through a symbolic link: a target that is one is refused before any work, exit 2) and
recorded as `ExportRecorded` through the executor. Without `--user`, or when the record
cannot be written (a read-only database), the export stands and a warning on stderr says it
was not recorded; the exit status stays 0. Builders live in `projections/exports/` and import
only the standard library; this module imports them inside the commands, so `trialflow
--help` stays light.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cli.context import Env
from cli.options import command_id_option
from cli.progress import progress_bar
from cli.render import emit
from workflow.errors import RuleViolation

if TYPE_CHECKING:
    from projections.exports.snapshot import Snapshot
    from projections.progress import Progress

OUT_FILE = click.Path(dir_okay=False, path_type=Path)
OUT_DIR = click.Path(file_okay=False, path_type=Path)


@click.group("export", help="Exports for auditors, monitors and data managers: CDISC ODM "
             "1.3.2, FHIR R5, CSV, a subject's visit calendar (iCalendar). The same log gives "
             "the same bytes; each export is recorded in the study's log when --user may "
             "write.")
def export() -> None:
    pass


@export.command("odm", help="CDISC ODM 1.3.2 XML: metadata from the forms and the protocol, "
                "every value with its audit trail (corrections with their reasons).")
@click.option("--out", required=True, type=OUT_FILE, help="The XML file to write.")
@command_id_option
@click.pass_obj
def odm(env: Env, out: Path, command_id: str | None) -> None:
    from projections.exports.odm import build_odm

    _check_out(out)
    _prove(env)
    _single_file(env, "odm", out, build_odm, command_id)


@export.command("fhir", help="FHIR R5 Bundle (collection) JSON: ResearchStudy, ResearchSubject "
                "with its phases, pseudonymised Patient, AdverseEvent, SLEDAI-2K Observation.")
@click.option("--out", required=True, type=OUT_FILE, help="The JSON file to write.")
@command_id_option
@click.pass_obj
def fhir(env: Env, out: Path, command_id: str | None) -> None:
    from projections.exports.fhir import build_fhir

    _check_out(out)
    _prove(env)
    _single_file(env, "fhir", out, build_fhir, command_id)


@export.command("csv", help="One CSV per form (current values, corrected yes/no), events.csv "
                "(the log's envelope) and SHA256SUMS, in DIR.")
@click.option("--out", required=True, type=OUT_DIR, help="The directory to write into.")
@command_id_option
@click.pass_obj
def csv(env: Env, out: Path, command_id: str | None) -> None:
    from cli.output_files import PRIVATE, write_files
    from projections.exports.csv_export import MANIFEST, build_csv

    _check_out(out)
    _prove(env)
    snapshot = _snapshot(env)
    with progress_bar(env, "export csv") as advance:
        files = build_csv(snapshot, advance)
    write_files(out, files, "--out", PRIVATE)
    digest = hashlib.sha256(files[MANIFEST]).hexdigest()
    _finish(env, "csv", out, digest, snapshot.position, command_id,
            {"files": sorted(files)})


@export.command("ics", help="A subject's visit calendar (RFC 5545): one all-day event per "
                "planned visit on its target date, the window in the description.")
@click.argument("subject")
@click.option("--out", required=True, type=OUT_FILE, help="The .ics file to write.")
@command_id_option
@click.pass_obj
def ics(env: Env, subject: str, out: Path, command_id: str | None) -> None:
    from events.streams import check_subject_id
    from projections.exports.ics import build_ics

    check_subject_id(subject)
    _check_out(out)
    _prove(env)
    snapshot = _snapshot(env)
    data = build_ics(snapshot, subject)
    _write(out, data)
    _finish(env, "ics", out, hashlib.sha256(data).hexdigest(), snapshot.position, command_id,
            {"subject": subject}, subject=subject)


# --- plumbing -------------------------------------------------------------------------------


def _prove(env: Env) -> None:
    """With --user, authenticate before anything is exported (the credential is kept for the
    record, asked once): an unproven name exports nothing. A proven user whose role may not
    record exports (the scheduler) still exports, with a warning that nothing was recorded."""
    if not env.user and env.app.engine.dialect.name != "postgresql":
        return
    from cli.auth import credential
    from events.errors import EventStoreError
    from workflow.commands.messages import RecordExport

    try:
        proof = credential(env)
    except RuleViolation as error:
        if env.user or error.rule != "unknown_user":
            raise
        return  # no --user and no personal login: an unrecorded export
    try:
        user = env.executor.authenticate(proof)
    except EventStoreError:
        return  # the database refuses even the check: export, unrecorded (warned after)
    try:
        env.executor.may_send(user, RecordExport)
    except RuleViolation as error:
        env.__dict__["export_problem"] = error.message
        return
    env.__dict__["export_proof"] = proof


def _check_out(out: Path) -> None:
    """Refuse (exit 2) before any work an --out that is a symbolic link, or whose name the
    export record could not take (a bidirectional control character, only invisible
    characters: the rule of every free text, workflow/commands/messages.py)."""
    from cli.output_files import check_target
    from workflow.commands.messages import check_free_text

    check_target(out, "--out")
    check_free_text(out.name, "out", label="the name of --out")


def _snapshot(env: Env) -> Snapshot:
    from projections.exports.snapshot import take_snapshot

    return take_snapshot(env.app.store)


def _single_file(env: Env, kind: str, out: Path,
                 build: Callable[[Snapshot, Progress | None], bytes],
                 command_id: str | None) -> None:
    snapshot = _snapshot(env)
    with progress_bar(env, f"export {kind}") as advance:
        data = build(snapshot, advance)
    _write(out, data)
    _finish(env, kind, out, hashlib.sha256(data).hexdigest(), snapshot.position, command_id,
            {})


def _write(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (a reader never sees half a file), never through a
    symbolic link (cli/output_files.py)."""
    from cli.output_files import PRIVATE, write_file

    write_file(path, data, "--out", PRIVATE)


def _record(env: Env, kind: str, name: str, digest: str, position: int,
            command_id: str | None, subject: str | None) -> tuple[int | None, str | None]:
    """(position of the ExportRecorded event, None) or (None, why it was not recorded)."""
    proof = env.__dict__.get("export_proof")
    if proof is None:
        return None, env.__dict__.get("export_problem",
                                      "no acting user (pass --user NAME to record exports)")
    from cli.writes import send
    from events.errors import EventStoreError
    from workflow.commands.messages import RecordExport
    from workflow.errors import WorkflowError

    try:
        outcome = send(env, RecordExport(kind, name, digest, position, subject), command_id,
                       credential=proof)
    except WorkflowError as error:
        return None, error.message
    except EventStoreError as error:
        return None, str(error)
    return outcome.result.positions[0] if outcome.result.positions else None, None


def _finish(env: Env, kind: str, out: Path, digest: str, position: int,
            command_id: str | None, extra: dict[str, Any], *,
            subject: str | None = None) -> None:
    recorded_at, problem = _record(env, kind, out.name, digest, position, command_id,
                                   subject)
    warning = None
    if problem is not None:
        warning = f"the export was written but not recorded in the study's log: {problem}"
        env.stderr.write(f"Warning: {warning}\n")
    data = {"kind": kind, "file": str(out), "sha256": digest, "position": position, **extra,
            "recorded": recorded_at is not None, "record_position": recorded_at,
            "warning": warning}
    note = (f"recorded at position {recorded_at}" if recorded_at is not None
            else "not recorded")
    emit(env, data, f"Exported {kind} to {out} (sha256 {digest}, log up to position "
                    f"{position}); {note}.")
