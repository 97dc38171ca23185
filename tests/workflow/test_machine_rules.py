"""Every trigger from every state; every message type against every role (the one table);
the door's other rules; a stateful test of the machine. All decisions, no database."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from events.errors import InvalidStreamId
from tests.support.ledger import (
    ADMIN,
    COORDINATOR,
    INVESTIGATOR,
    PASSWORD,
    SCHEDULER_SECRET,
    Ledger,
    a_study,
    screen_eligible,
)
from workflow.commands import messages as M
from workflow.commands.roles import PERMISSIONS
from workflow.errors import InvalidInput, RuleViolation
from workflow.identity import Secret
from workflow.machine import MACHINE, TRANSITIONS, check_phase, decide, mermaid
from workflow.phases import STATES

TRIGGERS = sorted({t["trigger"] for t in TRANSITIONS})
ALLOWED = {
    ("screening", "confirm_eligibility"), ("screening", "screen_fail"),
    ("cell_collection", "collect"), ("cell_collection", "release"),
    ("cell_collection", "release_failed"), ("lymphodepletion", "give_dose"),
    ("lymphodepletion", "give_last_dose"), ("infusion", "infuse"),
    ("follow_up", "record_visit"), ("follow_up", "complete"),
    *((s, "off_study") for s in ("screening", "cell_collection", "lymphodepletion", "infusion",
                                 "follow_up")),
    # a void takes back the phase the voided procedure opened
    ("lymphodepletion", "void_release"), ("infusion", "void_last_dose"),
    ("follow_up", "void_infusion"),
    # a visit that happened before the end, entered after it
    ("completed", "record_past_visit"), ("off_study", "record_past_visit"),
}


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("trigger", TRIGGERS)
def test_every_trigger_from_every_state(state: str, trigger: str) -> None:
    if (state, trigger) in ALLOWED:
        check_phase("S-1", state, trigger)
    else:
        with pytest.raises(RuleViolation) as caught:
            check_phase("S-1", state, trigger)
        assert caught.value.rule == "phase" and "S-1" in caught.value.message


@pytest.mark.parametrize("spec", TRANSITIONS, ids=lambda t: f"{t['trigger']}-{t['source']}")
def test_every_transition_fires_to_its_phase_or_names_its_failed_guard(
        spec: dict[str, Any]) -> None:
    """`decide` fires the event on the subject's model itself: every transition from every
    phase it leaves reaches its phase (or stays, for a transition in place) when its guards
    pass, and is refused with the first guard that fails; the shared machine keeps no
    model."""
    sources = [spec["source"]] if isinstance(spec["source"], str) else list(spec["source"])
    guards: list[str] = list(spec.get("conditions", []))
    for source in sources:
        passing = {name: (lambda facts: None) for name in guards}
        assert decide("S-1", source, str(spec["trigger"]), passing, None) == (
            spec["dest"] or source)
        for failing in guards:
            refusal = RuleViolation(f"Subject S-1: {failing}.", rule=failing)
            chosen = {**passing, failing: lambda facts, r=refusal: r}
            with pytest.raises(RuleViolation) as caught:
                decide("S-1", source, str(spec["trigger"]), chosen, None)
            assert caught.value is refusal
    assert MACHINE.models == []


def test_no_automatic_shortcuts_and_diagram_from_the_machine() -> None:
    from workflow.machine import MACHINE

    assert not any(name.startswith("to_") for name in MACHINE.events)
    diagram = mermaid()
    assert "infusion --> follow_up: infuse" in diagram
    assert diagram.count("--> off_study") == 5


START = date(2024, 9, 2)
ROLE_USERS = {"coordinator": COORDINATOR, "investigator": INVESTIGATOR, "monitor": "mona",
              "data_manager": "dora", "auditor": "audrey", "admin": ADMIN,
              "scheduler": "scheduler"}
ROLES = sorted(ROLE_USERS)


def one_of_each(position: int, query: str) -> list[M.Message]:
    """One message of every type the table names (the table and this list must agree)."""
    now = datetime.fromisoformat("2024-09-03T10:00:00+08:00")
    s = "S-100"
    return [
        M.InitialiseStudy(ADMIN, PASSWORD, SCHEDULER_SECRET), M.AddSite("NEW", "UTC"),
        M.AddUser("newbie", "monitor", None, Secret("temporary-password")),
        M.DeactivateUser("otto"), M.ChangePassword("otto", Secret("another-password-1")),
        M.UnlockAccount("otto", "called"), M.SetLockoutPolicy(3),
        M.SetAmendmentReview(True),
        M.LoadProtocol("version = 1", "x.toml"), M.AmendProtocol(1),
        M.ConsentSubject("S-101", START, "2.0"), M.ReconsentSubject(s, "3.0"),
        M.RecordForm(s, "vitals", ("weight_kg=60",), START),
        M.CorrectRecord(s, position, ("weight_kg=61",), "typo"),
        M.VoidRecord(s, position, "entered twice"), M.ConfirmEligibility(s),
        M.RecordScreenFailure(s, "age"), M.RecordLeukapheresis(s, START, "C1"),
        M.ReleaseProduct(s, "L", "C1"), M.GiveLymphodepletion(s, START, 40.5, 0.0),
        M.Infuse(s, now, 5.8e7, "C1"), M.RecordVisit(s, "D1", "done", START),
        M.CompleteStudy(s), M.TakeOffStudy(s, "investigator_decision"),
        M.OpenQuery(s, position, "weight_kg", "?"), M.AnswerQuery(query, "fine"),
        M.CloseQuery(query, "done"), M.VerifySource(s, position), M.LockStudy("lock"),
        M.UnlockStudy("unlock"), M.Sign(s, position, "authored"),
        M.RecordExport("odm", "x.xml", "0" * 64, 1),
        M.IssueReminder(s, "visit:D1@2024-09-03", "due", now.isoformat(), "D1"),
        M.CancelReminder(s, "r-1", "moved"), M.RecordDelivery(s, "r-1", "log"),
        M.RecordDeliveryFailure(s, "r-1", "log", "down"),
        M.CopySubjects(s, ("X-001",), 7, 102),
    ]


@pytest.fixture(scope="module")
def table_study() -> tuple[Ledger, int, str]:
    ledger = a_study(now="2024-09-03T04:00:00+00:00")
    ledger.send(COORDINATOR, M.ConsentSubject("S-100", START, "2.0"))
    (vitals,) = ledger.send(COORDINATOR, M.RecordForm("S-100", "vitals", ("weight_kg=58",),
                                                      START))
    (opened,) = ledger.send("mona", M.OpenQuery("S-100", vitals.position, "weight_kg", "?"))
    return ledger, vitals.position, f"Q-{opened.position}"


def test_the_table_names_every_message_and_every_decision() -> None:
    from workflow.commands.handlers import DECISIONS

    assert set(PERMISSIONS) == set(DECISIONS)
    assert {type(m) for m in one_of_each(1, "Q-1")} == set(PERMISSIONS)


@pytest.mark.parametrize("kind", sorted(PERMISSIONS, key=lambda k: k.__name__),
                         ids=lambda k: k.__name__)
@pytest.mark.parametrize("role", ROLES)
def test_each_message_type_for_each_role(table_study: tuple[Ledger, int, str],
                                         kind: type[M.Message], role: str) -> None:
    """Exactly the roles of the table pass the door for each message type (and for the
    narrowed fields, the roles of that value); every other role is refused by rule `role`
    before its decision runs."""
    ledger, position, query = table_study
    [message] = [m for m in one_of_each(position, query) if type(m) is kind]
    allowed = PERMISSIONS[kind].roles_for(message)
    user = ROLE_USERS[role]
    if kind is M.ChangePassword:  # the table lets people change their own
        message = M.ChangePassword(user, Secret("another-password-1"))
    try:
        ledger.decide(user, message)
        outcome = "decided"
    except RuleViolation as error:
        outcome = error.rule or ""
    except (InvalidInput, InvalidStreamId):
        outcome = "invalid"  # passed the door, refused on the data
    if role in allowed:
        assert outcome != "role", f"{role} must be allowed to send {kind.__name__}"
    else:
        assert outcome == "role", f"{role} must not send {kind.__name__}: {outcome}"


@pytest.mark.parametrize("meaning,signers", [("authored", {"coordinator", "investigator"}),
                                             ("reviewed", {"investigator"}),
                                             ("approved", {"investigator"})])
def test_who_may_sign_with_which_meaning(table_study: tuple[Ledger, int, str], meaning: str,
                                         signers: set[str]) -> None:
    ledger, position, _ = table_study
    for role in ROLES:
        message = M.Sign("S-100", position, meaning)
        if role in signers:
            assert ledger.decide(ROLE_USERS[role], message).writes
        else:
            with pytest.raises(RuleViolation) as caught:
                ledger.decide(ROLE_USERS[role], message)
            assert caught.value.rule == "role"


def test_causality_is_the_investigator_s(table_study: tuple[Ledger, int, str]) -> None:
    ledger, _, _ = table_study
    causality = M.RecordForm("S-100", "causality", ("ae_position=1", "relatedness=possible"))
    with pytest.raises(RuleViolation) as caught:
        ledger.decide(COORDINATOR, causality)
    assert caught.value.rule == "role" and "only an investigator" in caught.value.message
    with pytest.raises(InvalidInput, match="ae_position"):  # past the door: no such AE
        ledger.decide(INVESTIGATOR, causality)


def test_a_signature_and_a_credential_change_need_the_password(
        table_study: tuple[Ledger, int, str]) -> None:
    ledger, position, _ = table_study
    for method in ("session", "database_login"):
        for user, message in ((INVESTIGATOR, M.Sign("S-100", position, "reviewed")),
                              (COORDINATOR, M.ChangePassword(COORDINATOR,
                                                             Secret("new-password-123")))):
            with pytest.raises(RuleViolation) as caught:
                ledger.decide(user, message, method=method)
            assert caught.value.rule == "password_required"
    assert ledger.decide(INVESTIGATOR, M.Sign("S-100", position, "reviewed")).writes


def test_a_temporary_password_is_changed_before_anything_else() -> None:
    ledger = a_study(now="2024-09-03T04:00:00+00:00")
    ledger.send(ADMIN, M.ChangePassword(INVESTIGATOR, Secret("set-by-the-admin-1")))
    assert INVESTIGATOR in ledger.study().temporary_passwords
    ledger.send(COORDINATOR, M.ConsentSubject("S-100", START, "2.0"))
    for message in (M.ConfirmEligibility("S-100"), M.Sign("S-100", 1, "reviewed"),
                    M.ChangePassword(COORDINATOR, Secret("not-my-password-1"))):
        with pytest.raises(RuleViolation) as caught:
            ledger.decide(INVESTIGATOR, message)
        assert caught.value.rule == "password_change_required", message
    (changed,) = ledger.send(INVESTIGATOR, M.ChangePassword(INVESTIGATOR,
                                                           Secret("chosen-by-him-1")))
    assert changed.payload == {"name": INVESTIGATOR, "by": INVESTIGATOR, "temporary": False}
    assert INVESTIGATOR not in ledger.study().temporary_passwords


def test_only_an_admin_or_the_user_changes_a_password() -> None:
    ledger = a_study()
    with pytest.raises(RuleViolation) as caught:
        ledger.decide(COORDINATOR, M.ChangePassword(ADMIN, Secret("taken-over-123")))
    assert caught.value.rule == "role"
    decision = ledger.decide(ADMIN, M.ChangePassword(COORDINATOR, Secret("reset-by-ada-1")))
    [changed] = decision.writes[0].events
    assert changed.payload == {"name": COORDINATOR, "by": ADMIN, "temporary": True}
    assert [c.name for c in decision.credentials] == [COORDINATOR]
    with pytest.raises(InvalidInput, match="at least 10"):
        ledger.decide(COORDINATOR, M.ChangePassword(COORDINATOR, Secret("short")))
    with pytest.raises(InvalidInput, match="user name"):
        ledger.decide(COORDINATOR, M.ChangePassword(COORDINATOR, Secret("cora-is-my-name")))


def test_the_last_active_admin_stays() -> None:
    ledger = a_study()
    with pytest.raises(RuleViolation) as caught:
        ledger.decide(ADMIN, M.DeactivateUser(ADMIN))
    assert caught.value.rule == "last_admin"
    from tests.support.ledger import add_person

    add_person(ledger, "alan", "admin", None)
    ledger.send("alan", M.DeactivateUser(ADMIN))
    with pytest.raises(RuleViolation) as caught:
        ledger.decide("alan", M.DeactivateUser("alan"))
    assert caught.value.rule in ("last_admin",)


def test_the_scheduler_may_send_only_reminder_messages(
        table_study: tuple[Ledger, int, str]) -> None:
    ledger, position, query = table_study
    reminders = {M.IssueReminder, M.CancelReminder, M.RecordDelivery, M.RecordDeliveryFailure}
    for message in one_of_each(position, query):
        if type(message) in reminders:
            continue
        with pytest.raises(RuleViolation) as caught:
            ledger.decide("scheduler", message)
        assert caught.value.rule == "role", type(message).__name__
    with pytest.raises(RuleViolation) as caught:  # nor its own secret
        ledger.decide("scheduler", M.ChangePassword("scheduler", Secret("s" * 43)))
    assert caught.value.rule == "role"


class SubjectModelMachine(RuleBasedStateMachine):
    """Random commands against a simple model: phase follows the allowed table only."""

    def __init__(self) -> None:
        super().__init__()
        self.ledger = a_study()
        screen_eligible(self.ledger, "S-200", START)
        self.phase = "screening"
        self.day = START
        self.ld_doses = 0

    def attempt(self, expected_phase: str | None, user: str, message: M.Message) -> None:
        before = self.ledger.last_position
        try:
            self.ledger.send(user, message)
        except (RuleViolation, InvalidInput):
            assert self.ledger.last_position == before  # refused: nothing written
            return
        if expected_phase is not None:
            self.phase = expected_phase

    def tick(self) -> None:
        self.day += timedelta(days=1)
        self.ledger.at(self.day)

    @rule()
    def confirm(self) -> None:
        self.tick()
        ok = self.phase == "screening"
        self.attempt("cell_collection" if ok else None, INVESTIGATOR,
                     M.ConfirmEligibility("S-200"))

    @rule()
    def collect(self) -> None:
        self.tick()
        self.attempt(None, COORDINATOR, M.RecordLeukapheresis("S-200", self.day, "C1"))

    @rule(coi=st.sampled_from(["C1", "C2"]))
    def release(self, coi: str) -> None:
        self.tick()
        ok = self.phase == "cell_collection" and coi == "C1"
        self.attempt("lymphodepletion" if ok else None, COORDINATOR,
                     M.ReleaseProduct("S-200", "L", coi))

    @rule()
    def dose(self) -> None:
        self.tick()
        cyclo = 1620.0 if self.ld_doses == 2 else 0.0
        before = self.ledger.subject("S-200").phase
        self.attempt(None, COORDINATOR, M.GiveLymphodepletion("S-200", self.day, 40.5, cyclo))
        state = self.ledger.subject("S-200")
        if before == "lymphodepletion" and len(state.lymphodepletion_days) > self.ld_doses:
            self.ld_doses += 1
        self.phase = state.phase or self.phase

    @rule()
    def off_study(self) -> None:
        self.tick()
        active = self.phase not in ("completed", "screen_failed", "off_study")
        self.attempt("off_study" if active else None, COORDINATOR,
                     M.TakeOffStudy("S-200", "investigator_decision"))

    @precondition(lambda self: self.phase == "screening")
    @rule()
    def screen_fail(self) -> None:
        self.attempt("screen_failed", COORDINATOR, M.RecordScreenFailure("S-200", "age"))

    @invariant()
    def phase_matches_the_model(self) -> None:
        assert self.ledger.subject("S-200").phase == self.phase


TestSubjectStateful = SubjectModelMachine.TestCase
TestSubjectStateful.settings = settings(max_examples=40, stateful_step_count=14, deadline=None,
                                        suppress_health_check=list(HealthCheck))
