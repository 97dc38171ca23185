"""The command-line face of the instruments: `trialflow calc NAME [key=value | flag]...`.

`run` parses the words after the instrument name, calls one pure instrument and returns a
JSON-serialisable dict; with `--json` the CLI prints
`json.dumps(result, indent=2, ensure_ascii=False)`. It computes nothing itself: every rule
lives in the instrument modules.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass
from datetime import date
from types import MappingProxyType
from typing import Final

from workflow.errors import InvalidInput
from workflow.instruments import sources
from workflow.instruments.codes import (
    CRS_HYPOTENSION,
    CRS_HYPOXIA,
    EULAR_ACR_2019_CRITERIA,
    EULAR_ACR_2019_DOMAINS,
    GLUCOCORTICOID_FACTORS,
    ICANS_CEREBRAL_EDEMA,
    ICANS_CONSCIOUSNESS,
    ICANS_MOTOR,
    ICANS_SEIZURE,
    SERIOUS_CRITERIA,
    SLEDAI2K_DESCRIPTORS,
    SLEDAI2K_WEIGHTS,
)
from workflow.instruments.crs import TEMPERATURE_MAX_C, TEMPERATURE_MIN_C, grade_crs
from workflow.instruments.ctcae import assess_seriousness, ctcae_grade
from workflow.instruments.dosing import (
    BSA_MAX_M2,
    DEFAULT_COHORT_COUNT,
    DEFAULT_COHORT_SIZE,
    HEIGHT_MAX_CM,
    WEIGHT_MAX_KG,
    body_surface_area,
    cart_dose,
    cohort_for_enrolment,
    lymphodepletion_doses,
)
from workflow.instruments.eular_acr_2019 import classify_eular_acr_2019
from workflow.instruments.icans import ICE_TASKS, grade_icans, ice_total
from workflow.instruments.lldas import PGA_MAX, PREDNISONE_MG_PER_DAY_MAX, assess_lldas
from workflow.instruments.renal import EGFR_MAX, UPCR_MAX, assess_renal_response
from workflow.instruments.sledai2k import (
    SLEDAI2K_MAX_SCORE,
    sledai2k_improvement,
    sledai2k_score,
)
from workflow.instruments.steroids import DOSE_MAX_MG, prednisone_equivalent
from workflow.instruments.study_days import date_of_day, study_day, visit_windows

INPUT_TYPES: Final = ("flag", "number", "integer", "count", "choice", "titre", "date", "list")
_NUMBER: Final = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_INTEGER: Final = re.compile(r"[+-]?\d{1,18}")  # bounded: int() refuses 4300+ digits
_DATE: Final = re.compile(r"\d{4}-\d{2}-\d{2}")
_YES: Final = frozenset({"yes", "y", "true", "1"})
_NO: Final = frozenset({"no", "n", "false", "0"})


@dataclass(frozen=True)
class InputSpec:
    """One input of an instrument, as `calc --list` shows it."""

    name: str
    type: str
    description: str
    unit: str | None = None
    allowed: tuple[str, ...] | None = None
    default: str | float | bool | None = None
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "type": self.type,
            "description": self.description,
            "unit": self.unit,
            "allowed": None if self.allowed is None else list(self.allowed),
            "default": self.default,
            "required": self.required,
            "minimum": self.minimum,
            "maximum": self.maximum,
        }


@dataclass(frozen=True)
class InstrumentSpec:
    name: str
    description: str
    source: str
    inputs: tuple[InputSpec, ...]
    compute: Callable[[Args], dict[str, object]]

    def input(self, name: str) -> InputSpec | None:
        return next((spec for spec in self.inputs if spec.name == name), None)


class Args:
    """The parsed words of one `calc` call; each accessor parses and checks one input."""

    def __init__(self, spec: InstrumentSpec, raw: Mapping[str, str | None]) -> None:
        self._spec = spec
        self._raw = dict(raw)

    def given(self, name: str) -> bool:
        return name in self._raw

    def _input(self, name: str) -> InputSpec:
        found = self._spec.input(name)
        if found is None:  # a programming error in this module, not bad input
            raise KeyError(f"{self._spec.name} has no input {name}")
        return found

    def flag(self, name: str) -> bool:
        spec = self._input(name)
        if name not in self._raw:
            return bool(spec.default)
        text = self._raw[name]
        if text is None:
            return True
        word = text.strip().lower()
        if word in _YES:
            return True
        if word in _NO:
            return False
        raise InvalidInput(f"{name} must be yes or no, got {text!r}.", field=name)

    def number(self, name: str) -> float | None:
        spec = self._input(name)
        text = self._value(name)
        if text is None:
            return None if spec.default is None else float(spec.default)
        if not _NUMBER.fullmatch(text.strip()):
            unit = f" of {spec.unit}" if spec.unit else ""
            raise InvalidInput(f"{name} must be a number{unit}, got {text!r}.", field=name)
        return float(text)

    def integer(self, name: str) -> int | None:
        spec = self._input(name)
        text = self._value(name)
        if text is None:
            return None
        if not _INTEGER.fullmatch(text.strip()):
            if spec.minimum is not None and spec.maximum is not None:
                phrase = f"a whole number from {spec.minimum:g} to {spec.maximum:g}"
            else:
                phrase = "a whole number"
            raise InvalidInput(f"{name} must be {phrase}, got {text!r}.", field=name)
        return int(text)

    def count(self, name: str) -> int | None:
        value = self.number(name)
        if value is None:
            return None
        if not value.is_integer():
            raise InvalidInput(
                f"{name} must be a whole number of cells, got {self._raw[name]!r}.", field=name
            )
        return int(value)

    def text(self, name: str) -> str | None:
        spec = self._input(name)
        text = self._value(name)
        if text is None:
            return None if spec.default is None else str(spec.default)
        return text.strip()

    def choice(self, name: str) -> str:
        value = self.text(name)
        if value is None:
            raise InvalidInput(f"{name} is required for {self._spec.name}.", field=name)
        return value

    def calendar_date(self, name: str) -> date | None:
        text = self._value(name)
        if text is None:
            return None
        try:
            if not _DATE.fullmatch(text.strip()):
                raise ValueError(text)
            return date.fromisoformat(text.strip())
        except ValueError as error:
            raise InvalidInput(
                f"{name} must be a calendar date as YYYY-MM-DD, got {text!r}.", field=name
            ) from error

    def codes(self, name: str) -> tuple[str, ...]:
        text = self._value(name, empty_ok=True)
        if text is None or text.strip().lower() in {"", "none"}:
            return ()
        return tuple(part.strip() for part in text.split(","))

    def _value(self, name: str, *, empty_ok: bool = False) -> str | None:
        if name not in self._raw:
            return None
        text = self._raw[name]
        if text is None or (not empty_ok and not text.strip()):
            raise InvalidInput(f"{name} needs a value, as in {name}=VALUE.", field=name)
        return text


def _data(value: object) -> object:
    """Dataclasses, tuples and dates as JSON values (objects, lists, ISO strings)."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _data(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, tuple | list):
        return [_data(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): _data(item) for key, item in value.items()}
    if isinstance(value, date):
        return value.isoformat()
    return value


