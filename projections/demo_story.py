"""`trialflow demo`: the IM19-SLE study told through the application's own commands.

Eight candidates consent a fortnight apart from `start` (default 2024-09-02); two fail
screening (weight below 40 kg; an active infection on the exclusion checklist); six enrol,
three per dose cohort. The study starts under protocol version 1 (3 subjects) and is amended
to version 2 (6 subjects) after the second enrolment; subjects consented under version 1
re-consent before their next phase change. Every infusion passes the chain-of-identity check.
In the safety window: a CRS of grade 2 and an ICANS of grade 1; an SAE (infection needing
hospitalisation) with its causality and its 24-hour report. One visit is missed, one is done
outside its window. A monitor queries a CAR-T persistence value entered ten times too high
(S-002, D10); the coordinator answers with a correction, the monitor closes the query and
marks the corrected form source-verified. The scheduler ticks every day of the simulated
calendar, and everyone is followed to D360; the investigator then signs each completion
electronically (meaning `approved`). Every user of the story has the password
`DEMO_PASSWORD`, so a newcomer can try writes on the demo database.

`subjects > 8` scales the story for benchmarks: after it, the admin loads a variant of
protocol version 2 whose enrolment cap is `subjects` and whose cohorts are scaled in
proportion (`Protocol.with_cap`), as version 102, and amends the study to it through the same
commands; then copies of completed story subjects (workflow/demo.py) take the enrolment places
7, 8, … under it, each copying a story subject of the cohort its place belongs to.

Each action is a message sent through the one executor by the user who would send it
(coordinator, investigator, monitor, admin, scheduler), each proven by a session started with
their password (the scheduler by its generated secret), so authentication, the roles, the
machine's guards and the decisions all run; the sessions end with the story. The clock is
simulated: the application's "today" and the recorded time follow the story's calendar. The
study is marked as a demo (`StudyInitialised.purpose`), the only kind `trialflow demo` may
replace and the only kind that accepts copied subjects. Deterministic: the same seed gives the
same events in the same order.
"""

from __future__ import annotations

import json
import random
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import Any

from events.schema import upgrade
from projections.notifiers import Notifier
from workflow import event_types as T
from workflow.bootstrap import build_app
from workflow.commands import messages as M
from workflow.commands.actors import Actors
from workflow.commands.executor import Executor
from workflow.demo import EXCLUSIONS, SCREENING, subject_ids
from workflow.identity import Kdf, Password, Secret, new_service_secret
from workflow.protocol import builtin_protocol, builtin_protocol_text, load_protocol_text
from workflow.study import load_study
from workflow.subject import load_subject

ADMIN, COORDINATOR, INVESTIGATOR, MONITOR = "ada", "cora", "ivan", "mona"
DATA_MANAGER, AUDITOR, SCHEDULER = "dora", "audrey", "scheduler"
SITE, TZ, UTC_OFFSET = "PKU3", "Asia/Shanghai", "+08:00"
DEFAULT_START = date(2024, 9, 2)
VISITS = ("D1", "D4", "D7", "D10", "D14", "D21", "D28", "D60", "D90", "D180", "D270", "D360")
STORY_SUBJECTS = 8
BASE_VERSION = 2  # the builtin version the story ends under and the variant is made from
VARIANT_OFFSET = 100  # the variant of version 2 is version 102
# The story subject each cohort's copies are made from: enrolled in that cohort, no query in
# its stream (copies do not renumber query ids).
TEMPLATES = {"1e6_per_kg": "S-001", "1e8_flat": "S-007"}
QUERIED = ("S-002", "D10")  # the persistence value entered ten times too high
DEMO_PASSWORD = "im19-demo-password"  # every story user's (documented in the README)
STORY_SESSION_HOURS = 24 * 800  # the story's sessions outlast its simulated calendar
# The story's password is published, so a costly hash protects nothing in a demo database:
# scrypt at N=2^10 (each hash names its parameters; real studies use identity.DEFAULT_KDF).
DEMO_KDF = Kdf(n=2**10)
COPIES_PER_MESSAGE = 40  # subjects per CopySubjects message


class SimulatedClock:
    """The story's clock: a day at the site, advanced a second per action so that recorded
    times keep the order of the actions."""

    def __init__(self, day: date) -> None:
        self.now = datetime(day.year, day.month, day.day, 1, tzinfo=UTC)  # 09:00 at the site

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now

    def to(self, day: date) -> None:
        start = datetime(day.year, day.month, day.day, 1, tzinfo=UTC)
        if start > self.now:
            self.now = start


