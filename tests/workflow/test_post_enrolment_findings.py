"""Eligibility as of its confirmation (issue 15): judged on the data dated on or before the
confirmation date; a later finding (an exclusion answered yes, a positive pregnancy test,
contraception not agreed) never flips an enrolled subject to `ineligible` but is listed as a
post-enrolment finding, in the read model, `trialflow eligibility` and its JSON. The guard of
confirm-eligibility ignores forms dated after the date it judges. On SQLite and PostgreSQL,
through the one executor."""

from __future__ import annotations

import io
import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from cli.app import run
from projections.queries import Clock, eligibility_of
from projections.reports.html import monitoring_data, render_html
from projections.views import open_view
from tests.support.clock import FakeClock
from tests.support.study import (
    COORDINATOR,
    EXCLUSIONS_NO,
    INVESTIGATOR,
    Desk,
    enrol,
    new_study,
    on_day,
    screen_eligible,
    through_infusion,
)
from workflow.commands import messages as M
from workflow.eligibility import eligibility_day, evaluate_eligibility_on
from workflow.errors import RuleViolation

CONSENT = date(2025, 3, 3)
CONFIRMED = CONSENT + timedelta(days=3)  # enrol() confirms three days after consent


@pytest.fixture
def desk(db_url: str) -> tuple[Desk, FakeClock]:
    clock = FakeClock(datetime(2025, 3, 3, 4, tzinfo=UTC))
    return new_study(db_url, clock), clock


def checklist(*yes: str) -> tuple[str, ...]:
    return tuple(token.replace("=no", "=yes") if token.split("=")[0] in yes else token
                 for token in EXCLUSIONS_NO)


def screen(flow: Desk, clock: FakeClock) -> Any:
    """The eligibility document as `trialflow eligibility` gives it (read model or fold)."""
    models = open_view(flow.store.engine, flow.store)
    return eligibility_of(models, Clock(models, clock()), "S-001", flow.subject)