def _flags(args: Args, names: Sequence[str]) -> list[str]:
    return [name for name in names if args.flag(name)]


def _required_number(args: Args, name: str) -> float:
    value = args.number(name)
    if value is None:
        raise InvalidInput(f"{name} is required.", field=name)
    return value


# --- one adapter per instrument: parse, call the pure function, shape the answer -----------


def _sledai2k(args: Args) -> dict[str, object]:
    result = sledai2k_score(_flags(args, SLEDAI2K_DESCRIPTORS))
    answer: dict[str, object] = {
        "score": result.score,
        "counted": {item.code: item.weight for item in result.counted},
        "points_by_organ_system": {p.organ_system: p.points for p in result.points_by_organ_system},
    }
    explanation = result.explanation
    baseline = args.integer("baseline_score")
    if baseline is not None:
        change = sledai2k_improvement(baseline, result.score)
        answer.update(
            baseline_score=change.baseline_score,
            reduction=change.reduction,
            improved=change.improved,
        )
        explanation += " " + change.explanation
    answer["explanation"] = explanation
    return answer


def _eular_acr_2019(args: Args) -> dict[str, object]:
    result = classify_eular_acr_2019(
        args.text("ana_titer"), _flags(args, EULAR_ACR_2019_CRITERIA)
    )
    return {
        "classified": result.classified,
        "points": result.points,
        "entry_criterion_met": result.entry_criterion_met,
        "ana_titer": result.ana_titer,
        "clinical_points": result.clinical_points,
        "immunologic_points": result.immunologic_points,
        "domains": {
            d.domain: {
                "kind": d.kind, "present": list(d.present), "counted": d.counted,
                "points": d.points,
            }
            for d in result.domains
        },
        "explanation": result.explanation,
    }


