"""CSV cells a spreadsheet cannot run: the one rule of every CSV trialflow writes.

A spreadsheet opening a CSV reads a cell that starts with `=`, `+`, `-` or `@` as a formula,
and some read one that starts with a tab or a carriage return the same way once they drop it
(OWASP, "CSV Injection"): a drug name `=HYPERLINK("http://…")` or `=cmd|' /C calc'!A0` typed
into a form would run on the data manager's computer. Every **text** cell that starts with one
of those characters is written with a single quote `'` in front, as OWASP recommends; the
spreadsheet shows the text instead of evaluating it.

A text cell that starts with `'` itself gets one more in front too, so the rule can be undone
exactly: a cell that starts with `'` had one added; drop it (`restore`). That keeps
`events.csv` lossless, its hashes recomputable from the file.

Numbers stay as they are: a cell written from a Python `int` or `float` (a log position, a
decimal field such as `-1.5`) is a number, and a spreadsheet must read it as one. Only values
the program itself typed as numbers are exempt; text that looks like a number (`-2+3`, or
`-1.5` typed into a text field) is text and is neutralised. `bool` is no number here.

Standard library only, like every exporter (projections/exports/__init__.py).
"""

from __future__ import annotations

from typing import Any, Final

# Characters that make a spreadsheet read a cell as a formula (OWASP): =, +, -, @, tab, CR.
FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r")
QUOTE: Final = "'"


def neutralise(text: str) -> str:
    """`text` as a CSV cell no spreadsheet evaluates: `'` in front of a text that starts with
    a formula character (or with `'`, so that `restore` is exact); any other text unchanged."""
    if text.startswith(FORMULA_STARTS) or text.startswith(QUOTE):
        return QUOTE + text
    return text


def restore(cell: str) -> str:
    """The text `neutralise` was given for `cell` (a text cell read back from a CSV)."""
    return cell[len(QUOTE):] if cell.startswith(QUOTE) else cell


def is_number(value: Any) -> bool:
    """Whether `value` is a number the program typed (int or float, not bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def cell(value: Any, text: str | None = None) -> str:
    """The CSV cell of `value`, written as `text` (default: `str(value)`, empty for None):
    a number as it is written, anything else neutralised."""
    if text is None:
        text = "" if value is None else str(value)
    return text if is_number(value) else neutralise(text)
