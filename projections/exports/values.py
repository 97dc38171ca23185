"""Field values as text, the same in ODM and CSV: what `trialflow record` accepts back.

- yes/no and flags: `yes` / `no`;
- lists of codes: comma-separated in the form's order, `none` for the empty list;
- decimals: plain decimal notation, never an exponent (XML Schema's xs:decimal has none), with
  the digits Python's shortest round-trip representation gives (58.5, 200000000.0, 0.35);
- integers, dates, date-times (with their offset) and texts as stored.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any


def decimal_text(number: float) -> str:
    """`number` in plain decimal notation, e.g. 2e8 -> 200000000.0, 1e-7 -> 0.0000001."""
    return format(Decimal(repr(float(number))), "f")


def value_text(value: Any) -> str:
    """One stored value as export text; None (not recorded) is the empty string."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return decimal_text(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list | tuple):
        return ",".join(str(item) for item in value) if value else "none"
    return str(value)
