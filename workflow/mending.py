"""Mending records: which record a position names, what of it may be corrected, what a void
would leave behind, and the one record each act may have. Pure rules on a folded subject,
called by the decisions of `correct`, `void` and the commands that record an act.

Good clinical practice (ICH E6(R3) 4.2 / 21 CFR 11.10(e)): a record entered in error is never
erased; it is corrected or marked void with a reason, and the original stays readable.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any, Final

from workflow.errors import InvalidInput, RuleViolation
from workflow.forms import FORMS
from workflow.subject import DATED_ACTS, PhaseRecord, SubjectState, target_kind

# What a correction may change, per procedure record; a field left out is fixed by a check
# that a correction cannot re-run (the chain of identity) or is the record's identity.
CORRECTABLE: Final[dict[str, tuple[str, ...]]] = {
    "consent": ("consent_date", "consent_form_version"),
    "leukapheresis": ("collected_on", "coi_id"),
    "product_release": ("released_on", "lot", "viable_cells"),
    "lymphodepletion": ("given_on", "fludarabine_mg", "cyclophosphamide_mg"),
    "infusion": ("infused_at", "cells"),
    "visit": ("visit_date",),
}
# The phase change a void of the last procedure of a phase takes back (machine trigger).
VOID_TRIGGERS: Final[dict[str, str]] = {
    "product_release": "void_release", "lymphodepletion": "void_last_dose",
    "infusion": "void_infusion",
}
AE_DEPENDANT_FORMS: Final = ("causality", "sae_report")


@dataclass(frozen=True)
class Target:
    """The record a position names: a form, a procedure or the consent."""

    position: int
    form: str  # a form code, `consent`, a procedure's form or a dated act (DATED_ACTS)
    procedure: PhaseRecord | None = None  # None: a form, the consent or a dated act

    @property
    def is_form(self) -> bool:
        return self.procedure is None and self.form != "consent" and not self.is_act

    @property
    def is_act(self) -> bool:
        """An act recorded by its date alone: eligibility confirmation, completion, exit."""
        return self.form in DATED_ACTS


def target(state: SubjectState, position: int) -> Target:
    """The record of `state` at `position`, refused when there is none or it is voided."""
    subject = state.subject
    voided = state.voided.get(position)
    if voided is not None:
        raise RuleViolation(f"Subject {subject}: the {voided.form} at position {position} was "
                            f"voided at position {voided.void_position}; record it anew if "
                            "it happened.", rule="record_voided", subject=subject,
                            field="position")
    if position in state.forms:
        return Target(position, state.forms[position].form)
    if state.consent is not None and position == state.consent.position:
        return Target(position, "consent")
    act = target_kind(state, position)
    if act is not None:
        return Target(position, act)
    record = state.procedure(position)
    if record is not None:
        return Target(position, record.form, record)
    raise InvalidInput(f"Subject {subject} has no form or procedure recorded at position "
                       f"{position} (`trialflow audit log {subject}` lists them).",
                       field="position", subject=subject)


def procedure_values(form: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """A procedure's payload as its form's fields, in the form's order (absent ones left out):
    a lymphodepletion day's doses (schema version 2) give its `<drug>_mg` fields."""
    fields = dict(payload)
    if form == "lymphodepletion":
        for drug, dose in payload["doses"].items():  # a drug not given that day: no field
            if dose["given"]["value"]:
                fields[f"{drug}_{dose['given']['unit']}"] = dose["given"]["value"]
    return {code: fields[code] for code in FORMS[form].field_codes
            if fields.get(code) is not None}


def check_correctable(state: SubjectState, found: Target, changes: Mapping[str, Any]) -> None:
    """Refuse changes to fields of a procedure that a correction may not change."""
    if found.is_form:
        return
    allowed = (DATED_ACTS[found.form],) if found.is_act else CORRECTABLE[found.form]
    fixed = sorted(set(changes) - set(allowed))
    if fixed:
        raise InvalidInput(
            f"Subject {state.subject}: {', '.join(fixed)} of the {found.form} at position "
            f"{found.position} cannot be corrected (only {', '.join(allowed)}); void it and "
            "record it anew if it was entered in error.", field=fixed[0],
            subject=state.subject)
    if "coi_id" in changes and any(r.position > found.position for r in state.releases):
        release = next(r for r in state.releases if r.position > found.position)
        raise RuleViolation(
            f"Subject {state.subject}: coi_id of the leukapheresis at position "
            f"{found.position} cannot be corrected after the product release at position "
            f"{release.position} checked it (chain of identity).",
            rule="chain_of_identity", subject=state.subject, field="coi_id")


