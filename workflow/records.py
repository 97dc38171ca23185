"""Recorded case report forms as the rules see them: corrected values, positions as evidence."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any


@dataclass(frozen=True)
class RecordedForm:
    """One form as it stands now: its values with every later correction applied.

    `position` is the global log position of the original record (the evidence an auditor
    looks up); `corrected_by` lists the positions of corrections applied to it, in order.
    """

    position: int
    subject: str
    form: str
    values: Mapping[str, Any]
    recorded_on: date  # the clinical date the form was recorded for (`--on`, site's calendar)
    visit: str | None = None
    corrected_by: tuple[int, ...] = ()

    def get(self, field: str, default: Any = None) -> Any:
        return self.values.get(field, default)


@dataclass(frozen=True)
class Consent:
    subject: str
    consent_date: date
    consent_form_version: str
    protocol_version: int
    position: int


def as_date(value: object) -> date | None:
    """A recorded date value (ISO text, date or datetime) as a date; None when it is not one."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip()[:10])
        except ValueError:
            return None
    return None


def as_number(value: object) -> float | None:
    """A recorded number as a float; None for anything else (booleans are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
