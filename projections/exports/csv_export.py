"""CSV export: one file per form, `events.csv` with the log, and a `SHA256SUMS` manifest.

- `FORM.csv` for every form of `workflow.forms.FORMS` (a header only when none is recorded):
  one row per recorded form, by subject then log position, with the columns `subject`,
  `position` (of the original record), `study_event`, `visit`, `recorded_on` (clinical date),
  one column per field holding the current value (corrections applied; values as
  `values.value_text` writes them, empty when not recorded), `corrected` (yes/no) and
  `voided` (yes/no: marked entered in error, kept with its history).
- `events.csv`: every exported event in position order, one column per envelope field
  (`events.envelope.ENVELOPE_FIELDS`), `payload` as its stored JSON text; `ExportRecorded`
  events are left out, as from every export.
- `SHA256SUMS`: `sha256sum` lines of the other files (`sha256sum -c SHA256SUMS` checks them);
  its own SHA-256 is the one an `ExportRecorded` event records for the directory.

RFC 4180: comma-separated, fields quoted when needed, CRLF line ends, UTF-8 without BOM.
Every text cell goes through `cells.cell`: one that starts with `=`, `+`, `-`, `@`, a tab or a
carriage return (or `'`) gets a `'` in front, so no spreadsheet runs it as a formula; cells
written from numbers (positions, versions, decimal values) stay numbers. `cells.restore`
undoes it, so every row's hash can still be recomputed from `events.csv`.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterable, Sequence
from typing import Any, Final

from events.envelope import ENVELOPE_FIELDS
from projections.exports.cells import cell
from projections.exports.records import FormRecord, form_records
from projections.exports.snapshot import Snapshot
from projections.exports.values import value_text
from projections.progress import Progress, ticker
from workflow.forms import FORMS

MANIFEST: Final = "SHA256SUMS"
EVENTS_FILE: Final = "events.csv"
# `study_visit`: the visit the record belongs to (not `visit`, the visit form's own field).
LEADING_COLUMNS: Final = ("subject", "position", "study_event", "study_visit", "recorded_on")


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> bytes:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def form_header(form: str) -> list[str]:
    return [*LEADING_COLUMNS, *FORMS[form].field_codes, "corrected", "voided"]


def _form_row(record: FormRecord) -> list[str]:
    values = (record.values.get(code) for code in FORMS[record.form].field_codes)
    return [cell(record.subject), cell(record.position), cell(record.study_event),
            cell(record.visit), cell(record.recorded_on.isoformat()),
            *(cell(value, value_text(value)) for value in values),
            "yes" if record.corrected else "no", "yes" if record.voided else "no"]


def _event_row(values: dict[str, Any]) -> list[str]:
    return [cell(values[name]) for name in ENVELOPE_FIELDS]


def build_csv(snapshot: Snapshot, progress: Progress | None = None) -> dict[str, bytes]:
    """File name -> bytes, the manifest included; names sorted, the manifest last.
    `progress`: per subject, then the files written (one unit)."""
    tick = ticker(progress, len(snapshot.subjects) + 1)
    records: dict[str, list[FormRecord]] = {form: [] for form in FORMS}
    for subject in snapshot.subjects:
        for record in form_records(snapshot.study, subject, snapshot.streams[subject]):
            records[record.form].append(record)
        tick("CSV: forms (subjects)", 1)
    tick("CSV: writing the files", 0)
    files = {f"{form}.csv": _table(form_header(form), (_form_row(r) for r in rows))
             for form, rows in records.items()}
    files[EVENTS_FILE] = _table(ENVELOPE_FIELDS,
                                (_event_row(event.envelope()) for event in snapshot.events))
    ordered = {name: files[name] for name in sorted(files)}
    ordered[MANIFEST] = manifest(ordered)
    tick("CSV: files written", 1)
    return ordered


def manifest(files: dict[str, bytes]) -> bytes:
    """`sha256sum` lines (hash, two spaces, name) for `files`, in name order."""
    lines = [f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in
             sorted(files.items())]
    return "".join(lines).encode("utf-8")
