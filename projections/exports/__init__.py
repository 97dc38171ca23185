"""Exports of the event log for auditors, monitors and data managers (docs/exports.md).

Each builder is a pure function of a `Snapshot` (the log read once, `ExportRecorded` events
left out) and returns bytes: the same log gives the same bytes. Only the standard library is
used here; the validators (lxml with the ODM XSD, fhir.resources, icalendar) run in the tests.

- `odm.build_odm`: CDISC ODM 1.3.2 XML, metadata from the forms and the protocol, clinical data
  with every original value and correction as an audit trail.
- `fhir.build_fhir`: a FHIR R5 Bundle (collection) of the study, subjects, pseudonymised
  patients, adverse events and SLEDAI-2K observations.
- `csv_export.build_csv`: one CSV per form and `events.csv` (the log's envelope).
- `ics.build_ics`: one subject's visit calendar (RFC 5545).
"""

from __future__ import annotations

from projections.exports.snapshot import EXCLUDED_TYPES, Snapshot, take_snapshot

__all__ = ["EXCLUDED_TYPES", "Snapshot", "take_snapshot"]
