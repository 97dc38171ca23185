"""What a decision sees (`Context`, loaded by the executor) and what it returns (`Decision`).

A decision is a pure function `(message, context) -> Decision`, or it raises a refusal
(`RuleViolation`, exit 1; `InvalidInput`, exit 2). It reads nothing but its arguments: no store,
clock, SQL or closure. The executor appends the decision's writes at the versions it loaded and
runs its credential changes in the same transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from events.envelope import NewEvent, RecordedEvent, canonical_json
from events.upcasting import REGISTRY
from workflow.deviations import deviations
from workflow.identity import Secret
from workflow.monitoring import MonitoringState, fold_monitoring
from workflow.phase_order import check_history, history_problems
from workflow.reminders import Reminder, fold_reminders
from workflow.study import Study, User
from workflow.subject import SubjectState, fold_onto, fold_subject

if TYPE_CHECKING:
    from workflow.amendment import Preview  # imported where previews are made: heavy


@dataclass(frozen=True)
class Context:
    """The state a message is decided against, as the executor loaded it."""

    study: Study
    actor: User
    now: datetime  # the executor's clock (never ahead of the database's)
    today: date  # `now` on the calendar of the subject's site (the actor's site, else UTC)
    subject: SubjectState | None = None
    review: MonitoringState | None = None
    events: tuple[RecordedEvent, ...] = ()  # the subject's stream as loaded
    reminders: Mapping[str, Reminder] = field(default_factory=dict)
    template: tuple[RecordedEvent, ...] = ()  # CopySubjects: the template subject's stream
    last_position: int = 0  # CopySubjects, AmendProtocol: the log's head when loaded
    amendment: Preview | None = None  # AmendProtocol: its preview at the log's head
    # where the command came from (the operating-system account, the database login): kept
    # with a credential change and a signature, so an auditor can tell who typed them
    origin: Mapping[str, str | None] = field(default_factory=dict)
    # what a decision works out from this context more than once (a preview of its events,
    # the phase-order problems of a state), kept for the context's life: `preview`,
    # `check_phase_order`. Derived from the context alone, so the decision stays pure.
    memo: dict[Any, Any] = field(default_factory=dict, init=False, compare=False, repr=False)

    def require_subject(self) -> SubjectState:
        assert self.subject is not None, "the executor loads the subject of a subject message"
        return self.subject


@dataclass(frozen=True)
class Write:
    """Events for one stream. `new`: the stream must not exist yet (expected version 0)."""

    stream: str
    events: tuple[NewEvent, ...]
    new: bool = False


@dataclass(frozen=True)
class SetPassword:
    """Replace a credential (and end its sessions) with the change's event."""

    name: str
    secret: Secret
    service: bool = False


@dataclass(frozen=True)
class EndSessions:
    name: str


@dataclass(frozen=True)
class ClearAttempts:
    """The count of failed password checks starts again (an unlock)."""

    name: str


CredentialChange = SetPassword | EndSessions | ClearAttempts


@dataclass(frozen=True)
class Decision:
    writes: tuple[Write, ...] = ()
    summary: Mapping[str, Any] = field(default_factory=dict)
    credentials: tuple[CredentialChange, ...] = ()
    expects_head: bool = False  # refuse if the log moved since loaded (positions in payloads)
    # summary keys the executor fills after the append: key -> (index into the appended
    # positions, format), e.g. {"query": (0, "Q-{}")}; format "{}" gives the position itself
    positions: Mapping[str, tuple[int, str]] = field(default_factory=dict)


def decided(stream: str, events: Sequence[NewEvent], summary: Mapping[str, Any],
            *more: Write, credentials: Sequence[CredentialChange] = ()) -> Decision:
    """A decision writing `events` to `stream` (and `more`), with its summary."""
    writes = (Write(stream, tuple(events)), *more) if events else tuple(more)
    return Decision(writes, dict(summary), tuple(credentials))


