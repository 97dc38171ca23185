"""Case report forms (CRFs): typed field specifications, parsing and validation.

Form and field codes are those of the Forms table in docs/clinical-rules.md; code lists
come from `workflow.instruments.codes`. Parsed values are JSON-serialisable: dates and
datetimes as ISO 8601 strings, numbers as int or float, yes/no and flags as bool, lists of
codes as lists of str.

Fields added to the table (and why):
- `medication.rescue_therapy` (flag): the renal response needs to know whether rescue therapy
  for nephritis was given (input `rescue_therapy` of the renal rule).
- `pregnancy_test.test_date`, `cart_persistence.sample_date` are optional: the record's date
  (`--on`) is used when they are absent.

Rules chosen here:
- A datetime follows the one rule of clinical date-times (workflow/clinical_time.py): ISO 8601
  with a time of day; with an offset (`Z`, `+08:00`) that instant, without one the local time
  at the subject's site, kept naive here (the site is not known to a form) and given the
  site's offset by the decision (`localise_times`); a bare date is refused. A date or datetime
  after `today` is refused (a datetime is compared by its calendar date in its own offset, a
  naive one by its date at the site).
- A flag given as a bare word means yes; `flag=yes|no` works too. In `disease_activity` and
  `sle_classification` a flag left out means no (the record says so explicitly).
- A yes/no field needs an explicit `yes` or `no`.
- A list of codes is comma-separated; `none` is the empty list.
- `ana_titer` is the reciprocal titre (80), `1:80`, or `negative` (stored as 0).
"""

from __future__ import annotations

import difflib
import math
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, tzinfo
from enum import StrEnum
from typing import Final

from workflow.clinical_time import EXAMPLE as DATETIME_EXAMPLE
from workflow.clinical_time import NotADateTime, parse_datetime, site_time_text
from workflow.errors import InvalidInput
from workflow.instruments.codes import (
    AE_CATEGORIES,
    CRS_HYPOTENSION,
    CRS_HYPOXIA,
    CTCAE_GRADES,
    DRUG_CLASSES,
    EULAR_ACR_2019_CRITERIA,
    EXCLUSION_CHECKLIST,
    GLUCOCORTICOID_FACTORS,
    ICANS_CEREBRAL_EDEMA,
    ICANS_CONSCIOUSNESS,
    ICANS_MOTOR,
    ICANS_SEIZURE,
    RELATEDNESS,
    SERIOUS_CRITERIA,
    SLEDAI2K_DESCRIPTORS,
    VISITS,
    canonical_code,
    canonical_drug,
    spelling_key,
)

SEXES: Final[tuple[str, ...]] = ("female", "male")
TREATMENT_OUTCOMES: Final[tuple[str, ...]] = ("inadequate_response", "relapse", "intolerance")
SPECIMENS: Final[tuple[str, ...]] = ("serum", "urine")
TEST_RESULTS: Final[tuple[str, ...]] = ("negative", "positive")
QC_RESULTS: Final[tuple[str, ...]] = ("pass", "fail")
VISIT_STATUSES: Final[tuple[str, ...]] = ("done", "missed")
REPORT_KINDS: Final[tuple[str, ...]] = ("initial", "follow_up", "expedited")
# AE outcome, after the CDISC AEOUT codelist (not in the Forms table, which names no values).
AE_OUTCOMES: Final[tuple[str, ...]] = (
    "recovered", "recovering", "not_recovered", "recovered_with_sequelae", "fatal", "unknown",
)

# Phase forms are recorded only through their command, never by `trialflow record`.
PHASE_FORM_COMMANDS: Final[dict[str, str]] = {
    "consent": "trialflow consent",
    "leukapheresis": "trialflow leukapheresis",
    "product_release": "trialflow release",
    "lymphodepletion": "trialflow lymphodepletion",
    "infusion": "trialflow infuse",
    "visit": "trialflow visit",
}

