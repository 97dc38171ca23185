"""Protocol deviations of one subject, read from its folded stream (time-independent).

Each deviation is judged against the protocol version in force for the subject at the
position of the event it is about (`SubjectState.protocol_version_at`), so an amendment never
rewrites an earlier verdict. A deviation recorded on purpose (`--deviation --reason`) is still
listed: the list is what a monitor reviews, the reason is part of its detail.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import date
from typing import Any, Final

from workflow.dose_basis import cart_target, dosing_bsa, expected_doses
from workflow.instruments.study_days import VisitWindow as Window
from workflow.instruments.study_days import infusion_window
from workflow.protocol import Lymphodepletion, Protocol
from workflow.records import RecordedForm
from workflow.schedule import visit_window
from workflow.subject import PhaseRecord, SubjectState

VISIT_OUT_OF_WINDOW: Final = "visit_out_of_window"  # a visit done outside its window
KINDS: Final = (
    VISIT_OUT_OF_WINDOW, "dose_off_regimen", "dose_out_of_tolerance",
    "infusion_out_of_window", "assessment_missing",
)
DEVIATION_KEYS: Final = ("subject", "kind", "position", "visit", "on", "detail",
                         "protocol_version")

ProtocolOf = Callable[[int], Protocol]


def deviations(s: SubjectState, protocol_of: ProtocolOf) -> list[dict[str, Any]]:
    """Every protocol deviation of the subject, ordered by the position it is about."""
    if s.protocol_version is None:
        return []
    found = [
        *_dose_deviations(s, protocol_of),
        *_infusion_deviations(s, protocol_of),
        *_visit_deviations(s, protocol_of),
    ]
    return sorted(found, key=lambda row: (row["position"], KINDS.index(row["kind"])))


def _version_at(s: SubjectState, position: int) -> int:
    version = s.protocol_version_at(position)
    if version is None:
        assert s.protocol_version is not None
        return s.protocol_version
    return version


def _deviation(s: SubjectState, kind: str, position: int, on: date, detail: str,
               visit: str | None = None) -> dict[str, Any]:
    return {"subject": s.subject, "kind": kind, "position": position, "visit": visit,
            "on": on.isoformat(), "detail": detail,
            "protocol_version": _version_at(s, position)}


def _with_reason(sentence: str, reason: str | None) -> str:
    return f"{sentence}; reason recorded: {reason}." if reason else f"{sentence}."


# Source: docs/clinical-rules.md, dose tolerance (default ±20%); the same test the dose guards use.
def beyond_tolerance(given: float, expected: float, tolerance_pct: float) -> bool:
    """`given` differs from `expected` by more than `tolerance_pct` % of `expected` (any
    amount of a drug not due that day counts)."""
    if expected == 0:
        return given > 0
    return abs(given - expected) > tolerance_pct / 100 * expected


# --- lymphodepletion ----------------------------------------------------------------------


# Source: docs/clinical-rules.md, lymphodepletion regimen (default Mackensen et al., Nat Med 2022).
def _dose_deviations(s: SubjectState, protocol_of: ProtocolOf) -> list[dict[str, Any]]:
    found = []
    bsa = dosing_bsa(s)
    for dose in s.doses:
        protocol = protocol_of(_version_at(s, dose.position))
        off = _off_regimen(_on_current_basis(dose.payload, protocol, bsa),
                           protocol.dose_tolerance_pct)
        if off or dose.payload.get("deviation"):
            found.append(_dose_deviation(s, dose, protocol, off))
    return found


def _off_regimen(payload: Mapping[str, Any], tolerance_pct: float) -> list[str]:
    """The regimen's drugs given beyond tolerance that day (a LymphodepletionGiven payload,
    schema version 2: `doses` per drug, each with the amount given and expected)."""
    found = []
    for drug, dose in payload["doses"].items():
        expected = dose["expected"]
        if expected is None:  # a drug outside the regimen: no amount to compare with
            continue
        given, want = float(dose["given"]["value"]), float(expected["value"])
        if beyond_tolerance(given, want, tolerance_pct):
            found.append(f"{drug} {given:g} {dose['given']['unit']} against the expected "
                         f"{want:g} {expected['unit']}")
    return found


def _on_current_basis(payload: Mapping[str, Any], protocol: Protocol, bsa: float | None
                      ) -> Mapping[str, Any]:
    """A dose's payload with the amounts the regimen expects on the subject's BSA as it
    stands now (a corrected height or weight moves them); as recorded when the BSA is
    unknown or the day is not the protocol's regimen day."""
    day = payload.get("regimen_day")
    if bsa is None or not isinstance(day, int) or day not in protocol.lymphodepletion.days:
        return payload
    due = expected_doses(protocol.lymphodepletion, day, bsa)
    doses = {drug: {**dose, "expected": {"value": due[drug], "unit": "mg"}}
             if drug in due and dose.get("expected") is not None else dose
             for drug, dose in payload["doses"].items()}
    return {**payload, "doses": doses}


