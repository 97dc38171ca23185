"""A clock tests move by hand (no test sleeps to wait for time to pass)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


class FakeClock:
    def __init__(self, start: datetime | str = "2025-01-01T00:00:00+00:00") -> None:
        self.now = datetime.fromisoformat(start) if isinstance(start, str) else start
        if self.now.tzinfo is None:
            self.now = self.now.replace(tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now

    def set(self, moment: datetime | str) -> None:
        self.now = datetime.fromisoformat(moment) if isinstance(moment, str) else moment
