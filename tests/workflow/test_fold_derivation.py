"""What the fold derives from each procedure event (`workflow.subject._apply`: a visit sets
its own entry, a dose appends its day, ...) equals `derive_procedures` over every procedure as
it stands, after every event of a subject's stream: visits recorded, voided, corrected and
recorded again; doses and the release corrected (issue 17). Through the one executor, on a
real SQLite file."""

from __future__ import annotations

from datetime import date, timedelta

from tests.projections.support import lifecycle
from tests.support.clock import FakeClock
from tests.support.study import COORDINATOR, new_study, on_day
from tests.workflow.test_mending_properties import assert_derived_as_a_whole
from workflow import event_types as T
from workflow.commands import messages as M

START = date(2025, 3, 3)


def test_each_procedure_event_derives_what_the_whole_derivation_does(sqlite_url: str) -> None:
    clock = FakeClock("2025-03-03T04:00:00+00:00")
    flow = new_study(sqlite_url, clock)
    for step in lifecycle(flow, clock, "S-001", START, [0, 1, -1]):
        step()
    d0 = START + timedelta(days=30)
    on_day(clock, d0 + timedelta(days=40))
    events = flow.store.read_stream("S-001")
    visits = [e for e in events if e.type == T.VISIT_RECORDED]
    doses = [e for e in events if e.type == T.LYMPHODEPLETION_GIVEN]
    release = next(e for e in events if e.type == T.PRODUCT_RELEASED)
    assert len(visits) == 5 and len(doses) == 3
    c = COORDINATOR
    form = next(e for e in events if e.type == T.FORM_RECORDED and e.payload.get("visit") == "D4")
    flow.send(c, M.VoidRecord("S-001", form.position, "entered for the wrong subject"))
    flow.send(c, M.VoidRecord("S-001", visits[1].position, "entered for the wrong subject"))
    flow.send(c, M.CorrectRecord("S-001", visits[2].position,
                                 (f"visit_date={d0 + timedelta(days=8)}",), "source date"))
    flow.send(c, M.RecordVisit("S-001", "D4", "done", d0 + timedelta(days=4)))
    flow.send(c, M.CorrectRecord("S-001", doses[0].position,
                                 (f"given_on={d0 - timedelta(days=6)}",), "source date"))
    flow.send(c, M.CorrectRecord("S-001", release.position,
                                 (f"released_on={START + timedelta(days=21)}",), "source date"))
    state = flow.subject("S-001")
    assert "D4" in state.visits and state.visits["D7"][1] == d0 + timedelta(days=8)
    assert state.lymphodepletion_days[0] == d0 - timedelta(days=6)
    assert_derived_as_a_whole(flow, "S-001")