_EARLIEST_DATE: Final = date(1900, 1, 1)
_MAX_NUMBER_CHARS: Final = 32
_MAX_SHOWN_CHARS: Final = 40
_DECIMAL_RE: Final = re.compile(
    r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d{1,3})?", re.ASCII
)
_INTEGER_RE: Final = re.compile(r"[+-]?\d{1,12}", re.ASCII)
_DATE_RE: Final = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
_TITER_RE: Final = re.compile(r"(?:1:)?(\d{1,7})", re.ASCII)
_IDENTIFIER_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,63}", re.ASCII)
_YES: Final = frozenset({"yes", "true"})
_NO: Final = frozenset({"no", "false"})


class Kind(StrEnum):
    """What a field holds; `describe_forms` shows it."""

    DATE = "date"
    DATETIME = "datetime"
    DECIMAL = "decimal"
    INTEGER = "integer"
    ENUM = "enum"
    YES_NO = "yes_no"
    FLAG = "flag"
    TEXT = "text"
    ENUM_LIST = "enum_list"
    TITER = "titer"


class _BadValue(Exception):
    """A value that does not fit its field; `expected` completes "must be ..."."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


@dataclass(frozen=True)
class FieldSpec:
    """One field of a form: its code, kind, unit and the values it accepts."""

    code: str
    kind: Kind
    unit: str = ""
    minimum: float | None = None
    maximum: float | None = None
    above_minimum: bool = False  # the lower bound is exclusive
    allowed: tuple[str, ...] = ()
    required: bool = False
    max_length: int = 200
    identifier: bool = False  # text restricted to letters, digits and . _ / -

    def describe(self) -> dict[str, object]:
        """The field as `trialflow forms` lists it."""
        return {
            "field": self.code,
            "kind": str(self.kind),
            "unit": self.unit or None,
            "required": self.required,
            "allowed": list(self.allowed) or None,
            "minimum": self.minimum,
            "maximum": self.maximum,
            "minimum_exclusive": self.above_minimum,
        }


Check = Callable[[str, Mapping[str, object]], None]


@dataclass(frozen=True)
class FormSpec:
    """A case report form: its fields and how its dates relate to consent."""

    code: str
    title: str
    fields: tuple[FieldSpec, ...]
    assessment: bool = False  # dated on or after consent (rule assessment_before_consent)
    date_field: str | None = None  # the assessment date; the record's date when absent
    one_of: tuple[str, ...] = ()  # at least one of these fields must be given
    absent_flags_are_no: bool = False
    checks: tuple[Check, ...] = ()

    @property
    def command(self) -> str | None:
        """The command that records this phase form, None for a form `record` takes."""
        return PHASE_FORM_COMMANDS.get(self.code)

    @property
    def field_codes(self) -> tuple[str, ...]:
        return tuple(spec.code for spec in self.fields)

    def field(self, code: str) -> FieldSpec | None:
        return next((spec for spec in self.fields if spec.code == code), None)

    def find(self, code: str) -> FieldSpec | None:
        """The field named `code`, in British or American spelling (`cerebral_oedema` is
        `cerebral_edema`, `haemoglobin_g_l` is `hemoglobin_g_l`): its `code` is the canonical
        one. What is typed (`record`, `correct`) is read with this; stored codes with `field`."""
        found = self.field(code)
        if found is None and isinstance(code, str):
            canonical = canonical_code(code, self.field_codes)
            found = self.field(canonical) if canonical is not None else None
        return found


# --- field constructors -------------------------------------------------------------------


def _date(code: str, *, required: bool = False) -> FieldSpec:
    return FieldSpec(code, Kind.DATE, required=required)


def _datetime(code: str, *, required: bool = False) -> FieldSpec:
    return FieldSpec(code, Kind.DATETIME, required=required)


def _decimal(
    code: str,
    unit: str,
    minimum: float,
    maximum: float,
    *,
    above_minimum: bool = False,
    required: bool = False,
) -> FieldSpec:
    return FieldSpec(
        code, Kind.DECIMAL, unit, minimum, maximum, above_minimum=above_minimum, required=required
    )


def _integer(
    code: str, minimum: int, maximum: int, *, unit: str = "", required: bool = False
) -> FieldSpec:
    return FieldSpec(code, Kind.INTEGER, unit, minimum, maximum, required=required)


def _enum(code: str, allowed: Sequence[str], *, required: bool = False) -> FieldSpec:
    return FieldSpec(code, Kind.ENUM, allowed=tuple(allowed), required=required)


def _yes_no(code: str, *, required: bool = False) -> FieldSpec:
    return FieldSpec(code, Kind.YES_NO, required=required)


def _flag(code: str) -> FieldSpec:
    return FieldSpec(code, Kind.FLAG)


def _text(
    code: str, *, required: bool = False, max_length: int = 200, identifier: bool = False
) -> FieldSpec:
    return FieldSpec(
        code, Kind.TEXT, required=required, max_length=max_length, identifier=identifier
    )


# --- cross-field checks -------------------------------------------------------------------


def _not_before(earlier: str, later: str) -> Check:
    """A check that `later` is not before `earlier` when both are given."""

    def check(form: str, values: Mapping[str, object]) -> None:
        first, second = values.get(earlier), values.get(later)
        if isinstance(first, str) and isinstance(second, str) and second[:10] < first[:10]:
            raise InvalidInput(
                f"{form}: field {later} ({second}) must not be before {earlier} ({first}).",
                field=later,
            )

    return check


def _awareness_when_serious(form: str, values: Mapping[str, object]) -> None:
    if values.get("serious_criteria") and values.get("awareness_at") is None:
        raise InvalidInput(
            f"{form}: field awareness_at is required when serious_criteria is given, "
            "because it starts the SAE reporting clock.",
            field="awareness_at",
        )


def _known_glucocorticoid(form: str, values: Mapping[str, object]) -> None:
    drug = values.get("drug")
    if values.get("drug_class") != "glucocorticoid" or not isinstance(drug, str):
        return
    if canonical_drug(drug) not in GLUCOCORTICOID_FACTORS:
        known = ", ".join(GLUCOCORTICOID_FACTORS)
        raise InvalidInput(
            f"{form}: field drug must name a glucocorticoid with a prednisone equivalent "
            f"({known}) when drug_class is glucocorticoid, got {_show(drug)}.",
            field="drug",
        )


# --- the forms ----------------------------------------------------------------------------

_VITALS: Final = (
    _decimal("weight_kg", "kg", 0, 400, above_minimum=True),
    _decimal("height_cm", "cm", 0, 300, above_minimum=True),
    _decimal("temperature_c", "°C", 30, 45),
    _integer("systolic_bp", 40, 300, unit="mmHg"),
    _integer("diastolic_bp", 20, 200, unit="mmHg"),
    _integer("heart_rate", 20, 300, unit="beats/min"),
)
_LABS: Final = (
    _decimal("upcr_g_per_g", "g/g", 0, 50),
    _decimal("egfr_ml_min", "mL/min/1.73 m²", 0, 250),
    _decimal("c3_g_l", "g/L", 0, 10),
    _decimal("c4_g_l", "g/L", 0, 5),
    _decimal("anti_dsdna_iu_ml", "IU/mL", 0, 100_000),
    _decimal("wbc_10e9_l", "10^9/L", 0, 500),
    _decimal("neutrophils_10e9_l", "10^9/L", 0, 500),
    _decimal("lymphocytes_10e9_l", "10^9/L", 0, 500),
    _decimal("platelets_10e9_l", "10^9/L", 0, 5000),
    _decimal("hemoglobin_g_l", "g/L", 0, 300),
)
_CRS_ICANS_INPUTS: Final = (
    _decimal("temperature_c", "°C", 30, 45),
    _enum("hypotension", CRS_HYPOTENSION),
    _enum("hypoxia", CRS_HYPOXIA),
    _flag("fever_masked"),
    _integer("ice_score", 0, 10),
    _enum("consciousness", ICANS_CONSCIOUSNESS),
    _enum("seizure", ICANS_SEIZURE),
    _enum("motor", ICANS_MOTOR),
    _enum("cerebral_edema", ICANS_CEREBRAL_EDEMA),
)


def _all_forms() -> tuple[FormSpec, ...]:
    return (
        FormSpec(
            "consent",
            "Informed consent",
            (
                _date("consent_date", required=True),
                _text("consent_form_version", required=True, max_length=32, identifier=True),
                _integer("protocol_version", 1, 1000),
                _text("site", max_length=64, identifier=True),
            ),
        ),
        FormSpec(
            "demographics",
            "Demographics",
            (
                _date("date_of_birth"),
                _enum("sex", SEXES),
                _yes_no("childbearing_potential"),
                _yes_no("partner_childbearing_potential"),
            ),
            one_of=("date_of_birth", "sex", "childbearing_potential",
                    "partner_childbearing_potential"),
        ),
        FormSpec(
            "vitals", "Vital signs", _VITALS, assessment=True,
            one_of=tuple(spec.code for spec in _VITALS),
        ),
        FormSpec(
            "sle_classification",
            "SLE classification (EULAR/ACR 2019), items ever present",
            (
                FieldSpec("ana_titer", Kind.TITER, "reciprocal titre", 0, 1_000_000),
                *(_flag(code) for code in EULAR_ACR_2019_CRITERIA),
            ),
            one_of=("ana_titer", *EULAR_ACR_2019_CRITERIA),
            absent_flags_are_no=True,
        ),
        FormSpec(
            "disease_activity",
            "Disease activity (SLEDAI-2K descriptors, PGA, LLDAS inputs)",
            (
                *(_flag(code) for code in SLEDAI2K_DESCRIPTORS),
                _decimal("pga", "0-3", 0, 3),
                _yes_no("new_activity"),
                _yes_no("hemolytic_anemia"),
                _yes_no("gi_activity"),
                _yes_no("maintenance_tolerated"),
            ),
            assessment=True,
            one_of=(*SLEDAI2K_DESCRIPTORS, "pga", "new_activity", "hemolytic_anemia",
                    "gi_activity", "maintenance_tolerated"),
            absent_flags_are_no=True,
        ),
        FormSpec(
            "medication",
            "Current medication",
            (
                _text("drug", required=True, max_length=100),
                _enum("drug_class", DRUG_CLASSES, required=True),
                _decimal("dose_mg_per_day", "mg/day", 0, 10_000),
                _date("start_date"),
                _date("stop_date"),
                _date("dose_changed_on"),
                _flag("rescue_therapy"),
            ),
            checks=(
                _not_before("start_date", "stop_date"),
                _not_before("start_date", "dose_changed_on"),
                _known_glucocorticoid,
            ),
        ),
        FormSpec(
            "prior_treatment",
            "Prior systemic treatment",
            (
                _text("drug", required=True, max_length=100),
                _enum("drug_class", DRUG_CLASSES, required=True),
                _date("start_date"),
                _date("stop_date"),
                _enum("outcome", TREATMENT_OUTCOMES),
            ),
            checks=(_not_before("start_date", "stop_date"),),
        ),
        FormSpec(
            "pregnancy_test",
            "Pregnancy test",
            (
                _date("test_date"),
                _enum("specimen", SPECIMENS, required=True),
                _enum("result", TEST_RESULTS, required=True),
            ),
            assessment=True,
            date_field="test_date",
        ),
        FormSpec(
            "contraception",
            "Agreement to effective contraception",
            (_yes_no("agreed", required=True),),
            assessment=True,
        ),
        FormSpec(
            "exclusion_checklist",
            "Exclusion checklist (any yes excludes)",
            tuple(_yes_no(code, required=True) for code in EXCLUSION_CHECKLIST),
            assessment=True,
        ),
        FormSpec("labs", "Laboratory values", _LABS, assessment=True,
                 one_of=tuple(spec.code for spec in _LABS)),
        FormSpec(
            "leukapheresis",
            "Leukapheresis (cell collection)",
            (
                _date("collected_on", required=True),
                _text("coi_id", required=True, max_length=64, identifier=True),
            ),
            assessment=True,
            date_field="collected_on",
        ),
        FormSpec(
            "product_release",
            "CAR-T product release",
            (
                _text("lot", required=True, max_length=64, identifier=True),
                _text("coi_id", required=True, max_length=64, identifier=True),
                _enum("qc", QC_RESULTS, required=True),
                _decimal("viable_cells", "cells", 0, 1e13, above_minimum=True),
                _date("released_on"),  # the release's clinical date (`release --on`)
            ),
            date_field="released_on",
        ),
        FormSpec(
            "lymphodepletion",
            "Lymphodepletion, one day's doses",
            (
                _date("given_on", required=True),
                _decimal("fludarabine_mg", "mg", 0, 1_000, above_minimum=True),
                _decimal("cyclophosphamide_mg", "mg", 0, 10_000, above_minimum=True),
            ),
            assessment=True,
            date_field="given_on",
            one_of=("fludarabine_mg", "cyclophosphamide_mg"),
        ),
        FormSpec(
            "infusion",
            "CAR-T infusion (D0)",
            (
                _datetime("infused_at", required=True),
                _decimal("cells", "cells", 0, 1e13, above_minimum=True, required=True),
                _text("coi_id", required=True, max_length=64, identifier=True),
                _decimal("dosing_weight_kg", "kg", 0, 400, above_minimum=True),
            ),
            assessment=True,
            date_field="infused_at",
        ),
        FormSpec(
            "visit",
            "Follow-up visit",
            (
                _enum("visit", VISITS, required=True),
                _enum("status", VISIT_STATUSES, required=True),
                _date("visit_date"),
            ),
            assessment=True,
            date_field="visit_date",
        ),
        FormSpec(
            "cart_persistence",
            "CAR-T persistence (qPCR, flow cytometry)",
            (
                _date("sample_date"),
                _decimal("copies_per_ug", "copies/µg gDNA", 0, 1e9),
                _decimal("car_cells_per_ul", "cells/µL", 0, 1e6),
            ),
            assessment=True,
            date_field="sample_date",
            one_of=("copies_per_ug", "car_cells_per_ul"),
        ),
        FormSpec(
            "adverse_event",
            "Adverse event",
            (
                _text("term", required=True, max_length=200),
                _enum("category", AE_CATEGORIES),
                _date("onset_date", required=True),
                _integer("grade", min(CTCAE_GRADES), max(CTCAE_GRADES), required=True),
                FieldSpec("serious_criteria", Kind.ENUM_LIST, allowed=SERIOUS_CRITERIA),
                _yes_no("expected"),
                _datetime("awareness_at"),
                _datetime("sponsor_aware_at"),
                _enum("outcome", AE_OUTCOMES),
                _date("resolved_on"),
                *_CRS_ICANS_INPUTS,
            ),
            checks=(_not_before("onset_date", "resolved_on"), _awareness_when_serious),
        ),
        FormSpec(
            "causality",
            "Causality assessment (investigator)",
            (
                _integer("ae_position", 1, 10**15, required=True),
                _enum("relatedness", RELATEDNESS, required=True),
            ),
        ),
        FormSpec(
            "sae_report",
            "SAE report sent",
            (
                _integer("ae_position", 1, 10**15, required=True),
                _enum("report_kind", REPORT_KINDS, required=True),
                _datetime("sent_at", required=True),
            ),
        ),
    )


FORMS: Final[dict[str, FormSpec]] = {spec.code: spec for spec in _all_forms()}


# --- public API ---------------------------------------------------------------------------


def form_spec(form: str) -> FormSpec:
    """The specification of `form`; an unknown form is refused naming the known ones."""
    spec = FORMS.get(form)
    if spec is None:
        raise InvalidInput(
            f"Form {_show(form)} is not a known form{_suggestion(form, FORMS)}.", field="form"
        )
    return spec


def parse_form(
    form: str, args: Sequence[str], *, today: date, partial: bool = False
) -> dict[str, object]:
    """Parse CLI tokens `field=value` (or a bare flag) of `form` into typed values.

    With `partial=True` (corrections) required fields may be missing and absent flags stay
    absent. Raises InvalidInput naming the form and the field.
    """
    spec = form_spec(form)
    raw: dict[str, object] = {}
    for token in args:
        code, value = _split_token(spec, token)
        if code in raw:
            raise InvalidInput(f"{form}: field {code} is given more than once.", field=code)
        raw[code] = value
    return validate_values(form, raw, today=today, partial=partial)


def validate_values(
    form: str, values: Mapping[str, object], *, today: date, partial: bool = False
) -> dict[str, object]:
    """Validate already-typed values (or CLI strings) of `form`; return them normalised.

    With `partial=True` only the fields given are checked (a correction's changes).
    """
    spec = form_spec(form)
    result: dict[str, object] = {}
    for code, value in values.items():
        field = spec.find(code)
        if field is None:
            raise InvalidInput(
                f"{form}: field {_show(code)} is not a field of this form"
                f"{_suggestion(code, spec.field_codes)}.",
                field=str(code),
            )
        if field.code in result:
            raise InvalidInput(f"{form}: field {field.code} is given more than once.",
                               field=field.code)
        result[field.code] = _coerce_field(form, field, value, today)
    if not partial:
        _check_complete(spec, result)
        if spec.absent_flags_are_no:
            _fill_absent_flags(spec, result)
    for check in spec.checks:
        check(form, result)
    return {code: result[code] for code in spec.field_codes if code in result}


def localise_times(form: str, values: Mapping[str, object], zone: tzinfo) -> dict[str, object]:
    """`values` (parsed by `parse_form` or `validate_values`) with every date-time field
    given without an offset read as local time at the subject's site (`zone`, the site's
    `Study.zone`): the decision calls this once it knows the site. A value with an offset is
    kept as typed (workflow/clinical_time.py)."""
    spec = form_spec(form)
    return {code: site_time_text(value, zone)
            if isinstance(value, str) and _is_datetime(spec, code) else value
            for code, value in values.items()}


def _is_datetime(spec: FormSpec, code: str) -> bool:
    field = spec.field(code)
    return field is not None and field.kind is Kind.DATETIME


def assessment_date(form: str, values: Mapping[str, object], recorded_on: date) -> date | None:
    """The date the rule `assessment_before_consent` checks, None for history forms.

    History (demographics, medication, prior treatment, classification items ever present)
    and safety reports may predate consent; an assessment is dated by its own date field
    when it has one and it is given, otherwise by the day it is recorded for.
    """
    spec = form_spec(form)
    if not spec.assessment:
        return None
    if spec.date_field is not None:
        value = values.get(spec.date_field)
        if isinstance(value, datetime):
            return value.date()
        if isinstance(value, date):
            return value
        if isinstance(value, str) and _DATE_RE.match(value):
            return _parse_iso_date(value[:10])
    return recorded_on


def describe_forms() -> list[dict[str, object]]:
    """Every form with its fields (kind, unit, allowed values), for `trialflow forms`."""
    return [
        {
            "form": spec.code,
            "title": spec.title,
            "command": spec.command,
            "assessment": spec.assessment,
            "date_field": spec.date_field,
            "one_of": list(spec.one_of) or None,
            "fields": [field.describe() for field in spec.fields],
        }
        for spec in FORMS.values()
    ]


# --- tokens, completeness -----------------------------------------------------------------


def _split_token(spec: FormSpec, token: str) -> tuple[str, object]:
    code, sep, value = token.partition("=")
    code = code.strip()
    field = spec.find(code)
    if field is None:
        raise InvalidInput(
            f"{spec.code}: field {_show(code)} is not a field of this form"
            f"{_suggestion(code, spec.field_codes)}.",
            field=code,
        )
    code = field.code  # the canonical spelling
    if sep:
        return code, value
    if field.kind is Kind.FLAG:
        return code, True
    raise InvalidInput(
        f"{spec.code}: field {code} needs a value ({code}=...); only flags may be given bare.",
        field=code,
    )


def _check_complete(spec: FormSpec, values: Mapping[str, object]) -> None:
    for field in spec.fields:
        if field.required and field.code not in values:
            raise InvalidInput(f"{spec.code}: required field {field.code} is missing.",
                               field=field.code)
    if spec.one_of and not any(code in values for code in spec.one_of):
        raise InvalidInput(
            f"{spec.code}: at least one of the fields {', '.join(spec.one_of)} must be given.",
            field=spec.one_of[0],
        )


def _fill_absent_flags(spec: FormSpec, values: dict[str, object]) -> None:
    for field in spec.fields:
        if field.kind is Kind.FLAG:
            values.setdefault(field.code, False)


# --- coercion of one value ----------------------------------------------------------------


def _coerce_field(form: str, field: FieldSpec, value: object, today: date) -> object:
    try:
        return _COERCERS[field.kind](field, value, today)
    except _BadValue as bad:
        raise InvalidInput(
            f"{form}: field {field.code} must be {bad.expected}, got {_show(value)}.",
            field=field.code,
        ) from None


def _coerce_date(field: FieldSpec, value: object, today: date) -> str:
    parsed: date | None = None
    if isinstance(value, date) and not isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str) and _DATE_RE.fullmatch(value.strip()):
        parsed = _parse_iso_date(value.strip())
    if parsed is None or parsed < _EARLIEST_DATE:
        raise _BadValue(f"a calendar date yyyy-mm-dd from {_EARLIEST_DATE}")
    if parsed > today:
        raise _BadValue(f"a date not in the future (today is {today})")
    return parsed.isoformat()


def _coerce_datetime(field: FieldSpec, value: object, today: date) -> str:
    """The one rule of clinical date-times (workflow/clinical_time.py): a time without offset
    stays naive (local time at the site, localised by the decision: `localise_times`)."""
    parsed = value if isinstance(value, datetime) else None
    if isinstance(value, str):
        try:
            parsed = parse_datetime(value)
        except NotADateTime:
            parsed = None
    if parsed is None or parsed.date() < _EARLIEST_DATE:
        raise _BadValue(
            f"a date and time, e.g. {DATETIME_EXAMPLE} (without an offset, the local time at "
            "the subject's site; a date alone is not a time)"
        )
    if parsed.date() > today:
        raise _BadValue(f"a date and time not in the future (today is {today})")
    return parsed.isoformat()


def _coerce_decimal(field: FieldSpec, value: object, today: date) -> float:
    expected = f"a number {_range_text(field)}"
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if len(text) <= _MAX_NUMBER_CHARS and _DECIMAL_RE.fullmatch(text):
            number = float(text)
    if number is None or not math.isfinite(number) or not _in_range(field, number):
        raise _BadValue(expected)
    return number


def _coerce_integer(field: FieldSpec, value: object, today: date) -> int:
    expected = f"a whole number {_range_text(field)}"
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _INTEGER_RE.fullmatch(value.strip()):
        number = int(value.strip())
    if number is None or not _in_range(field, number):
        raise _BadValue(expected)
    return number


def _coerce_titer(field: FieldSpec, value: object, today: date) -> int:
    expected = "a titre as a reciprocal (80), as 1:80, or negative"
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        text = value.strip().lower()
        match = _TITER_RE.fullmatch(text)
        number = 0 if text == "negative" else int(match.group(1)) if match else None
    if number is None or not _in_range(field, number):
        raise _BadValue(expected)
    return number


def _coerce_enum(field: FieldSpec, value: object, today: date) -> str:
    """A code of the field, in any case and in British or American spelling
    (`hospitalization` is stored as `hospitalisation`)."""
    expected = f"one of {', '.join(field.allowed)}"
    if not isinstance(value, str):
        raise _BadValue(expected)
    code = canonical_code(value, field.allowed)
    if code is None:
        raise _BadValue(expected + _suggestion(value, field.allowed))
    return code


def _coerce_enum_list(field: FieldSpec, value: object, today: date) -> list[str]:
    expected = f"a comma-separated list of {', '.join(field.allowed)} (or none)"
    if isinstance(value, str):
        if value.strip().lower() == "none":
            return []
        items: list[object] = [item.strip() for item in value.split(",")]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise _BadValue(expected)
    codes = []
    for item in items:
        try:
            codes.append(_coerce_enum(field, item, today))
        except _BadValue:
            hint = _suggestion(item, field.allowed) if isinstance(item, str) else ""
            raise _BadValue(expected + hint) from None
    if len(set(codes)) != len(codes):
        raise _BadValue(f"{expected}, each named once")
    return [code for code in field.allowed if code in codes]


def _coerce_yes_no(field: FieldSpec, value: object, today: date) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _YES:
            return True
        if word in _NO:
            return False
    raise _BadValue("yes or no")


def _coerce_text(field: FieldSpec, value: object, today: date) -> str:
    kind = "an identifier (letters, digits, . _ / -)" if field.identifier else "a text"
    expected = f"{kind} of 1 to {field.max_length} characters without control characters"
    if not isinstance(value, str):
        raise _BadValue(expected)
    text = value.strip()
    if not text or len(text) > field.max_length or _has_control_character(text):
        raise _BadValue(expected)
    if field.identifier and not _IDENTIFIER_RE.fullmatch(text):
        raise _BadValue(expected)
    return text


_COERCERS: Final[dict[Kind, Callable[[FieldSpec, object, date], object]]] = {
    Kind.DATE: _coerce_date,
    Kind.DATETIME: _coerce_datetime,
    Kind.DECIMAL: _coerce_decimal,
    Kind.INTEGER: _coerce_integer,
    Kind.ENUM: _coerce_enum,
    Kind.YES_NO: _coerce_yes_no,
    Kind.FLAG: _coerce_yes_no,
    Kind.TEXT: _coerce_text,
    Kind.ENUM_LIST: _coerce_enum_list,
    Kind.TITER: _coerce_titer,
}


# --- small helpers ------------------------------------------------------------------------


def _parse_iso_date(text: str) -> date | None:
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def _in_range(field: FieldSpec, number: float) -> bool:
    if field.minimum is not None:
        if field.above_minimum and number <= field.minimum:
            return False
        if number < field.minimum:
            return False
    return field.maximum is None or number <= field.maximum


def _range_text(field: FieldSpec) -> str:
    low = ">" if field.above_minimum else ">="
    unit = f" {field.unit}" if field.unit else ""
    return f"{low} {_number_text(field.minimum)} and <= {_number_text(field.maximum)}{unit}"


def _number_text(number: float | None) -> str:
    if number is None:
        return "?"
    return f"{number:g}" if abs(number) >= 1e6 else f"{number:.10g}"


def _has_control_character(text: str) -> bool:
    return any(unicodedata.category(char) in {"Cc", "Cs", "Zl", "Zp"} for char in text)


def _show(value: object) -> str:
    """A value for a message: quoted, control characters escaped, long values shortened."""
    shown = repr(value)
    if len(shown) > _MAX_SHOWN_CHARS:
        shown = shown[: _MAX_SHOWN_CHARS - 3] + "..."
    return shown


def _suggestion(word: str, known: Sequence[str] | Mapping[str, object]) -> str:
    """" (did you mean CODE?)": the closest of `known`, compared in one spelling."""
    codes = [str(code) for code in known]
    keys = {spelling_key(code): code for code in codes}
    matches = difflib.get_close_matches(spelling_key(str(word)), list(keys), n=1)
    return f" (did you mean {keys[matches[0]]}?)" if matches else ""