Action = Callable[[], Any]


@dataclass
class Plan:
    actions: list[tuple[date, int, str, Action]] = field(default_factory=list)

    def at(self, day: date, label: str, action: Action) -> None:
        self.actions.append((day, len(self.actions), label, action))


@dataclass
class DemoResult:
    subjects: list[str]
    events: int
    ticks: int
    reminders_issued: int
    end: date  # the story's last day
    now: datetime  # the simulated clock when the story ended (the summary's and reports' now)
    protocol_version: int = BASE_VERSION  # in force at the end
    copies: int = 0  # subjects copied beyond the story's eight
    # each amendment's preview as the admin reviewed it (`Preview.to_json(clock=False)` with
    # its `digest`), in the order made
    previews: list[dict[str, Any]] = field(default_factory=list)


def run_demo(url: str, *, seed: int = 7, start: date = DEFAULT_START, subjects: int = 8,
             notifiers: Sequence[Notifier] = (),
             progress: Callable[[str], None] | None = None,
             advance: Callable[[int, int, str], None] | None = None) -> DemoResult:
    """`progress(line)`: one line per story step; `advance(done, total, what)`: the story's
    days played (then the copies made) of all, for a progress bar."""
    clock = SimulatedClock(start)
    ids = random.Random(f"command ids {seed}")  # same seed, same ids, same hashes
    app = build_app(url, clock=clock, store_clock=clock, kdf=DEMO_KDF,
                    new_id=lambda: str(uuid.UUID(int=ids.getrandbits(128), version=4)))
    upgrade(app.engine)
    flow = Actors(Executor(app), session_hours=STORY_SESSION_HOURS)
    rng = random.Random(seed)
    _setup(flow)
    plan = Plan()
    story = [f"S-{n:03d}" for n in range(1, STORY_SUBJECTS + 1)]
    fails = {"S-003": "weight", "S-006": "exclusion"}
    for index, subject in enumerate(story):
        consent = start + timedelta(days=14 * index)
        _candidate(plan, flow, rng, subject, consent, fails.get(subject))
    amend_on = start + timedelta(days=35)
    previews: list[dict[str, Any]] = []
    plan.at(amend_on, "protocol amended to version 2 (its preview reviewed)",
            partial(_amend, flow, 2, progress, previews))
    for subject in ("S-001", "S-002"):
        plan.at(amend_on + timedelta(days=1), f"{subject} re-consents",
                partial(flow.send, COORDINATOR, M.ReconsentSubject(subject, "2.0")))
    try:
        result = _play(flow, clock, plan, story, notifiers, progress, advance)
        result.previews = previews
        if subjects > STORY_SUBJECTS:
            _scale(flow, result, subjects, progress, advance)
    finally:
        flow.logout_all()
    return result


def _setup(flow: Actors) -> None:
    """The study (marked as a demo), its site, and the story's users: each added by the admin
    with a temporary password and then setting the documented one themselves."""
    admin = Secret(DEMO_PASSWORD)
    scheduler = new_service_secret()
    flow.executor.execute(M.InitialiseStudy(ADMIN, admin, Secret(scheduler), 1, "demo"),
                          Password(ADMIN, admin))
    flow.know(ADMIN, DEMO_PASSWORD)
    flow.know(SCHEDULER, scheduler, service=True)
    flow.send(ADMIN, M.AddSite(SITE, TZ))
    for name, role, site in ((COORDINATOR, "coordinator", SITE),
                             (INVESTIGATOR, "investigator", SITE), (MONITOR, "monitor", None),
                             (DATA_MANAGER, "data_manager", None), (AUDITOR, "auditor", None)):
        flow.add_user(ADMIN, name, role, site, DEMO_PASSWORD)


def _play(flow: Actors, clock: SimulatedClock, plan: Plan, subjects: list[str],
          notifiers: Sequence[Notifier], progress: Callable[[str], None] | None,
          advance: Callable[[int, int, str], None] | None = None) -> DemoResult:
    from projections.scheduler import tick

    actions = sorted(plan.actions, key=lambda a: (a[0], a[1]))
    day, end = actions[0][0], actions[-1][0]
    first, days = day, (end - day).days + 1
    ticks = issued = 0
    pending = list(actions)
    channels = list(notifiers) or [_QuietLog()]
    while day <= end:
        clock.to(day)
        while pending and pending[0][0] == day:
            _, _, label, action = pending.pop(0)
            action()
            if progress is not None:
                progress(f"{day}  {label}")
        report = tick(flow.executor.app, flow.credential(SCHEDULER), clock(), channels)
        ticks += 1
        issued += len(report.issued)
        day += timedelta(days=1)
        if advance is not None:
            advance((day - first).days, days, "demo: story days")
    return DemoResult(subjects, flow.executor.store.last_position(), ticks, issued, end,
                      clock.now)


