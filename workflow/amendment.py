"""What a protocol amendment would change, subject by subject, before it takes effect.

A pure function of the log (each subject's stream and the study), a candidate protocol text
and nothing else: `preview` folds every subject twice, as it stands and with the candidate,
and lists per subject what the clinical rules would then say differently. Nothing is written;
the same inputs give the same preview and the same `Preview.digest` (sha256 of its canonical
JSON), which `protocol amend --reviewed DIGEST` records so that an auditor sees what the
admin saw (docs/amendments.md).

The candidate fold (docs/amendments.md, "What the preview compares"):
- the candidate is loaded and in force: eligibility is judged under it (`confirm-eligibility`
  uses the version in force), for every subject;
- every subject still on study (not completed, screen-failed or off study) follows it, as it
  would once re-consented: its whole history is judged under the candidate in place of the
  versions it followed (schedule, windows, deviations, dose cohort, safety window, SAE clocks,
  endpoints, task inputs, planned reminders). Completed and off-study subjects keep their
  versions: they will not re-consent.

Clinical rules are called here, never restated: `planned_visits`, `deviations`,
`adverse_events`, `safety_window`, `sae_clocks`, `subject_endpoints`, `task_inputs`,
`planned_obligations`, `evaluate_eligibility_on`, `Protocol.cohort_for`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import date, datetime
from functools import cached_property
from typing import Any, Final

from events.envelope import RecordedEvent
from workflow.clinical_time import local_date
from workflow.deviations import deviations
from workflow.dose_basis import dosing_weight
from workflow.eligibility import eligibility_day, evaluate_eligibility_on
from workflow.endpoints import subject_endpoints
from workflow.errors import InvalidInput, RuleViolation
from workflow.phases import TERMINAL
from workflow.protocol import Protocol, builtin_protocol_text, load_protocol_text, protocol_hash
from workflow.reminders import planned_obligations
from workflow.safety import adverse_events, sae_clocks, safety_window
from workflow.schedule import SCREENING, planned_visits
from workflow.study import Study
from workflow.subject import SubjectState, copy_subject, fold_subject
from workflow.tasks import subject_tasks, task_inputs

# The read models a change belongs to, in the order a reviewer reads them.
MODELS: Final[tuple[str, ...]] = ("eligibility", "cohort", "visits", "deviations", "safety",
                                  "reminders", "tasks", "endpoints")
PROTOCOL_FIELDS_NOT_COMPARED: Final = frozenset({"version", "title"})
_VERSION_NAMED: Final = re.compile(r" in protocol version \d+")


@dataclass(frozen=True)
class Candidate:
    """A protocol text proposed to be put in force."""

    version: int
    text: str
    source: str
    protocol: Protocol

    @property
    def hash(self) -> str:
        return protocol_hash(self.text)


def candidate_from_text(study: Study, text: str, source: str) -> Candidate:
    """A protocol file's text as a candidate; a version already loaded with other content is
    refused, as `protocol load` refuses it."""
    protocol = load_protocol_text(text, source)
    known = study.protocol_texts.get(protocol.version)
    if known is not None and protocol_hash(known) != protocol_hash(text):
        raise RuleViolation(f"Protocol version {protocol.version} is already loaded with other "
                            "content; give the new file a new version.",
                            rule="protocol_version_exists", field="version")
    return Candidate(protocol.version, text, source, protocol)


def candidate_of(study: Study, version: int) -> Candidate:
    """Version `version` as loaded into the study, else the builtin file of that version."""
    text = study.protocol_texts.get(version)
    source = "loaded"
    if text is None:
        try:
            text = builtin_protocol_text(version)
        except InvalidInput:
            raise RuleViolation(f"Protocol version {version} is not loaded; load it with "
                                "`trialflow protocol load FILE` first.",
                                rule="protocol_not_loaded", field="version") from None
        source = "builtin"
    return Candidate(version, text, source, load_protocol_text(text, source))


def with_candidate(study: Study, candidate: Candidate) -> Study:
    """The study with the candidate loaded and in force (a copy; `study` is untouched)."""
    return replace(study, protocol_texts={**study.protocol_texts,
                                          candidate.version: candidate.text},
                   protocol_version=candidate.version)


def follows_candidate(state: SubjectState) -> bool:
    """A subject still on study re-consents to an amendment and follows it."""
    return state.phase not in TERMINAL


def under_version(state: SubjectState, version: int) -> SubjectState:
    """The subject with `version` in place of every protocol version it followed."""
    moved = copy_subject(state)
    moved.protocol_version = version
    moved.protocol_versions = [(position, version) for position, _ in state.protocol_versions]
    return moved


# --- what the rules say about one subject ---------------------------------------------------


Outlook = dict[str, dict[str, Any]]  # model -> item -> value (JSON)


def outlook(study: Study, state: SubjectState, events: Sequence[RecordedEvent]) -> Outlook:
    """What the clinical rules say about a consented subject, item by item, clock-free (the
    day eligibility is judged on is the read model's: the last event's day at the site). A
    rule that cannot judge the subject under this protocol (a place beyond its enrolment cap,
    a visit not in its schedule) says so as the model's one item."""
    subject = _Judged(study, state, events)
    out: Outlook = {}
    for model, rule in _RULES:
        found: dict[str, Any] = {}
        try:
            rule(found, subject)
        except (InvalidInput, RuleViolation) as error:
            found = {"cannot be judged": str(error)}
        out[model] = found
    return out


