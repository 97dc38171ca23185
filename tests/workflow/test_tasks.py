"""workflow/tasks.py: every open task of a subject, most urgent first, with the role that must
act and the command that does it, on a study built through the executor (a fake clock; the
task clock `now` is given, never read)."""

from __future__ import annotations

from datetime import date, datetime

from tests.support.clock import FakeClock
from tests.support.study import (
    COORDINATOR,
    INVESTIGATOR,
    MONITOR,
    Desk,
    amend,
    new_study,
    on_day,
    screen_eligible,
    through_infusion,
)
from workflow.commands import messages as M
from workflow.monitoring import fold_monitoring
from workflow.subject import fold_subject
from workflow.tasks import KINDS, Task, subject_tasks

START = date(2025, 1, 6)  # S-001: D0 2025-02-05
NOON_D2 = datetime.fromisoformat("2025-02-07T04:00:00+00:00")  # 12:00 at PKU3 on D2
SERIOUS_AE = ("term=Pneumonia", "category=infection", "onset_date=2025-02-06", "grade=3",
              "serious_criteria=hospitalisation", "awareness_at=2025-02-06T20:00:00+08:00")


def tasks_of(desk: Desk, subject: str, now: datetime = NOON_D2) -> list[Task]:
    events = desk.store.read_stream(subject)
    return subject_tasks(desk.study(), fold_subject(subject, events), now, events)


def kinds(tasks: list[Task]) -> list[tuple[str, str | None]]:
    return [(t.kind, t.ref) for t in tasks]


def infused_with_sae(url: str) -> tuple[Desk, FakeClock, int]:
    clock = FakeClock()
    desk = new_study(url, clock)
    through_infusion(desk, "S-001", START, clock)
    on_day(clock, date(2025, 2, 6))
    outcome = desk.send(COORDINATOR, M.RecordForm("S-001", "adverse_event", SERIOUS_AE,
                                                  date(2025, 2, 6)))
    on_day(clock, date(2025, 2, 7))
    return desk, clock, outcome.result.positions[0]


def test_safety_first_then_overdue_visit_then_open_tasks(db_url: str) -> None:
    desk, _, ae = infused_with_sae(db_url)
    tasks = tasks_of(desk, "S-001")
    assert kinds(tasks) == [("sae_report", "sae_report"), ("visit", "D1"),
                            ("causality", "serious"), ("sdv", "demographics")]
    report, visit, causality, sdv = tasks
    assert (report.state, report.role, report.due, report.hours_left, report.position) == (
        "due", "investigator", "2025-02-07T20:00:00+08:00", 8.0, ae)
    assert report.command == (f"trialflow record S-001 sae_report ae_position={ae} "
                              "report_kind=initial sent_at=<TIME>")
    assert (visit.state, visit.role, visit.due, visit.window_start, visit.window_end,
            visit.days_left) == ("overdue", "coordinator", "2025-02-06", "2025-02-06",
                                 "2025-02-06", -1)
    assert visit.command == "trialflow visit S-001 D1 --done --on <DATE>"
    assert "record overdue visit D1" in visit.action and "2025-02-06" in visit.action
    assert (causality.role, causality.roles, causality.position) == (
        "investigator", ("investigator",), ae)
    assert causality.command.startswith(f"trialflow record S-001 causality ae_position={ae}")
    assert (sdv.role, sdv.kind) == ("monitor", "sdv")
    assert all(t.kind in KINDS for t in tasks)
    # past its due time the clock is overdue and still first
    late = tasks_of(desk, "S-001", datetime.fromisoformat("2025-02-08T04:00:00+00:00"))
    assert (late[0].kind, late[0].state, late[0].hours_left) == ("sae_report", "overdue", -16.0)


def test_tasks_close_when_their_record_is_made(db_url: str) -> None:
    desk, clock, ae = infused_with_sae(db_url)
    desk.send(INVESTIGATOR, M.RecordForm("S-001", "causality",
                                         (f"ae_position={ae}", "relatedness=possible"),
                                         date(2025, 2, 7)))
    desk.send(COORDINATOR, M.RecordForm("S-001", "sae_report", (
        f"ae_position={ae}", "report_kind=initial", "sent_at=2025-02-07T10:00:00+08:00"),
        date(2025, 2, 7)))
    desk.send(COORDINATOR, M.RecordVisit("S-001", "D1", "missed", reason="subject unwell"))
    found = kinds(tasks_of(desk, "S-001"))
    assert ("sae_report", "sae_report") not in found and ("causality", "serious") not in found
    # the next visit to come, not actionable yet: D4 (window 2025-02-08..2025-02-10)
    assert found[-2:] == [("visit", "D4"), ("sdv", "demographics")]
    assert tasks_of(desk, "S-001")[-2].state == "upcoming"
    on_day(clock, date(2025, 2, 9))
    assert tasks_of(desk, "S-001", datetime.fromisoformat("2025-02-09T04:00:00+00:00"))[0].ref \
        == "D4"