def _regimen_text(regimen: Lymphodepletion) -> str:
    return "; ".join(
        f"{drug.drug} {drug.mg_per_m2:g} mg/m² on " + ", ".join(f"D{day}" for day in drug.days)
        for drug in regimen.drugs
    )


def _dose_deviation(s: SubjectState, dose: PhaseRecord, protocol: Protocol,
                    off: list[str]) -> dict[str, Any]:
    day = dose.payload.get("regimen_day")
    what = (f"is off the regimen ({', '.join(off)}: beyond ±{protocol.dose_tolerance_pct:g}%)"
            if off else "is recorded as a deviation from the regimen")
    sentence = (
        f"Subject {s.subject}: lymphodepletion dose on {dose.on.isoformat()}"
        + (f" (regimen day D{day})" if day is not None else "")
        + f" {what} of protocol version {protocol.version} "
        f"({_regimen_text(protocol.lymphodepletion)})"
    )
    return _deviation(s, "dose_off_regimen", dose.position, dose.on,
                      _with_reason(sentence, dose.reason))


# --- infusion -----------------------------------------------------------------------------


def _infusion_deviations(s: SubjectState, protocol_of: ProtocolOf) -> list[dict[str, Any]]:
    if s.infusion is None:
        return []
    protocol = protocol_of(_version_at(s, s.infusion.position))
    found = []
    cells = _cells_deviation(s, s.infusion, protocol)
    if cells is not None:
        found.append(cells)
    window = _infusion_window_deviation(s, s.infusion, protocol)
    if window is not None:
        found.append(window)
    return found


# Source: docs/clinical-rules.md / NCT06513429, cohort dose; default tolerance ±20% of the dose.
def _cells_deviation(s: SubjectState, infusion: PhaseRecord,
                     protocol: Protocol) -> dict[str, Any] | None:
    cells = float(infusion.payload["cells"])
    # the target on the dosing weight as it stands (a corrected weight moves it)
    target = cart_target(s, protocol) or float(infusion.payload["target_cells"])
    tolerance = protocol.dose_tolerance_pct
    if not beyond_tolerance(cells, target, tolerance):
        return None
    sentence = (
        f"Subject {s.subject}: {cells:.3g} CAR-T cells infused on {infusion.on.isoformat()}, "
        f"outside ±{tolerance:g}% of the cohort dose {target:.3g} "
        f"(cohort {infusion.payload.get('cohort')}, protocol version {protocol.version})"
    )
    return _deviation(s, "dose_out_of_tolerance", infusion.position, infusion.on,
                      _with_reason(sentence, infusion.reason))


# Source: docs/clinical-rules.md, lymphodepletion: infusion allowed 2-7 days after the last dose.
def _infusion_window_deviation(s: SubjectState, infusion: PhaseRecord,
                               protocol: Protocol) -> dict[str, Any] | None:
    given = [dose for dose in s.doses if dose.position < infusion.position]
    if not given:
        return None
    regimen = protocol.lymphodepletion
    last = given[-1].on
    window = infusion_window(last, min_days=regimen.infusion_window_min_days,
                             max_days=regimen.infusion_window_max_days)
    if window.earliest <= infusion.on <= window.latest:
        return None
    sentence = (
        f"Subject {s.subject}: infused on {infusion.on.isoformat()}, "
        f"{(infusion.on - last).days} days after the last lymphodepletion dose "
        f"({last.isoformat()}), outside the window of protocol version {protocol.version} "
        f"({regimen.infusion_window_min_days}-{regimen.infusion_window_max_days} days: "
        f"{window.earliest.isoformat()} to {window.latest.isoformat()})"
    )
    return _deviation(s, "infusion_out_of_window", infusion.position, infusion.on,
                      _with_reason(sentence, infusion.reason))


