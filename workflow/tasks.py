"""The open tasks of a subject: what must be done next, by whom, by when, with which command.

One pure function, `subject_tasks`, over what the read models already fold: the subject's state
(`workflow.subject`), its schedule (`workflow.schedule`), its adverse events and reporting
clocks (`workflow.safety`), its eligibility (`workflow.eligibility`) and, when the stream's
events are given, its data review (`workflow.monitoring`: queries, source verification) and
signatures (`workflow.signing`). `trialflow todo` lists the tasks of every subject,
`trialflow subjects` shows each subject's first one and `trialflow status SUBJECT`'s next
step is the first one, so the three never disagree. Nothing here reads a clock: `now` is given.

Urgency (`sort_key`): SAE reporting clocks first (running or overdue, the earliest due
first), then overdue tasks (by kind, then by how long overdue), then tasks with a deadline by
their deadline, then tasks without one by kind, then tasks not actionable yet (a visit whose
window has not opened) by the day they become due, and source verification (the monitor's
backlog, without a deadline) last. The kinds, in the order
of `KINDS`, are ranked by what is at stake: safety reporting, then the subject's schedule,
then screening, then data review.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any, Final

from events.envelope import RecordedEvent
from workflow import event_types as T
from workflow.phases import TERMINAL
from workflow.safety import UNASSESSED, adverse_events, clock_state, sae_clocks
from workflow.schedule import INFUSION, SCREENING, planned_visits, visit_state

if TYPE_CHECKING:
    from workflow.study import Study
    from workflow.subject import SubjectState

# eligibility, monitoring and signing are imported where they are used: `todo` applies the
# clock to stored inputs and needs none of them (start-up is most of a read: issue 17)

# Task kinds, most urgent first (the order of ties).
KINDS: Final[tuple[str, ...]] = (
    "sae_report", "causality", "visit", "procedure", "confirm_eligibility", "screen_fail",
    "screening_form", "query_answer", "query_close", "signature", "reconsent", "sdv",
)
STATES: Final[tuple[str, ...]] = ("overdue", "due", "open", "upcoming")
SITE_ROLES: Final[tuple[str, ...]] = ("coordinator", "investigator")
REVIEWERS: Final[tuple[str, ...]] = ("monitor", "data_manager")
# The report that stops each reporting clock (workflow/safety.py).
REPORT_KIND: Final[dict[str, str]] = {"sae_report": "initial", "expedited_7d": "expedited",
                                      "expedited_15d": "expedited",
                                      "expedited_complete": "follow_up"}
# Inclusion criterion -> the screening forms its data come from (docs/clinical-rules.md).
CRITERION_FORMS: Final[dict[str, tuple[str, ...]]] = {
    "eular_acr_2019": ("sle_classification",), "age": ("demographics",),
    "weight": ("vitals",), "refractory": ("prior_treatment",),
    "stable_background_therapy": ("medication",), "sledai2k_screening": ("disease_activity",),
    "pregnancy_contraception_female": ("demographics", "pregnancy_test", "contraception"),
    "contraception_male": ("demographics", "contraception"), "informed_consent": (),
}
END_OF_DAY: Final = time(23, 59, 59)


@dataclass(frozen=True)
class Task:
    """One open task. `due` is a date (`YYYY-MM-DD`, the site's calendar) or a time (ISO 8601
    with offset, a reporting clock); `due_at` is its instant, for ordering (a date is due by
    the end of that day at the site)."""

    subject: str
    site: str | None
    kind: str
    state: str  # overdue | due | open | upcoming
    role: str  # who must act
    action: str  # one sentence
    command: str  # the command that does it (placeholders in angle brackets)
    roles: tuple[str, ...] = ()  # every role that may do it (role first)
    due: str | None = None
    due_at: datetime | None = None
    window_start: str | None = None
    window_end: str | None = None
    days_left: int | None = None
    hours_left: float | None = None
    position: int | None = None  # the record the task is about
    ref: str | None = None  # visit code, query id, clock, criterion
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"subject": self.subject, "site": self.site, "kind": self.kind,
                "state": self.state, "role": self.role, "roles": list(self.roles or
                                                                     (self.role,)),
                "action": self.action, "command": self.command, "due": self.due,
                "window_start": self.window_start, "window_end": self.window_end,
                "days_left": self.days_left, "hours_left": self.hours_left,
                "position": self.position, "ref": self.ref, **dict(self.extra)}


def sort_key(task: Task) -> tuple[Any, ...]:
    """Reporting clocks first (running or overdue, the earliest due first: they can still be
    met, or are a regulatory breach), then overdue tasks by kind and how long overdue, then
    tasks due by their deadline, then open tasks without a deadline by kind, then tasks not
    actionable yet by the day they become due, and source verification last."""
    rank = KINDS.index(task.kind)
    instant = task.due_at.timestamp() if task.due_at is not None else float("inf")
    tail = (task.subject, task.position or 0, task.ref or "")
    if task.kind == "sae_report":
        return (0, instant, rank, *tail)
    if task.kind == "sdv":  # the monitor's backlog: no deadline, after everything else
        return (1 + len(STATES), rank, *tail)
    group = 1 + STATES.index(task.state)
    if task.state in ("overdue", "open"):
        return (group, rank, instant, *tail)
    return (group, instant, rank, *tail)


def sort_tasks(tasks: Iterable[Task]) -> list[Task]:
    return sorted(tasks, key=sort_key)


def subject_tasks(study: Study, state: SubjectState, now: datetime,
                  events: Sequence[RecordedEvent] | None = None) -> list[Task]:
    """Every open task of one subject at `now` (aware), most urgent first. With the stream's
    `events`, the data review tasks (queries, source verification, signatures) too."""
    if not state.consented:
        return []
    return tasks_at(study, task_inputs(study, state, events), now, state)


@dataclass(frozen=True)
class TaskInputs:
    """What a subject's tasks depend on, without the clock: the `tasks` read model keeps one
    per subject (`rm_task_inputs`), so `todo` and `subjects` apply the clock to stored inputs
    instead of folding every stream. `tasks_at` turns them into the tasks at `now`.

    - `standing`: tasks the clock cannot change (causality, procedures without a day, the
      completion, re-consent, queries, source verification, signatures);
    - `dated`: tasks due on a day and actionable from a day (a later lymphodepletion dose,
      the infusion), whose state the day decides;
    - `clocks`: the SAE reporting clocks still running;
    - `visits`: the visits neither done nor recorded missed, in schedule order;
    - `screening`: the screening tasks depend on the day (eligibility is judged on it): they
      need the subject's fold (`subject_tasks`); a subject is in screening for weeks only.
    """

    subject: str
    site: str | None
    phase: str
    standing: tuple[Task, ...] = ()
    dated: tuple[Mapping[str, Any], ...] = ()  # task specs (`_spec`) with `due` and `start`
    clocks: tuple[Mapping[str, Any], ...] = ()
    visits: tuple[Mapping[str, Any], ...] = ()
    lead_days: int = 0
    screening: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"subject": self.subject, "site": self.site, "phase": self.phase,
                "standing": [_spec(t) for t in self.standing],
                "dated": [dict(d) for d in self.dated],
                "clocks": [dict(c) for c in self.clocks],
                "visits": [dict(v) for v in self.visits],
                "lead_days": self.lead_days, "screening": self.screening}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TaskInputs:
        subject, site = str(data["subject"]), data["site"]
        return cls(subject, site, str(data["phase"]),
                   tuple(_task(subject, site, "open", s) for s in data["standing"]),
                   tuple(data["dated"]),
                   tuple(data["clocks"]), tuple(data["visits"]),
                   int(data["lead_days"]), bool(data["screening"]))


def _spec(task: Task) -> dict[str, Any]:
    """A clock-free task as JSON (for a dated one, `due` is the day it is due)."""
    spec: dict[str, Any] = {"kind": task.kind, "roles": list(task.roles or (task.role,)),
                            "action": task.action, "command": task.command}
    for name in ("due", "window_start", "window_end", "position", "ref"):
        value = getattr(task, name)
        if value is not None:
            spec[name] = value
    if task.extra:
        spec["extra"] = dict(task.extra)
    return spec


def _task(subject: str, site: str | None, state: str, spec: Mapping[str, Any],
          **more: Any) -> Task:
    roles = tuple(spec["roles"])
    given: dict[str, Any] = {name: spec.get(name) for name in (
        "due", "window_start", "window_end", "position", "ref")}
    given.update(more)
    return Task(subject, site, spec["kind"], state, roles[0], spec["action"], spec["command"],
                roles=roles, extra=dict(spec.get("extra") or {}), **given)


def task_inputs(study: Study, state: SubjectState,
                events: Sequence[RecordedEvent] | None = None, *,
                visits: Sequence[Mapping[str, Any]] | None = None,
                aes: Sequence[Mapping[str, Any]] | None = None,
                clocks: Sequence[Mapping[str, Any]] | None = None) -> TaskInputs:
    """The clock-free inputs of a consented subject's tasks (`TaskInputs`). `visits`, `aes`
    and `clocks`: the subject's `planned_visits`, `adverse_events` and `sae_clocks` when the
    caller has them already (the read models fold them too)."""
    protocol = study.protocol_of(state.protocol_version)
    standing = _Standing(state.subject, state.site)
    _causality(standing, state, adverse_events(state, protocol) if aes is None else aes)
    dated = _procedures(standing, state, protocol)
    rows = (visits if visits is not None else planned_visits(state, study.protocol_of)
            if state.protocol_version is not None else [])
    infusion, open_visits = _open_visits(standing, state, rows)
    _reconsent(standing, state, study.protocol_version)
    if events is not None:
        _review(standing, events)
        _signatures(standing, state, events)
    running = tuple(row for row in (sae_clocks(state, protocol) if clocks is None else clocks)
                    if row.get("stopped_at") is None)
    return TaskInputs(state.subject, state.site, str(state.phase), tuple(standing.tasks),
                      tuple(dated + infusion), running, tuple(open_visits),
                      protocol.window_opening_lead_days,
                      state.phase == "screening" and state.consent is not None)


def tasks_at(study: Study, inputs: TaskInputs, now: datetime,
             state: SubjectState | None = None) -> list[Task]:
    """The tasks of `inputs` at `now` (aware), most urgent first. A subject in screening
    needs its fold (`state`): its eligibility is judged on the day."""
    zone = study.zone(inputs.site)
    today = now.astimezone(zone).date()
    ctx = _Ctx(study, inputs.subject, inputs.site, now, today)
    tasks = [*inputs.standing, *_clocks(ctx, inputs.clocks),
             *(ctx.on_day(task) for task in inputs.dated), *_visits(ctx, inputs)]
    if inputs.screening:
        if state is None:
            raise ValueError(f"{inputs.subject} is in screening: its tasks need its fold")
        tasks += _screening(ctx, state)
    return sort_tasks(tasks)


@dataclass
class _Standing:
    """The clock-free tasks of one subject, collected."""

    subject: str
    site: str | None
    tasks: list[Task] = field(default_factory=list)

    def add(self, kind: str, roles: tuple[str, ...], action: str, command: str,
            **more: Any) -> None:
        self.tasks.append(self.make(kind, roles, action, command, **more))

    def make(self, kind: str, roles: tuple[str, ...], action: str, command: str,
             **more: Any) -> Task:
        return Task(self.subject, self.site, kind, "open", roles[0], action, command,
                    roles=roles, **more)


@dataclass
class _Ctx:
    study: Study
    subject: str
    site: str | None
    now: datetime
    today: date

    def end_of(self, day: date) -> datetime:
        return datetime.combine(day, END_OF_DAY, self.study.zone(self.site))

    def task(self, kind: str, state: str, roles: tuple[str, ...], action: str, command: str,
             **more: Any) -> Task:
        return Task(self.subject, self.site, kind, state, roles[0], action, command,
                    roles=roles, **more)

    def dated(self, kind: str, roles: tuple[str, ...], action: str, command: str, *,
              due: date, start: date | None = None, **more: Any) -> Task:
        """A task due by the end of `due` (the site's day), not actionable before `start`."""
        if start is not None and self.today < start:
            state = "upcoming"
        else:
            state = "overdue" if self.today > due else "due"
        return self.task(kind, state, roles, action, command, due=due.isoformat(),
                         due_at=self.end_of(due), days_left=(due - self.today).days, **more)

    def on_day(self, spec: Mapping[str, Any]) -> Task:
        """A `dated` input (`due`: its day; `start`: the day it becomes actionable) at
        today, by `dated`'s rule."""
        start = spec.get("start")
        return self.dated(spec["kind"], tuple(spec["roles"]), spec["action"], spec["command"],
                          due=date.fromisoformat(spec["due"]),
                          start=None if start is None else date.fromisoformat(start),
                          window_start=spec.get("window_start"),
                          window_end=spec.get("window_end"), position=spec.get("position"),
                          ref=spec.get("ref"), extra=dict(spec.get("extra") or {}))


# --- safety: reporting clocks and causality -------------------------------------------------


def _clocks(ctx: _Ctx, clocks: Iterable[Mapping[str, Any]]) -> list[Task]:
    tasks = []
    for row in clocks:
        clock = clock_state(row, ctx.now)
        if clock["state"] == "stopped":
            continue
        kind = REPORT_KIND[clock["clock"]]
        hours = clock["hours_left"]
        left = (f"{hours} hours left" if hours >= 0 else f"overdue by {-hours} hours")
        tasks.append(ctx.task(
            "sae_report", str(clock["state"]), ("investigator", "coordinator"),
            f"send the {kind} report of the serious AE at position {clock['ae_position']} "
            f"({clock['clock']} clock due {clock['due_at']}, {left}) and record it",
            f"trialflow record {ctx.subject} sae_report ae_position={clock['ae_position']} "
            f"report_kind={kind} sent_at=<TIME>",
            due=clock["due_at"], due_at=datetime.fromisoformat(clock["due_at"]),
            hours_left=hours, position=clock["ae_position"], ref=clock["clock"]))
    return tasks


def _causality(out: _Standing, s: SubjectState, aes: Iterable[Mapping[str, Any]]) -> None:
    for ae in aes:
        if ae["relatedness"] != UNASSESSED:
            continue
        serious = "serious " if ae["serious"] else ""
        out.add("causality", ("investigator",),
                f"assess the causality of the {serious}AE at position {ae['position']} "
                f"({ae['term']}, onset {ae['onset_date']})",
                f"trialflow record {s.subject} causality ae_position={ae['position']} "
                "relatedness=<RELATEDNESS>", position=ae["position"],
                ref="serious" if serious else None)


# --- the schedule: procedures and visits ---------------------------------------------------

WRITERS: Final[tuple[str, ...]] = ("coordinator", "investigator")


def _procedures(out: _Standing, s: SubjectState, protocol: Any) -> list[dict[str, Any]]:
    """The procedure of the subject's phase: standing, or dated (a later lymphodepletion
    dose, returned)."""
    if s.phase == "cell_collection":
        if s.collection_coi is None:
            out.add("procedure", WRITERS, "record the leukapheresis",
                    f"trialflow leukapheresis {s.subject} --on <DATE> --coi-id <COI>",
                    ref="leukapheresis")
        elif s.product_failed:
            out.add("procedure", WRITERS, "the product failed release: record a new "
                    "leukapheresis or take the subject off study (manufacturing_failure)",
                    f"trialflow leukapheresis {s.subject} --on <DATE> --coi-id <COI>",
                    ref="leukapheresis")
        else:
            out.add("procedure", WRITERS, f"record the product release of collection "
                    f"{s.collection_coi} (collected {s.collected_on})",
                    f"trialflow release {s.subject} --lot <LOT> --coi-id {s.collection_coi} "
                    "--viable-cells <N>", ref="release")
    elif s.phase == "lymphodepletion":
        regimen = protocol.lymphodepletion
        given = len(s.doses)
        if given < len(regimen.days):
            day = regimen.days[given]
            drugs = " ".join(f"{d.drug}_mg=<MG>" for d in regimen.drugs_on(day))
            action = f"give and record lymphodepletion day D{day} ({len(regimen.days) - given} " \
                     f"of {len(regimen.days)} doses left)"
            command = f"trialflow lymphodepletion {s.subject} --on <DATE> {drugs}"
            if given == 0:
                out.add("procedure", WRITERS, action, command, ref=f"D{day}")
            else:
                on = (s.doses[0].on + timedelta(days=day - regimen.days[0])).isoformat()
                return [{**_spec(out.make("procedure", WRITERS, f"{action}, on {on}",
                                          command.replace("<DATE>", on), due=on,
                                          ref=f"D{day}")), "start": on}]
    return []


def _open_visits(out: _Standing, s: SubjectState, rows: Sequence[Mapping[str, Any]]
                 ) -> tuple[list[dict[str, Any]], list[Mapping[str, Any]]]:
    """The infusion (dated, in the infusion phase) and the visits neither done nor recorded
    missed (the others are no task); the completion once every visit is recorded."""
    infusion: list[dict[str, Any]] = []
    visits: list[Mapping[str, Any]] = []
    for row in rows:
        if row["visit"] == SCREENING or row.get("done_on") is not None \
                or row.get("recorded_status") == "missed":
            continue  # done or missed: no task (`visit_state`)
        if row["visit"] == INFUSION:
            if s.phase == "infusion":
                window = f"window {row['window_start']}..{row['window_end']}"
                infusion.append({**_spec(out.make(
                    "procedure", WRITERS, f"infuse the CAR-T product ({window})",
                    f"trialflow infuse {s.subject} --at <TIME> --cells <CELLS> --coi-id "
                    f"{s.product_coi or '<COI>'}", due=row["window_end"],
                    window_start=row["window_start"], window_end=row["window_end"],
                    ref="D0")), "start": row["window_start"]})
            continue
        visits.append(row)
    if s.phase == "follow_up" and rows and all(
            r["recorded_status"] is not None for r in rows if r["visit"] != SCREENING):
        out.add("procedure", WRITERS, "every visit is recorded: complete the study",
                f"trialflow complete {s.subject}", ref="completion")
    return infusion, visits


def _visits(ctx: _Ctx, inputs: TaskInputs) -> list[Task]:
    """The visits due or overdue at today, and the next one to come (none for a subject who
    has left the study)."""
    tasks: list[Task] = []
    pending_seen = False
    for row in inputs.visits:
        v = visit_state(row, ctx.today, lead_days=inputs.lead_days)
        if v["status"] not in ("due", "overdue", "upcoming"):
            continue
        if v["status"] == "upcoming" and (pending_seen or inputs.phase in TERMINAL):
            continue  # only the next visit to come
        pending_seen = True
        start, end = date.fromisoformat(v["window_start"]), date.fromisoformat(v["window_end"])
        window = f"window {v['window_start']}..{v['window_end']}"
        verb = "record visit" if v["status"] != "overdue" else "record overdue visit"
        tasks.append(ctx.dated(
            "visit", WRITERS, f"{verb} {row['visit']} (target {v['target_date']}, {window})",
            f"trialflow visit {ctx.subject} {row['visit']} --done --on <DATE>", due=end,
            start=start, window_start=v["window_start"], window_end=v["window_end"],
            ref=row["visit"]))
    return tasks


# --- screening: eligibility, forms, the window --------------------------------------------


def _screening(ctx: _Ctx, s: SubjectState) -> list[Task]:
    from workflow.eligibility import evaluate_eligibility

    if s.phase != "screening" or s.consent is None:
        return []
    protocol = ctx.study.protocol
    ends = s.consent.consent_date + timedelta(days=protocol.screening_window_days)
    day = min(ctx.today, ends)
    result = evaluate_eligibility(list(s.forms.values()), s.consent, protocol, today=day)
    lead = protocol.screening_expiring_lead_days
    left = (ends - ctx.today).days
    closing = (f"; the screening window closes on {ends}, {left} days left" if 0 <= left <= lead
               else f"; the screening window closed on {ends}" if left < 0 else "")
    window: dict[str, Any] = {"window_start": s.consent.consent_date.isoformat(),
              "window_end": ends.isoformat()}
    if left < 0 and result.overall != "eligible":
        return [ctx.dated("screen_fail", SITE_ROLES, f"record the screen failure{closing}",
                          f"trialflow screen-fail {s.subject} --reason "
                          "screening_window_expired", due=ends, ref="screening_window_expired",
                          **window)]
    if result.overall == "eligible":
        return [ctx.dated("confirm_eligibility", ("investigator",),
                          f"every criterion is met: confirm eligibility{closing}",
                          f"trialflow confirm-eligibility {s.subject}", due=ends, **window)]
    if result.overall == "ineligible":
        failed = [c.code for c in result.criteria if c.status == "not_met"]
        failed += [code for code, answer in result.exclusions if answer == "yes"]
        reason = failed[0] if failed else "<CODE>"
        return [ctx.dated("screen_fail", SITE_ROLES,
                          f"not eligible ({', '.join(failed)}): record the screen failure"
                          f"{closing}", f"trialflow screen-fail {s.subject} --reason {reason}",
                          due=ends, ref=reason, **window)]
    tasks = []
    for criterion in result.criteria:
        if criterion.status != "pending":
            continue
        forms = CRITERION_FORMS.get(criterion.code, ())
        form = forms[0] if forms else "<FORM>"
        for name in forms:  # the first form the reason names
            if name in criterion.reason:
                form = name
                break
        tasks.append(ctx.dated(
            "screening_form", SITE_ROLES, f"criterion {criterion.code}: {criterion.reason}"
            f"{closing}", f"trialflow record {s.subject} {form} <FIELD=VALUE>…", due=ends,
            ref=criterion.code, **window))
    unanswered = [code for code, answer in result.exclusions if answer is None]
    if unanswered:
        tasks.append(ctx.dated(
            "screening_form", SITE_ROLES, f"exclusions unanswered: {', '.join(unanswered)}"
            f"{closing}", f"trialflow record {s.subject} exclusion_checklist "
            + " ".join(f"{code}=<yes|no>" for code in unanswered), due=ends,
            ref="exclusion_checklist", **window))
    return tasks


def _reconsent(out: _Standing, s: SubjectState, in_force: int | None) -> None:
    if s.phase in TERMINAL or in_force is None or s.protocol_version in (None, in_force):
        return
    out.add("reconsent", SITE_ROLES, f"protocol version {in_force} is in force (consented "
            f"under version {s.protocol_version}): record the re-consent",
            f"trialflow reconsent {s.subject} --consent-form-version <VERSION>",
            ref=f"protocol_{in_force}")


# --- data review: queries, source verification, signatures --------------------------------


def _review(out: _Standing, events: Sequence[RecordedEvent]) -> None:
    from workflow.monitoring import fold_monitoring

    m = fold_monitoring(out.subject, events)
    for _, q in sorted(m.queries.items()):
        if q.state == "open":
            out.add("query_answer", SITE_ROLES,
                    f"answer query {q.id} on {q.form}.{q.field} (position {q.position}): "
                    f"{q.text}", f"trialflow query answer {q.id} --text <ANSWER> "
                    "[FIELD=VALUE]", position=q.position, ref=q.id)
        elif q.state == "answered":
            out.add("query_close", REVIEWERS,
                    f"review the answer to query {q.id} on {q.form}.{q.field} and close it",
                    f"trialflow query close {q.id}", position=q.position, ref=q.id)
    unverified = [form for _, form in sorted(m.forms.items()) if not form.verified]
    if unverified:
        first = unverified[0]
        out.add("sdv", ("monitor",),
                f"source-verify {len(unverified)} record(s), first {first.form} at position "
                f"{first.position} ({first.on})", f"trialflow sdv {out.subject} {first.position}",
                position=first.position, ref=first.form,
                extra={"positions": [form.position for form in unverified]})


def _signatures(out: _Standing, s: SubjectState, events: Sequence[RecordedEvent]) -> None:
    from workflow.signing import signatures

    checked = signatures(list(events))
    valid = {(int(sig["target_position"]), sig["meaning"]) for sig in checked
             if sig["state"] == "valid"}
    types = {e.position: e.type for e in events}
    if s.completion_position is not None and (s.completion_position, "approved") not in valid:
        out.add("signature", ("investigator",),
                f"sign the study completion (position {s.completion_position}) as approved",
                f"trialflow sign {s.subject} {s.completion_position} --meaning approved",
                position=s.completion_position, ref="approved")
    wanted: dict[int, str] = {}
    for sig in checked:
        later = sig["corrected_after_signing_by"]
        if sig["state"] != "earlier_version" or not later:
            continue
        newest = int(later[-1])
        if types.get(newest) == T.RECORD_VOIDED or (newest, sig["meaning"]) in valid:
            continue
        if newest == s.completion_position:
            continue
        wanted.setdefault(newest, str(sig["meaning"]))
    for position, meaning in sorted(wanted.items()):
        out.add("signature", ("investigator",),
                f"a signed record was corrected after signing: sign its current version "
                f"(position {position}) as {meaning}",
                f"trialflow sign {s.subject} {position} --meaning {meaning}",
                position=position, ref=meaning)


def first_task(tasks: Sequence[Task]) -> Task | None:
    return tasks[0] if tasks else None
