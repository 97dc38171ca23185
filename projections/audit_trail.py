"""The auditor's views of the log (`trialflow audit log|replay|diff`).

- The trail: every event as who (actor, role), when (recorded_at, occurred_at), what (type; a
  form's values; a correction's old → new per field) and why (reason). A correction is a new
  event, so the trail shows the original record and, later, the correction that names it.
- Replay: every subject as the system showed it at a moment, from `memory_view` at that
  position and a clock set to that moment: the same folds and query functions as `status`,
  `eligibility`, `visits` and `ae windows` with `--as-of`, never a second code path, and no
  table is read or written.
- Diff: two replays compared subject by subject, with the events recorded in between.

The entry and document functions are pure; `resolve_moment`, `replay`, `diff` and
`tally_between` read the store (one subject stream at a time, or the log a batch at a time).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from events.envelope import RecordedEvent
from events.errors import IntegrityFailure
from events.store import EventStore
from events.streams import STUDY_STREAM, reminders_stream
from projections.as_of import as_of_position
from workflow import event_types as T
from workflow.errors import InvalidInput

if TYPE_CHECKING:
    from projections.queries import Clock
    from projections.views import View
    from workflow.subject import SubjectState

Entry = dict[str, Any]
# The folds and query functions replay needs are imported where they are used: `audit log`
# needs none of them, and a query's start-up time is kept small (tests/cli/test_cli_contract).

# --- the trail -----------------------------------------------------------------------------

CSV_COLUMNS: Final = (
    "position", "stream", "version", "type", "recorded_at", "occurred_at", "actor", "role",
    "site", "reason", "form", "field", "old", "new", "target_position", "payload",
)


def changes_of(event: RecordedEvent) -> list[Entry]:
    """The field-level changes an event makes: a recorded form sets each of its values (old is
    null), a correction changes the fields it names from `previous` to `changes`, a void marks
    the whole record (field null, new `voided`). Other events change no form field: an empty
    list."""
    p = event.payload
    if event.type == T.FORM_RECORDED:
        return [{"form": p["form"], "field": name, "old": None, "new": value,
                 "target_position": None} for name, value in p["values"].items()]
    if event.type == T.FORM_CORRECTED:
        previous = p.get("previous") or {}
        target = int(p["target_position"])
        return [{"form": p["form"], "field": name, "old": previous.get(name), "new": value,
                 "target_position": target} for name, value in p["changes"].items()]
    if event.type == T.RECORD_VOIDED:  # the whole record, entered in error
        return [{"form": p["form"], "field": None, "old": None, "new": "voided",
                 "target_position": int(p["target_position"])}]
    return []


def _changes_or_none(event: RecordedEvent) -> list[dict[str, Any]]:
    """`changes_of`, or none for a payload without its type's shape (only a write outside the
    executor makes one): the trail still shows the event as stored."""
    try:
        return changes_of(event)
    except (KeyError, TypeError, ValueError, AttributeError):
        return []


def trail_entry(event: RecordedEvent) -> Entry:
    """One event of the trail as a JSON object (the shape of `audit log --json|--jsonl`):
    `payload` as stored under its `schema_version`; `payload_read_as`, only for an event of
    an older schema, what the upcasters make of it (what every read model sees)."""
    try:
        upcast = event.payload
    except IntegrityFailure as error:  # shown as stored, for the auditor to see
        return {"position": event.position, "stream": event.stream_id,
                "version": event.version, "type": event.type, "actor": event.actor,
                "role": event.role, "site": event.site, "recorded_at": event.recorded_at,
                "occurred_at": event.occurred_at, "reason": event.reason, "changes": [],
                "payload": None, "payload_text": event.payload_text,
                "integrity": str(error), "schema_version": event.schema_version,
                "command_id": event.command_id, "correlation_id": event.correlation_id,
                "causation_id": event.causation_id, "prev_hash": event.prev_hash,
                "hash": event.hash}
    stored = json.loads(event.payload_text)
    return {
        "position": event.position,
        "stream": event.stream_id,
        "version": event.version,
        "type": event.type,
        "actor": event.actor,
        "role": event.role,
        "site": event.site,
        "recorded_at": event.recorded_at,
        "occurred_at": event.occurred_at,
        "reason": event.reason,
        "changes": _changes_or_none(event),
        "payload": stored,
        **({} if upcast == stored else {"payload_read_as": upcast}),
        "schema_version": event.schema_version,
        "command_id": event.command_id,
        "correlation_id": event.correlation_id,
        "causation_id": event.causation_id,
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


def csv_value(value: Any) -> str:
    """A cell: text as it is, nothing as an empty cell, anything else as compact JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def csv_cell(value: Any) -> str:
    """A cell of `audit log --csv`: `csv_value` made safe for spreadsheets
    (`projections.exports.cells`: a text starting with `=`, `+`, `-`, `@`, a tab or a carriage
    return gets a `'` in front; a number stays a number)."""
    from projections.exports.cells import cell

    return cell(value, csv_value(value))