def context_for(message_loads: str, study: Study, actor: User, now: datetime, *,
                subject: str | None = None, events: Sequence[RecordedEvent] = (),
                reminders: Sequence[RecordedEvent] = (), template: Sequence[RecordedEvent] = (),
                last_position: int = 0, amendment: Preview | None = None,
                origin: Mapping[str, str | None] | None = None,
                folded: tuple[SubjectState, MonitoringState] | None = None) -> Context:
    """The context of a message from the events the executor read (a pure fold: tests build
    the same context from events held in memory). `today` is `now` on the calendar of the
    subject's site, else the actor's, else UTC. `folded`: the subject's stream `events`
    already folded (the executor's cache), never changed by a decision."""
    came = dict(origin or {})
    if subject is not None:
        state, review = folded or (fold_subject(subject, events),
                                   fold_monitoring(subject, events))
        site = state.site or actor.site
        return Context(study, actor, now, now.astimezone(study.zone(site)).date(),
                       subject=state, review=review, events=tuple(events), origin=came)
    today = now.astimezone(study.zone(actor.site)).date()
    if message_loads == "reminders":
        return Context(study, actor, now, today, reminders=fold_reminders(reminders),
                       origin=came)
    if message_loads == "amendment":
        return Context(study, actor, now, today, amendment=amendment,
                       last_position=last_position, origin=came)
    if message_loads == "template":
        return Context(study, actor, now, today, template=tuple(template),
                       last_position=last_position, origin=came)
    return Context(study, actor, now, today, origin=came)


def preview(c: Context, events: Sequence[NewEvent]) -> SubjectState:
    """The subject as it would stand with `events` appended (a pure fold; nothing written).
    Made once per context and events: a mend's own checks and the phase-order net under every
    decision share it (the caller only reads it)."""
    key = ("preview", *map(id, events))
    kept = c.memo.get(key)
    if kept is None:
        # the events are kept with it, so their ids name them while the memo lives
        kept = c.memo[key] = (tuple(events), _previewed(c, events))
    return kept[1]


def check_phase_order(c: Context, after: SubjectState, field: str) -> None:
    """`phase_order.check_history` of the context's subject and `after`, each state's problems
    worked out once per context (the mend's own check, then the net under every decision)."""
    def problems(state: SubjectState) -> list[str]:
        key = ("history", id(state))
        kept = c.memo.get(key)
        if kept is None:
            kept = c.memo[key] = (state, history_problems(state, c.today))
        return kept[1]

    check_history(c.require_subject(), after, field, problems)


def _previewed(c: Context, events: Sequence[NewEvent]) -> SubjectState:
    state = c.require_subject()
    head = c.events[-1].position if c.events else 0  # a stream is read in log order
    now = c.now.isoformat()
    recorded = [RecordedEvent(
        head + n, state.subject, state.version + n, e.type,
        e.schema_version or REGISTRY.current_version(e.type), canonical_json(dict(e.payload)),
        e.occurred_at or now, now, c.actor.name, c.actor.role, c.actor.site, e.reason,
        "preview", "preview", None, "", "") for n, e in enumerate(events, 1)]
    return fold_onto(state, recorded)  # `state` is the fold of c.events


def implied_deviations(c: Context, before: SubjectState, after: SubjectState
                       ) -> dict[str, list[str]]:
    """The protocol deviations the mend makes appear (`warnings`, shown at once) and those it
    takes away (`deviations_resolved`)."""
    def keyed(state: SubjectState) -> dict[tuple[str, int], str]:
        """A deviation is the same one while its kind and record stay (its detail, which
        quotes the values, may change with them)."""
        return {(str(row["kind"]), int(row["position"])): str(row["detail"])
                for row in deviations(state, c.study.protocol_of)}

    old, new = keyed(before), keyed(after)
    changed = sorted((key for key in new.keys() & old.keys() if new[key] != old[key]),
                     key=lambda k: k[1])
    return {"warnings": [f"This now implies a protocol deviation ({key[0]}): {new[key]}"
                         for key in sorted(new.keys() - old.keys(), key=lambda k: k[1])]
            + [f"The protocol deviation ({key[0]}) now reads: {new[key]}" for key in changed],
            "deviations_resolved": [old[key] for key in
                                    sorted(old.keys() - new.keys(), key=lambda k: k[1])]}
