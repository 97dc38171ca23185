"""Input checks shared by the instruments: each bad value raises one `InvalidInput` sentence.

The instruments are called by guards, projections and `trialflow calc`; none of them may
turn a bad value into a plausible-looking number, so every public function checks its inputs
here at run time even though it is typed.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from datetime import date, datetime
from decimal import Decimal

from workflow.errors import InvalidInput
from workflow.instruments.codes import canonical_code


def shown(value: object) -> str:
    """A value as a message shows it: strings quoted, numbers plain."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _number_or_none(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def number(
    value: object,
    field: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    minimum_exclusive: bool = False,
    unit: str = "",
) -> float:
    """A finite real number inside [minimum, maximum] (minimum may be exclusive)."""
    checked = _number_or_none(value)
    below = checked is not None and minimum is not None and (
        checked <= minimum if minimum_exclusive else checked < minimum
    )
    above = checked is not None and maximum is not None and checked > maximum
    if checked is None or below or above:
        phrase = _range_phrase("a number", minimum, maximum, minimum_exclusive, unit)
        raise InvalidInput(f"{field} must be {phrase}, got {shown(value)}.", field=field)
    return checked


def whole_number(value: object, field: str, *, minimum: int, maximum: int | None = None) -> int:
    """An int (not a bool, not a float) inside [minimum, maximum]."""
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and value >= minimum
        and (maximum is None or value <= maximum)
    ):
        return value
    if maximum is None:
        phrase = f"a whole number of at least {minimum}"
    else:
        phrase = f"a whole number from {minimum} to {maximum}"
    raise InvalidInput(f"{field} must be {phrase}, got {shown(value)}.", field=field)


def _range_phrase(
    noun: str, minimum: float | None, maximum: float | None, exclusive: bool, unit: str
) -> str:
    of_unit = f" of {unit}" if unit else ""
    low = None if minimum is None else shown(minimum)
    high = None if maximum is None else shown(maximum)
    if low is not None and high is not None:
        if exclusive:
            return f"{noun}{of_unit} above {low} and at most {high}"
        return f"{noun}{of_unit} from {low} to {high}"
    if low is not None:
        return f"{noun}{of_unit} above {low}" if exclusive else f"{noun}{of_unit} of at least {low}"
    if high is not None:
        return f"{noun}{of_unit} of at most {high}"
    return f"a finite {noun.removeprefix('a ')}{of_unit}"


def boolean(value: object, field: str) -> bool:
    """A real bool: 1, 'yes' and None are refused here (the catalog parses text)."""
    if not isinstance(value, bool):
        raise InvalidInput(f"{field} must be true or false, got {shown(value)}.", field=field)
    return value


def _canonical(value: object, allowed: Collection[str]) -> str | None:
    """`value` if it is a code of `allowed`, else the code it spells the other way (British or
    American, in lower case: `hospitalization` -> `hospitalisation`); None otherwise."""
    if not isinstance(value, str):
        return None
    if value in allowed:
        return value
    return canonical_code(value, allowed) if value == value.lower() else None


def choice(value: object, field: str, allowed: Collection[str]) -> str:
    """One of the canonical codes in `allowed`, given in British or American spelling
    (codes.spelling_key): returned as the canonical code."""
    code = _canonical(value, allowed)
    if code is None:
        raise InvalidInput(
            f"{field} must be one of {', '.join(allowed)}, got {shown(value)}.", field=field
        )
    return code


def codes(values: Iterable[str], field: str, allowed: Collection[str], what: str) -> frozenset[str]:
    """A set of canonical codes; `what` names the code list in the message."""
    if isinstance(values, str):
        raise InvalidInput(
            f"{field} must be a collection of {what} codes, not the single string {values!r}.",
            field=field,
        )
    try:
        items = list(values)
    except TypeError as error:
        raise InvalidInput(
            f"{field} must be a collection of {what} codes, got {shown(values)}.", field=field
        ) from error
    found: set[str] = set()
    for value in items:
        code = _canonical(value, allowed)
        if code is None:
            raise InvalidInput(
                f"{field} contains {shown(value)}, which is not a {what} code.", field=field
            )
        found.add(code)
    return frozenset(found)


def calendar_date(value: object, field: str) -> date:
    """A `date` (a `datetime` is refused: study days are local calendar dates)."""
    if not isinstance(value, date) or isinstance(value, datetime):
        raise InvalidInput(
            f"{field} must be a calendar date (YYYY-MM-DD), got {shown(value)}.", field=field
        )
    return value


def exact(value: float) -> Decimal:
    """The decimal a person typed for `value` (0.9 -> Decimal('0.9'), not 0.90000000000000002).

    Boundaries such as "eGFR >= 90% of baseline" are compared in decimal so that a value exactly
    on the boundary is on it, whatever binary floating point would make of the product.
    """
    return Decimal(repr(float(value)))
