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

Each action runs as the user who would do it (coordinator, investigator, monitor, admin,
scheduler) through `Workflow`, so the machine's guards and the roles decide, and the clock is
simulated: the application's "today" and the recorded time follow the story's calendar.
Deterministic: the same seed gives the same events in the same order.
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
from workflow.commands import Workflow
from workflow.demo import EXCLUSIONS, SCREENING, Template, clone_subjects, subject_ids, template_of
from workflow.monitoring import Monitoring
from workflow.protocol import builtin_protocol, builtin_protocol_text, load_protocol_text
from workflow.signing import Signing

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


def run_demo(url: str, *, seed: int = 7, start: date = DEFAULT_START, subjects: int = 8,
             notifiers: Sequence[Notifier] = (),
             progress: Callable[[str], None] | None = None) -> DemoResult:
    clock = SimulatedClock(start)
    ids = random.Random(f"command ids {seed}")  # same seed, same ids, same hashes
    app = build_app(url, clock=clock, store_clock=clock,
                    new_id=lambda: str(uuid.UUID(int=ids.getrandbits(128), version=4)))
    upgrade(app.engine)
    flow = Workflow(app)
    rng = random.Random(seed)
    _setup(flow)
    plan = Plan()
    story = [f"S-{n:03d}" for n in range(1, STORY_SUBJECTS + 1)]
    fails = {"S-003": "weight", "S-006": "exclusion"}
    for index, subject in enumerate(story):
        consent = start + timedelta(days=14 * index)
        _candidate(plan, flow, rng, subject, consent, fails.get(subject))
    amend_on = start + timedelta(days=35)
    plan.at(amend_on, "protocol amended to version 2",
            lambda: flow.amend_protocol(ADMIN, 2, None))
    for subject in ("S-001", "S-002"):
        plan.at(amend_on + timedelta(days=1), f"{subject} re-consents",
                partial(flow.reconsent, COORDINATOR, subject, None, "2.0", None))
    result = _play(flow, clock, plan, story, notifiers, progress)
    if subjects > STORY_SUBJECTS:
        _scale(flow, result, subjects, progress)
    return result


def _setup(flow: Workflow) -> None:
    flow.initialise(ADMIN, protocol_version=1)
    flow.add_site(ADMIN, SITE, TZ, None)
    for name, role, site in ((COORDINATOR, "coordinator", SITE),
                             (INVESTIGATOR, "investigator", SITE), (MONITOR, "monitor", None),
                             (DATA_MANAGER, "data_manager", None), (AUDITOR, "auditor", None)):
        flow.add_user(ADMIN, name, role, site, None)
    signing = Signing(flow)
    for name in (ADMIN, COORDINATOR, INVESTIGATOR, MONITOR, DATA_MANAGER, AUDITOR):
        signing.change_password(ADMIN, name, DEMO_PASSWORD, None, flow.clock())


def _play(flow: Workflow, clock: SimulatedClock, plan: Plan, subjects: list[str],
          notifiers: Sequence[Notifier], progress: Callable[[str], None] | None) -> DemoResult:
    from projections.scheduler import tick

    actions = sorted(plan.actions, key=lambda a: (a[0], a[1]))
    day, end = actions[0][0], actions[-1][0]
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
        report = tick(flow.store.engine, flow.store, clock(), SCHEDULER, channels)
        ticks += 1
        issued += len(report.issued)
        day += timedelta(days=1)
    return DemoResult(subjects, flow.store.last_position(), ticks, issued, end, clock.now)


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