def _lldas(args: Args) -> dict[str, object]:
    result = assess_lldas(
        _flags(args, SLEDAI2K_DESCRIPTORS),
        pga=_required_number(args, "pga"),
        prednisone_mg_per_day=_required_number(args, "prednisone_mg_per_day"),
        new_activity=args.flag("new_activity"),
        maintenance_tolerated=args.flag("maintenance_tolerated"),
        hemolytic_anemia=args.flag("hemolytic_anemia"),
        gi_activity=args.flag("gi_activity"),
    )
    return {
        "met": result.met,
        "sledai2k": result.sledai2k,
        "conditions": {c.condition: {"met": c.met, "reason": c.reason} for c in result.conditions},
        "explanation": result.explanation,
    }


def _renal_response(args: Args) -> dict[str, object]:
    result = assess_renal_response(
        baseline_upcr=_required_number(args, "baseline_upcr"),
        upcr=_required_number(args, "upcr"),
        baseline_egfr=_required_number(args, "baseline_egfr"),
        egfr=_required_number(args, "egfr"),
        rescue_therapy=args.flag("rescue_therapy"),
    )
    return _as_answer(result)


def _crs(args: Args) -> dict[str, object]:
    return _as_answer(grade_crs(
        temperature_c=args.number("temperature_c"),
        hypotension=args.choice("hypotension"),
        hypoxia=args.choice("hypoxia"),
        fever_masked=args.flag("fever_masked"),
    ))


def _icans(args: Args) -> dict[str, object]:
    tasks = {task: args.integer(task) for task in ICE_TASKS}
    given_tasks = {task: value for task, value in tasks.items() if value is not None}
    score = args.integer("ice_score")
    ice_text = ""
    if given_tasks:
        missing = [task for task in ICE_TASKS if task not in given_tasks]
        if missing:
            raise InvalidInput(
                f"{missing[0]} is required when other ICE tasks are given "
                f"(all of {', '.join(ICE_TASKS)}).",
                field=missing[0],
            )
        ice = ice_total(
            orientation=given_tasks["orientation"], naming=given_tasks["naming"],
            commands=given_tasks["commands"], writing=given_tasks["writing"],
            attention=given_tasks["attention"],
        )
        if score is not None and score != ice.ice_score:
            raise InvalidInput(
                f"ice_score {score} does not match the ICE tasks given, which add up to "
                f"{ice.ice_score}.",
                field="ice_score",
            )
        score = ice.ice_score
        ice_text = ice.explanation + " "
    if score is None:
        raise InvalidInput(
            "ice_score is required (or all five ICE tasks: " + ", ".join(ICE_TASKS) + ").",
            field="ice_score",
        )
    result = grade_icans(
        ice_score=score,
        consciousness=args.choice("consciousness"),
        seizure=args.choice("seizure"),
        motor=args.choice("motor"),
        cerebral_edema=args.choice("cerebral_edema"),
    )
    return {
        "grade": result.grade,
        "ice_score": result.ice_score,
        "domains": {d.domain: {"finding": d.finding, "grade": d.grade} for d in result.domains},
        "explanation": ice_text + result.explanation,
    }


