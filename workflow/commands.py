"""Command handlers: load the study and the subject, ask the machine, append at the loaded
versions. A refused command raises before anything is appended, so it writes nothing."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from events.envelope import NewEvent, canonical_json
from events.errors import ConcurrencyConflict, IdempotencyMismatch
from events.store import AppendContext, AppendResult, EventStore, StreamAppend
from events.streams import STUDY_STREAM, check_subject_id
from workflow import event_types as T
from workflow.bootstrap import App
from workflow.errors import InvalidInput, RuleViolation
from workflow.forms import PHASE_FORM_COMMANDS, assessment_date, parse_form, validate_values
from workflow.guards import GUARDS, Facts
from workflow.instruments.dosing import body_surface_area
from workflow.machine import check_phase, decide
from workflow.protocol import builtin_protocol_text, load_protocol_text, protocol_hash
from workflow.study import ROLES, SITE_ROLES, Study, User, fold_study
from workflow.subject import SubjectState, fold_subject
from workflow.upcasters import lymphodepletion_payload

SUBJECT_WRITERS = frozenset({"coordinator", "investigator"})
OFF_STUDY_REASONS = ("consent_withdrawn", "investigator_decision", "lost_to_follow_up", "death",
                     "manufacturing_failure")
CONFLICT_RETRIES = 3


@dataclass(frozen=True)
class Outcome:
    result: AppendResult
    summary: dict[str, Any]


class Workflow:
    """Every write a user can make. Reads of the log happen here; decisions in the machine."""

    def __init__(self, app: App) -> None:
        self.store: EventStore = app.store
        self.clock = app.clock

    # ------------------------------------------------------------------ plumbing
    def study(self) -> Study:
        return fold_study(self.store.read_stream(STUDY_STREAM))

    def subject(self, subject: str) -> SubjectState:
        check_subject_id(subject)
        return fold_subject(subject, self.store.read_stream(subject))

    def _run(self, name: str, args: dict[str, Any], user: str | None, command_id: str | None,
             decide_appends: Callable[[Study, User], tuple[list[StreamAppend], dict[str, Any]]],
             ) -> Outcome:
        request_hash = hashlib.sha256(
            canonical_json({"command": name, "args": args, "user": user}).encode()
        ).hexdigest()
        if command_id is not None:
            earlier = self.store.find_command(command_id)
            if earlier is not None:
                if earlier.request_hash != request_hash:
                    raise IdempotencyMismatch(command_id)
                return Outcome(earlier.result, {"repeated": True})
        for attempt in range(CONFLICT_RETRIES):
            study = self.study()
            actor = study.user(user)
            appends, summary = decide_appends(study, actor)
            # The one lock check: whatever command it is, a locked study takes no subject event.
            written = [a.stream_id for a in appends if a.events and a.stream_id != STUDY_STREAM]
            if study.locked and written:
                raise RuleViolation(f"The study is locked, so subject {written[0]} may not be "
                                    "written until an admin runs `trialflow study unlock`.",
                                    rule="study_locked", subject=written[0])
            context = AppendContext(actor=actor.name, role=actor.role, site=actor.site,
                                    command_id=command_id, request_hash=request_hash)
            try:
                return Outcome(self.store.append_streams(appends, context), summary)
            except ConcurrencyConflict:
                if attempt == CONFLICT_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def site_today(self, study: Study, site: str | None) -> date:
        return self.clock().astimezone(_zone(study, site)).date()

    # ------------------------------------------------------------------ study administration
    def initialise(self, admin: str, *, protocol_version: int = 2,
                   command_id: str | None = None) -> Outcome:
        _check_name(admin)
        text = builtin_protocol_text(protocol_version)
        protocol = load_protocol_text(text, f"builtin protocol version {protocol_version}")
        events = [
            NewEvent(T.STUDY_INITIALISED, {"name": admin, "role": "admin", "site": None}),
            NewEvent(T.USER_ADDED, {"name": "scheduler", "role": "scheduler", "site": None}),
            NewEvent(T.PROTOCOL_LOADED, {"version": protocol.version, "hash": protocol_hash(text),
                                         "content": text, "source": "builtin"}),
        ]
        existing = self.study()
        if existing.version:
            if command_id and self.store.find_command(command_id):
                pass
            else:
                raise RuleViolation("The study is already initialised; add users with "
                                    "`trialflow users add`.", rule="already_initialised")
        result = self.store.append(STUDY_STREAM, 0, events, AppendContext(
            actor=admin, role="admin", command_id=command_id))
        return Outcome(result, {"admin": admin, "protocol_version": protocol.version})

    def add_site(self, user: str | None, site: str, tz: str, command_id: str | None) -> Outcome:
        _check_name(site, "site")
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long
            raise InvalidInput(f"Time zone {tz!r} is not an IANA time zone such as "
                               "Asia/Shanghai.", field="tz") from None

        def build(study: Study, actor: User) -> tuple[list[StreamAppend], dict[str, Any]]:
            _require(actor, {"admin"}, "add sites")
            if site in study.sites:
                raise RuleViolation(f"Site {site} already exists.", rule="site_exists",
                                    field="site")
            return [StreamAppend(STUDY_STREAM, study.version,
                                 [NewEvent(T.SITE_ADDED, {"site": site, "tz": tz})])], {
                "site": site, "tz": tz}
        return self._run("sites add", {"site": site, "tz": tz}, user, command_id, build)

    def add_user(self, user: str | None, name: str, role: str, site: str | None,
                 command_id: str | None) -> Outcome:
        _check_name(name)
        if role not in ROLES:
            raise InvalidInput(f"Role {role!r} is not one of {', '.join(ROLES)}.", field="role")

        def build(study: Study, actor: User) -> tuple[list[StreamAppend], dict[str, Any]]:
            _require(actor, {"admin"}, "add users")
            if name in study.users:
                raise RuleViolation(f"User {name} already exists.", rule="user_exists",
                                    field="name")
            if role in SITE_ROLES and site is None:
                raise InvalidInput(f"A {role} needs --site.", field="site")
            if site is not None and site not in study.sites:
                raise RuleViolation(f"Site {site} does not exist; add it with `trialflow sites "
                                    "add`.", rule="unknown_site", field="site")
            payload = {"name": name, "role": role, "site": site}
            return [StreamAppend(STUDY_STREAM, study.version,
                                 [NewEvent(T.USER_ADDED, payload)])], payload
        return self._run("users add", {"name": name, "role": role, "site": site}, user,
                         command_id, build)

    def deactivate_user(self, user: str | None, name: str, command_id: str | None) -> Outcome:
        def build(study: Study, actor: User) -> tuple[list[StreamAppend], dict[str, Any]]:
            _require(actor, {"admin"}, "deactivate users")
            study.user(name)  # must exist and be active
            return [StreamAppend(STUDY_STREAM, study.version,
                                 [NewEvent(T.USER_DEACTIVATED, {"name": name})])], {"name": name}
        return self._run("users deactivate", {"name": name}, user, command_id, build)

    def load_protocol(self, user: str | None, text: str, source: str,
                      command_id: str | None) -> Outcome:
        protocol = load_protocol_text(text, source)
        digest = protocol_hash(text)

        def build(study: Study, actor: User) -> tuple[list[StreamAppend], dict[str, Any]]:
            _require(actor, {"admin"}, "load protocols")
            known = study.protocol_texts.get(protocol.version)
            if known is not None and protocol_hash(known) != digest:
                raise RuleViolation(f"Protocol version {protocol.version} is already loaded with "
                                    "other content; give the new file a new version.",
                                    rule="protocol_version_exists", field="version")
            payload = {"version": protocol.version, "hash": digest, "content": text,
                       "source": source}
            summary = {"version": protocol.version, "hash": digest}
            if known is not None:
                return [], summary
            return [StreamAppend(STUDY_STREAM, study.version,
                                 [NewEvent(T.PROTOCOL_LOADED, payload)])], summary
        return self._run("protocol load", {"hash": digest}, user, command_id, build)

    def amend_protocol(self, user: str | None, version: int, command_id: str | None) -> Outcome:
        def build(study: Study, actor: User) -> tuple[list[StreamAppend], dict[str, Any]]:
            _require(actor, {"admin"}, "amend the protocol")
            if study.protocol_version == version:
                raise RuleViolation(f"Protocol version {version} is already in force.",
                                    rule="protocol_in_force", field="version")
            events = []
            if version not in study.protocol_texts:
                try:
                    text = builtin_protocol_text(version)
                except InvalidInput:
                    raise RuleViolation(f"Protocol version {version} is not loaded; load it "
                                        "with `trialflow protocol load FILE` first.",
                                        rule="protocol_not_loaded", field="version") from None
                events.append(NewEvent(T.PROTOCOL_LOADED, {
                    "version": version, "hash": protocol_hash(text), "content": text,
                    "source": "builtin"}))
            events.append(NewEvent(T.PROTOCOL_AMENDED, {
                "version": version, "from_version": study.protocol_version}))
            return [StreamAppend(STUDY_STREAM, study.version, events)], {
                "version": version, "from_version": study.protocol_version}
        return self._run("protocol amend", {"version": version}, user, command_id, build)

    # ------------------------------------------------------------------ subjects
    def _subject_write(
        self, name: str, subject: str, args: dict[str, Any], user: str | None,
        command_id: str | None,
        body: Callable[[Study, User, SubjectState, date], tuple[list[NewEvent], dict[str, Any]]],
        *, roles: frozenset[str] = SUBJECT_WRITERS, study_events: Callable[
            [Study, SubjectState], list[NewEvent]] | None = None,
    ) -> Outcome:
        check_subject_id(subject)

        def build(study: Study, actor: User) -> tuple[list[StreamAppend], dict[str, Any]]:
            state = self.subject(subject)
            _require(actor, roles, name.replace("_", "-"), subject=subject)
            if state.site is not None and actor.site != state.site:
                raise RuleViolation(f"User {actor.name} of site {actor.site} may not write "
                                    f"subject {subject} of site {state.site}.", rule="site",
                                    subject=subject, field="site")
            today = self.site_today(study, state.site or actor.site)
            events, summary = body(study, actor, state, today)
            appends = [StreamAppend(subject, state.version, events)]
            if study_events is not None:
                extra = study_events(study, state)
                if extra:
                    appends.append(StreamAppend(STUDY_STREAM, study.version, extra))
            return appends, {"subject": subject, **summary}
        return self._run(name, {"subject": subject, **args}, user, command_id, build)

    def _transition(self, study: Study, state: SubjectState, trigger: str, today: date,
                    on: date, **args: Any) -> list[NewEvent]:
        protocol = study.protocol
        facts = Facts(state, study, protocol, today, args)
        before = state.phase
        after = decide(state.subject, before, trigger, GUARDS, facts)
        if after == before:
            return []
        return [NewEvent(T.PHASE_CHANGED, {"from": before, "to": after, "trigger": trigger,
                                           "on": on.isoformat()},
                         occurred_at=_at(study, state.site, on))]

    def consent(self, user: str | None, subject: str, on: date, consent_form_version: str,
                command_id: str | None) -> Outcome:
        def body(study: Study, actor: User, state: SubjectState, today: date
                 ) -> tuple[list[NewEvent], dict[str, Any]]:
            if state.consented:
                raise RuleViolation(f"Subject {subject} has already consented.",
                                    rule="already_consented", subject=subject)
            _not_future(subject, "consent_date", on, today)
            version = study.protocol.version
            payload = {"subject": subject, "site": actor.site, "consent_date": on.isoformat(),
                       "consent_form_version": _text(consent_form_version,
                                                     "consent_form_version"),
                       "protocol_version": version}
            return [NewEvent(T.SUBJECT_CONSENTED, payload,
                             occurred_at=_at(study, actor.site, on))], {
                "phase": "screening", "protocol_version": version}
        return self._subject_write("consent", subject, {"on": on.isoformat(),
                                   "cfv": consent_form_version}, user, command_id, body)

    def reconsent(self, user: str | None, subject: str, on: date | None,
                  consent_form_version: str, command_id: str | None) -> Outcome:
        def body(study: Study, actor: User, state: SubjectState, today: date
                 ) -> tuple[list[NewEvent], dict[str, Any]]:
            _consented(state)
            day = on or today
            _not_future(subject, "consent_date", day, today)
            version = study.protocol.version
            if state.protocol_version == version:
                raise RuleViolation(f"Subject {subject} already consented under protocol version"
                                    f" {version}.", rule="reconsent_not_needed", subject=subject)
            return [NewEvent(T.SUBJECT_RECONSENTED, {
                "consent_date": day.isoformat(), "protocol_version": version,
                "consent_form_version": _text(consent_form_version, "consent_form_version")},
                occurred_at=_at(study, state.site, day))], {"protocol_version": version}
        return self._subject_write("reconsent", subject, {"on": str(on),
                                   "cfv": consent_form_version}, user, command_id, body)

    def record(self, user: str | None, subject: str, form: str, tokens: Sequence[str],
               on: date | None, visit: str | None, command_id: str | None) -> Outcome:
        if form in PHASE_FORM_COMMANDS:
            raise InvalidInput(f"Form {form} changes the subject's phase and is recorded only by "
                               f"`{PHASE_FORM_COMMANDS[form]}`.", field="form", subject=subject)
        roles = frozenset({"investigator"}) if form == "causality" else SUBJECT_WRITERS

        def body(study: Study, actor: User, state: SubjectState, today: date
                 ) -> tuple[list[NewEvent], dict[str, Any]]:
            _consented(state)
            day = on or today
            _not_future(subject, "on", day, today)
            try:
                values = parse_form(form, tokens, today=today)
            except InvalidInput as error:
                raise InvalidInput(f"Subject {subject}: {error.message}", field=error.field,
                                   subject=subject) from None
            if visit is not None:
                study.protocol.visit(visit)
            _check_assessment_date(state, form, values, day)
            if form in ("causality", "sae_report"):
                _check_ae_position(state, values)
            payload = {"form": form, "values": values, "on": day.isoformat(), "visit": visit}
            return [NewEvent(T.FORM_RECORDED, payload, occurred_at=_at(study, state.site, day))], {
                "form": form, "values": values, "on": day.isoformat()}
        return self._subject_write("record", subject, {"form": form, "tokens": list(tokens),
                                   "on": str(on), "visit": visit}, user, command_id, body,
                                   roles=roles)

    def correct(self, user: str | None, subject: str, position: int, tokens: Sequence[str],
                reason: str, command_id: str | None) -> Outcome:
        def body(study: Study, actor: User, state: SubjectState, today: date
                 ) -> tuple[list[NewEvent], dict[str, Any]]:
            return correction_events(study, state, position, tokens, reason, today)
        return self._subject_write("correct", subject, {"position": position,
                                   "tokens": list(tokens), "reason": reason}, user, command_id,
                                   body)

    def confirm_eligibility(self, user: str | None, subject: str,
                            command_id: str | None) -> Outcome:
        taken: dict[str, Any] = {}

        def body(study: Study, actor: User, state: SubjectState, today: date
                 ) -> tuple[list[NewEvent], dict[str, Any]]:
            _consented(state)
            events = self._transition(study, state, "confirm_eligibility", today, today)
            order = study.next_place(study.protocol)
            assert order is not None  # guarded by place_available
            cohort = study.protocol.cohort_for(order)
            taken.update(order=order, cohort=cohort.code)
            confirmed = NewEvent(T.ELIGIBILITY_CONFIRMED, {"order": order, "cohort": cohort.code,
                                 "on": today.isoformat()})
            return [confirmed, *events], {"enrolment_order": order, "cohort": cohort.code,
                                          "phase": "cell_collection"}

        def place(study: Study, state: SubjectState) -> list[NewEvent]:
            return [NewEvent(T.ENROLMENT_PLACE_TAKEN, {"subject": subject, **taken})]
        return self._subject_write("confirm_eligibility", subject, {}, user, command_id, body,
                                   roles=frozenset({"investigator"}), study_events=place)

    def screen_fail(self, user: str | None, subject: str, reason: str,
                    command_id: str | None) -> Outcome:
        def body(study: Study, actor: User, state: SubjectState, today: date
                 ) -> tuple[list[NewEvent], dict[str, Any]]:
            _consented(state)
            _text(reason, "reason")
            events = self._transition(study, state, "screen_fail", today, today)
            return [NewEvent(T.SCREEN_FAILED, {"reason": reason}), *events], {
                "phase": "screen_failed", "reason": reason}
        return self._subject_write("screen_fail", subject, {"reason": reason}, user,
                                   command_id, body)

    def leukapheresis(self, user: str | None, subject: str, on: date, coi_id: str,
                      command_id: str | None) -> Outcome:
        def body(study: Study, actor: User, state: SubjectState, today: date
                 ) -> tuple[list[NewEvent], dict[str, Any]]:
            _consented(state)
            _not_future(subject, "collected_on", on, today)
            self._transition(study, state, "collect", today, on)
            return [NewEvent(T.LEUKAPHERESIS_RECORDED, {"collected_on": on.isoformat(),
                             "coi_id": _text(coi_id, "coi_id")},
                             occurred_at=_at(study, state.site, on))], {"coi_id": coi_id}
        return self._subject_write("leukapheresis", subject, {"on": on.isoformat(),
                                   "coi": coi_id}, user, command_id, body)

    def release(self, user: str | None, subject: str, lot: str, coi_id: str, *, failed: bool,
                reason: str | None, viable_cells: float | None,
                command_id: str | None) -> Outcome:
        if viable_cells is not None:
            _dose(viable_cells, "viable_cells")  # NaN or infinity can be neither hashed nor kept

        def body(study: Study, actor: User, state: SubjectState, today: date
                 ) -> tuple[list[NewEvent], dict[str, Any]]:
            _consented(state)
            check_phase(subject, state.phase, "collect")
            payload = {"lot": _text(lot, "lot"), "coi_id": coi_id,
                       "qc": "fail" if failed else "pass", "viable_cells": viable_cells}
            if failed:
                if not reason:
                    raise InvalidInput("A failed release needs --reason.", field="reason")
                self._transition(study, state, "release_failed", today, today, coi_id=coi_id)
                return [NewEvent(T.PRODUCT_RELEASE_FAILED, payload, reason=reason)], {
                    "qc": "fail", "next_step": "record a new leukapheresis or take the subject "
                    "off study (manufacturing_failure)"}
            events = self._transition(study, state, "release", today, today, coi_id=coi_id)
            return [NewEvent(T.PRODUCT_RELEASED, payload), *events], {
                "qc": "pass", "phase": "lymphodepletion"}
        return self._subject_write("release", subject, {"lot": lot, "coi": coi_id,
                                   "failed": failed, "reason": reason, "vc": viable_cells},
                                   user, command_id, body)

    def lymphodepletion(self, user: str | None, subject: str, on: date, fludarabine_mg: float,
                        cyclophosphamide_mg: float, *, deviation: bool, reason: str | None,
                        command_id: str | None) -> Outcome:
        _dose(fludarabine_mg, "fludarabine_mg")  # before the request is hashed (JSON: no NaN)
        _dose(cyclophosphamide_mg, "cyclophosphamide_mg")

        def body(study: Study, actor: User, state: SubjectState, today: date
                 ) -> tuple[list[NewEvent], dict[str, Any]]:
            _consented(state)
            check_phase(subject, state.phase, "give_dose")
            _not_future(subject, "given_on", on, today)
            protocol = study.protocol
            regimen = protocol.lymphodepletion
            days = sorted(regimen.days)
            index = len(state.lymphodepletion_days)
            if index >= len(days):
                raise RuleViolation(f"Subject {subject}: every dose of the regimen is recorded.",
                                    rule="regimen_complete", subject=subject)
            if state.lymphodepletion_days and on <= state.lymphodepletion_days[-1]:
                raise InvalidInput(f"Subject {subject}: given_on {on} is not after the previous "
                                   f"dose ({state.lymphodepletion_days[-1]}).", field="given_on")
            day = days[index]
            bsa = _bsa(state)
            expected = {d.drug: round(d.mg_per_m2 * bsa, 1) if day in d.days else 0.0
                        for d in regimen.drugs}
            given = {"fludarabine": _dose(fludarabine_mg, "fludarabine_mg"),
                     "cyclophosphamide": _dose(cyclophosphamide_mg, "cyclophosphamide_mg")}
            tolerance = protocol.dose_tolerance_pct / 100
            off = [f"{drug} {given[drug]:g} mg differs from the expected {want:g} mg"
                   for drug, want in expected.items()
                   if abs(given.get(drug, 0.0) - want) > tolerance * want or
                   (want == 0 and given.get(drug, 0.0) > 0)]
            if deviation and not reason:
                raise InvalidInput("--deviation needs --reason.", field="reason")
            trigger = "give_last_dose" if index == len(days) - 1 else "give_dose"
            events = self._transition(study, state, trigger, today, on,
                                      off_regimen="; ".join(off), deviation=deviation)
            payload = lymphodepletion_payload(  # schema version 2 (workflow/upcasters.py)
                given_on=on.isoformat(), regimen_day=day, bsa_m2=bsa, given=given,
                expected=expected, deviation=bool(off) and deviation,
                protocol_version=protocol.version)
            return [NewEvent(T.LYMPHODEPLETION_GIVEN, payload, occurred_at=_at(
                study, state.site, on), reason=reason if off else None), *events], {
                "regimen_day": day, "expected_mg": expected, "bsa_m2": bsa,
                "phase": "infusion" if events else "lymphodepletion"}
        return self._subject_write("lymphodepletion", subject, {
            "on": on.isoformat(), "f": fludarabine_mg, "c": cyclophosphamide_mg,
            "dev": deviation, "reason": reason}, user, command_id, body)

    def infuse(self, user: str | None, subject: str, at: datetime, cells: float, coi_id: str, *,
               deviation: bool, reason: str | None, command_id: str | None) -> Outcome:
        _dose(cells, "cells")  # before the request is hashed (JSON has no NaN nor infinity)

        def body(study: Study, actor: User, state: SubjectState, today: date
                 ) -> tuple[list[NewEvent], dict[str, Any]]:
            _consented(state)
            check_phase(subject, state.phase, "infuse")
            zone = _zone(study, state.site)
            local = at.astimezone(zone) if at.tzinfo else at.replace(tzinfo=zone)
            _not_future(subject, "infused_at", local.date(), today)
            weight = state.latest_value("vitals", "weight_kg", before=state.collected_on)
            if weight is None:
                raise RuleViolation(f"Subject {subject}: no weight is recorded before "
                                    "leukapheresis, so the dosing weight is unknown.",
                                    rule="dosing_weight_unknown", subject=subject,
                                    field="weight_kg")
            protocol = study.protocol
            assert state.enrolment_order is not None
            cohort = protocol.cohort_for(state.enrolment_order)
            target = cohort.target_cells(float(str(weight)))
            if deviation and not reason:
                raise InvalidInput("--deviation needs --reason.", field="reason")
            events = self._transition(study, state, "infuse", today, local.date(),
                                      infused_on=local.date(), coi_id=coi_id,
                                      cells=_dose(cells, "cells"), target_cells=target,
                                      deviation=deviation)
            payload = {"infused_at": local.isoformat(), "cells": cells, "coi_id": coi_id,
                       "dosing_weight_kg": weight, "target_cells": target,
                       "cohort": cohort.code, "deviation": deviation,
                       "protocol_version": protocol.version}
            return [NewEvent(T.INFUSION_GIVEN, payload, occurred_at=local.isoformat(),
                             reason=reason if deviation else None), *events], {
                "d0": local.date().isoformat(), "target_cells": target, "phase": "follow_up"}
        return self._subject_write("infuse", subject, {"at": at.isoformat(), "cells": cells,
                                   "coi": coi_id, "dev": deviation, "reason": reason}, user,
                                   command_id, body)

    def visit(self, user: str | None, subject: str, visit: str, status: str, on: date | None,
              command_id: str | None) -> Outcome:
        def body(study: Study, actor: User, state: SubjectState, today: date
                 ) -> tuple[list[NewEvent], dict[str, Any]]:
            _consented(state)
            check_phase(subject, state.phase, "record_visit")
            study.protocol.visit(visit)
            day = on or today
            _not_future(subject, "visit_date", day, today)
            self._transition(study, state, "record_visit", today, day, visit=visit)
            return [NewEvent(T.VISIT_RECORDED, {"visit": visit, "status": status,
                             "visit_date": day.isoformat()},
                             occurred_at=_at(study, state.site, day))], {
                "visit": visit, "status": status, "visit_date": day.isoformat()}
        return self._subject_write("visit", subject, {"visit": visit, "status": status,
                                   "on": str(on)}, user, command_id, body)

    def complete(self, user: str | None, subject: str, command_id: str | None) -> Outcome:
        def body(study: Study, actor: User, state: SubjectState, today: date
                 ) -> tuple[list[NewEvent], dict[str, Any]]:
            _consented(state)
            events = self._transition(study, state, "complete", today, today)
            return [NewEvent(T.SUBJECT_COMPLETED, {}), *events], {"phase": "completed"}
        return self._subject_write("complete", subject, {}, user, command_id, body)

    def off_study(self, user: str | None, subject: str, reason: str,
                  command_id: str | None) -> Outcome:
        if reason not in OFF_STUDY_REASONS:
            raise InvalidInput(f"--reason must be one of {', '.join(OFF_STUDY_REASONS)}.",
                               field="reason")

        def body(study: Study, actor: User, state: SubjectState, today: date
                 ) -> tuple[list[NewEvent], dict[str, Any]]:
            _consented(state)
            events = self._transition(study, state, "off_study", today, today)
            return [NewEvent(T.SUBJECT_OFF_STUDY, {"reason": reason,
                             "phase_at_exit": state.phase}), *events], {
                "phase": "off_study", "reason": reason}

        def free(study: Study, state: SubjectState) -> list[NewEvent]:
            place = study.place_of(subject)
            if (place is not None and state.infused_on is None
                    and study.protocol.replace_before_infusion):
                return [NewEvent(T.ENROLMENT_PLACE_FREED, {"subject": subject,
                                 "order": place.order, "reason": reason})]
            return []
        return self._subject_write("off_study", subject, {"reason": reason}, user, command_id,
                                   body, study_events=free)


# ---------------------------------------------------------------------- helpers
def correction_events(study: Study, state: SubjectState, position: int, tokens: Sequence[str],
                      reason: str, today: date) -> tuple[list[NewEvent], dict[str, Any]]:
    """The events of a correction (`trialflow correct`, and a query answered with one): the
    corrected values checked like the original, the reason required, the old values kept."""
    subject = state.subject
    _consented(state)
    if state.infusion is not None and position == state.infusion.position:
        return _infusion_correction(study, state, tokens, reason, today)
    target = state.forms.get(position)
    if target is None:
        raise InvalidInput(f"Subject {subject} has no form recorded at position {position}.",
                           field="position", subject=subject)
    if not reason or not reason.strip():
        raise InvalidInput("A correction needs --reason.", field="reason")
    try:
        changes = parse_form(target.form, tokens, today=today, partial=True)
        merged = validate_values(target.form, {**target.values, **changes}, today=today)
    except InvalidInput as error:
        raise InvalidInput(f"Subject {subject}: {error.message}", field=error.field,
                           subject=subject) from None
    if not changes:
        raise InvalidInput("A correction needs at least one field=value.", field="fields")
    _check_assessment_date(state, target.form, merged, target.recorded_on)
    previous = {k: target.values.get(k) for k in changes}
    payload = {"target_position": position, "form": target.form, "changes": changes,
               "previous": previous}
    return [NewEvent(T.FORM_CORRECTED, payload, reason=reason.strip())], {
        "form": target.form, "changes": changes, "previous": previous}


def _infusion_correction(study: Study, state: SubjectState, tokens: Sequence[str],
                         reason: str, today: date) -> tuple[list[NewEvent], dict[str, Any]]:
    """The infusion time is the one phase fact a correction may change (D0 moves, and with
    it every window); the corrected value is checked like the original."""
    subject = state.subject
    assert state.infusion is not None
    if not reason or not reason.strip():
        raise InvalidInput("A correction needs --reason.", field="reason")
    try:
        changes = parse_form("infusion", tokens, today=today, partial=True)
    except InvalidInput as error:
        raise InvalidInput(f"Subject {subject}: {error.message}", field=error.field,
                           subject=subject) from None
    if set(changes) != {"infused_at"}:
        raise InvalidInput(f"Subject {subject}: only infused_at of the infusion can be "
                           "corrected (cells and chain of identity are checked at infusion).",
                           field="fields", subject=subject)
    local = datetime.fromisoformat(str(changes["infused_at"])).astimezone(
        _zone(study, state.site))
    last_dose = max(state.lymphodepletion_days, default=None)
    if last_dose is not None and local.date() <= last_dose:
        raise RuleViolation(f"Subject {subject}: infused_at {local.date()} is not after the "
                            f"last lymphodepletion dose on {last_dose}.",
                            rule="infusion_window", field="infused_at", subject=subject)
    changes = {"infused_at": local.isoformat()}
    previous = {"infused_at": state.infusion.payload["infused_at"]}
    payload = {"target_position": state.infusion.position, "form": "infusion",
               "changes": changes, "previous": previous}
    return [NewEvent(T.FORM_CORRECTED, payload, reason=reason.strip())], {
        "form": "infusion", "changes": changes, "previous": previous}


def _zone(study: Study, site: str | None) -> ZoneInfo:
    return ZoneInfo(study.sites.get(site or "", "UTC"))


def _at(study: Study, site: str | None, on: date) -> str:
    """A clinical date as an occurred_at: local midnight at the site, with its offset."""
    return datetime.combine(on, time(0), _zone(study, site)).isoformat()


def _require(actor: User, roles: frozenset[str] | set[str], action: str,
             subject: str | None = None) -> None:
    if actor.role not in roles:
        who = " or ".join(sorted(roles))
        article = "an" if who[0] in "aeiou" else "a"
        target = f" for subject {subject}" if subject else ""
        raise RuleViolation(f"User {actor.name} ({actor.role}) may not {action}{target}: only "
                            f"{article} {who} may.", rule="role", subject=subject,
                            field="user")


def _consented(state: SubjectState) -> None:
    if not state.consented:
        raise RuleViolation(f"Subject {state.subject} has not consented: record `trialflow "
                            "consent` first.", rule="not_consented", subject=state.subject)


def _not_future(subject: str, field_name: str, day: date, today: date) -> None:
    if day > today:
        raise InvalidInput(f"Subject {subject}: {field_name} {day} is in the future (today is "
                           f"{today} at the site).", field=field_name, subject=subject)


def _check_assessment_date(state: SubjectState, form: str, values: dict[str, Any],
                           on: date) -> None:
    assert state.consent is not None
    dated = assessment_date(form, values, on)
    if dated is not None and dated < state.consent.consent_date:
        raise RuleViolation(
            f"Subject {state.subject}: {form} is dated {dated}, before consent on "
            f"{state.consent.consent_date}; no screening procedure may precede consent.",
            rule="assessment_before_consent", subject=state.subject, field=form)


def _check_ae_position(state: SubjectState, values: dict[str, Any]) -> None:
    position = int(values["ae_position"])
    target = state.forms.get(position)
    if target is None or target.form != "adverse_event":
        raise InvalidInput(f"Subject {state.subject}: ae_position {position} is not an adverse "
                           "event of this subject.", field="ae_position", subject=state.subject)


def _bsa(state: SubjectState) -> float:
    height = state.latest_value("vitals", "height_cm")
    weight = state.latest_value("vitals", "weight_kg", before=state.collected_on)
    if height is None or weight is None:
        raise RuleViolation(f"Subject {state.subject}: height and weight must be recorded (form "
                            "vitals) to compute the BSA.", rule="bsa_unknown",
                            subject=state.subject, field="height_cm")
    return body_surface_area(float(str(height)), float(str(weight))).bsa_m2


def _dose(value: float, field_name: str) -> float:
    if not math.isfinite(value) or value < 0 or value > 1e13:
        raise InvalidInput(f"{field_name} must be a finite number from 0, got {value}.",
                           field=field_name)
    return value


def _text(value: str, field_name: str) -> str:
    if not value or not value.strip() or len(value) > 200 or any(
            ord(c) < 32 for c in value):
        raise InvalidInput(f"{field_name} must be 1 to 200 printable characters.",
                           field=field_name)
    return value.strip()


def _check_name(name: str, field_name: str = "name") -> None:
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,39}", name or ""):
        raise InvalidInput(f"{field_name} {name!r} must be 1 to 40 letters, digits, dots, "
                           "hyphens or underscores.", field=field_name)
