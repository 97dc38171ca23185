"""What a decision works out once per context (`Context.memo`, issue 17) and the subject copy
every fold onto a kept state makes: the shortcuts must give what the long way gives."""

from __future__ import annotations

import copy as copying
import dataclasses
from datetime import date, timedelta

import pytest

from events.envelope import NewEvent
from tests.support.ledger import COORDINATOR, Ledger, a_study, through_infusion
from workflow import event_types as T
from workflow.commands import messages as M
from workflow.commands.decision import check_phase_order, preview
from workflow.errors import RuleViolation
from workflow.phase_order import history_problems
from workflow.subject import SubjectState, copy_subject, fold_subject

START = date(2025, 1, 6)


def _infused() -> tuple[Ledger, str]:
    ledger = a_study(now="2025-01-06T02:00:00+00:00")
    d0 = through_infusion(ledger, "S-001", START)
    ledger.at(d0 + timedelta(days=2))
    ledger.send(COORDINATOR, M.RecordForm("S-001", "vitals", ("heart_rate=71",), None))
    return ledger, "S-001"


def test_a_preview_is_made_once_per_context_and_events_and_equals_a_fresh_fold() -> None:
    ledger, subject = _infused()
    message = M.RecordForm(subject, "vitals", ("heart_rate=80",), None)
    context = ledger.context(COORDINATOR, message)
    vitals = NewEvent(T.FORM_RECORDED, {"form": "vitals", "values": {"heart_rate": 80},
                                        "on": context.today.isoformat(), "visit": None})
    other = NewEvent(T.FORM_RECORDED, {"form": "vitals", "values": {"heart_rate": 90},
                                       "on": context.today.isoformat(), "visit": None})
    first = preview(context, [vitals])
    assert preview(context, (vitals,)) is first  # the same events: the kept preview
    second = preview(context, [other])
    assert second is not first and second.forms != first.forms
    # each equals the fold of a context made afresh (nothing of one leaks into another)
    fresh = ledger.context(COORDINATOR, message)
    assert fresh.memo == {} and preview(fresh, [vitals]) == first
    assert preview(fresh, [other]) == second
    # a context copied with another subject state starts with a memo of its own
    copied = dataclasses.replace(context, subject=fresh.subject)
    assert copied.memo == {} and preview(copied, [vitals]) is not first


def test_the_phase_order_check_refuses_a_new_problem_only_and_keeps_each_states_problems(
) -> None:
    ledger, subject = _infused()
    message = M.RecordForm(subject, "vitals", ("heart_rate=80",), None)
    context = ledger.context(COORDINATOR, message)
    state = context.require_subject()
    assert state.consent is not None
    before_consent = (state.consent.consent_date - timedelta(days=1)).isoformat()
    early = NewEvent(T.FORM_RECORDED, {"form": "vitals", "values": {"heart_rate": 80},
                                       "on": before_consent, "visit": None})
    after = preview(context, [early])
    assert history_problems(after, context.today) != history_problems(state, context.today)
    with pytest.raises(RuleViolation) as refused:
        check_phase_order(context, after, "on")
    assert refused.value.rule == "phase_order" and "before the consent" in str(refused.value)
    # both states' problems were kept, each with its state (ids stay theirs while kept)
    kept = [value for key, value in context.memo.items() if key[0] == "history"]
    assert {id(value[0]) for value in kept} == {id(state), id(after)}
    assert all(value[1] == history_problems(value[0], context.today) for value in kept)
    fine = NewEvent(T.FORM_RECORDED, {"form": "vitals", "values": {"heart_rate": 81},
                                      "on": context.today.isoformat(), "visit": None})
    check_phase_order(context, preview(context, [fine]), "on")  # no new problem: passes


def test_a_subject_copy_equals_the_state_and_shares_none_of_its_collections() -> None:
    ledger, subject = _infused()
    state = fold_subject(subject, ledger.stream(subject))
    before = copying.deepcopy(state)
    twin = copy_subject(state)
    assert twin == state and type(twin) is SubjectState
    collections = [f.name for f in dataclasses.fields(SubjectState)
                   if isinstance(getattr(state, f.name), dict | list)]
    # every collection field of a state through infusion is filled, so each is tested
    assert {"forms", "doses", "lymphodepletion_days", "collections", "releases",
            "forms_at_confirmation", "protocol_versions"} <= set(collections)
    for name in collections:
        assert getattr(twin, name) is not getattr(state, name), name
    for name in collections:  # changing the copy's collections leaves the state as it was
        getattr(twin, name).clear()
    assert state == before and state.forms and len(state.doses) == 3