def _ctcae(args: Args) -> dict[str, object]:
    grade = args.integer("grade")
    if grade is None:
        raise InvalidInput("grade is required.", field="grade")
    return _as_answer(ctcae_grade(grade))


def _seriousness(args: Args) -> dict[str, object]:
    return _as_answer(
        assess_seriousness(args.codes("serious_criteria"), grade=args.integer("grade"))
    )


def _prednisone_equivalent(args: Args) -> dict[str, object]:
    result = prednisone_equivalent(args.choice("drug"), _required_number(args, "dose_mg"))
    return {
        "prednisone_mg": result.prednisone_mg,
        "drug": result.drug,
        "dose_mg": result.dose_mg,
        "factor": result.factor,
        "explanation": result.explanation,
    }


def _bsa(args: Args) -> dict[str, object]:
    result = body_surface_area(
        _required_number(args, "height_cm"), _required_number(args, "weight_kg")
    )
    return {
        "bsa_m2": result.bsa_m2,
        "height_cm": result.height_cm,
        "weight_kg": result.weight_kg,
        "explanation": result.explanation,
    }


def _cart_dose(args: Args) -> dict[str, object]:
    cohort = args.integer("cohort")
    order = args.integer("enrolment_order")
    if cohort is not None and order is not None:
        raise InvalidInput("give cohort or enrolment_order, not both.", field="cohort")
    prefix = ""
    if order is not None:
        placed = cohort_for_enrolment(order)
        cohort = placed.cohort
        prefix = placed.explanation + " "
    if cohort is None:
        raise InvalidInput("cohort (1 or 2) or enrolment_order is required.", field="cohort")
    result = cart_dose(
        cohort=cohort, weight_kg=args.number("weight_kg"), cells=args.count("cells")
    )
    answer = _as_answer(result)
    if order is not None:
        answer = {"enrolment_order": order, **answer}
    answer["explanation"] = prefix + result.explanation
    return answer


def _lymphodepletion_dose(args: Args) -> dict[str, object]:
    bsa = args.number("bsa_m2")
    prefix = ""
    if bsa is not None and (args.given("height_cm") or args.given("weight_kg")):
        raise InvalidInput("give bsa_m2 or height_cm and weight_kg, not both.", field="bsa_m2")
    if bsa is None:
        if not (args.given("height_cm") or args.given("weight_kg")):
            raise InvalidInput("bsa_m2 (or height_cm and weight_kg) is required.",
                               field="bsa_m2")
        measured = body_surface_area(
            _required_number(args, "height_cm"), _required_number(args, "weight_kg")
        )
        bsa = measured.bsa_m2
        prefix = measured.explanation + " "
    result = lymphodepletion_doses(bsa, infusion_date=args.calendar_date("infusion_date"))
    answer = _as_answer(result)
    answer["explanation"] = prefix + result.explanation
    return answer


def _study_day(args: Args) -> dict[str, object]:
    d0 = args.calendar_date("infusion_date")
    if d0 is None:
        raise InvalidInput("infusion_date is required.", field="infusion_date")
    on = args.calendar_date("date")
    day = args.integer("day")
    if on is not None and day is not None:
        raise InvalidInput("give date or day, not both.", field="date")
    windows = visit_windows(d0)
    answer: dict[str, object] = {"infusion_date": d0.isoformat()}
    if on is not None:
        found_day, found_on = study_day(d0, on), on
    elif day is not None:
        found_day, found_on = day, date_of_day(d0, day)
    else:
        answer["visits"] = _data(windows)
        answer["explanation"] = (
            f"D0 is the infusion day {d0.isoformat()}; day N is D0 + N days "
            f"({sources.PROTOCOL_CALENDAR}); visit windows are target day ± window days."
        )
        return answer
    inside = [w.visit for w in windows if w.contains(found_on)]
    answer.update(date=found_on.isoformat(), study_day=found_day, visit_windows=inside)
    answer["explanation"] = (
        f"{found_on.isoformat()} is study day {found_day} (D0 = infusion on {d0.isoformat()}, "
        f"{sources.PROTOCOL_CALENDAR})"
        + (f"; inside the window of {', '.join(inside)}." if inside else
           "; inside no follow-up visit window.")
    )
    return answer