# --- more subjects: a protocol variant and copies ------------------------------------------


def variant_version(base: int = BASE_VERSION) -> int:
    return VARIANT_OFFSET + base


def protocol_variant(cap: int, base: int = BASE_VERSION) -> str:
    """The text of builtin version `base` with enrolment cap `cap`, its cohorts scaled as
    `Protocol.with_cap` scales them, as version `variant_version(base)`. Checked: the text
    loads to exactly `builtin_protocol(base).with_cap(cap)` with the new version and title."""
    version = variant_version(base)
    original = builtin_protocol(base)
    scaled = original.with_cap(cap)
    title = f"{original.title} (demo variant of version {base}, cap {cap})"
    text = builtin_protocol_text(base)
    head, sep, rest = text.partition("[[enrolment.cohorts]]")
    section, sep2, tail = rest.partition("\n[screening]")
    if not sep or not sep2:
        raise RuntimeError(f"protocol version {base}: no [[enrolment.cohorts]] before "
                           "[screening]; the variant cannot be written.")
    originals = {_code(block): block for block in section.split("[[enrolment.cohorts]]")}
    blocks = [_sub(_sub(originals[c.code], r"^first = \d+$", f"first = {c.first}"),
                   r"^last = \d+$", f"last = {c.last}") for c in scaled.cohorts]
    head = _sub(head, r"^version = \d+$", f"version = {version}")
    head = _sub(head, r"^title = .*$", f"title = {json.dumps(title)}")
    head = _sub(head, r"^cap = \d+", f"cap = {cap}")
    note = (f"# Variant for `trialflow demo --subjects {cap}` (projections/demo_story.py): "
            f"version {base} with\n# enrolment.cap = {cap} and the cohorts scaled in "
            "proportion (Protocol.with_cap).\n")
    variant = note + head + "[[enrolment.cohorts]]".join(["", *blocks]) + "\n[screening]" + tail
    loaded = load_protocol_text(variant, f"demo variant of protocol version {base}")
    if loaded != replace(scaled, version=version, title=title):
        raise RuntimeError(f"The demo variant of protocol version {base} does not load as "
                           f"version {base} with cap {cap}.")
    return variant


def _code(block: str) -> str:
    found = re.search(r'^code = "([^"]+)"$', block, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"A cohort of the builtin protocol has no code: {block!r}.")
    return found.group(1)


def _sub(text: str, pattern: str, new: str) -> str:
    changed, count = re.subn(pattern, new.replace("\\", "\\\\"), text, count=1,
                             flags=re.MULTILINE)
    if count != 1:
        raise RuntimeError(f"The builtin protocol has no line matching {pattern!r}.")
    return changed


def _scale(flow: Actors, result: DemoResult, subjects: int,
           progress: Callable[[str], None] | None,
           advance: Callable[[int, int, str], None] | None = None) -> None:
    """Load and amend to the variant with cap `subjects`, then copy story subjects into the
    places 7.. (`subjects` - 2 enrolled: the story's two screen failures are not copied), with
    `CopySubjects` messages through the executor (accepted in a demo study only)."""
    version = variant_version()
    text = protocol_variant(subjects)
    flow.send(ADMIN, M.LoadProtocol(text, f"demo variant of version {BASE_VERSION}, cap "
                                          f"{subjects}"))
    _amend(flow, version, None, result.previews)
    if progress is not None:
        progress(f"{result.end}  protocol version {version} loaded (cap {subjects}) and "
                 "amended to")
    store = flow.executor.store
    study = load_study(store)
    protocol = study.protocol
    first = len(study.taken_places()) + 1
    extra = list(subject_ids(subjects, prefix="X"))[: subjects - len(result.subjects)]
    orders = range(first, first + len(extra))
    start = 0
    while start < len(extra):  # one run of consecutive places per cohort
        code = protocol.cohort_for(orders[start]).code
        end = start
        while end < len(extra) and protocol.cohort_for(orders[end]).code == code:
            end += 1
        for chunk in range(start, end, COPIES_PER_MESSAGE):
            last = min(end, chunk + COPIES_PER_MESSAGE)
            flow.send(ADMIN, M.CopySubjects(TEMPLATES[code], tuple(extra[chunk:last]),
                                            orders[chunk], version,
                                            spread_days=365, offset=chunk - start))
            if advance is not None:
                advance(last, len(extra), "demo: copied subjects")
        if progress is not None:
            progress(f"{result.end}  {extra[start]}..{extra[end - 1]}: copies of "
                     f"{TEMPLATES[code]} in cohort {code}")
        start = end
    result.subjects += extra
    result.copies = len(extra)
    result.protocol_version = version
    result.events = store.last_position()