def _scale(flow: Workflow, result: DemoResult, subjects: int,
           progress: Callable[[str], None] | None) -> None:
    """Load and amend to the variant with cap `subjects`, then copy story subjects into the
    places 7.. (`subjects` - 2 enrolled: the story's two screen failures are not copied)."""
    version = variant_version()
    text = protocol_variant(subjects)
    flow.load_protocol(ADMIN, text, f"demo variant of version {BASE_VERSION}, cap {subjects}",
                       None)
    flow.amend_protocol(ADMIN, version, None)
    if progress is not None:
        progress(f"{result.end}  protocol version {version} loaded (cap {subjects}) and "
                 "amended to")
    protocol = flow.study().protocol
    first = len(flow.study().taken_places()) + 1
    extra = list(subject_ids(subjects, prefix="X"))[: subjects - len(result.subjects)]
    orders = range(first, first + len(extra))
    templates: dict[str, Template] = {}
    for code in {protocol.cohort_for(order).code for order in orders}:
        templates[code] = _as_enrolled_under(template_of(flow.store, TEMPLATES[code]), version)
    start = 0
    while start < len(extra):  # one run of consecutive places per cohort
        code = protocol.cohort_for(orders[start]).code
        end = start
        while end < len(extra) and protocol.cohort_for(orders[end]).code == code:
            end += 1
        clone_subjects(flow.store, templates[code], extra[start:end],
                       first_order=orders[start])
        if progress is not None:
            progress(f"{result.end}  {extra[start]}..{extra[end - 1]}: copies of "
                     f"{TEMPLATES[code]} in cohort {code}")
        start = end
    result.subjects += extra
    result.copies = len(extra)
    result.protocol_version = version
    result.events = flow.store.last_position()


def _as_enrolled_under(template: Template, version: int) -> Template:
    """A story subject's history as if it had consented under protocol `version`: its
    re-consent and signatures left out, every `protocol_version` in payloads set to `version`
    (consent, lymphodepletion, infusion), so the copies' places are valid under the protocol
    in force."""
    events = []
    for event in template.events:
        if event.type in (T.SUBJECT_RECONSENTED, T.SIGNATURE_RECORDED):
            continue  # a copied signature would name the template's hash, not the copy's
        if "protocol_version" in event.payload:
            payload = {**event.payload, "protocol_version": version}
            event = replace(event, payload_text=json.dumps(payload, sort_keys=True,
                                                           separators=(",", ":")))
        events.append(event)
    return Template(tuple(events), template.place)


class _QuietLog:
    """The demo's log channel: reminders are recorded as delivered to the log without
    printing a line each (the demo prints its own summary)."""

    channel = "log"

    def send(self, message: Any) -> None:
        return None


def _candidate(plan: Plan, flow: Workflow, rng: random.Random, subject: str, consent: date,
               fails: str | None) -> None:
    c, inv = COORDINATOR, INVESTIGATOR
    plan.at(consent, f"{subject} consents", lambda: flow.consent(
        c, subject, consent, "1.0" if consent < DEFAULT_START + timedelta(days=35) else "2.0",
        None))
    weight = 38.0 if fails == "weight" else round(rng.uniform(48, 72), 1)
    height = round(rng.uniform(152, 175))
    for form, tokens in SCREENING:
        values = list(tokens)
        if form == "vitals":
            values = [f"weight_kg={weight}", f"height_cm={height}", "temperature_c=36.7"]
        if form == "exclusion_checklist" and fails == "exclusion":
            values = [f"{code}={'yes' if code == 'active_infection' else 'no'}"
                      for code in EXCLUSIONS]
        plan.at(consent, f"{subject} {form}", partial(flow.record, c, subject, form, values,
                                                      consent, None, None))
    if fails is not None:
        reason = "weight" if fails == "weight" else "active_infection"
        plan.at(consent + timedelta(days=5), f"{subject} fails screening ({reason})",
                lambda: flow.screen_fail(c, subject, reason, None))
        return
    plan.at(consent + timedelta(days=3), f"{subject} eligibility confirmed",
            lambda: flow.confirm_eligibility(inv, subject, None))
    coi = f"COI-{subject}-{rng.randrange(10_000, 99_999)}"
    plan.at(consent + timedelta(days=7), f"{subject} leukapheresis",
            lambda: flow.leukapheresis(c, subject, consent + timedelta(days=7), coi, None))
    plan.at(consent + timedelta(days=20), f"{subject} product released",
            lambda: flow.release(c, subject, f"LOT-{subject}", coi, failed=False, reason=None,
                                 viable_cells=3e8, command_id=None))
    d0 = consent + timedelta(days=30)
    bsa = round((height * weight / 3600) ** 0.5, 2)
    for offset in (-5, -4, -3):
        day = d0 + timedelta(days=offset)
        cyclophosphamide = round(1000 * bsa, 1) if offset == -3 else 0.0
        plan.at(day, f"{subject} lymphodepletion D{offset}",
                partial(flow.lymphodepletion, c, subject, day, round(25 * bsa, 1),
                        cyclophosphamide, deviation=False, reason=None, command_id=None))
    plan.at(d0, f"{subject} CAR-T infusion (D0)", lambda: _infuse(flow, subject, d0, coi,
                                                                   weight))
    _safety(plan, flow, subject, d0)
    _follow_up(plan, flow, rng, subject, d0)