def _as_answer(result: object) -> dict[str, object]:
    data = _data(result)
    if not isinstance(data, dict):  # every instrument returns a dataclass
        raise TypeError(f"expected a dataclass result, got {type(result).__name__}")
    return data


# --- the specs --------------------------------------------------------------------------------

_SLEDAI_ORGAN_NOTE: Final = "SLEDAI-2K descriptor present in the look-back window"


def _descriptor_inputs() -> tuple[InputSpec, ...]:
    return tuple(
        InputSpec(code, "flag", f"{_SLEDAI_ORGAN_NOTE}, weight {weight}", default=False)
        for code, weight in SLEDAI2K_WEIGHTS.items()
    )


def _criterion_inputs() -> tuple[InputSpec, ...]:
    return tuple(
        InputSpec(code, "flag", f"EULAR/ACR 2019 {domain} criterion, weight {weight}",
                  default=False)
        for domain, weights in EULAR_ACR_2019_DOMAINS.items()
        for code, weight in weights.items()
    )


def _number(
    name: str, description: str, unit: str | None, *, required: bool = True,
    minimum: float | None = None, maximum: float | None = None,
) -> InputSpec:
    return InputSpec(name, "number", description, unit=unit, required=required,
                     minimum=minimum, maximum=maximum)


def _choice(name: str, description: str, allowed: tuple[str, ...], default: str) -> InputSpec:
    return InputSpec(name, "choice", description, allowed=allowed, default=default)


