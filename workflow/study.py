"""The `study` stream folded: sites, users and roles, protocol versions, enrolment places, and
the state of accounts (temporary passwords, failed attempts, lockouts)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING, Final
from zoneinfo import ZoneInfo

from events.envelope import RecordedEvent
from events.store import EventStore
from events.streams import STUDY_STREAM
from workflow import event_types as T
from workflow.errors import RuleViolation

if TYPE_CHECKING:  # the parser is imported where a protocol is read: reads of the tables
    from workflow.protocol import Protocol  # need none (docs/performance.md, start-up)

ROLES = ("coordinator", "investigator", "monitor", "data_manager", "auditor", "scheduler",
         "admin")
SITE_ROLES = frozenset({"coordinator", "investigator"})
SERVICE_ROLES = frozenset({"scheduler"})  # accounts of programs: a generated secret, no person
DEFAULT_MAX_FAILED_ATTEMPTS: Final = 5
PURPOSES: Final = ("study", "demo")  # a demo study may be replaced by `trialflow demo`


@dataclass(frozen=True)
class User:
    name: str
    role: str
    site: str | None
    active: bool = True

    @property
    def service(self) -> bool:
        return self.role in SERVICE_ROLES


@dataclass(frozen=True)
class Place:
    subject: str
    order: int
    cohort: str
    freed: bool = False


@dataclass
class _PlaceIndex:
    by_subject: dict[str, Place]
    orders: set[int] = field(default_factory=set)
    lowest_free: int = 1

    def advance(self) -> None:
        while self.lowest_free in self.orders:
            self.lowest_free += 1

    def take(self, place: Place) -> None:
        self.by_subject[place.subject] = place
        self.orders.add(place.order)
        self.advance()


@dataclass
class Study:
    version: int = 0
    sites: dict[str, str] = field(default_factory=dict)  # site -> IANA time zone
    users: dict[str, User] = field(default_factory=dict)
    protocol_texts: dict[int, str] = field(default_factory=dict)
    protocol_version: int | None = None  # in force
    places: list[Place] = field(default_factory=list)
    locked: bool = False  # StudyLocked: every subject write is refused until StudyUnlocked
    purpose: str = "study"  # "demo" for a study made by `trialflow demo`
    temporary_passwords: set[str] = field(default_factory=set)  # set by an admin, unchanged
    failed_attempts: dict[str, int] = field(default_factory=dict)  # wrong passwords in a row
    # name -> (until: ISO time or None for "until an admin unlocks", position of AccountLocked)
    locked_accounts: dict[str, tuple[str | None, int]] = field(default_factory=dict)
    locks: dict[str, int] = field(default_factory=dict)  # AccountLocked events per user so far
    max_failed_attempts: int = DEFAULT_MAX_FAILED_ATTEMPTS
    authentication_failures: int = 0  # every failed attempt, known names or not
    # `protocol amend` refuses without `--reviewed DIGEST` when its preview shows changes
    amendment_review_required: bool = True

    @cached_property
    def protocol(self) -> Protocol:
        if self.protocol_version is None:
            from workflow.protocol import default_protocol

            return default_protocol()
        return self.protocol_of(self.protocol_version)

    def protocol_of(self, version: int | None) -> Protocol:
        """Protocol `version` as loaded into this study (the builtin file if never loaded);
        None is the version in force."""
        if version is None:
            return self.protocol
        text = self.protocol_texts.get(version)
        if text is None:
            from workflow.protocol import builtin_protocol

            return builtin_protocol(version)
        return _parsed(text, version)

    def zone(self, site: str | None) -> ZoneInfo:
        """The time zone of a site's calendar (UTC for none): the one place it is looked up."""
        return ZoneInfo(self.sites.get(site or "", "UTC"))

    def account_locked(self, name: str, now: datetime | None = None) -> bool:
        """Locked by an `AccountLocked` not lifted yet. An admin's lock lapses at its `until`
        (so nobody can lock every admin out for good); without `now` it counts as held."""
        entry = self.locked_accounts.get(name)
        if entry is None:
            return False
        until = entry[0]
        return until is None or now is None or now < datetime.fromisoformat(until)

    def lock_lapsed(self, name: str, now: datetime) -> int | None:
        """The position of `name`'s timed lock when its time is up (to be lifted), else None."""
        entry = self.locked_accounts.get(name)
        if entry is None or entry[0] is None or now < datetime.fromisoformat(entry[0]):
            return None
        return entry[1]

    def active_admins(self) -> list[str]:
        return sorted(u.name for u in self.users.values() if u.role == "admin" and u.active)

    def taken_places(self) -> list[Place]:
        return [p for p in self.places if not p.freed]

    @cached_property
    def _places(self) -> _PlaceIndex:
        """The places held, by subject and by order, and the lowest free order: built once
        from `places`, then kept up to date by `apply_study` (a command's cost must not grow
        with the number of subjects)."""
        index = _PlaceIndex({p.subject: p for p in self.taken_places()})
        index.orders = {p.order for p in index.by_subject.values()}
        index.advance()
        return index

    def place_of(self, subject: str) -> Place | None:
        return self._places.by_subject.get(subject)

    def next_place(self, protocol: Protocol) -> int | None:
        """The lowest free enrolment order under the cap, None when the study is full."""
        lowest = self._places.lowest_free
        return lowest if lowest <= protocol.enrolment_cap else None

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
    from workflow.protocol import load_protocol_text

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
        if event.type == T.STUDY_INITIALISED:
            study.purpose = p.get("purpose", "study")
    elif event.type in _ACCOUNT_EVENTS:
        _apply_account(study, event.type, p, event.position)
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
        place = Place(p["subject"], int(p["order"]), p["cohort"])
        study.places.append(place)
        if "_places" in study.__dict__:
            study._places.take(place)
        return  # the protocol in force is the same
    elif event.type == T.ENROLMENT_PLACE_FREED:
        study.places = [
            Place(x.subject, x.order, x.cohort, True) if x.subject == p["subject"] else x
            for x in study.places
        ]
        study.__dict__.pop("_places", None)  # rare: built again when next asked
    elif event.type in (T.STUDY_LOCKED, T.STUDY_UNLOCKED):
        study.locked = event.type == T.STUDY_LOCKED
    elif event.type == T.AMENDMENT_REVIEW_SET:
        study.amendment_review_required = bool(p["required"])
    study.__dict__.pop("protocol", None)  # the protocol in force may have changed


