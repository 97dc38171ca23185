"""The trialflow side of `python -m bench.commands`: a study whose subjects are prepared
untimed, then the command mix sent through the one executor (`Desk.send`, i.e.
`Actors.send` → `Executor.execute`, each command proven by the user's session as the CLI's
are).

Preparation (untimed): a study made like the tests make theirs (`tests/support/study.py`),
marked as a demo study so that it accepts `CopySubjects`; the admin loads and amends to the
demo's variant of protocol version 2 with a cap large enough for every subject (version 102,
`projections.demo_story.protocol_variant`). One template subject is driven through the real
commands to its infusion (`through_infusion`) and copied `subjects` times (same dates, the
same cohort); another is consented and screened eligible (`screen_eligible`) and copied once
per eligibility confirmation the mix needs. The copies are made by the executor like the
demo's (`trialflow demo --subjects N`).

One round of the mix is five commands, each checked to have written its events:
  1. `record vitals` for infused subject r mod N (coordinator);
  2. `correct` of that vitals form (coordinator);
  3. `visit` done: the subject's next follow-up visit on its target day (coordinator);
  4. `record adverse_event`, grade 1 (coordinator);
  5. `confirm-eligibility` of a screened subject of its own (investigator).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Final

from events.streams import is_subject_id
from projections.demo_story import protocol_variant, variant_version
from tests.support.clock import FakeClock
from tests.support.study import (
    ADMIN,
    COORDINATOR,
    INVESTIGATOR,
    Desk,
    amend,
    new_study,
    on_day,
    screen_eligible,
    through_infusion,
)
from workflow.commands import messages as M
from workflow.commands.executor import Outcome

START: Final = date(2025, 1, 6)  # the infused template's consent; its D0 is 30 days later
D0: Final = START + timedelta(days=30)
TODAY: Final = D0 + timedelta(days=30)  # the site's day while the mix runs
SCREENED_ON: Final = TODAY - timedelta(days=3)  # consent of the screened template
# follow-up visits whose target day is on or before TODAY: (code, days after D0)
VISITS: Final = (("D1", 1), ("D4", 4), ("D7", 7), ("D10", 10), ("D14", 14), ("D21", 21),
                 ("D28", 28))
COPIES_PER_MESSAGE: Final = 40
KINDS: Final = ("record vitals", "correct", "visit", "record adverse_event",
                "confirm-eligibility")
INFUSED_TEMPLATE: Final = "T-INFUSED"
SCREENED_TEMPLATE: Final = "T-SCREENED"


def infused_ids(count: int) -> list[str]:
    return [f"B-{n:05d}" for n in range(1, count + 1)]


def screened_ids(count: int) -> list[str]:
    return [f"E-{n:05d}" for n in range(1, count + 1)]


@dataclass
class FlowMix:
    """The prepared study and the state the mix needs (the last vitals position per subject)."""

    desk: Desk
    subjects: list[str]
    screened: list[str]
    infused_events: int  # events in an infused subject's stream before the mix
    screened_events: int
    done: int = 0  # commands carried out
    visits_done: dict[str, int] = field(default_factory=dict)

    def round(self, r: int, enrol: bool = True) -> None:
        """Round `r` of the mix: five commands (four without `enrol`: no eligibility
        confirmation), each must write its events."""
        send = self.desk.send
        subject = self.subjects[r % len(self.subjects)]
        vitals = _written(send(COORDINATOR, M.RecordForm(
            subject, "vitals", (f"heart_rate={60 + r % 40}",), TODAY)))
        _written(send(COORDINATOR, M.CorrectRecord(
            subject, vitals, (f"heart_rate={101 + r % 40}",), "transcription error")))
        index = self.visits_done.get(subject, 0)
        code, days = VISITS[index]
        self.visits_done[subject] = index + 1
        _written(send(COORDINATOR, M.RecordVisit(subject, code, "done",
                                                 D0 + timedelta(days=days))))
        _written(send(COORDINATOR, M.RecordForm(subject, "adverse_event", (
            f"term=headache {r}", "category=other", f"onset_date={TODAY}", "grade=1"), TODAY)))
        if enrol:
            _written(send(INVESTIGATOR, M.ConfirmEligibility(self.screened[r])))
        self.done += 5 if enrol else 4

    def fresh_sessions(self) -> None:
        """Start the users' sessions before the clock starts (a login is not a command)."""
        for user in (COORDINATOR, INVESTIGATOR):
            self.desk.actors.credential(user)


def _written(outcome: Outcome) -> int:
    """The first position the command wrote; refuses a repeat or an empty result (a command
    that wrote nothing is not counted as carried out)."""
    assert not outcome.summary.get("repeated"), outcome.summary
    assert outcome.result.positions, outcome.summary
    return outcome.result.positions[0]


def _chunks(items: list[str], size: int) -> Iterator[tuple[int, list[str]]]:
    for start in range(0, len(items), size):
        yield start, items[start:start + size]


def prepare(url: str, subjects: int, rounds: int) -> FlowMix:
    """A study on `url` (an empty database) with `subjects` infused subjects and `rounds`
    screened ones (one eligibility confirmation per round), all through the executor."""
    if rounds > subjects * len(VISITS):
        raise ValueError(f"{rounds} rounds over {subjects} subjects need more than "
                         f"{len(VISITS)} visits per subject")
    clock = FakeClock(datetime(START.year, START.month, START.day, 4, tzinfo=UTC))
    desk = new_study(url, clock, purpose="demo")
    # Every enrolment in the first cohort: its places are the first half of the cap.
    cap = 2 * (subjects + rounds + 2)
    version = variant_version()
    desk.send(ADMIN, M.LoadProtocol(protocol_variant(cap), f"bench variant, cap {cap}"))
    amend(desk, version)  # previewed and reviewed, as an admin amends (docs/amendments.md)
    assert through_infusion(desk, INFUSED_TEMPLATE, START, clock) == D0
    study = desk.study()
    first = len(study.taken_places()) + 1
    cohort = study.protocol.cohort_for(1).code
    assert study.protocol.cohort_for(first + subjects + rounds).code == cohort
    infused = infused_ids(subjects)
    for start, chunk in _chunks(infused, COPIES_PER_MESSAGE):
        desk.send(ADMIN, M.CopySubjects(INFUSED_TEMPLATE, tuple(chunk), first + start, version,
                                        spread_days=1))
    screen_eligible(desk, SCREENED_TEMPLATE, SCREENED_ON, clock=clock)
    screened = screened_ids(rounds)
    for _start, chunk in _chunks(screened, COPIES_PER_MESSAGE):
        desk.send(ADMIN, M.CopySubjects(SCREENED_TEMPLATE, tuple(chunk), 1, version,
                                        spread_days=1))
    on_day(clock, TODAY)
    assert all(is_subject_id(s) for s in (*infused, *screened))
    mix = FlowMix(desk, infused, screened,
                  infused_events=len(desk.store.read_stream(infused[0])),
                  screened_events=len(desk.store.read_stream(screened[0])))
    mix.fresh_sessions()
    return mix