_SPECS: Final = (
    InstrumentSpec(
        "sledai2k",
        "SLEDAI-2K disease activity score (0-105) from the descriptors present; with "
        "baseline_score also the change from baseline (improved when it falls by >= 4).",
        sources.GLADMAN_2002,
        (*_descriptor_inputs(),
         InputSpec("baseline_score", "integer", "SLEDAI-2K at baseline, to report the change",
                   minimum=0, maximum=SLEDAI2K_MAX_SCORE)),
        _sledai2k,
    ),
    InstrumentSpec(
        "eular-acr-2019",
        "EULAR/ACR 2019 SLE classification: ANA >= 1:80 entry, highest criterion per domain, "
        ">= 10 points with >= 1 clinical criterion.",
        sources.ARINGER_2019,
        (InputSpec("ana_titer", "titre", "highest ANA titre on HEp-2 cells ever, as 1:80 or 80; "
                   "omitted means no positive ANA"),
         *_criterion_inputs()),
        _eular_acr_2019,
    ),
    InstrumentSpec(
        "lldas",
        "Lupus Low Disease Activity State: all five conditions must hold.",
        sources.FRANKLYN_2016,
        (*_descriptor_inputs(),
         InputSpec("hemolytic_anemia", "flag", "haemolytic anaemia present", default=False),
         InputSpec("gi_activity", "flag", "gastrointestinal lupus activity present",
                   default=False),
         _number("pga", "physician global assessment (SELENA-SLEDAI scale)", None,
                 minimum=0, maximum=PGA_MAX),
         _number("prednisone_mg_per_day", "current prednisone-equivalent dose", "mg/day",
                 minimum=0, maximum=PREDNISONE_MG_PER_DAY_MAX),
         InputSpec("new_activity", "flag", "new lupus activity since the previous assessment",
                   required=True),
         InputSpec("maintenance_tolerated", "flag",
                   "standard maintenance immunosuppressants/biologics well tolerated",
                   required=True)),
        _lldas,
    ),
    InstrumentSpec(
        "renal-response",
        "Renal response: complete, partial, none, or not_applicable without renal involvement "
        "at baseline (UPCR < 0.5 g/g).",
        sources.KDIGO_2024,
        (_number("baseline_upcr", "urine protein/creatinine ratio at baseline", "g/g",
                 minimum=0, maximum=UPCR_MAX),
         _number("upcr", "urine protein/creatinine ratio now", "g/g", minimum=0,
                 maximum=UPCR_MAX),
         _number("baseline_egfr", "eGFR at baseline (above 0)", "mL/min/1.73 m²", minimum=0,
                 maximum=EGFR_MAX),
         _number("egfr", "eGFR now", "mL/min/1.73 m²", minimum=0, maximum=EGFR_MAX),
         InputSpec("rescue_therapy", "flag", "rescue therapy for nephritis was given",
                   default=False)),
        _renal_response,
    ),
    InstrumentSpec(
        "crs",
        "Cytokine release syndrome grade 0-4: fever >= 38.0 °C required (unless masked), "
        "then the worse of hypotension and hypoxia.",
        sources.LEE_2019,
        (_number("temperature_c", "highest temperature (required unless fever_masked)", "°C",
                 required=False, minimum=TEMPERATURE_MIN_C, maximum=TEMPERATURE_MAX_C),
         _choice("hypotension", "hypotension and its treatment", CRS_HYPOTENSION, "none"),
         _choice("hypoxia", "hypoxia and the oxygen support it needs", CRS_HYPOXIA, "none"),
         InputSpec("fever_masked", "flag",
                   "antipyretic or anti-cytokine treatment given, fever no longer required",
                   default=False)),
        _crs,
    ),
    InstrumentSpec(
        "icans",
        "ICANS grade 0-4 for adults: the most severe of ICE score, consciousness, seizure, "
        "motor findings and cerebral oedema.",
        sources.LEE_2019,
        (InputSpec("ice_score", "integer", "ICE score (or give the five ICE tasks)",
                   minimum=0, maximum=10),
         *(InputSpec(task, "integer", f"ICE task points, 0-{points}", minimum=0,
                     maximum=points) for task, points in ICE_TASKS.items()),
         _choice("consciousness", "depressed level of consciousness", ICANS_CONSCIOUSNESS,
                 "normal"),
         _choice("seizure", "seizures", ICANS_SEIZURE, "none"),
         _choice("motor", "motor findings", ICANS_MOTOR, "none"),
         _choice("cerebral_edema", "raised intracranial pressure / cerebral oedema",
                 ICANS_CEREBRAL_EDEMA, "none")),
        _icans,
    ),
    InstrumentSpec(
        "ctcae",
        "CTCAE v5.0 severity grade 1-5 and its meaning.",
        sources.CTCAE_5,
        (InputSpec("grade", "integer", "CTCAE grade", required=True, minimum=1, maximum=5),),
        _ctcae,
    ),
    InstrumentSpec(
        "seriousness",
        "ICH E2A seriousness of an adverse event, checked against its CTCAE grade "
        "(grade 5 needs death and death needs grade 5).",
        sources.ICH_E2A,
        (InputSpec("serious_criteria", "list", "comma-separated ICH E2A criteria (none: empty)",
                   allowed=SERIOUS_CRITERIA, default=""),
         InputSpec("grade", "integer", "CTCAE grade, to check consistency", minimum=1,
                   maximum=5)),
        _seriousness,
    ),
    InstrumentSpec(
        "prednisone-equivalent",
        "Glucocorticoid dose as prednisone-equivalent mg (dose / factor).",
        sources.STEROID_TABLE,
        (InputSpec("drug", "choice", "glucocorticoid", allowed=tuple(GLUCOCORTICOID_FACTORS),
                   required=True),
         _number("dose_mg", "dose of the drug", "mg", minimum=0, maximum=DOSE_MAX_MG)),
        _prednisone_equivalent,
    ),
    InstrumentSpec(
        "bsa",
        "Body surface area, Mosteller, rounded to 2 decimals.",
        sources.MOSTELLER_1987,
        (_number("height_cm", "height (above 0)", "cm", minimum=0, maximum=HEIGHT_MAX_CM),
         _number("weight_kg", "weight (above 0)", "kg", minimum=0, maximum=WEIGHT_MAX_KG)),
        _bsa,
    ),
    InstrumentSpec(
        "cart-dose",
        "CAR-T dose for the cohort (1: 1e6 cells/kg, 2: flat 1e8 cells); with cells, whether "
        "the dose is within ±20%.",
        sources.NCT06513429,
        (InputSpec("cohort", "integer", "dose cohort (or give enrolment_order)", minimum=1,
                   maximum=2),
         InputSpec("enrolment_order", "integer", "enrolment place, 1-3 cohort 1, 4-6 cohort 2",
                   minimum=1, maximum=DEFAULT_COHORT_SIZE * DEFAULT_COHORT_COUNT),
         _number("weight_kg", "dosing weight (latest before leukapheresis), cohort 1", "kg",
                 required=False, minimum=0, maximum=WEIGHT_MAX_KG),
         InputSpec("cells", "count", "CAR-T cells given or planned, e.g. 6.2e7", unit="cells")),
        _cart_dose,
    ),
    InstrumentSpec(
        "lymphodepletion-dose",
        "Lymphodepletion doses from BSA: fludarabine 25 mg/m²/day on D-5..D-3, "
        "cyclophosphamide 1000 mg/m² on D-3.",
        sources.MACKENSEN_2022,
        (_number("bsa_m2", "body surface area (or give height_cm and weight_kg)", "m²",
                 required=False, minimum=0, maximum=BSA_MAX_M2),
         _number("height_cm", "height", "cm", required=False, minimum=0, maximum=HEIGHT_MAX_CM),
         _number("weight_kg", "weight", "kg", required=False, minimum=0, maximum=WEIGHT_MAX_KG),
         InputSpec("infusion_date", "date", "planned infusion date (D0), to date the doses")),
        _lymphodepletion_dose,
    ),
    InstrumentSpec(
        "study-day",
        "Study-day arithmetic (D0 = infusion): the study day of a date, the date of day N, "
        "or every visit window.",
        sources.PROTOCOL_CALENDAR,
        (InputSpec("infusion_date", "date", "date of CAR-T infusion (D0)", required=True),
         InputSpec("date", "date", "a calendar date, to get its study day"),
         InputSpec("day", "integer", "a study day, to get its date", minimum=-3650,
                   maximum=3650)),
        _study_day,
    ),
)

