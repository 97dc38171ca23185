"""The `study` stream's facts as rows of `rm_study_facts`, and back.

Subject folds need the sites' time zones, the protocol texts and the version in force; the
study's status shows the lock and the accounts' security state; a catch-up of one subject must
not re-read the whole study stream (one event per enrolment), so the runner keeps the folded
study here. `study_from_facts(facts_of(s))` equals `s` in every
field a read model uses (a property test checks it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from workflow.study import Place, Study, User

FactKey = tuple[str, str]  # (kind, key)


def facts_of(study: Study) -> dict[FactKey, str]:
    facts: dict[FactKey, str] = {("stream", "version"): str(study.version)}
    for site, tz in study.sites.items():
        facts[("site", site)] = tz
    for name, user in study.users.items():
        facts[("user", name)] = json.dumps([user.role, user.site, user.active])
    for version, text in study.protocol_texts.items():
        facts[("protocol", str(version))] = text
    if study.protocol_version is not None:
        facts[("in_force", "version")] = str(study.protocol_version)
    for index, place in enumerate(study.places):
        facts[("place", f"{index:08d}")] = json.dumps(
            [place.subject, place.order, place.cohort, place.freed])
    facts[("study", "purpose")] = study.purpose
    facts[("study", "locked")] = json.dumps(study.locked)
    facts[("accounts", "failures")] = str(study.authentication_failures)
    facts[("accounts", "max_failed_attempts")] = str(study.max_failed_attempts)
    for name, count in study.failed_attempts.items():
        facts[("failed_attempts", name)] = str(count)
    for name, lock in study.locked_accounts.items():
        facts[("locked_account", name)] = json.dumps(list(lock))
    for name, count in study.locks.items():
        facts[("locks", name)] = str(count)
    for name in study.temporary_passwords:
        facts[("temporary_password", name)] = "1"
    return facts


def study_from_facts(rows: Iterable[tuple[str, str, str]]) -> Study:
    study = Study()
    places: list[tuple[str, Place]] = []
    for kind, key, value in rows:
        if kind == "stream":
            study.version = int(value)
        elif kind == "site":
            study.sites[key] = value
        elif kind == "user":
            role, site, active = json.loads(value)
            study.users[key] = User(key, role, site, active)
        elif kind == "protocol":
            study.protocol_texts[int(key)] = value
        elif kind == "in_force":
            study.protocol_version = int(value)
        elif kind == "place":
            subject, order, cohort, freed = json.loads(value)
            places.append((key, Place(subject, int(order), cohort, bool(freed))))
        elif kind == "study" and key == "purpose":
            study.purpose = value
        elif kind == "study" and key == "locked":
            study.locked = bool(json.loads(value))
        elif kind == "accounts" and key == "failures":
            study.authentication_failures = int(value)
        elif kind == "accounts" and key == "max_failed_attempts":
            study.max_failed_attempts = int(value)
        elif kind == "failed_attempts":
            study.failed_attempts[key] = int(value)
        elif kind == "locked_account":
            until, position = json.loads(value)
            study.locked_accounts[key] = (until, int(position))
        elif kind == "locks":
            study.locks[key] = int(value)
        elif kind == "temporary_password":
            study.temporary_passwords.add(key)
    study.places = [place for _, place in sorted(places, key=lambda item: item[0])]
    return study


def changed_facts(old: Mapping[FactKey, str], new: Mapping[FactKey, str]
                  ) -> tuple[list[FactKey], dict[FactKey, str]]:
    """(keys to delete, rows to write) turning `old` into `new`."""
    gone = [key for key in old if key not in new]
    write = {key: value for key, value in new.items() if old.get(key) != value}
    return gone, write
