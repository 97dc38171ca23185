"""`trialflow casebook SUBJECT [--html FILE]`: the subject's whole record as it stands now, form
by form, with each value's history, queries, source verification and signatures
(projections/casebook.py). `--html FILE` writes a printable, self-contained page through
cli/output_files.py (atomically, never through a symbolic link; readable by its owner only,
like an export: it holds clinical data) and prints its path (with --json, {"file",
"sha256"}); without it the casebook is printed (with --json, the document)."""

from __future__ import annotations

import hashlib
from datetime import UTC
from pathlib import Path

import click

from cli.context import Env
from cli.render import emit


@click.command("casebook", help="A subject's whole record as it stands now, form by form: each "
               "value with its history (entry, corrections, voids: who, when, why), queries, "
               "source-verification marks and signatures. --html FILE writes a printable, "
               "self-contained page.")
@click.argument("subject")
@click.option("--html", "html_out", default=None, metavar="FILE",
              type=click.Path(dir_okay=False, path_type=Path),
              help="Write the casebook as a printable HTML page to FILE (replaced if it "
              "exists).")
@click.pass_obj
def casebook(env: Env, subject: str, html_out: Path | None) -> None:
    from events.streams import check_subject_id
    from projections.casebook import casebook as assemble
    from projections.casebook import casebook_html, casebook_text
    from workflow.errors import InvalidInput
    from workflow.study import load_study

    subject = check_subject_id(subject)
    if html_out is not None:
        _check_html(html_out)
    store = env.app.store
    head = store.last_position()  # the casebook reflects the log up to here
    events = [e for e in store.read_stream(subject) if e.position <= head]
    if not events:
        raise InvalidInput(f"Subject {subject} has no record in this database: `trialflow "
                           "subjects` lists the subjects.", field="subject")
    generated = env.app.clock().astimezone(UTC).isoformat(timespec="seconds")
    book = assemble(load_study(store), subject, events, log_position=head,
                    generated_at=generated)
    if html_out is None:
        emit(env, book, lambda: casebook_text(book))
        return
    from cli.output_files import PRIVATE, write_file

    data = casebook_html(book).encode("utf-8")
    write_file(html_out, data, "--html", PRIVATE)  # clinical data: its owner's only
    emit(env, {"file": str(html_out), "sha256": hashlib.sha256(data).hexdigest()},
         str(html_out))


def _check_html(out: Path) -> None:
    """Refuse (exit 2) before any work a link, a device, a folder or a missing folder."""
    from cli.output_files import output_file

    output_file(out, "--html")