@dataclass
class _Judged:
    """One subject under one study, with the rule outputs several models share."""

    study: Study
    state: SubjectState
    events: Sequence[RecordedEvent]

    @cached_property
    def protocol(self) -> Protocol:
        return self.study.protocol_of(self.state.protocol_version)

    @cached_property
    def visits(self) -> list[dict[str, Any]]:
        return planned_visits(self.state, self.study.protocol_of)

    @cached_property
    def adverse_events(self) -> list[dict[str, Any]]:
        return adverse_events(self.state, self.protocol)

    @cached_property
    def clocks(self) -> list[dict[str, Any]]:
        return sae_clocks(self.state, self.protocol)


Rule = Callable[[dict[str, Any], _Judged], None]


def _eligibility(out: dict[str, Any], j: _Judged) -> None:
    day = eligibility_day(j.study, j.state, local_date(j.events[-1].recorded_at,
                                                       j.study.zone(j.state.site)))
    result = evaluate_eligibility_on(j.study, j.state, day)
    out["overall"] = result.overall
    for criterion in result.criteria:
        out[criterion.code] = criterion.status
    for code, answer in result.exclusions:
        out[f"exclusion {code}"] = answer or "unanswered"


def _visits(out: dict[str, Any], j: _Judged) -> None:
    for row in j.visits:
        out[row["visit"]] = _visit_text(row)


def _deviation_rows(out: dict[str, Any], j: _Judged) -> None:
    _deviations(out, deviations(j.state, j.study.protocol_of))


def _safety(out: dict[str, Any], j: _Judged) -> None:
    window = safety_window(j.state, j.protocol)
    if window is not None:
        out["safety window"] = f"{window['window_start']}..{window['window_end']}"
    for ae in j.adverse_events:
        out[f"AE at position {ae['position']}"] = (
            f"{ae['period']}" + (", counts for the primary endpoint"
                                 if ae["counts_for_primary"] else ""))
    for clock in j.clocks:
        out[f"{clock['clock']} clock of the AE at position {clock['ae_position']}"] = (
            f"due {clock['due_at']}" + ("" if clock["stopped_at"] is None
                                        else f", stopped {clock['stopped_at']}"))


def _reminders(out: dict[str, Any], j: _Judged) -> None:
    for _, obligation in sorted(planned_obligations(j.visits, j.clocks)):
        out[obligation] = "planned"


def _tasks(out: dict[str, Any], j: _Judged) -> None:
    inputs = task_inputs(j.study, j.state, j.events, visits=j.visits, aes=j.adverse_events,
                         clocks=j.clocks)
    for kind, ref, action in (*((t.kind, t.ref, t.action) for t in inputs.standing),
                              *((d["kind"], d.get("ref"), d["action"]) for d in inputs.dated)):
        out[f"{kind} {ref}" if ref else kind] = action


def _endpoints(out: dict[str, Any], j: _Judged) -> None:
    _flatten(out, "", subject_endpoints(j.state, j.protocol))