def dependants(state: SubjectState, found: Target, final_visit: str
               ) -> list[tuple[str, int, date]]:
    """The records that rest on `found` (what, position, date): a void of it is refused while
    they stand, since they would then follow nothing."""
    p = found.position
    if found.form == "adverse_event":
        return [(f.form, f.position, f.recorded_on) for f in state.forms.values()
                if f.form in AE_DEPENDANT_FORMS and _int(f.values.get("ae_position")) == p]
    if found.form == "leukapheresis":
        return [("product release", r.position, r.on) for r in state.releases
                if r.position > p][:1]
    if found.form == "product_release":
        later = [("leukapheresis", r.position, r.on) for r in state.collections
                 if r.position > p]
        doses = [("lymphodepletion dose", d.position, d.on) for d in state.doses]
        return (later or doses)[:1]
    if found.form == "lymphodepletion":
        later = [("lymphodepletion dose", d.position, d.on) for d in state.doses
                 if d.position > p]
        if later:
            return later[:1]
        if state.infusion is not None:
            return [("infusion", state.infusion.position, state.infusion.on)]
        return []
    if found.form == "infusion":
        return sorted((f"visit {code}", r.position, r.on)
                      for code, r in state.visit_records.items())[:1]
    if found.form == "visit" and found.procedure is not None:
        code = found.procedure.payload.get("visit")
        tagged = sorted((f"{f.form} recorded at visit {code}", f.position, f.recorded_on)
                        for f in state.forms.values() if f.visit == code)
        if tagged:
            return tagged[:1]
        if code == final_visit and state.completion_position is not None \
                and state.completed_on is not None:  # only the final visit completes
            return [("completion", state.completion_position, state.completed_on)]
    return []


def void_trigger(state: SubjectState, found: Target) -> str | None:
    """The machine trigger a void of `found` fires: the phase the procedure opened closes
    (a passing release, the regimen's last dose, the infusion). None: no phase change."""
    if found.procedure is None:
        return None
    if found.form == "product_release" and found.procedure.payload.get("qc") == "fail":
        return None
    trigger = VOID_TRIGGERS.get(found.form)
    if found.form == "lymphodepletion" and state.phase != "infusion":
        return None  # not the regimen's last dose: the subject is still in lymphodepletion
    return trigger


def where(subject: str, what: str, record: PhaseRecord | None = None,
          position: int | None = None, on: date | None = None) -> str:
    """The sentence's pointer to an existing record and the two ways to mend it."""
    at = record.position if record is not None else position
    day = record.on if record is not None else on
    return (f"Subject {subject}: the {what} is already recorded at position {at}"
            + (f" (dated {day})" if day is not None else "")
            + f"; correct it with `trialflow correct {subject} {at} …` or void it with "
            f"`trialflow void {subject} {at} --reason …`.")


def already_recorded(subject: str, what: str, record: PhaseRecord | None = None, *,
                     position: int | None = None, on: date | None = None,
                     field: str | None = None) -> RuleViolation:
    return RuleViolation(where(subject, what, record, position, on), rule="already_recorded",
                         subject=subject, field=field)


def duplicate_adverse_event(state: SubjectState, values: Mapping[str, Any], *,
                            exclude: int | None = None) -> int | None:
    """The position of a standing AE with the same term and onset as `values` (the same
    event entered twice), None when there is none."""
    term, onset = _term(values.get("term")), str(values.get("onset_date", ""))[:10]
    for form in state.forms_of("adverse_event"):
        if form.position != exclude and _term(form.values.get("term")) == term and \
                str(form.values.get("onset_date", ""))[:10] == onset:
            return form.position
    return None


def _term(value: object) -> str:
    """An AE term as compared for duplicates: compatibility-normalised (a no-break space is a
    space), case-folded, runs of white space as one space."""
    return " ".join(unicodedata.normalize("NFKC", str(value or "")).casefold().split())


def _int(value: object) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None
