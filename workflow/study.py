"""The `study` stream folded: sites, users and roles, protocol versions, enrolment places."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

from events.envelope import RecordedEvent
from workflow import event_types as T
from workflow.errors import RuleViolation
from workflow.protocol import Protocol, builtin_protocol, default_protocol, load_protocol_text

ROLES = ("coordinator", "investigator", "monitor", "data_manager", "auditor", "scheduler",
         "admin")
SITE_ROLES = frozenset({"coordinator", "investigator"})


@dataclass(frozen=True)
class User:
    name: str
    role: str
    site: str | None
    active: bool = True


@dataclass(frozen=True)
class Place:
    subject: str
    order: int
    cohort: str
    freed: bool = False


@dataclass
class Study:
    version: int = 0
    sites: dict[str, str] = field(default_factory=dict)  # site -> IANA time zone
    users: dict[str, User] = field(default_factory=dict)
    protocol_texts: dict[int, str] = field(default_factory=dict)
    protocol_version: int | None = None  # in force
    places: list[Place] = field(default_factory=list)
    locked: bool = False  # StudyLocked: every subject write is refused until StudyUnlocked

    @cached_property
    def protocol(self) -> Protocol:
        if self.protocol_version is None:
            return default_protocol()
        return self.protocol_of(self.protocol_version)

    def protocol_of(self, version: int | None) -> Protocol:
        """Protocol `version` as loaded into this study (the builtin file if never loaded);
        None is the version in force."""
        if version is None:
            return self.protocol
        text = self.protocol_texts.get(version)
        if text is None:
            return builtin_protocol(version)
        return _parsed(text, version)

    def taken_places(self) -> list[Place]:
        return [p for p in self.places if not p.freed]

    def place_of(self, subject: str) -> Place | None:
        return next((p for p in self.places if p.subject == subject and not p.freed), None)

    def next_place(self, protocol: Protocol) -> int | None:
        """The lowest free enrolment order under the cap, None when the study is full."""
        taken = {p.order for p in self.taken_places()}
        return next((o for o in range(1, protocol.enrolment_cap + 1) if o not in taken), None)

    def user(self, name: str | None) -> User:
        if not name:
            raise RuleViolation("Writing needs an acting user: pass --user NAME.",
                                rule="unknown_user", field="user")
        found = self.users.get(name)
        if found is None:
            raise RuleViolation(f"User {name} is not a user of this study.",
                                rule="unknown_user", field="user")
        if not found.active:
            raise RuleViolation(f"User {name} is deactivated and may not write.",
                                rule="user_deactivated", field="user")
        return found


@lru_cache(maxsize=16)
def _parsed(text: str, version: int) -> Protocol:
    return load_protocol_text(text, f"protocol version {version}")


def fold_study(events: Iterable[RecordedEvent]) -> Study:
    study = Study()
    for event in events:
        apply_study(study, event)
    return study


def apply_study(study: Study, event: RecordedEvent) -> None:
    p = event.payload
    study.version = event.version
    if event.type == T.SITE_ADDED:
        study.sites[p["site"]] = p["tz"]
    elif event.type in (T.USER_ADDED, T.STUDY_INITIALISED):
        study.users[p["name"]] = User(p["name"], p["role"], p.get("site"))
    elif event.type == T.USER_DEACTIVATED:
        old = study.users[p["name"]]
        study.users[p["name"]] = User(old.name, old.role, old.site, active=False)
    elif event.type == T.PROTOCOL_LOADED:
        study.protocol_texts[int(p["version"])] = p["content"]
        if study.protocol_version is None:
            study.protocol_version = int(p["version"])
    elif event.type == T.PROTOCOL_AMENDED:
        study.protocol_version = int(p["version"])
    elif event.type == T.ENROLMENT_PLACE_TAKEN:
        study.places.append(Place(p["subject"], int(p["order"]), p["cohort"]))
    elif event.type == T.ENROLMENT_PLACE_FREED:
        study.places = [
            Place(x.subject, x.order, x.cohort, True) if x.subject == p["subject"] else x
            for x in study.places
        ]
    elif event.type in (T.STUDY_LOCKED, T.STUDY_UNLOCKED):
        study.locked = event.type == T.STUDY_LOCKED
    study.__dict__.pop("protocol", None)  # the protocol in force may have changed