def test_queries_to_answer_then_to_close(db_url: str) -> None:
    desk, _, ae = infused_with_sae(db_url)
    opened = desk.send(MONITOR, M.OpenQuery("S-001", ae, "grade", "Grade 3 or 2?"))
    query = f"Q-{opened.result.positions[0]}"
    answer = [t for t in tasks_of(desk, "S-001") if t.kind == "query_answer"]
    assert [(t.ref, t.role, t.roles, t.command) for t in answer] == [
        (query, "coordinator", ("coordinator", "investigator"),
         f"trialflow query answer {query} --text <ANSWER> [FIELD=VALUE]")]
    desk.send(COORDINATOR, M.AnswerQuery(query, "Grade 3, per the chart."))
    close = [t for t in tasks_of(desk, "S-001") if t.kind.startswith("query")]
    assert [(t.kind, t.ref, t.role, t.command) for t in close] == [
        ("query_close", query, "monitor", f"trialflow query close {query}")]
    desk.send(MONITOR, M.CloseQuery(query))
    assert not [t for t in tasks_of(desk, "S-001") if t.kind.startswith("query")]


def test_source_verification_lists_every_unverified_record(db_url: str) -> None:
    desk, _, ae = infused_with_sae(db_url)
    (sdv,) = [t for t in tasks_of(desk, "S-001") if t.kind == "sdv"]
    positions = list(sdv.extra["positions"])
    assert ae in positions and sdv.position == positions[0]
    desk.send(MONITOR, M.VerifySource("S-001", positions[0]))
    (after,) = [t for t in tasks_of(desk, "S-001") if t.kind == "sdv"]
    assert list(after.extra["positions"]) == positions[1:]


def test_screening_forms_per_criterion_then_confirmation(db_url: str) -> None:
    clock = FakeClock()
    desk = new_study(db_url, clock)
    on_day(clock, date(2025, 2, 3))
    desk.send(COORDINATOR, M.ConsentSubject("S-003", date(2025, 2, 3), "2.0"))
    tasks = [t for t in tasks_of(desk, "S-003") if t.kind == "screening_form"]
    refs = [t.ref for t in tasks]
    assert {"eular_acr_2019", "age", "weight", "refractory", "exclusion_checklist"} <= set(refs)
    age = next(t for t in tasks if t.ref == "age")
    assert (age.role, age.due, age.state, age.days_left) == ("coordinator", "2025-03-03", "due",
                                                            24)
    assert age.command.startswith("trialflow record S-003 demographics ")
    assert "demographics.date_of_birth" in age.action
    screen_eligible(desk, "S-002", date(2025, 2, 3))
    first = tasks_of(desk, "S-002")[0]
    assert (first.kind, first.role, first.roles, first.command, first.due) == (
        "confirm_eligibility", "investigator", ("investigator",),
        "trialflow confirm-eligibility S-002", "2025-03-03")
    # in the last days of the window the task says it is closing
    closing = tasks_of(desk, "S-002", datetime.fromisoformat("2025-02-28T04:00:00+00:00"))[0]
    assert "closes on 2025-03-03, 3 days left" in closing.action
    # after the window: record the screen failure
    expired = tasks_of(desk, "S-003", datetime.fromisoformat("2025-03-05T04:00:00+00:00"))[0]
    assert (expired.kind, expired.state, expired.command) == (
        "screen_fail", "overdue", "trialflow screen-fail S-003 --reason screening_window_expired")


def test_reconsent_after_an_amendment(db_url: str) -> None:
    clock = FakeClock()
    desk = new_study(db_url, clock, protocol_version=1)
    on_day(clock, date(2025, 2, 3))
    desk.send(COORDINATOR, M.ConsentSubject("S-001", date(2025, 2, 3), "1.0"))
    assert "reconsent" not in [t.kind for t in tasks_of(desk, "S-001")]
    amend(desk, 2)
    (task,) = [t for t in tasks_of(desk, "S-001") if t.kind == "reconsent"]
    assert (task.role, task.command) == (
        "coordinator", "trialflow reconsent S-001 --consent-form-version <VERSION>")
    desk.send(COORDINATOR, M.ReconsentSubject("S-001", "2.0"))
    assert "reconsent" not in [t.kind for t in tasks_of(desk, "S-001")]


def test_the_completion_awaits_the_investigators_signature(sqlite_url: str) -> None:
    clock = FakeClock()
    desk = new_study(sqlite_url, clock)
    d0 = through_infusion(desk, "S-001", START, clock)
    protocol = desk.study().protocol
    for visit in protocol.visits:
        day = d0.fromordinal(d0.toordinal() + visit.target_day)
        on_day(clock, day)
        desk.send(COORDINATOR, M.RecordVisit("S-001", visit.code, "done", day))
    now = clock()
    assert tasks_of(desk, "S-001", now)[0].command == "trialflow complete S-001"
    done = desk.send(COORDINATOR, M.CompleteStudy("S-001"))
    position = done.result.positions[0]
    (sign,) = [t for t in tasks_of(desk, "S-001", now) if t.kind == "signature"]
    assert (sign.role, sign.position, sign.command) == (
        "investigator", position, f"trialflow sign S-001 {position} --meaning approved")
    desk.send(INVESTIGATOR, M.Sign("S-001", position, "approved"))
    assert not [t for t in tasks_of(desk, "S-001", now) if t.kind == "signature"]


def test_without_events_no_review_tasks(sqlite_url: str) -> None:
    desk, _, _ = infused_with_sae(sqlite_url)
    events = desk.store.read_stream("S-001")
    state = fold_subject("S-001", events)
    bare = subject_tasks(desk.study(), state, NOON_D2)
    assert {t.kind for t in bare} == {"sae_report", "visit", "causality"}
    assert fold_monitoring("S-001", events).forms  # the review tasks need the events