def csv_rows(entry: Entry) -> Iterator[dict[str, str]]:
    """One row per change; an event that changes no form field is one row of its own. Every
    cell goes through `csv_cell`."""
    base = {name: csv_cell(entry.get(name)) for name in CSV_COLUMNS[:10]}
    base["payload"] = csv_cell(entry["payload"])
    changes = entry["changes"] or [None]
    for change in changes:
        row = dict(base)
        for name in ("form", "field", "old", "new", "target_position"):
            row[name] = "" if change is None else csv_cell(change[name])
        yield {name: row[name] for name in CSV_COLUMNS}


# --- moments -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Moment:
    """An `--as-of` value resolved: the position bound and the clock's time at that moment
    (an ISO time is itself; `@N` is when event N was recorded). `at` is None only when the
    log held nothing by then."""

    label: str
    position: int
    at: datetime | None

    def to_json(self) -> Entry:
        return {"as_of": self.label, "position": self.position,
                "at": None if self.at is None else _utc_text(self.at)}


def resolve_moment(value: str, store: EventStore) -> Moment:
    position = as_of_position(value, store)
    assert position is not None  # a value was given
    if not value.startswith("@"):
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return Moment(value, position, moment if moment.tzinfo else moment.replace(tzinfo=UTC))
    last = min(position, store.last_position())
    if last == 0:
        return Moment(value, position, None)
    (event,) = store.read_all(after=last - 1, up_to=last)
    return Moment(value, position, _parse_utc(event.recorded_at))


def _parse_utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def _utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# --- replay --------------------------------------------------------------------------------

VISIT_KEYS: Final = ("visit", "target_date", "window_start", "window_end", "status", "done_on")
WINDOW_KEYS: Final = ("d0", "window_start", "window_end", "state", "days_left")
CLOCK_KEYS: Final = ("ae_position", "clock", "due_at", "state", "hours_left")
AE_KEYS: Final = ("position", "term", "category", "onset_date", "study_day", "grade",
                  "serious", "relatedness", "in_safety_window", "crs_grade", "icans_grade")
STATUS_KEYS: Final = ("phase", "days_in_phase", "study_day", "cohort", "enrolment_order",
                      "site", "protocol_version", "exit_reason", "next_step")


def replay_document(view: View, clock: Clock, states: Mapping[str, SubjectState],
                    moment: Moment,
                    streams: Mapping[str, Sequence[RecordedEvent]] | None = None) -> Entry:
    """Every subject (phase, eligibility, safety window and open SAE clocks, AEs, visits with
    their status) and the study's summary, as the query commands computed them at `moment`:
    the view is the log folded up to the moment's position, the clock is set to its time."""
    from projections import tables as t
    from projections.queries import ae_windows, eligibility_of, study_status, visit_list
    from projections.subject_status import subject_status

    subjects = []
    for row in view.subjects():
        name = row["subject"]
        state = states[name]
        status = subject_status(view.study, state, clock.now(row["site"]),
                                None if streams is None else streams[name])
        eligibility = eligibility_of(view, clock, name, states.__getitem__)
        windows = ae_windows(view, clock, name)
        window = windows["windows"][0] if windows["windows"] else None
        subjects.append({
            "subject": name,
            **{key: status[key] for key in STATUS_KEYS},
            "eligibility": eligibility["overall"],
            "safety_window": None if window is None else _pick(window, WINDOW_KEYS),
            "open_sae_clocks": [_pick(c, CLOCK_KEYS) for c in windows["sae_clocks"]
                                if c["state"] in ("due", "overdue")],
            "adverse_events": [_pick(a, AE_KEYS) for a in sorted(
                view.rows(t.adverse_events, name), key=lambda a: a["position"])],
            "visits": [_pick(v, VISIT_KEYS) for v in visit_list(view, clock, name)],
        })
    study = study_status(view, clock) if subjects else None
    return {**moment.to_json(), "study": study, "subjects": subjects}


def _pick(row: Mapping[str, Any], keys: Sequence[str]) -> Entry:
    return {key: row.get(key) for key in keys}


def replay(store: EventStore, as_of: str) -> Entry:
    """`audit replay --as-of`: read-only, from the log alone."""
    return replay_at(store, resolve_moment(as_of, store))