def _amend(flow: Actors, version: int, progress: Callable[[str], None] | None,
           previews: list[dict[str, Any]]) -> None:
    """The admin previews the amendment (`protocol preview VERSION`), reviews it and puts
    the version in force with the preview's digest (`protocol amend VERSION --reviewed`)."""
    from projections.amendment import preview_of

    found = preview_of(flow.executor.store, str(version))
    data = {**found.to_json(clock=False), "digest": found.digest, "position": found.position}
    previews.append(data)
    if progress is not None:
        for line in preview_summary(data):
            progress(f"{flow.executor.clock().date()}  {line}")
    flow.send(ADMIN, M.AmendProtocol(version, found.digest))


def preview_summary(data: dict[str, Any]) -> list[str]:
    """A few lines of a preview: the protocol's changes, the subjects' changes by model."""
    version = data["candidate"]["version"]
    lines = [f"protocol version {version} previewed at log position {data['position']}: "
             f"{data['changes']} change(s), digest {data['digest'][:12]}…"]
    from workflow.amendment import shown

    for change in data["protocol_changes"]:
        lines.append(f"  protocol {change['item']}: {shown(change['before'])} -> "
                     f"{shown(change['after'])}")
    for subject in data["subjects"]:
        models: dict[str, int] = {}
        for change in subject["changes"]:
            models[change["model"]] = models.get(change["model"], 0) + 1
        what = ", ".join(f"{model} {count}" for model, count in models.items()) or "none"
        head = f"  {subject['subject']} ({subject['phase']})"
        if subject["reconsent"]:
            head += f" re-consents to version {version}"
        lines.append(f"{head}; changes: {what}")
    return lines


class _QuietLog:
    """The demo's log channel: reminders are recorded as delivered to the log without
    printing a line each (the demo prints its own summary)."""

    channel = "log"

    def send(self, message: Any) -> None:
        return None


def _candidate(plan: Plan, flow: Actors, rng: random.Random, subject: str, consent: date,
               fails: str | None) -> None:
    c, inv = COORDINATOR, INVESTIGATOR
    send = flow.send
    plan.at(consent, f"{subject} consents", partial(send, c, M.ConsentSubject(
        subject, consent, "1.0" if consent < DEFAULT_START + timedelta(days=35) else "2.0")))
    weight = 38.0 if fails == "weight" else round(rng.uniform(48, 72), 1)
    height = round(rng.uniform(152, 175))
    for form, tokens in SCREENING:
        values = list(tokens)
        if form == "vitals":
            values = [f"weight_kg={weight}", f"height_cm={height}", "temperature_c=36.7"]
        if form == "exclusion_checklist" and fails == "exclusion":
            values = [f"{code}={'yes' if code == 'active_infection' else 'no'}"
                      for code in EXCLUSIONS]
        plan.at(consent, f"{subject} {form}", partial(send, c, M.RecordForm(
            subject, form, tuple(values), consent)))
    if fails is not None:
        reason = "weight" if fails == "weight" else "active_infection"
        note = (f"Weight {weight} kg at screening, below the protocol minimum."
                if fails == "weight" else "Active infection on the exclusion checklist.")
        plan.at(consent + timedelta(days=5), f"{subject} fails screening ({reason})",
                partial(send, c, M.RecordScreenFailure(subject, reason, note=note)))
        return
    plan.at(consent + timedelta(days=3), f"{subject} eligibility confirmed",
            partial(send, inv, M.ConfirmEligibility(subject)))
    coi = f"COI-{subject}-{rng.randrange(10_000, 99_999)}"
    plan.at(consent + timedelta(days=7), f"{subject} leukapheresis",
            partial(send, c, M.RecordLeukapheresis(subject, consent + timedelta(days=7), coi)))
    plan.at(consent + timedelta(days=20), f"{subject} product released",
            partial(send, c, M.ReleaseProduct(subject, f"LOT-{subject}", coi,
                                              viable_cells=3e8)))
    d0 = consent + timedelta(days=30)
    bsa = round((height * weight / 3600) ** 0.5, 2)
    for offset in (-5, -4, -3):
        day = d0 + timedelta(days=offset)
        cyclophosphamide = round(1000 * bsa, 1) if offset == -3 else 0.0
        plan.at(day, f"{subject} lymphodepletion D{offset}",
                partial(send, c, M.GiveLymphodepletion(subject, day, round(25 * bsa, 1),
                                                       cyclophosphamide)))
    plan.at(d0, f"{subject} CAR-T infusion (D0)", lambda: _infuse(flow, subject, d0, coi,
                                                                   weight))
    _safety(plan, flow, subject, d0)
    _follow_up(plan, flow, rng, subject, d0)


