"""The one rule for a clinical date-time typed by a user (docs/cli.md, "Dates and times").

A clinical date-time (`infuse --at`, a form's date-time field such as `awareness_at`,
`sponsor_aware_at`, `sent_at`, a corrected `infused_at`) is ISO 8601 with a time of day:

- with an offset (`Z`, `+08:00`, `+0800`, `+08`) it is that instant, kept as typed;
- without an offset it is the local time at the subject's site (the site's zone,
  `Study.zone(site)`), daylight saving included;
- a bare date where a date-time is expected is refused: no time of day is made up.

`parse_datetime` reads the text where the site is not known yet (the command line, a form
parsed before its subject is loaded) and keeps a time without offset naive; `site_time` gives
it the site's offset once the decision knows the site. The system's own clock options (`--now`,
`--as-of`) are not clinical times: they name a moment of the log, UTC when no offset is given.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, tzinfo
from typing import Final

EXAMPLE: Final = "2025-03-01T09:30+08:00"
_DATE_ONLY: Final = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
_DATETIME: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?"
    r"(?P<offset>Z|[+-]\d{2}(?::?\d{2})?)?",
    re.ASCII,
)


class NotADateTime(ValueError):
    """The text is no clinical date-time; the message is one sentence saying what is wanted."""


def parse_datetime(text: str) -> datetime:
    """An ISO 8601 date and time: aware when the text has an offset, naive (local time at the
    subject's site, see `site_time`) when it has none. A bare date or anything else is
    refused with `NotADateTime`."""
    value = text.strip()
    if _DATE_ONLY.fullmatch(value):
        raise NotADateTime(
            f"{_shown(text)} is a date without a time: give a date and time, e.g. {EXAMPLE} "
            "(without an offset, the local time at the subject's site)")
    moment = None
    if _DATETIME.fullmatch(value):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            moment = None
    if moment is None:
        raise NotADateTime(
            f"{_shown(text)} is not an ISO 8601 date and time, e.g. {EXAMPLE} (without an "
            "offset, the local time at the subject's site)")
    return moment


def site_time(moment: datetime, zone: tzinfo) -> datetime:
    """The instant `moment` names: itself when it has an offset, else its wall-clock time at
    the site whose zone is `zone` (an ambiguous time in a daylight-saving fold is the first
    of the two; one in a spring-forward gap is moved forward by the gap)."""
    if moment.utcoffset() is not None:
        return moment
    return moment.replace(tzinfo=zone).astimezone(UTC).astimezone(zone)


def site_time_text(value: str, zone: tzinfo) -> str:
    """`site_time` of a stored ISO text: a naive text gets the site's offset, an aware text
    is returned unchanged."""
    moment = datetime.fromisoformat(value)
    if moment.utcoffset() is not None:
        return value
    return site_time(moment, zone).isoformat()


def _shown(text: str) -> str:
    return repr(text[:40])


def local_date(moment: str, zone: tzinfo) -> date:
    """The site's calendar date of a recorded ISO 8601 time (no offset meaning UTC)."""
    parsed = datetime.fromisoformat(moment.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(zone).date()