def _infuse(flow: Workflow, subject: str, d0: date, coi: str, weight: float) -> None:
    order = flow.subject(subject).enrolment_order
    assert order is not None
    cells = flow.study().protocol.cohort_for(order).target_cells(weight)
    flow.infuse(COORDINATOR, subject, datetime.fromisoformat(f"{d0}T10:00:00{UTC_OFFSET}"),
                cells, coi, deviation=False, reason=None, command_id=None)


def _ae(flow: Workflow, subject: str, onset: date, tokens: list[str]) -> int:
    flow.record(COORDINATOR, subject, "adverse_event", [f"onset_date={onset}", *tokens], onset,
                None, None)
    return max(f.position for f in flow.subject(subject).forms.values()
               if f.form == "adverse_event")


def _safety(plan: Plan, flow: Workflow, subject: str, d0: date) -> None:
    inv = INVESTIGATOR
    if subject == "S-001":  # CRS grade 2 on D1
        onset = d0 + timedelta(days=1)

        def crs() -> None:
            at = _ae(flow, subject, onset, ["term=cytokine release syndrome", "category=crs",
                                            "grade=2", "temperature_c=39.2",
                                            "hypotension=no_vasopressors", "hypoxia=none"])
            flow.record(inv, subject, "causality", [f"ae_position={at}",
                                                    "relatedness=definite"], None, None, None)
        plan.at(onset, f"{subject} CRS grade 2", crs)
    if subject == "S-002":  # ICANS grade 1 on D5
        onset = d0 + timedelta(days=5)

        def icans() -> None:
            at = _ae(flow, subject, onset, ["term=immune effector cell-associated "
                                            "neurotoxicity syndrome", "category=icans",
                                            "grade=1", "ice_score=8"])
            flow.record(inv, subject, "causality", [f"ae_position={at}",
                                                    "relatedness=probable"], None, None, None)
        plan.at(onset, f"{subject} ICANS grade 1", icans)
    if subject == "S-004":  # SAE: infection with hospitalisation on D12, reported in time
        onset = d0 + timedelta(days=12)

        def sae() -> None:
            at = _ae(flow, subject, onset, [
                "term=pneumonia", "category=infection", "grade=3",
                "serious_criteria=hospitalisation", "expected=yes",
                f"awareness_at={onset}T08:30:00{UTC_OFFSET}"])
            flow.record(inv, subject, "causality", [f"ae_position={at}",
                                                    "relatedness=possible"], None, None, None)
            positions.append(at)

        def report() -> None:  # the next morning: within 24 hours of awareness
            flow.record(COORDINATOR, subject, "sae_report", [
                f"ae_position={positions[0]}", "report_kind=initial",
                f"sent_at={onset + timedelta(days=1)}T08:15:00{UTC_OFFSET}"],
                onset + timedelta(days=1), None, None)
        positions: list[int] = []
        plan.at(onset, f"{subject} SAE (pneumonia, hospitalised)", sae)
        plan.at(onset + timedelta(days=1), f"{subject} SAE reported within 24 hours", report)


