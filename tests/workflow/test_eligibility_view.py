"""The eligibility screen and the confirm-eligibility guard agree; --as-of shows the past."""

from __future__ import annotations

import io
import json
from datetime import date, datetime

from cli.app import run
from projections.queries import Clock, eligibility_of
from projections.views import open_view
from tests.support.clock import FakeClock
from tests.support.study import INVESTIGATOR, new_study, on_day, screen_eligible
from workflow.commands import messages as M

START = date(2024, 9, 2)


def test_screen_and_guard_agree(db_url: str) -> None:
    clock = FakeClock("2024-09-02T04:00:00+00:00")
    flow = new_study(db_url, clock)
    screen_eligible(flow, "S-001", START, clock=clock)
    models = open_view(flow.store.engine, flow.store)
    # the events were recorded (real clock) after the window closed on 2024-09-30, so the
    # table holds the evaluation for that last day; asked for that day, it answers
    last_day = datetime.fromisoformat("2024-09-30T04:00:00+00:00")
    same_day = eligibility_of(models, Clock(models, last_day), "S-001", flow.subject)
    assert same_day["source"] == "read model"
    on_day(clock, date(2024, 9, 4))
    view = eligibility_of(models, Clock(models, clock()), "S-001", flow.subject)
    assert view["source"] == "evaluated at query time"  # two days later: evaluated anew
    assert {k: v for k, v in same_day.items() if k not in ("source", "evaluated_for",
            "days_left")} == {k: v for k, v in view.items() if k not in (
            "source", "evaluated_for", "days_left")}
    assert view["overall"] == "eligible"
    assert view["criteria"][0]["code"] == "eular_acr_2019"
    assert all(c["status"] in ("met", "not_applicable") for c in view["criteria"])
    assert view["days_left"] == 26
    weight = next(c for c in view["criteria"] if c["code"] == "weight")
    assert weight["evidence"] and weight["evidence"][0]["field"] == "weight_kg"
    consent_position = flow.store.read_stream("S-001")[0].position
    out = io.StringIO()
    status = run(["--db", db_url, "--json", "eligibility", "S-001", "--as-of",
                  f"@{consent_position}", "--now", "2024-09-04T04:00:00Z"], stdout=out,
                 stderr=io.StringIO(), environ={})
    past = json.loads(out.getvalue())
    assert status == 0 and past["overall"] == "pending"  # only the consent was recorded then
    flow.send(INVESTIGATOR, M.ConfirmEligibility("S-001"))
    assert flow.subject("S-001").phase == "cell_collection"