def _cohort(out: dict[str, Any], j: _Judged) -> None:
    state, protocol = j.state, j.protocol
    if state.enrolment_order is None:
        return
    try:
        cohort = protocol.cohort_for(state.enrolment_order)
    except InvalidInput:
        out["cohort"] = (f"none: place {state.enrolment_order} is outside the enrolment cap "
                         f"{protocol.enrolment_cap}")
        return
    out["cohort"] = cohort.code
    weight = dosing_weight(state)
    if cohort.dose_per_kg is not None:
        dose = f"{cohort.dose_per_kg:g} cells/kg"
        if weight is not None:
            dose += f" ({cohort.target_cells(weight):.3g} cells at {weight:g} kg)"
    else:
        dose = f"{cohort.flat_dose:g} cells (flat)"
    out["CAR-T dose"] = dose


_RULES: Final[tuple[tuple[str, Rule], ...]] = (
    ("eligibility", _eligibility), ("cohort", _cohort), ("visits", _visits),
    ("deviations", _deviation_rows), ("safety", _safety), ("reminders", _reminders),
    ("tasks", _tasks), ("endpoints", _endpoints),
)


def _visit_text(row: Mapping[str, Any]) -> str:
    text = f"target {row['target_date']}, window {row['window_start']}..{row['window_end']}"
    if row["recorded_status"] == "done":
        done = date.fromisoformat(row["done_on"])
        inside = (date.fromisoformat(row["window_start"]) <= done
                  <= date.fromisoformat(row["window_end"]))
        text += f"; done {row['done_on']}" + ("" if inside or row["visit"] == SCREENING
                                              else ", outside the window")
    elif row["recorded_status"] == "missed":
        text += f"; missed ({row['missed_reason']})"
    return text


def _deviations(out: dict[str, Any], rows: Iterable[Mapping[str, Any]]) -> None:
    for row in rows:
        item = f"{row['kind']} at position {row['position']}"
        if row["visit"]:
            item += f" ({row['visit']})"
        key, n = item, 1
        while key in out:
            n += 1
            key = f"{item} #{n}"
        # the version a deviation was judged under is the point of the comparison, not news
        out[key] = _VERSION_NAMED.sub("", str(row["detail"]))


def _flatten(out: dict[str, Any], prefix: str, value: Any) -> None:
    if isinstance(value, Mapping):
        for key in sorted(value):
            if key == "protocol_version":  # which version judged: the comparison itself
                continue
            _flatten(out, f"{prefix}.{key}" if prefix else str(key), value[key])
    elif isinstance(value, list | tuple):
        if all(not isinstance(v, Mapping | list | tuple) for v in value):
            out[prefix] = ", ".join(str(v) for v in value) if value else "(none)"
            return
        for n, item in enumerate(value):
            key = next((k for k in ("visit", "code", "form") if isinstance(item, Mapping)
                        and item.get(k)), None)
            if key is None:
                _flatten(out, f"{prefix}.{n}", item)
            else:  # named by its key, which is then no item of its own
                _flatten(out, f"{prefix}.{item[key]}", {k: v for k, v in item.items()
                                                        if k != key})
    else:
        out[prefix] = value