def _infuse(flow: Actors, subject: str, d0: date, coi: str, weight: float) -> None:
    store = flow.executor.store
    order = load_subject(store, subject).enrolment_order
    assert order is not None
    cells = load_study(store).protocol.cohort_for(order).target_cells(weight)
    flow.send(COORDINATOR, M.Infuse(subject, datetime.fromisoformat(
        f"{d0}T10:00:00{UTC_OFFSET}"), cells, coi))


def _ae(flow: Actors, subject: str, onset: date, tokens: list[str]) -> int:
    outcome = flow.send(COORDINATOR, M.RecordForm(subject, "adverse_event", (
        f"onset_date={onset}", *tokens), onset))
    return outcome.result.positions[0]


def _safety(plan: Plan, flow: Actors, subject: str, d0: date) -> None:
    inv = INVESTIGATOR
    if subject == "S-001":  # CRS grade 2 on D1
        onset = d0 + timedelta(days=1)

        def crs() -> None:
            at = _ae(flow, subject, onset, ["term=cytokine release syndrome", "category=crs",
                                            "grade=2", "temperature_c=39.2",
                                            "hypotension=no_vasopressors", "hypoxia=none"])
            flow.send(inv, M.RecordForm(subject, "causality", (f"ae_position={at}",
                                                               "relatedness=definite")))
        plan.at(onset, f"{subject} CRS grade 2", crs)
    if subject == "S-002":  # ICANS grade 1 on D5
        onset = d0 + timedelta(days=5)

        def icans() -> None:
            at = _ae(flow, subject, onset, ["term=immune effector cell-associated "
                                            "neurotoxicity syndrome", "category=icans",
                                            "grade=1", "ice_score=8"])
            flow.send(inv, M.RecordForm(subject, "causality", (f"ae_position={at}",
                                                               "relatedness=probable")))
        plan.at(onset, f"{subject} ICANS grade 1", icans)
    if subject == "S-004":  # SAE: infection with hospitalisation on D12, reported in time
        onset = d0 + timedelta(days=12)

        def sae() -> None:
            at = _ae(flow, subject, onset, [
                "term=pneumonia", "category=infection", "grade=3",
                "serious_criteria=hospitalisation", "expected=yes",
                f"awareness_at={onset}T08:30:00{UTC_OFFSET}"])
            flow.send(inv, M.RecordForm(subject, "causality", (f"ae_position={at}",
                                                               "relatedness=possible")))
            positions.append(at)

        def report() -> None:  # the next morning: within 24 hours of awareness
            flow.send(COORDINATOR, M.RecordForm(subject, "sae_report", (
                f"ae_position={positions[0]}", "report_kind=initial",
                f"sent_at={onset + timedelta(days=1)}T08:15:00{UTC_OFFSET}"),
                onset + timedelta(days=1)))
        positions: list[int] = []
        plan.at(onset, f"{subject} SAE (pneumonia, hospitalised)", sae)
        plan.at(onset + timedelta(days=1), f"{subject} SAE reported within 24 hours", report)