def replay_at(store: EventStore, moment: Moment) -> Entry:
    from projections.queries import Clock
    from projections.views import memory_view
    from workflow.subject import fold_subject

    view = memory_view(store, moment.position)
    clock = Clock(view, moment.at or datetime(1970, 1, 1, tzinfo=UTC))
    streams = {row["subject"]: store.read_stream(row["subject"],
                                                 up_to_position=moment.position)
               for row in view.subjects()}
    states = {name: fold_subject(name, events) for name, events in streams.items()}
    return replay_document(view, clock, states, moment, streams)


# --- diff ----------------------------------------------------------------------------------


@dataclass
class Tally:
    """Events counted by type, overall and per stream (constant memory in the log's length:
    it grows with the number of streams and types)."""

    count: int = 0
    types: Counter[str] = field(default_factory=Counter)
    streams: dict[str, Counter[str]] = field(default_factory=dict)

    def add(self, event: RecordedEvent) -> None:
        self.count += 1
        self.types[event.type] += 1
        self.streams.setdefault(event.stream_id, Counter())[event.type] += 1

    def of_streams(self, *names: str) -> Entry:
        found: Counter[str] = Counter()
        for name in names:
            found.update(self.streams.get(name, Counter()))
        return _counts(found)

    def to_json(self) -> Entry:
        return _counts(self.types)


def _counts(types: Counter[str]) -> Entry:
    return {"count": sum(types.values()), "types": dict(sorted(types.items()))}


def tally_between(store: EventStore, after: int, up_to: int) -> Tally:
    tally = Tally()
    for event in store.read_all(after=after, up_to=up_to):
        tally.add(event)
    return tally


def diff_documents(before: Entry, after: Entry, between: Tally) -> Entry:
    """What changed from one replay to a later one, per subject: phase, eligibility, visits
    whose status changed, AEs added or changed (by position), and the events in between."""
    old = {s["subject"]: s for s in before["subjects"]}
    subjects = []
    for new in after["subjects"]:
        name = new["subject"]
        was = old.get(name)
        entry: Entry = {
            "subject": name,
            "new_subject": was is None,
            "phase": _change(was and was["phase"], new["phase"]),
            "eligibility": _change(was and was["eligibility"], new["eligibility"]),
            "safety_window": _change(was and (was["safety_window"] or {}).get("state"),
                                     (new["safety_window"] or {}).get("state")),
            "visits": _visit_changes(was["visits"] if was else [], new["visits"]),
            "adverse_events": _ae_changes(was["adverse_events"] if was else [],
                                          new["adverse_events"]),
            "events": between.of_streams(name, reminders_stream(name)),
        }
        if (entry["new_subject"] or entry["phase"] or entry["eligibility"]
                or entry["safety_window"] or entry["visits"] or entry["events"]["count"]
                or entry["adverse_events"]["added"] or entry["adverse_events"]["changed"]):
            subjects.append(entry)
    study_events = between.of_streams(STUDY_STREAM)
    return {
        "from": {k: before[k] for k in ("as_of", "position", "at")},
        "to": {k: after[k] for k in ("as_of", "position", "at")},
        "events": between.to_json(),
        "study_events": study_events,
        "subjects": subjects,
    }


def _change(old: Any, new: Any) -> Entry | None:
    return None if old == new else {"from": old, "to": new}


def _visit_changes(old: Sequence[Entry], new: Sequence[Entry]) -> list[Entry]:
    was = {v["visit"]: v for v in old}
    out = []
    for visit in new:
        before = was.get(visit["visit"])
        if before is None or before["status"] != visit["status"] \
                or before["done_on"] != visit["done_on"]:
            out.append({"visit": visit["visit"],
                        "from": None if before is None else before["status"],
                        "to": visit["status"], "done_on": visit["done_on"],
                        "target_date": visit["target_date"]})
    return out


def _ae_changes(old: Sequence[Entry], new: Sequence[Entry]) -> Entry:
    was = {a["position"]: a for a in old}
    added, changed = [], []
    for ae in new:
        before = was.get(ae["position"])
        if before is None:
            added.append(ae)
            continue
        fields = {k: {"from": before[k], "to": ae[k]} for k in ae if before.get(k) != ae[k]}
        if fields:
            changed.append({"position": ae["position"], "term": ae["term"], "changes": fields})
    return {"added": added, "changed": changed}


def diff(store: EventStore, first: str, second: str) -> Entry:
    """`audit diff TIME1 TIME2`: replay both moments and compare (TIME1 must not be later)."""
    start, end = resolve_moment(first, store), resolve_moment(second, store)
    if start.position > end.position or (start.at and end.at and start.at > end.at):
        raise InvalidInput(f"audit diff: {first} is later than {second}; give the earlier "
                           "moment first.", field="time")
    before, after = replay_at(store, start), replay_at(store, end)
    return diff_documents(before, after, tally_between(store, start.position, end.position))