# --- follow-up visits ---------------------------------------------------------------------


def _visit_deviations(s: SubjectState, protocol_of: ProtocolOf) -> list[dict[str, Any]]:
    if s.infused_on is None:
        return []
    found = []
    for code, record in s.visit_records.items():
        if record.payload.get("status") != "done":
            continue  # a missed visit is neither out of window nor missing assessments
        protocol = protocol_of(_version_at(s, record.position))
        window = visit_window(s, protocol, code)
        if window is None:
            continue
        outside = _out_of_window(s, record, window, protocol)
        if outside is not None:
            found.append(outside)
        missing = _assessment_missing(s, record, window, protocol)
        if missing is not None:
            found.append(missing)
    return found


def _window_text(window: Window, protocol: Protocol) -> str:
    return (f"window {window.window_start.isoformat()} to {window.window_end.isoformat()}: "
            f"D{window.target_day} ±{window.window_days} days in protocol version "
            f"{protocol.version}")


# Source: docs/clinical-rules.md, follow-up visits: a visit done outside its window is a deviation.
def _out_of_window(s: SubjectState, record: PhaseRecord, window: Window,
                   protocol: Protocol) -> dict[str, Any] | None:
    if window.contains(record.on):
        return None
    sentence = (f"Subject {s.subject}: visit {window.visit} done on {record.on.isoformat()}, "
                f"outside its {_window_text(window, protocol)}")
    return _deviation(s, VISIT_OUT_OF_WINDOW, record.position, record.on,
                      _with_reason(sentence, record.reason), visit=window.visit)


def out_of_window_warning(subject: str, window: Window | None, protocol: Protocol,
                          on: date) -> str | None:
    """What `trialflow visit --done` says at once of a visit done on `on` outside `window`
    (the window under `protocol`, the version the deviation is judged against): one sentence
    naming the window and the deviation `VISIT_OUT_OF_WINDOW` the record makes. None inside
    the window, or when that version has no such visit (then no deviation is made either)."""
    if window is None or window.contains(on):
        return None
    if on < window.window_start:
        days, when = (window.window_start - on).days, "before its window opened"
    else:
        days, when = (on - window.window_end).days, "after its window closed"
    return (f"Subject {subject}: visit {window.visit} done on {on.isoformat()}, {days} "
            f"day{'s' if days != 1 else ''} {when}, is outside its "
            f"{_window_text(window, protocol)}; it is recorded with the protocol deviation "
            f"{VISIT_OUT_OF_WINDOW}.")


# Source: protocol file, visits.<code>.required_forms (the forms the endpoints need).
def _assessment_missing(s: SubjectState, record: PhaseRecord, window: Window,
                        protocol: Protocol) -> dict[str, Any] | None:
    required = protocol.visit(window.visit).required_forms
    if not required:
        return None
    present = {form.form for form in s.forms.values()
               if form.form in required and _counts_for(form, window)}
    missing = [form for form in required if form not in present]
    if not missing:
        return None
    sentence = (f"Subject {s.subject}: visit {window.visit} done on {record.on.isoformat()} "
                f"without the required form{'s' if len(missing) > 1 else ''} "
                f"{', '.join(missing)} (recorded for the visit or dated in its "
                f"{_window_text(window, protocol)})")
    return _deviation(s, "assessment_missing", record.position, record.on,
                      _with_reason(sentence, None), visit=window.visit)


def _counts_for(form: RecordedForm, window: Window) -> bool:
    """A form counts for a visit when recorded for it or dated inside its window."""
    return form.visit == window.visit or window.contains(form.recorded_on)