def shown(value: Any) -> str:
    """A change's value for a reader: `-` for none, numbers without trailing zeros."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def changes(before: Outlook, after: Outlook) -> list[dict[str, Any]]:
    """Every item whose value differs, model by model (None: absent on that side)."""
    found = []
    for model in MODELS:
        old, new = before.get(model, {}), after.get(model, {})
        for item in sorted(set(old) | set(new)):
            if old.get(item) != new.get(item):
                found.append({"model": model, "item": item, "before": old.get(item),
                              "after": new.get(item)})
    return found


# --- the preview ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Preview:
    """The consequences of putting `candidate` in force, at log position `position`."""

    candidate_version: int
    candidate_hash: str
    in_force: int | None
    position: int
    protocol_changes: tuple[dict[str, Any], ...]
    subjects: tuple[dict[str, Any], ...]  # every consented subject, changed or not
    now: datetime | None = None  # the clock of the `at_now` sections (not in the digest)

    def to_json(self, *, clock: bool = True) -> dict[str, Any]:
        """The preview as JSON. `clock=False`: only what the digest covers, the consequences
        themselves; not the log position, the count of subjects compared or the tasks at
        `now`, which move with every unrelated event and with the clock."""
        changed = [s for s in self.subjects if s["changes"] or s["reconsent"]
                   or (clock and s.get("at_now"))]
        data: dict[str, Any] = {
            "candidate": {"version": self.candidate_version, "hash": self.candidate_hash},
            "in_force": self.in_force,
            "protocol_changes": list(self.protocol_changes),
            "subjects_changed": len([s for s in self.subjects if s["changes"]]),
            "changes": self.change_count,
            "subjects": [s if clock else {k: v for k, v in s.items() if k != "at_now"}
                         for s in changed],
        }
        if clock:
            data.update({"position": self.position, "subjects_compared": len(self.subjects),
                         "now": None if self.now is None else self.now.isoformat(),
                         "digest": self.digest})
        return data

    @property
    def change_count(self) -> int:
        return sum(len(s["changes"]) for s in self.subjects) + len(self.protocol_changes)

    @property
    def digest(self) -> str:
        """sha256 of the canonical JSON of `to_json` (what `--reviewed` names)."""
        canonical = json.dumps(self.to_json(clock=False), sort_keys=True, separators=(",", ":"),
                               ensure_ascii=False, default=str)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def subject_preview(study: Study, amended: Study, candidate: Candidate, subject: str,
                    events: Sequence[RecordedEvent], now: datetime | None = None
                    ) -> dict[str, Any] | None:
    """One subject's entry of the preview (None when not consented: nothing to compare);
    with `now`, its tasks at `now` that appear, go or change (`at_now`)."""
    state = fold_subject(subject, events)
    if not state.consented:
        return None
    follows = follows_candidate(state)
    after_state = under_version(state, candidate.version) if follows else state
    found = changes(outlook(study, state, events), outlook(amended, after_state, events))
    entry = {"subject": subject, "site": state.site, "phase": state.phase,
             "protocol_version": state.protocol_version,
             "follows": candidate.version if follows else state.protocol_version,
             "reconsent": follows and state.protocol_version != candidate.version,
             "changes": found}
    if now is not None:
        entry["at_now"] = changes({"tasks": _due(study, state, events, now)},
                                  {"tasks": _due(amended, after_state, events, now)})
    return entry


def _due(study: Study, state: SubjectState, events: Sequence[RecordedEvent],
         now: datetime) -> dict[str, Any]:
    """The subject's tasks at `now`: item -> state and deadline."""
    try:
        found = subject_tasks(study, state, now, events)
    except (InvalidInput, RuleViolation) as error:
        return {"cannot be judged": str(error)}
    return {f"{t.kind} {t.ref}" if t.ref else t.kind:
            t.state + ("" if t.due is None else f", due {t.due}") for t in found}


def preview(study: Study, candidate: Candidate,
            streams: Iterable[tuple[str, Sequence[RecordedEvent]]], position: int,
            tick: Callable[[], None] | None = None, now: datetime | None = None) -> Preview:
    """The preview of `candidate` over every subject stream (`streams`: subject and its events
    up to `position`, in any order); `tick` is called once per subject (a progress bar); with
    `now`, each subject's tasks at `now` too (outside the digest)."""
    amended = with_candidate(study, candidate)
    entries = []
    for subject, events in streams:
        entry = subject_preview(study, amended, candidate, subject, events, now)
        if entry is not None:
            entries.append(entry)
        if tick is not None:
            tick()
    entries.sort(key=lambda e: e["subject"])
    return Preview(candidate.version, candidate.hash, study.protocol_version, position,
                   tuple(protocol_changes(study.protocol, candidate.protocol)), tuple(entries),
                   now)


def protocol_changes(before: Protocol, after: Protocol) -> list[dict[str, Any]]:
    """The protocol's own differences (every threshold, window, cohort), item by item."""
    old: dict[str, Any] = {}
    new: dict[str, Any] = {}
    _flatten(old, "", _comparable(before))
    _flatten(new, "", _comparable(after))
    return [{"item": item, "before": old.get(item), "after": new.get(item)}
            for item in sorted(set(old) | set(new)) if old.get(item) != new.get(item)]


def _comparable(protocol: Protocol) -> dict[str, Any]:
    data = asdict(protocol)
    for name in PROTOCOL_FIELDS_NOT_COMPARED:
        data.pop(name, None)
    return data
