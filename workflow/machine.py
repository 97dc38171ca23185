"""The subject state machine (the only importer of `transitions`).

Built from plain data: states, and transitions whose `conditions` are guard names. A guard is a
pure function `(Decision) -> RuleViolation | None`; the model records the first refusal so the
command can name its rule. Triggers with `dest=None` record data without changing phase. The
machine decides; the command appends what happened, including `PhaseChanged`, so replay never
re-runs a guard (a guard changed by a later amendment cannot rewrite history).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Final

from transitions import Machine, MachineError

from workflow.errors import RuleViolation
from workflow.phases import ACTIVE, STATES, TERMINAL

FORWARD_GUARDS: Final = ["reconsented"]

TRANSITIONS: Final[list[dict[str, Any]]] = [
    {"trigger": "confirm_eligibility", "source": "screening", "dest": "cell_collection",
     "conditions": [*FORWARD_GUARDS, "screening_window_open", "eligible", "place_available"]},
    {"trigger": "screen_fail", "source": "screening", "dest": "screen_failed"},
    {"trigger": "collect", "source": "cell_collection", "dest": None},
    {"trigger": "release", "source": "cell_collection", "dest": "lymphodepletion",
     "conditions": [*FORWARD_GUARDS, "collected", "chain_of_identity_release"]},
    {"trigger": "release_failed", "source": "cell_collection", "dest": None,
     "conditions": ["collected"]},
    {"trigger": "give_dose", "source": "lymphodepletion", "dest": None,
     "conditions": ["dose_on_regimen"]},
    {"trigger": "give_last_dose", "source": "lymphodepletion", "dest": "infusion",
     "conditions": [*FORWARD_GUARDS, "dose_on_regimen"]},
    {"trigger": "infuse", "source": "infusion", "dest": "follow_up",
     "conditions": [*FORWARD_GUARDS, "infusion_window", "chain_of_identity_infusion",
                    "cart_dose_within_tolerance"]},
    {"trigger": "record_visit", "source": "follow_up", "dest": None,
     "conditions": ["visit_recordable"]},
    # retrospective entry: a visit that happened before the subject completed or left
    {"trigger": "record_past_visit", "source": ["completed", "off_study"], "dest": None,
     "conditions": ["visit_recordable", "visit_before_the_end"]},
    {"trigger": "complete", "source": "follow_up", "dest": "completed",
     "conditions": ["final_visit_recorded"]},
    {"trigger": "off_study", "source": list(ACTIVE), "dest": "off_study"},
    # a procedure entered in error is voided (`trialflow void`): the phase it opened closes
    {"trigger": "void_release", "source": "lymphodepletion", "dest": "cell_collection"},
    {"trigger": "void_last_dose", "source": "infusion", "dest": "lymphodepletion"},
    {"trigger": "void_infusion", "source": "follow_up", "dest": "infusion"},
]

Guard = Callable[[Any], RuleViolation | None]
# The command a user types for each trigger (refusals name the command, not the trigger).
COMMAND_OF: Final = {
    "confirm_eligibility": "confirm-eligibility", "screen_fail": "screen-fail",
    "collect": "leukapheresis", "release": "release", "release_failed": "release --fail",
    "give_dose": "lymphodepletion", "give_last_dose": "lymphodepletion", "infuse": "infuse",
    "record_visit": "visit", "complete": "complete", "off_study": "off-study",
    "record_past_visit": "visit", "void_release": "void", "void_last_dose": "void",
    "void_infusion": "void",
}


@dataclass
class SubjectModel:
    """What one command asks the machine about: the folded subject and the guards' inputs."""

    subject: str
    state: str
    guards: Mapping[str, Guard]
    facts: Any = None
    refusal: RuleViolation | None = field(default=None, init=False)

    def check(self, name: str) -> bool:
        refusal = self.guards[name](self.facts)
        if refusal is not None and self.refusal is None:
            self.refusal = refusal
        return refusal is None


def _machine() -> Machine:
    machine = Machine(model=None, states=list(STATES), transitions=[], initial=None,
                      auto_transitions=False, send_event=False, ignore_invalid_triggers=False)
    for spec in TRANSITIONS:
        conditions: list[str | Callable[..., bool | None]] = [
            _condition(name) for name in spec.get("conditions", [])
        ]
        machine.add_transition(spec["trigger"], spec["source"], spec["dest"],
                               conditions=conditions)
    return machine


def _condition(name: str) -> Callable[..., bool]:
    def condition(model: SubjectModel | None = None, *_: Any, **__: Any) -> bool:
        assert model is not None
        return model.check(name)

    condition.__name__ = name
    return condition


MACHINE: Final = _machine()


def decide(subject: str, phase: str | None, trigger: str, guards: Mapping[str, Guard],
           facts: Any) -> str:
    """Ask the machine whether `trigger` may fire; return the phase after it or raise."""
    if phase is None:
        raise RuleViolation(f"Subject {subject} has not consented: record `trialflow consent` "
                            "first.", rule="not_consented", subject=subject)
    check_phase(subject, phase, trigger)
    model = SubjectModel(subject, phase, guards, facts)
    # The event fired on the model as it is, without registering it with the machine
    # (`add_model` gave it a method per trigger and per state, and changed the shared machine's
    # list of models at every decision): the machine reads and sets `model.state` only.
    try:
        fired = MACHINE.events[trigger].trigger(model, model)
    except MachineError:  # check_phase agrees with the machine; kept as a safety net
        check_phase(subject, "(unknown)", trigger)
        raise
    if not fired:
        assert model.refusal is not None
        raise model.refusal
    return str(model.state)


@cache
def _triggers_from(phase: str) -> frozenset[str]:
    """The triggers the machine allows from `phase` (asked once per phase: the machine is built
    once, and `get_triggers` walks every transition of every event)."""
    return frozenset(MACHINE.get_triggers(phase))


def check_phase(subject: str, phase: str | None, trigger: str) -> None:
    """Refuse (rule `phase`) a trigger the machine does not allow from `phase`."""
    if phase is not None and trigger in _triggers_from(phase):
        return
    if phase is None:
        raise RuleViolation(f"Subject {subject} has not consented: record `trialflow consent` "
                            "first.", rule="not_consented", subject=subject)
    allowed = sorted({t["source"] if isinstance(t["source"], str) else "any active phase"
                      for t in TRANSITIONS if t["trigger"] == trigger})
    raise RuleViolation(
        f"Subject {subject} is in phase {phase}; {COMMAND_OF[trigger]} is allowed "
        f"only in {' or '.join(allowed)}.", rule="phase", subject=subject, field="phase",
    )


def allowed_triggers(phase: str) -> list[str]:
    return sorted(t["trigger"] for t in TRANSITIONS
                  if phase == t["source"] or phase in t["source"])


def mermaid() -> str:
    """The state diagram, generated from the machine's own transitions."""
    lines = ["stateDiagram-v2", "    [*] --> screening: consent"]
    for trigger, event in MACHINE.events.items():
        for source, transitions in event.transitions.items():
            for transition in transitions:
                if transition.dest is None:
                    continue
                guards = [c.func.__name__ if hasattr(c.func, "__name__") else str(c.func)
                          for c in transition.conditions]
                label = trigger + (f" [{', '.join(guards)}]" if guards else "")
                lines.append(f"    {source} --> {transition.dest}: {label}")
    lines += [f"    {state} --> [*]" for state in sorted(TERMINAL)]
    return "\n".join(lines)
