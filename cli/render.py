"""Hand results to the user: one JSON document with --json, readable text otherwise.

Human text never shows a Python representation: every value goes through `human` (None as
"-", booleans yes/no, lists comma-joined, mappings as `key value, ...`, floats rounded to at
most 2 decimals). Tables fit the terminal: `COLUMNS` when set, else the terminal's width when
stdout is a terminal, else (piped) their natural width; cells wrap at spaces (or after `..`,
`,`, `;`, `/`), never mid-word; a table whose words cannot fit side by side is shown as one
block of `header  value` lines per row instead (a word is cut only when it alone is wider than
the terminal). Colour (bold
table headers) is used on a terminal, never when piped or when `NO_COLOR` is set (any value);
`TRIALFLOW_COLOR=1` forces it, `=0` turns it off."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Final

from cli.context import Env

BOLD = "\x1b[1m"
RESET = "\x1b[0m"
RED, YELLOW, GREEN = "\x1b[31m", "\x1b[33m", "\x1b[32m"
# A cell whose whole text is one of these words is coloured (with colour on): what needs acting
# on now red, what is due or no longer holds yellow, what is done and holds green.
STATE_COLOURS: Final = {
    **dict.fromkeys(("overdue", "missed", "broken", "failed", "refused", "ineligible",
                     "not met", "deviation", "off_study"), RED),
    **dict.fromkeys(("due", "out of window", "out_of_window", "pending", "earlier_version",
                     "answered"), YELLOW),
    **dict.fromkeys(("valid", "met", "eligible", "completed", "done", "verified", "closed",
                     "passed"), GREEN),
}


@dataclass(frozen=True)
class Style:
    width: int | None = None  # the room for a table line; None: natural width
    colour: bool = False


_STYLE: ContextVar[Style | None] = ContextVar("trialflow_style", default=None)


def configure(env: Env) -> None:
    """Read the width and colour for human output from the environment and stdout."""
    _STYLE.set(style_for(env))


def style_for(env: Env) -> Style:
    environ = env.environ
    terminal = env.stdout_is_terminal
    width: int | None = None
    raw = environ.get("COLUMNS", "").strip()
    if raw.isdigit() and int(raw) > 0:
        width = int(raw)
    elif terminal:
        width = shutil.get_terminal_size().columns
    forced = environ.get("TRIALFLOW_COLOR", "").strip()
    if "NO_COLOR" in environ or env.json:
        colour = False
    elif forced in ("0", "1"):
        colour = forced == "1"
    else:
        colour = terminal
    return Style(width, colour)


def current_style() -> Style:
    """The style `configure` set; natural width without colour when none was set."""
    return _STYLE.get() or Style()


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False, default=str)


def emit(env: Env, data: Any, text: str | Callable[[], str]) -> None:
    """Print `data` as JSON with --json, else the text (built only when needed)."""
    if env.json:
        env.stdout.write(to_json(data) + "\n")
    else:
        body = text() if callable(text) else text
        env.stdout.write(body if body.endswith("\n") else body + "\n")


def number(value: float | int | Decimal, places: int = 2) -> str:
    """A number as `calc` shows it: rounded half up to `places` decimals, no trailing zeros."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    exact = value if isinstance(value, Decimal) else Decimal(repr(float(value)))
    if not exact.is_finite():
        return str(value)
    from decimal import ROUND_HALF_UP

    rounded = exact.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    text = format(rounded, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def human(value: Any) -> str:
    """One value for human eyes, never a Python representation."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float | Decimal):
        return number(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {human(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return ", ".join(human(v) for v in items) or "-"
    return str(value)


def prose(text: str, indent: str = "") -> str:
    """A paragraph wrapped at spaces to the width of `current_style()` (as is without one);
    lines after the first are indented by `indent`."""
    width = current_style().width
    if width is None or len(text) <= width:
        return text
    import textwrap

    return "\n".join(textwrap.wrap(text, width, subsequent_indent=indent,
                                    break_long_words=False, break_on_hyphens=False))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An aligned text table fitted to the width of `current_style()` (bold headers with
    colour; plain otherwise, so it pipes and diffs cleanly)."""
    style = current_style()
    cells = [[_cell(v) for v in row] for row in rows]
    natural = [len(h) for h in headers]
    for row in cells:
        for i, value in enumerate(row):
            natural[i] = max(natural[i], len(value))
    if style.width is not None and _too_narrow(headers, cells, natural, style.width):
        return _records(headers, cells, style)
    widths = _fit(headers, cells, natural, style.width)

    def lines(values: Sequence[str], painted: bool = False) -> list[str]:
        wrapped = [_wrap(v, w) for v, w in zip(values, widths, strict=True)]
        height = max((len(w) for w in wrapped), default=1)
        paint = [STATE_COLOURS.get(v) if painted else None for v in values]
        return ["  ".join(_painted((w[k] if k < len(w) else "").ljust(width), colour)
                          for w, width, colour in zip(wrapped, widths, paint, strict=True)
                          ).rstrip()
                for k in range(height)]

    head = lines(list(headers))
    if style.colour:
        head = [f"{BOLD}{line}{RESET}" for line in head]
    out = [*head, "  ".join("-" * w for w in widths)]
    for row in cells:
        out.extend(lines(row, style.colour))
    return "\n".join(out)


def _painted(text: str, colour: str | None) -> str:
    """`text` (already padded to its column) in `colour`, the padding left plain."""
    if colour is None or not text.strip():
        return text
    word = text.rstrip()
    return f"{colour}{word}{RESET}{text[len(word):]}"


_BREAK = re.compile(r"(?<=\s)|(?<=\.\.)|(?<=,)|(?<=;)|(?<=/)")


def _pieces(text: str) -> list[str]:
    """The text cut where a line may break (after a space, `..`, `,`, `;` or `/`)."""
    return [p for p in _BREAK.split(text) if p]


def _longest_piece(text: str) -> int:
    return max((len(p.rstrip()) for p in _pieces(text)), default=0)


def _least(headers: Sequence[str], cells: list[list[str]]) -> list[int]:
    """Each column's narrowest width that breaks no word."""
    return [max(_longest_piece(h), *(_longest_piece(r[i]) for r in cells), 1)
            for i, h in enumerate(headers)]


def _too_narrow(headers: Sequence[str], cells: list[list[str]], natural: list[int],
                width: int) -> bool:
    room = width - 2 * (len(natural) - 1)
    return sum(natural) > room and sum(_least(headers, cells)) > room


def _records(headers: Sequence[str], cells: list[list[str]], style: Style) -> str:
    """Rows too wide for the terminal as blocks of `header  value` lines (values wrapped),
    one block per row, separated by a rule: no word is cut."""
    assert style.width is not None
    key = max((len(h) for h in headers), default=0)
    room = max(style.width - key - 2, 10)
    blocks = []
    for row in cells:
        lines = []
        for header, value in zip(headers, row, strict=True):
            label = header.ljust(key)
            if style.colour:
                label = f"{BOLD}{label}{RESET}"
            colour = STATE_COLOURS.get(value) if style.colour else None
            for k, part in enumerate(_wrap(value, room)):
                lines.append(f"{label if k == 0 else ' ' * key}  {_painted(part, colour)}"
                             .rstrip())
        blocks.append("\n".join(lines))
    rule = "-" * min(style.width, key + 2 + room)
    return "\n".join(f"{rule}\n{block}" for block in blocks) if blocks else rule


def _fit(headers: Sequence[str], cells: list[list[str]], natural: list[int],
         width: int | None) -> list[int]:
    if width is None or not natural:
        return natural
    room = max(width - 2 * (len(natural) - 1), len(natural))
    if sum(natural) <= room:
        return natural
    least = _least(headers, cells)
    widths = [min(m, n) for m, n in zip(least, natural, strict=True)]
    extra = room - sum(widths)
    while extra > 0:
        wanting = [i for i, w in enumerate(widths) if w < natural[i]]
        if not wanting:
            break
        share = max(1, extra // len(wanting))
        for i in wanting:
            give = min(share, natural[i] - widths[i], extra)
            widths[i] += give
            extra -= give
            if extra == 0:
                break
    while sum(widths) > room and max(widths) > 4:  # a word alone wider than the room
        widest = widths.index(max(widths))
        widths[widest] -= 1
    return widths


def _wrap(text: str, width: int) -> list[str]:
    if len(text) <= width:
        return [text]
    lines: list[str] = []
    current = ""
    for piece in _pieces(text):
        if len((current + piece).rstrip()) <= width:
            current += piece
            continue
        if current.strip():
            lines.append(current.rstrip())
        current = piece.lstrip() if lines else piece
        while len(current.rstrip()) > width:  # one word wider than the column
            lines.append(current[:width])
            current = current[width:]
    if current.strip():
        lines.append(current.rstrip())
    return lines or [""]


def _cell(value: Any) -> str:
    return human(value)