def _follow_up(plan: Plan, flow: Actors, rng: random.Random, subject: str, d0: date) -> None:
    c = COORDINATOR
    peak = rng.uniform(8_000, 40_000)
    for visit in VISITS:
        day_number = int(visit[1:])
        shift = 3 if (subject, visit) == ("S-002", "D14") else 0  # outside D14 +-2
        day = d0 + timedelta(days=day_number + shift)
        if (subject, visit) == ("S-005", "D60"):
            late = day + timedelta(days=9)  # recorded after the overdue alert went out
            plan.at(late, f"{subject} {visit} missed", partial(
                flow.send, c, M.RecordVisit(subject, visit, "missed", late,
                                            "subject travelling abroad during the window")))
            continue
        activity = ["arthritis", "proteinuria"] if day_number < 10 else []
        activity += ["low_complement"] if day_number < 60 else []
        activity += rng.choice([[], [], ["alopecia"], ["rash"], ["mucosal_ulcers"]]) \
            if day_number >= 60 else []
        copies = 0.0 if day_number >= 360 else round(
            peak * (day_number / 10 if day_number < 10 else (10 / day_number) ** 1.6), 1)
        upcr = round(max(0.1, 1.2 - day_number / 200 + rng.uniform(-0.05, 0.05)), 2)

        entered = copies * 10 if (subject, visit) == QUERIED else copies  # a slipped point

        def visit_day(v: str = visit, d: date = day, flags: list[str] = activity,
                      cp: float = entered, u: float = upcr) -> None:
            flow.send(c, M.RecordForm(subject, "disease_activity", (
                *flags, "pga=0.5", "new_activity=no", "hemolytic_anemia=no", "gi_activity=no",
                "maintenance_tolerated=yes"), d, v))
            flow.send(c, M.RecordForm(subject, "labs", (f"upcr_g_per_g={u}",
                                                        "egfr_ml_min=96"), d, v))
            flow.send(c, M.RecordForm(subject, "cart_persistence",
                                      (f"copies_per_ug={round(cp, 1)}",), d, v))
            if v in ("D180", "D360"):
                flow.send(c, M.RecordForm(subject, "medication", (
                    "drug=prednisone", "drug_class=glucocorticoid", "dose_mg_per_day=5",
                    f"start_date={d - timedelta(days=60)}"), d, v))
            flow.send(c, M.RecordVisit(subject, v, "done", d))
        plan.at(day, f"{subject} visit {visit}", visit_day)
        if (subject, visit) == QUERIED:
            _query(plan, flow, subject, visit, copies, d0)
    plan.at(d0 + timedelta(days=375), f"{subject} completes the study",
            partial(flow.send, c, M.CompleteStudy(subject)))
    plan.at(d0 + timedelta(days=376), f"{subject} investigator signs the completion",
            partial(_sign_completion, flow, subject))


def _sign_completion(flow: Actors, subject: str) -> None:
    """The investigator's electronic signature (meaning `approved`) on the subject's
    completion, bound to that event's hash; a signature takes the password itself."""
    completed = next(e for e in flow.executor.store.read_stream(subject)
                     if e.type == T.SUBJECT_COMPLETED)
    flow.send(INVESTIGATOR, M.Sign(subject, completed.position, "approved"))


def _query(plan: Plan, flow: Actors, subject: str, visit: str, copies: float,
           d0: date) -> None:
    """The monitor's query on the persistence value of `visit` (entered ten times too high),
    raised at the D28 monitoring visit, answered by the coordinator with a correction two days
    later; the monitor then closes it and source-verifies the corrected form."""
    asked: list[str] = []

    def form_position() -> int:
        return next(f.position for f in load_subject(flow.executor.store, subject).forms.values()
                    if f.form == "cart_persistence" and f.visit == visit)

    def open_query() -> None:
        outcome = flow.send(MONITOR, M.OpenQuery(
            subject, form_position(), "copies_per_ug",
            f"{visit} is ten times the D7 and D14 values: please check against the qPCR "
            "report."))
        asked.append(outcome.summary["query"])

    def answer() -> None:
        flow.send(COORDINATOR, M.AnswerQuery(
            asked[0], "Transcription error, the decimal point slipped; corrected from the qPCR "
            "report.", (f"copies_per_ug={round(copies, 1)}",),
            f"qPCR report of {visit}: {round(copies, 1)} copies/ug (entered ten times too "
            "high)"))

    def close() -> None:
        flow.send(MONITOR, M.CloseQuery(asked[0]))
        flow.send(MONITOR, M.VerifySource(subject, form_position()))
    review = d0 + timedelta(days=28)
    plan.at(review, f"{subject} monitor queries the {visit} persistence value", open_query)
    plan.at(review + timedelta(days=2), f"{subject} query answered with a correction", answer)
    plan.at(review + timedelta(days=3), f"{subject} query closed, form source-verified", close)
