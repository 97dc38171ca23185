"""What the whole-subject checks of a command cost (issue 15): 300 `record vitals` commands
through the one executor for one subject on a SQLite file, the stream growing to 315 events.

Run from the repository: `PYTHONPATH=. .venv/bin/python -m bench.command_checks`
(compare with a worktree of an older commit to see what a change costs).
"""

from __future__ import annotations

import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from cli.logging_setup import configure
from tests.support.clock import FakeClock
from tests.support.study import COORDINATOR, new_study, on_day, screen_eligible
from workflow.commands import messages as M


def main(n: int = 300) -> None:
    configure("warning", sys.stderr)
    directory = tempfile.mkdtemp()
    clock = FakeClock(datetime(2025, 3, 3, 4, tzinfo=UTC))
    flow = new_study(f"sqlite:///{Path(directory) / 't.db'}", clock)
    screen_eligible(flow, "S-001", date(2025, 3, 3), clock=clock)
    on_day(clock, date(2025, 3, 20))
    start = time.perf_counter()
    for i in range(n):
        flow.send(COORDINATOR, M.RecordForm("S-001", "vitals", (f"heart_rate={60 + i % 40}",),
                                            date(2025, 3, 3) + timedelta(days=i % 15)))
    elapsed = time.perf_counter() - start
    print(f"{n / elapsed:.0f} commands/s, {1000 * elapsed / n:.2f} ms each (stream grows to "
          f"{n + 15} events)")


if __name__ == "__main__":
    main()