INSTRUMENTS: Final[Mapping[str, InstrumentSpec]] = MappingProxyType(
    {spec.name: spec for spec in _SPECS}
)


def describe_all() -> list[dict[str, object]]:
    """Every instrument with its description, source and inputs, for `calc --list`."""
    return [
        {
            "name": spec.name,
            "description": spec.description,
            "source": spec.source,
            "inputs": [item.as_dict() for item in spec.inputs],
        }
        for spec in INSTRUMENTS.values()
    ]


def find(name: str) -> InstrumentSpec:
    """The instrument called `name` (underscores accepted for hyphens)."""
    key = name.strip().lower().replace("_", "-")
    if key not in INSTRUMENTS:
        raise InvalidInput(
            f"instrument must be one of {', '.join(INSTRUMENTS)}, got {name!r}.",
            field="instrument",
        )
    return INSTRUMENTS[key]


def run(name: str, args: Sequence[str]) -> dict[str, object]:
    """Run one instrument on `key=value` words and bare flags; a JSON-serialisable answer."""
    spec = find(name)
    if isinstance(args, str):
        raise InvalidInput("args must be a list of words, not one string.", field="args")
    raw: dict[str, str | None] = {}
    for word in args:
        key, has_value, value = word.partition("=")
        key = key.strip().replace("-", "_")
        if not key:
            raise InvalidInput(f"an input name is missing before '=' in {word!r}.", field="args")
        item = spec.input(key)
        if item is None:
            raise InvalidInput(
                f"{key} is not an input of {spec.name} (see trialflow calc --list).", field=key
            )
        if key in raw:
            raise InvalidInput(f"{key} is given more than once.", field=key)
        if not has_value and item.type != "flag":
            raise InvalidInput(f"{key} needs a value, as in {key}=VALUE.", field=key)
        raw[key] = value if has_value else None
    for item in spec.inputs:
        if item.required and item.name not in raw:
            raise InvalidInput(f"{item.name} is required for {spec.name}.", field=item.name)
    answer = spec.compute(Args(spec, raw))
    return {"instrument": spec.name, **answer}