def _follow_up(plan: Plan, flow: Workflow, rng: random.Random, subject: str, d0: date) -> None:
    c = COORDINATOR
    peak = rng.uniform(8_000, 40_000)
    for visit in VISITS:
        day_number = int(visit[1:])
        shift = 3 if (subject, visit) == ("S-002", "D14") else 0  # outside D14 +-2
        day = d0 + timedelta(days=day_number + shift)
        if (subject, visit) == ("S-005", "D60"):
            late = day + timedelta(days=9)  # recorded after the overdue alert went out
            plan.at(late, f"{subject} {visit} missed", partial(flow.visit, c, subject, visit,
                                                                "missed", late, None))
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
            flow.record(c, subject, "disease_activity", [
                *flags, "pga=0.5", "new_activity=no", "hemolytic_anemia=no", "gi_activity=no",
                "maintenance_tolerated=yes"], d, v, None)
            flow.record(c, subject, "labs", [f"upcr_g_per_g={u}", "egfr_ml_min=96"], d, v,
                        None)
            flow.record(c, subject, "cart_persistence", [f"copies_per_ug={round(cp, 1)}"], d, v,
                        None)
            if v in ("D180", "D360"):
                flow.record(c, subject, "medication", [
                    "drug=prednisone", "drug_class=glucocorticoid", "dose_mg_per_day=5",
                    f"start_date={d - timedelta(days=60)}"], d, v, None)
            flow.visit(c, subject, v, "done", d, None)
        plan.at(day, f"{subject} visit {visit}", visit_day)
        if (subject, visit) == QUERIED:
            _query(plan, flow, subject, visit, copies, d0)
    plan.at(d0 + timedelta(days=375), f"{subject} completes the study",
            lambda: flow.complete(c, subject, None))
    plan.at(d0 + timedelta(days=376), f"{subject} investigator signs the completion",
            partial(_sign_completion, flow, subject))


def _sign_completion(flow: Workflow, subject: str) -> None:
    """The investigator's electronic signature (meaning `approved`) on the subject's
    completion, bound to that event's hash (workflow/signing.py)."""
    completed = next(e for e in flow.store.read_stream(subject)
                     if e.type == T.SUBJECT_COMPLETED)
    Signing(flow).sign(INVESTIGATOR, subject, completed.position, "approved", None, flow.clock)


def _query(plan: Plan, flow: Workflow, subject: str, visit: str, copies: float,
           d0: date) -> None:
    """The monitor's query on the persistence value of `visit` (entered ten times too high),
    raised at the D28 monitoring visit, answered by the coordinator with a correction two days
    later; the monitor then closes it and source-verifies the corrected form."""
    monitoring = Monitoring(flow)
    asked: list[str] = []

    def form_position() -> int:
        return next(f.position for f in flow.subject(subject).forms.values()
                    if f.form == "cart_persistence" and f.visit == visit)

    def open_query() -> None:
        outcome = monitoring.open_query(
            MONITOR, subject, form_position(), "copies_per_ug",
            f"{visit} is ten times the D7 and D14 values: please check against the qPCR "
            "report.", None)
        asked.append(outcome.summary["query"])

    def answer() -> None:
        monitoring.answer_query(
            COORDINATOR, asked[0], "Transcription error, the decimal point slipped; corrected "
            "from the qPCR report.", [f"copies_per_ug={round(copies, 1)}"],
            f"qPCR report of {visit}: {round(copies, 1)} copies/ug (entered ten times too "
            "high)", None)

    def close() -> None:
        monitoring.close_query(MONITOR, asked[0], None, None)
        monitoring.verify_source(MONITOR, subject, form_position(), None)
    review = d0 + timedelta(days=28)
    plan.at(review, f"{subject} monitor queries the {visit} persistence value", open_query)
    plan.at(review + timedelta(days=2), f"{subject} query answered with a correction", answer)
    plan.at(review + timedelta(days=3), f"{subject} query closed, form source-verified", close)