_ACCOUNT_EVENTS: Final = frozenset({
    T.CREDENTIALS_CHANGED, T.AUTHENTICATION_FAILED, T.ACCOUNT_LOCKED, T.ACCOUNT_UNLOCKED,
    T.FAILED_ATTEMPTS_RESET, T.LOCKOUT_POLICY_SET,
})


def _apply_account(study: Study, kind: str, p: dict[str, object], position: int) -> None:
    name = str(p.get("name", ""))
    if kind == T.CREDENTIALS_CHANGED:
        # set by someone else (an admin): temporary until its user changes it
        if p.get("temporary", p.get("by") != name):
            study.temporary_passwords.add(name)
        else:
            study.temporary_passwords.discard(name)
        study.failed_attempts.pop(name, None)
    elif kind == T.AUTHENTICATION_FAILED:
        study.authentication_failures += 1
        if name in study.users and p.get("method", "password") == "password":
            study.failed_attempts[name] = study.failed_attempts.get(name, 0) + 1
    elif kind == T.ACCOUNT_LOCKED:
        until = p.get("until")
        study.locked_accounts[name] = (None if until is None else str(until), position)
        study.locks[name] = study.locks.get(name, 0) + 1
        study.failed_attempts.pop(name, None)
    elif kind == T.ACCOUNT_UNLOCKED:
        study.locked_accounts.pop(name, None)
        study.failed_attempts.pop(name, None)
    elif kind == T.FAILED_ATTEMPTS_RESET:
        study.failed_attempts.pop(name, None)
    elif kind == T.LOCKOUT_POLICY_SET:
        study.max_failed_attempts = int(str(p["max_failed_attempts"]))


def load_study(store: EventStore) -> Study:
    """The study as its stream stands now (for reads; writes load it in the executor)."""
    return fold_study(store.read_stream(STUDY_STREAM))
