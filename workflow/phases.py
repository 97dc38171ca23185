"""The study phases a subject moves through, as names (no state machine: the worklists and
the read models need the names, the machine in `workflow/machine.py` the transitions)."""

from __future__ import annotations

from typing import Final

STATES: Final = (
    "screening", "cell_collection", "lymphodepletion", "infusion", "follow_up", "completed",
    "screen_failed", "off_study",
)
TERMINAL: Final = frozenset({"completed", "screen_failed", "off_study"})
ACTIVE: Final = tuple(s for s in STATES if s not in TERMINAL)
