"""A signature signs one version of a record (docs/identity.md "Electronic signatures"): it is
`earlier_version` as soon as any later event corrects, voids or supersedes that record — the
original entry or any correction of it — and names the event that replaced the signed version
(workflow/signing.py, the one rule; no database: tests/support/ledger.py)."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, timedelta
from typing import Any

import pytest

from events.envelope import NewEvent
from tests.support.ledger import (
    COORDINATOR,
    INVESTIGATOR,
    MONITOR,
    Ledger,
    a_study,
    screen_eligible,
    through_infusion,
)
from workflow import event_types as T
from workflow.commands import messages as M
from workflow.signing import SUPERSEDING, record_of, signatures, superseded_by

START = date(2024, 9, 2)


@pytest.fixture
def ledger() -> Ledger:
    ledger = a_study()
    screen_eligible(ledger, "S-001", START)
    screen_eligible(ledger, "S-002", START)
    return ledger


def form_at(ledger: Ledger, subject: str, form: str) -> int:
    return ledger.subject(subject).forms_of(form)[0].position


def correct(ledger: Ledger, subject: str, position: int, *fields: str) -> int:
    (event,) = ledger.send(COORDINATOR, M.CorrectRecord(subject, position, fields, "typo"))
    assert event.type == T.FORM_CORRECTED
    return event.position


def sign(ledger: Ledger, subject: str, position: int) -> int:
    (event,) = ledger.send(INVESTIGATOR, M.Sign(subject, position, "approved"))
    return event.position


def row(ledger: Ledger, signature: int, subject: str = "S-001") -> dict[str, Any]:
    return next(r for r in signatures(ledger.stream(subject)) if r["position"] == signature)


def assert_valid(found: dict[str, Any]) -> None:
    assert (found["state"], found["superseded_by"], found["corrected_after_signing_by"]) == (
        "valid", None, [])
    assert "applies to the version before" not in found["manifestation"]


def assert_stale(found: dict[str, Any], newer: int, *later: int) -> None:
    assert found["state"] == "earlier_version"
    assert found["superseded_by"] == newer
    assert found["corrected_after_signing_by"] == [newer, *later]
    assert found["manifestation"].endswith(
        f"applies to the version before the correction at position {newer}")


def test_a_signed_original_is_stale_once_corrected(ledger: Ledger) -> None:
    vitals = form_at(ledger, "S-001", "vitals")
    signature = sign(ledger, "S-001", vitals)
    assert_valid(row(ledger, signature))
    correction = correct(ledger, "S-001", vitals, "weight_kg=58.5")
    assert_stale(row(ledger, signature), correction)


def test_a_signed_correction_is_stale_once_the_form_is_corrected_again(ledger: Ledger) -> None:
    vitals = form_at(ledger, "S-001", "vitals")
    first = correct(ledger, "S-001", vitals, "weight_kg=58.5")
    on_first = sign(ledger, "S-001", first)
    assert_valid(row(ledger, on_first))
    second = correct(ledger, "S-001", vitals, "weight_kg=58.4")
    assert_stale(row(ledger, on_first), second)
    # signing the newest correction: valid, while the older signature stays stale
    on_second = sign(ledger, "S-001", second)
    assert_valid(row(ledger, on_second))
    assert_stale(row(ledger, on_first), second)
    # and a third correction stales both, each naming the version that replaced its own
    third = correct(ledger, "S-001", vitals, "weight_kg=58.3")
    assert_stale(row(ledger, on_first), second, third)
    assert_stale(row(ledger, on_second), third)


def test_a_correction_of_another_field_of_the_same_form_stales_it(ledger: Ledger) -> None:
    vitals = form_at(ledger, "S-001", "vitals")
    first = correct(ledger, "S-001", vitals, "weight_kg=58.5")
    signature = sign(ledger, "S-001", first)
    other_field = correct(ledger, "S-001", vitals, "height_cm=163")
    assert_stale(row(ledger, signature), other_field)


def test_a_correction_of_another_form_or_subject_leaves_it_valid(ledger: Ledger) -> None:
    vitals = form_at(ledger, "S-001", "vitals")
    first = correct(ledger, "S-001", vitals, "weight_kg=58.5")
    on_original = sign(ledger, "S-001", vitals)  # signed after its correction: earlier version
    on_first = sign(ledger, "S-001", first)
    # another form of the same subject, another instance of a repeated form, another subject
    correct(ledger, "S-001", form_at(ledger, "S-001", "demographics"), "sex=male")
    second_treatment = ledger.subject("S-001").forms_of("prior_treatment")[1].position
    correct(ledger, "S-001", second_treatment, "stop_date=2022-02-01")
    correct(ledger, "S-002", form_at(ledger, "S-002", "vitals"), "weight_kg=70")
    assert_valid(row(ledger, on_first))
    assert_stale(row(ledger, on_original), first)
    # queries and source verification name the form but change no value
    ledger.send(MONITOR, M.VerifySource("S-001", vitals))
    ledger.send(MONITOR, M.OpenQuery("S-001", vitals, "weight_kg", "Source says 58.5?"))
    assert_valid(row(ledger, on_first))
    # the rule keeps to one stream even when given several
    assert superseded_by(ledger.events, first) == []


def test_a_signed_record_of_another_kind_follows_the_same_rule() -> None:
    ledger = a_study()
    d0 = through_infusion(ledger, "S-001", START)
    state = ledger.subject("S-001")
    assert state.infusion is not None
    infusion = state.infusion.position
    signature = sign(ledger, "S-001", infusion)
    leukapheresis = next(e.position for e in ledger.stream("S-001")
                                   if e.type == T.LEUKAPHERESIS_RECORDED)
    on_procedure = sign(ledger, "S-001", leukapheresis)
    assert_valid(row(ledger, signature))
    ledger.at(d0 + timedelta(days=1))
    (moved,) = ledger.send(COORDINATOR, M.CorrectRecord(
        "S-001", infusion, (f"infused_at={datetime.fromisoformat(f'{d0}T11:00:00+08:00')}",),
        "clock was wrong"))
    assert_stale(row(ledger, signature), moved.position)
    assert_valid(row(ledger, on_procedure))


def test_the_rule_follows_a_correction_that_names_a_correction(ledger: Ledger) -> None:
    """Corrections name the original entry; one naming a correction (or a void or
    entered-in-error type added to SUPERSEDING) still belongs to the same record."""
    assert T.FORM_CORRECTED in SUPERSEDING
    vitals = form_at(ledger, "S-001", "vitals")
    first = correct(ledger, "S-001", vitals, "weight_kg=58.5")
    signature = sign(ledger, "S-001", first)
    (chained,) = ledger.append("S-001", [NewEvent(T.FORM_CORRECTED, {
        "target_position": first, "form": "vitals", "changes": {"weight_kg": 58.4},
        "previous": {"weight_kg": 58.5}}, reason="typo")])
    by_position = {e.position: e for e in ledger.events}
    assert record_of(chained.position, by_position) == record_of(first, by_position) == vitals
    assert superseded_by(ledger.stream("S-001"), first) == [chained.position]
    assert superseded_by(ledger.stream("S-001"), vitals) == [first, chained.position]
    assert_stale(row(ledger, signature), chained.position)


def test_a_broken_signature_stays_broken(ledger: Ledger) -> None:
    vitals = form_at(ledger, "S-001", "vitals")
    signature = sign(ledger, "S-001", vitals)
    correct(ledger, "S-001", vitals, "weight_kg=58.5")
    index = next(i for i, e in enumerate(ledger.events) if e.position == vitals)
    ledger.events[index] = replace(ledger.events[index], hash="f" * 64)
    assert row(ledger, signature)["state"] == "broken"