def cli(db_url: str, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    status = run(["--db", db_url, *argv], stdout=out, stderr=io.StringIO(), environ={})
    return status, out.getvalue()


def test_an_exclusion_found_in_follow_up_is_listed_never_judged(
        desk: tuple[Desk, FakeClock], db_url: str) -> None:
    """The issue's case: an exclusion checklist recorded during follow-up no longer turns an
    infused subject ineligible."""
    flow, clock = desk
    d0 = through_infusion(flow, "S-001", CONSENT, clock)
    found_on = d0 + timedelta(days=14)
    on_day(clock, found_on)
    outcome = flow.send(COORDINATOR, M.RecordForm("S-001", "exclusion_checklist",
                                                  checklist("active_infection")))
    position = outcome.result.positions[0]
    state = flow.subject("S-001")
    assert eligibility_day(flow.study(), state, found_on) == CONFIRMED
    result = evaluate_eligibility_on(flow.study(), state, CONFIRMED)
    assert (result.overall, result.evaluated_on, result.confirmed_on) == (
        "eligible", CONFIRMED, CONFIRMED)
    expected = [{"form": "exclusion_checklist", "position": position,
                 "field": "active_infection", "value": True, "on": found_on.isoformat(),
                 "criterion": "active_infection"}]
    document = screen(flow, clock)
    assert document["source"] == "read model"  # the table holds the evaluation as of D
    assert document["overall"] == "eligible"
    assert document["confirmed_on"] == CONFIRMED.isoformat()
    assert all(item["answer"] == "no" for item in document["exclusions"])  # screening's
    assert document["post_enrolment_findings"] == expected
    for key in ("criteria", "exclusions", "screening_window_ends", "days_left"):
        assert key in document  # the keys scripts rely on stay
    now = f"{found_on.isoformat()}T04:00:00Z"
    status, out = cli(db_url, "--json", "eligibility", "S-001", "--now", now)
    assert status == 0 and json.loads(out)["post_enrolment_findings"] == expected
    status, text = cli(db_url, "eligibility", "S-001", "--now", now)
    assert status == 0
    assert text.startswith("Subject S-001: eligible (as of its confirmation on 2025-03-06)\n")
    assert "post-enrolment findings (dated after the confirmation on 2025-03-06; listed, not " \
           "judged): 1" in text
    line = next(row for row in text.splitlines() if row.startswith(found_on.isoformat()))
    assert line.split() == [found_on.isoformat(), str(position), "exclusion_checklist",
                            "active_infection", "yes", "active_infection"]
    models = open_view(flow.store.engine, flow.store)  # the monitoring page lists it too
    page = monitoring_data(models, Clock(models, clock()), now=now, as_of=None)
    assert page.findings == [{"subject": "S-001", **expected[0]}]
    html = render_html(page, {})
    section = html[html.index('<section id="post-enrolment-findings">'):]
    section = section[:section.index("</section>")]
    assert "active_infection" in section and "exclusion_checklist" in section


def test_a_positive_pregnancy_test_and_withdrawn_contraception_are_findings(
        desk: tuple[Desk, FakeClock]) -> None:
    flow, clock = desk
    d0 = through_infusion(flow, "S-001", CONSENT, clock)
    on_day(clock, d0 + timedelta(days=60))
    flow.send(COORDINATOR, M.RecordForm("S-001", "pregnancy_test",
                                        ("specimen=urine", "result=negative")))
    test = flow.send(COORDINATOR, M.RecordForm("S-001", "pregnancy_test",
                                               ("specimen=serum", "result=positive")))
    agreed = flow.send(COORDINATOR, M.RecordForm("S-001", "contraception", ("agreed=no",)))
    document = screen(flow, clock)
    assert document["overall"] == "eligible"
    day = (d0 + timedelta(days=60)).isoformat()
    assert document["post_enrolment_findings"] == [
        {"form": "pregnancy_test", "position": test.result.positions[0], "field": "result",
         "value": "positive", "on": day, "criterion": "pregnancy_contraception_female"},
        {"form": "contraception", "position": agreed.result.positions[0], "field": "agreed",
         "value": False, "on": day, "criterion": "pregnancy_contraception_female"},
    ]
    female = next(c for c in document["criteria"]
                  if c["code"] == "pregnancy_contraception_female")
    assert female["status"] == "met"  # judged on the screening test and agreement


def test_the_guard_judges_as_of_the_confirmation_date(desk: tuple[Desk, FakeClock]) -> None:
    """An exclusion answered yes on day 10 blocks a confirmation dated day 10, not one dated
    day 5 (entered later, retrospectively), after which it is a post-enrolment finding."""
    flow, clock = desk
    screen_eligible(flow, "S-001", CONSENT, clock=clock)
    later = CONSENT + timedelta(days=10)
    on_day(clock, later)
    flow.send(COORDINATOR, M.RecordForm("S-001", "exclusion_checklist",
                                        checklist("live_vaccine_4w")))
    before = flow.store.last_position()
    with pytest.raises(RuleViolation) as caught:
        flow.send(INVESTIGATOR, M.ConfirmEligibility("S-001"))
    assert caught.value.rule == "eligibility:live_vaccine_4w"
    assert "Subject S-001 is not eligible" in str(caught.value)
    assert "live_vaccine_4w is answered yes" in str(caught.value)
    assert flow.store.last_position() == before  # nothing written
    confirmed = CONSENT + timedelta(days=5)
    flow.send(INVESTIGATOR, M.ConfirmEligibility("S-001", confirmed))
    document = screen(flow, clock)
    assert document["overall"] == "eligible"
    assert document["confirmed_on"] == confirmed.isoformat()
    assert [(f["field"], f["on"]) for f in document["post_enrolment_findings"]] == [
        ("live_vaccine_4w", later.isoformat())]


def test_a_later_all_clear_does_not_make_an_earlier_date_eligible(
        desk: tuple[Desk, FakeClock]) -> None:
    flow, clock = desk
    screen_eligible(flow, "S-001", CONSENT, clock=clock)
    on_day(clock, CONSENT + timedelta(days=1))  # a fever: the checklist answered again
    flow.send(COORDINATOR, M.RecordForm("S-001", "exclusion_checklist",
                                        checklist("active_infection")))
    cleared = CONSENT + timedelta(days=12)
    on_day(clock, cleared)  # the infection treated and the checklist answered again
    flow.send(COORDINATOR, M.RecordForm("S-001", "exclusion_checklist", checklist()))
    before = flow.store.last_position()
    with pytest.raises(RuleViolation) as caught:
        flow.send(INVESTIGATOR, M.ConfirmEligibility("S-001", CONSENT + timedelta(days=6)))
    assert caught.value.rule == "eligibility:active_infection"
    assert "active_infection is answered yes" in str(caught.value)
    assert flow.store.last_position() == before
    flow.send(INVESTIGATOR, M.ConfirmEligibility("S-001", cleared))
    assert flow.subject("S-001").eligibility_confirmed_on == cleared
    assert screen(flow, clock)["post_enrolment_findings"] == []


def test_screening_data_entered_after_the_confirmation_is_a_finding_not_a_flip(
        desk: tuple[Desk, FakeClock]) -> None:
    """A checklist dated in screening but entered after the confirmation was not what the
    investigator judged: eligibility as of the confirmation stands on the data as it stood
    then, and the yes is listed as a post-enrolment finding for the investigator and the
    monitor; a weight corrected after enrolment likewise."""
    flow, clock = desk
    enrol(flow, "S-001", CONSENT, clock)
    on_day(clock, CONSENT + timedelta(days=9))
    flow.send(COORDINATOR, M.RecordForm("S-001", "exclusion_checklist",
                                        checklist("other_trial_3m"), CONFIRMED))
    document = screen(flow, clock)
    assert document["overall"] == "eligible"
    assert [(f["criterion"], f["field"], f["value"], f["on"])
            for f in document["post_enrolment_findings"]] == [
        ("other_trial_3m", "other_trial_3m", True, CONFIRMED.isoformat())]
    vitals = flow.subject("S-001").forms_of("vitals")[0].position
    flow.send(COORDINATOR, M.CorrectRecord("S-001", vitals, ("weight_kg=35",), "scale"))
    document = screen(flow, clock)
    assert document["overall"] == "eligible"
    assert ("weight", vitals, 35) in [(f["criterion"], f["position"], f["value"])
                                      for f in document["post_enrolment_findings"]]
