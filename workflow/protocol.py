"""The trial protocol as data: a versioned TOML file read into frozen dataclasses.

The IM19-SLE files ship in `workflow/protocols/`: version 2 (6 subjects, two dose cohorts) is
the default; version 1 (3 subjects at 1e6 cells/kg, LLDAS at D360 only) is the version it
amended. Clinical rules take their thresholds from a `Protocol`; nothing here reads a clock.

A file is checked strictly: a TOML syntax error, a missing key, a value of the wrong type or
range, an unknown key (a typo must not pass silently), an unknown visit, exclusion or form
code, or cohorts that overlap or leave a gap are refused with `InvalidInput` naming the file,
the key (dotted, arrays counted from 1: `enrolment.cohorts[2].first`) and the problem.

The table `[forms]` (where each form may be recorded: phases and follow-up visits) is optional:
a protocol text without it (the texts loaded before it existed, which old databases keep in
their `ProtocolLoaded` events) places no form anywhere in particular, so `form_places` is None
and every form may be recorded in every phase. When the table is there it must name every form
`trialflow record` takes (`workflow/form_places.py` applies it).
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import math
import re
import tomllib
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, replace
from functools import cache, cached_property
from importlib import resources
from pathlib import Path
from typing import Final, NoReturn

from workflow.errors import InvalidInput
from workflow.forms import FORMS, PHASE_FORM_COMMANDS
from workflow.instruments.codes import EXCLUSION_CHECKLIST, VISITS
from workflow.phases import STATES

DEFAULT_VERSION: Final = 2
BUILTIN_FILES: Final[dict[int, str]] = {1: "im19_sle_v1.toml", 2: "im19_sle_v2.toml"}
# Drugs a regimen may name: the lymphodepletion form records `<drug>_mg` for each of them.
LYMPHODEPLETION_DRUGS: Final[tuple[str, ...]] = ("fludarabine", "cyclophosphamide")
FINAL_VISIT: Final = "D360"

_REGISTRY_ID_RE: Final = re.compile(r"NCT\d{8}", re.ASCII)
_CODE_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}", re.ASCII)
_MAX_DAYS: Final = 3650
# Forms `trialflow record` takes: the ones the `[forms]` table places (phase forms have their
# own command and their own place in the machine).
RECORD_FORMS: Final[tuple[str, ...]] = tuple(form for form in FORMS
                                             if form not in PHASE_FORM_COMMANDS)
ALL_VISITS: Final = "all"  # `visits = "all"`: every visit of the schedule


# --- the protocol -------------------------------------------------------------------------


@dataclass(frozen=True)
class Cohort:
    """Enrolment places `first..last` (order of enrolment) and their dose in CAR-T cells."""

    code: str
    first: int
    last: int
    dose_per_kg: float | None = None
    flat_dose: float | None = None

    @property
    def per_kg(self) -> bool:
        return self.dose_per_kg is not None

    def contains(self, enrolment_order: int) -> bool:
        return self.first <= enrolment_order <= self.last

    def target_cells(self, weight_kg: float) -> float:
        """The dose in cells for a subject of `weight_kg` (the dosing weight)."""
        if self.dose_per_kg is not None:
            return self.dose_per_kg * weight_kg
        assert self.flat_dose is not None
        return self.flat_dose


@dataclass(frozen=True)
class LymphodepletionDrug:
    """One drug of the regimen: mg per m² of body surface area on the given study days."""

    drug: str
    mg_per_m2: float
    days: tuple[int, ...]


@dataclass(frozen=True)
class Lymphodepletion:
    """The regimen and the infusion window counted from its last dose."""

    drugs: tuple[LymphodepletionDrug, ...]
    infusion_window_min_days: int
    infusion_window_max_days: int

    @property
    def days(self) -> tuple[int, ...]:
        """Every study day with a dose, in order (e.g. -5, -4, -3)."""
        return tuple(sorted({day for drug in self.drugs for day in drug.days}))

    @property
    def first_day(self) -> int:
        return self.days[0]

    @property
    def last_day(self) -> int:
        return self.days[-1]

    def drugs_on(self, day: int) -> tuple[LymphodepletionDrug, ...]:
        """The drugs due on study day `day` of the nominal schedule."""
        return tuple(drug for drug in self.drugs if day in drug.days)

    def drug(self, name: str) -> LymphodepletionDrug | None:
        return next((drug for drug in self.drugs if drug.drug == name), None)


@dataclass(frozen=True)
class VisitWindow:
    """A follow-up visit: target study day ± window days, and the forms it must collect."""

    code: str
    target_day: int
    window_days: int
    required_forms: tuple[str, ...] = ()

    @property
    def earliest_day(self) -> int:
        return self.target_day - self.window_days

    @property
    def latest_day(self) -> int:
        return self.target_day + self.window_days


@dataclass(frozen=True)
class FormPlace:
    """Where a form may be recorded: the phases its clinical date may fall in, and the
    follow-up visits it may be recorded at (`trialflow record --visit`)."""

    form: str
    phases: tuple[str, ...]
    visits: tuple[str, ...] = ()
    every_visit: bool = False  # `visits = "all"`

    def allows_phase(self, phase: str) -> bool:
        return phase in self.phases

    def allows_visit(self, visit: str) -> bool:
        return visit in self.visits


@dataclass(frozen=True)
class BackgroundTherapy:
    """Thresholds of the inclusion rule `stable_background_therapy` (days before screening)."""

    glucocorticoid_max_mg_per_day: float
    glucocorticoid_stable_days: int
    glucocorticoid_max_change_mg_per_day: float
    antimalarial_immunosuppressant_started_days: int
    antimalarial_immunosuppressant_stable_days: int
    biologic_stopped_days: int


@dataclass(frozen=True)
class RenalThresholds:
    """Renal response thresholds (default after KDIGO 2024) and the visits assessed."""

    visits: tuple[str, ...]
    involvement_upcr_min_g_per_g: float
    complete_upcr_below_g_per_g: float
    partial_reduction_min_pct: float
    partial_upcr_below_g_per_g: float
    egfr_min_pct_of_baseline: float


@dataclass(frozen=True)
class Protocol:
    """One version of the protocol; every threshold a rule needs comes from here."""

    version: int
    title: str
    registry_id: str
    enrolment_cap: int
    replace_before_infusion: bool
    cohorts: tuple[Cohort, ...]
    dose_tolerance_pct: float
    screening_window_days: int
    screening_expiring_lead_days: int
    age_min_years: int
    age_max_years: int
    weight_min_kg: float
    sledai2k_min: int
    sledai2k_lookback_days: int
    exclusion_checklist: tuple[str, ...]
    background_therapy: BackgroundTherapy
    lymphodepletion: Lymphodepletion
    visits: tuple[VisitWindow, ...]
    window_opening_lead_days: int
    ae_window_start_day: int
    ae_window_end_day: int
    sae_report_hours: int
    expedited_fatal_days: int
    expedited_fatal_complete_days: int
    expedited_other_days: int
    sledai2k_visits: tuple[str, ...]
    sledai2k_improvement_points: int
    lldas_visits: tuple[str, ...]
    persistence_visits: tuple[str, ...]
    lloq_copies_per_ug: float
    renal: RenalThresholds
    # None: the text has no [forms] table, so no form is restricted to a phase or visit
    form_places: tuple[FormPlace, ...] | None = None

    def form_place(self, form: str) -> FormPlace | None:
        """Where `form` may be recorded; None when this protocol does not restrict it."""
        if self.form_places is None:
            return None
        return next((place for place in self.form_places if place.form == form), None)

    @cached_property
    def follow_up_schedule(self) -> Mapping[str, tuple[int, int]]:
        """The follow-up visits as study_days takes them: code -> (target day, ± days); read
        for every subject by several read models, so made once (a protocol never changes).
        Callers only read it; a plain dict, since a protocol is copied and pickled (a
        rebuild's workers are given the study)."""
        return {visit.code: (visit.target_day, visit.window_days) for visit in self.visits}

    @property
    def visit_codes(self) -> tuple[str, ...]:
        return tuple(visit.code for visit in self.visits)

    @property
    def final_visit(self) -> VisitWindow:
        return self.visits[-1]

    def visit(self, code: str) -> VisitWindow:
        """The window of visit `code`; a visit not in this schedule is refused."""
        for visit in self.visits:
            if visit.code == code:
                return visit
        raise InvalidInput(
            f"Visit {code!r} is not in the visit schedule of protocol version {self.version} "
            f"({', '.join(self.visit_codes)}).",
            field="visit",
        )

    def cohort_for(self, enrolment_order: int) -> Cohort:
        """The cohort of the subject enrolled in place `enrolment_order` (1-based)."""
        for cohort in self.cohorts:
            if cohort.contains(enrolment_order):
                return cohort
        raise InvalidInput(
            f"Enrolment place {enrolment_order} is outside 1..{self.enrolment_cap}, "
            f"the enrolment cap of protocol version {self.version}.",
            field="enrolment_order",
        )

    def with_cap(self, cap: int) -> Protocol:
        """This protocol with enrolment cap `cap`, each cohort's places scaled in proportion.

        For version 2 the first half (rounded up) is dosed per kg, the second half flat. Used
        by benchmarks that enrol more subjects than the trial does.
        """
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            raise InvalidInput(f"An enrolment cap must be a whole number >= 1, got {cap!r}.",
                               field="cap")
        return replace(self, enrolment_cap=cap, cohorts=_scaled_cohorts(self, cap))


def _scaled_cohorts(protocol: Protocol, cap: int) -> tuple[Cohort, ...]:
    cohorts: list[Cohort] = []
    previous_last = 0
    for cohort in protocol.cohorts:
        last = math.ceil(cohort.last * cap / protocol.enrolment_cap)
        if last > previous_last:
            cohorts.append(replace(cohort, first=previous_last + 1, last=last))
            previous_last = last
    return tuple(cohorts)


# --- loading ------------------------------------------------------------------------------


def protocol_hash(text: str) -> str:
    """SHA-256 (hex) of the protocol file's UTF-8 bytes, recorded when a version is loaded."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def builtin_protocol_text(version: int) -> str:
    """The text of a protocol version shipped with trialflow."""
    name = BUILTIN_FILES.get(version)
    if name is None:
        known = ", ".join(str(known) for known in BUILTIN_FILES)
        raise InvalidInput(
            f"Protocol version {version!r} is not shipped with trialflow (known: {known}).",
            field="version",
        )
    return resources.files("workflow.protocols").joinpath(name).read_text(encoding="utf-8")


@cache
def builtin_protocol(version: int) -> Protocol:
    """A protocol version shipped with trialflow, parsed and checked."""
    source = f"protocols/{BUILTIN_FILES.get(version, '?')}"
    protocol = load_protocol_text(builtin_protocol_text(version), source)
    if protocol.version != version:
        raise InvalidInput(
            f"{source}: key protocol.version must be {version}, got {protocol.version}.",
            field="protocol.version",
        )
    return protocol


def default_protocol() -> Protocol:
    """Version 2 of the IM19-SLE protocol."""
    return builtin_protocol(DEFAULT_VERSION)


def load_protocol_file(path: str | Path) -> Protocol:
    """Read and check a protocol file."""
    return load_protocol_text(read_protocol_file(path), str(path))


def read_protocol_file(path: str | Path) -> str:
    """The text of a protocol file, refused with InvalidInput when it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"{path}: the protocol file is not UTF-8 text.", field="file") from None
    except OSError as error:
        raise InvalidInput(
            f"{path}: the protocol file cannot be read ({error.strerror or error}).",
            field="file",
        ) from None


def load_protocol_text(text: str, source: str) -> Protocol:
    """Parse and check protocol text; `source` names the file in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise InvalidInput(f"{source}: the file is not valid TOML ({error}).",
                           field="file") from None
    root = _Table(data, source, "")
    protocol = _read_protocol(root)
    root.finish()
    return protocol


# --- reading the TOML tables --------------------------------------------------------------


class _Table:
    """A TOML table read key by key: each read is checked, unread keys are refused."""

    def __init__(self, data: dict[str, object], source: str, path: str) -> None:
        self.data = data
        self.source = source
        self.path = path
        self._read: set[str] = set()
        self._asked: set[str] = set()  # optional keys looked for, offered as suggestions

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def fail(self, name: str, problem: str) -> NoReturn:
        key = self.key(name)
        raise InvalidInput(f"{self.source}: key {key} {problem}.", field=key)

    def has(self, name: str) -> bool:
        self._asked.add(name)
        return name in self.data

    def names(self) -> Iterator[str]:
        return iter(list(self.data))

    def take(self, name: str) -> object:
        if name not in self.data:
            unread = [key for key in self.data if key not in self._read]
            matches = difflib.get_close_matches(name, unread, n=1)
            hint = f" (is {matches[0]} a misspelling of it?)" if matches else ""
            self.fail(name, f"is missing{hint}")
        self._read.add(name)
        return self.data[name]

    def integer(self, name: str, minimum: int, maximum: int) -> int:
        value = self.take(name)
        if isinstance(value, bool) or not isinstance(value, int) or not (
            minimum <= value <= maximum
        ):
            self.fail(name, f"must be a whole number from {minimum} to {maximum}, "
                            f"got {_show(value)}")
        return value

    def number(self, name: str, minimum: float, maximum: float, *, above: bool = False) -> float:
        value = self.take(name)
        low = ">" if above else ">="
        expected = f"must be a number {low} {minimum:g} and <= {maximum:g}, got {_show(value)}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(name, expected)
        number = float(value)
        if not math.isfinite(number) or number > maximum or number < minimum or (
            above and number == minimum
        ):
            self.fail(name, expected)
        return number

    def boolean(self, name: str) -> bool:
        value = self.take(name)
        if not isinstance(value, bool):
            self.fail(name, f"must be true or false, got {_show(value)}")
        return value

    def text(self, name: str, pattern: re.Pattern[str] | None = None) -> str:
        value = self.take(name)
        if not isinstance(value, str) or not value.strip() or len(value) > 200:
            self.fail(name, f"must be a non-empty text of at most 200 characters, "
                            f"got {_show(value)}")
        if pattern is not None and not pattern.fullmatch(value):
            self.fail(name, f"must match {pattern.pattern}, got {_show(value)}")
        return value

    def integers(self, name: str, minimum: int, maximum: int) -> tuple[int, ...]:
        value = self.take(name)
        expected = (f"must be a non-empty list of different whole numbers from {minimum} to "
                    f"{maximum}, got {_show(value)}")
        if not isinstance(value, list) or not value:
            self.fail(name, expected)
        numbers: list[int] = []
        for item in value:
            if isinstance(item, bool) or not isinstance(item, int) or not (
                minimum <= item <= maximum
            ) or item in numbers:
                self.fail(name, expected)
            numbers.append(item)
        return tuple(sorted(numbers))

    def codes(self, name: str, allowed: Collection[str], what: str) -> tuple[str, ...]:
        value = self.take(name)
        if not isinstance(value, list) or not value:
            self.fail(name, f"must be a non-empty list of {what} codes, got {_show(value)}")
        codes: list[str] = []
        for item in value:
            if not isinstance(item, str) or item not in allowed:
                self.fail(name, f"names {_show(item)}, which is not a known {what} code"
                                f"{_suggestion(str(item), allowed)}")
            if item in codes:
                self.fail(name, f"names the {what} code {item} more than once")
            codes.append(item)
        return tuple(codes)

    def table(self, name: str) -> _Table:
        value = self.take(name)
        if not isinstance(value, dict):
            self.fail(name, f"must be a table, got {_show(value)}")
        return _Table(value, self.source, self.key(name))

    def tables(self, name: str) -> list[_Table]:
        value = self.take(name)
        if not isinstance(value, list) or not value or not all(
            isinstance(item, dict) for item in value
        ):
            self.fail(name, f"must be a non-empty array of tables ([[{self.key(name)}]])")
        return [
            _Table(item, self.source, f"{self.key(name)}[{index}]")
            for index, item in enumerate(value, start=1)
        ]

    def finish(self) -> None:
        """Refuse any key of this table that was not read."""
        for name in self.data:
            if name not in self._read:
                known = [known for known in self._read | self._asked if known != name]
                self.fail(name, f"is not a known key{_suggestion(name, known)}")


def _read_protocol(root: _Table) -> Protocol:
    header = root.table("protocol")
    enrolment = root.table("enrolment")
    screening = root.table("screening")
    eligibility = root.table("eligibility")
    reminders = root.table("reminders")
    safety = root.table("safety")
    endpoints = root.table("endpoints")
    visits = _read_visits(root.table("visits"))
    visit_codes = tuple(visit.code for visit in visits)
    cap = enrolment.integer("cap", 1, 100_000)
    screening_window_days = screening.integer("window_days", 1, 365)
    protocol = Protocol(
        version=header.integer("version", 1, 10_000),
        title=header.text("title"),
        registry_id=header.text("registry_id", _REGISTRY_ID_RE),
        enrolment_cap=cap,
        replace_before_infusion=enrolment.boolean("replace_before_infusion"),
        cohorts=_read_cohorts(enrolment, cap),
        dose_tolerance_pct=enrolment.number("dose_tolerance_pct", 0, 100),
        screening_window_days=screening_window_days,
        screening_expiring_lead_days=reminders.integer(
            "screening_expiring_lead_days", 0, screening_window_days
        ),
        age_min_years=eligibility.integer("age_min_years", 0, 120),
        age_max_years=eligibility.integer("age_max_years", 0, 120),
        weight_min_kg=eligibility.number("weight_min_kg", 0, 400),
        sledai2k_min=eligibility.integer("sledai2k_min", 0, 105),
        sledai2k_lookback_days=eligibility.integer("sledai2k_lookback_days", 1, 365),
        exclusion_checklist=eligibility.codes(
            "exclusion_checklist", EXCLUSION_CHECKLIST, "exclusion checklist"
        ),
        background_therapy=_read_background_therapy(eligibility.table("background_therapy")),
        lymphodepletion=_read_lymphodepletion(root.table("lymphodepletion")),
        visits=visits,
        window_opening_lead_days=reminders.integer("window_opening_lead_days", 0, 365),
        ae_window_start_day=safety.integer("ae_window_start_day", -_MAX_DAYS, _MAX_DAYS),
        ae_window_end_day=safety.integer("ae_window_end_day", -_MAX_DAYS, _MAX_DAYS),
        sae_report_hours=safety.integer("sae_report_hours", 1, 24 * 90),
        expedited_fatal_days=safety.integer("expedited_fatal_days", 1, 90),
        expedited_fatal_complete_days=safety.integer("expedited_fatal_complete_days", 0, 90),
        expedited_other_days=safety.integer("expedited_other_days", 1, 90),
        sledai2k_visits=endpoints.codes("sledai2k_visits", visit_codes, "scheduled visit"),
        sledai2k_improvement_points=endpoints.integer("sledai2k_improvement_points", 1, 105),
        lldas_visits=endpoints.codes("lldas_visits", visit_codes, "scheduled visit"),
        persistence_visits=endpoints.codes("persistence_visits", visit_codes, "scheduled visit"),
        lloq_copies_per_ug=endpoints.number("lloq_copies_per_ug", 0, 1e9, above=True),
        renal=_read_renal(endpoints.table("renal"), visit_codes),
        form_places=_read_form_places(root.table("forms"), visits) if root.has("forms")
        else None,
    )
    _check_ranges(protocol, eligibility, safety)
    for table in (header, enrolment, screening, eligibility, reminders, safety, endpoints):
        table.finish()
    return protocol


def _check_ranges(protocol: Protocol, eligibility: _Table, safety: _Table) -> None:
    if protocol.age_max_years < protocol.age_min_years:
        eligibility.fail("age_max_years", f"must be >= age_min_years "
                                          f"({protocol.age_min_years}), got "
                                          f"{protocol.age_max_years}")
    if protocol.ae_window_end_day < protocol.ae_window_start_day:
        safety.fail("ae_window_end_day", f"must be >= ae_window_start_day "
                                         f"({protocol.ae_window_start_day}), got "
                                         f"{protocol.ae_window_end_day}")
    if protocol.expedited_other_days < protocol.expedited_fatal_days:
        safety.fail("expedited_other_days", f"must be >= expedited_fatal_days "
                                            f"({protocol.expedited_fatal_days}), got "
                                            f"{protocol.expedited_other_days}")


def _read_cohorts(enrolment: _Table, cap: int) -> tuple[Cohort, ...]:
    cohorts: list[Cohort] = []
    for table in enrolment.tables("cohorts"):
        cohort = _read_cohort(table)
        expected_first = cohorts[-1].last + 1 if cohorts else 1
        if cohort.first < expected_first:
            table.fail("first", f"overlaps the previous cohort: it must be {expected_first}, "
                                f"got {cohort.first}")
        if cohort.first > expected_first:
            table.fail("first", f"leaves places {expected_first}..{cohort.first - 1} without a "
                                f"cohort: it must be {expected_first}, got {cohort.first}")
        if cohort.code in {earlier.code for earlier in cohorts}:
            table.fail("code", f"repeats the cohort code {cohort.code!r}")
        cohorts.append(cohort)
    if cohorts[-1].last != cap:
        enrolment.fail("cohorts", f"must cover places 1..{cap} (the cap), "
                                  f"but the last cohort ends at {cohorts[-1].last}")
    return tuple(cohorts)


def _read_cohort(table: _Table) -> Cohort:
    code = table.text("code", _CODE_RE)
    first = table.integer("first", 1, 100_000)
    last = table.integer("last", first, 100_000)
    if table.has("dose_per_kg") and table.has("flat_dose"):
        table.fail("flat_dose", "must not be given together with dose_per_kg")
    if not table.has("dose_per_kg") and not table.has("flat_dose"):
        table.fail("dose_per_kg", "is missing (or give flat_dose for a flat dose)")
    if table.has("dose_per_kg"):
        cohort = Cohort(code, first, last, dose_per_kg=table.number("dose_per_kg", 0, 1e12,
                                                                    above=True))
    else:
        cohort = Cohort(code, first, last, flat_dose=table.number("flat_dose", 0, 1e14,
                                                                  above=True))
    table.finish()
    return cohort


def _read_background_therapy(table: _Table) -> BackgroundTherapy:
    therapy = BackgroundTherapy(
        glucocorticoid_max_mg_per_day=table.number("glucocorticoid_max_mg_per_day", 0, 1000),
        glucocorticoid_stable_days=table.integer("glucocorticoid_stable_days", 0, _MAX_DAYS),
        glucocorticoid_max_change_mg_per_day=table.number(
            "glucocorticoid_max_change_mg_per_day", 0, 1000
        ),
        antimalarial_immunosuppressant_started_days=table.integer(
            "antimalarial_immunosuppressant_started_days", 0, _MAX_DAYS
        ),
        antimalarial_immunosuppressant_stable_days=table.integer(
            "antimalarial_immunosuppressant_stable_days", 0, _MAX_DAYS
        ),
        biologic_stopped_days=table.integer("biologic_stopped_days", 0, _MAX_DAYS),
    )
    table.finish()
    return therapy


def _read_lymphodepletion(table: _Table) -> Lymphodepletion:
    drugs_table = table.table("drugs")
    drugs = []
    for name in drugs_table.names():
        if name not in LYMPHODEPLETION_DRUGS:
            drugs_table.fail(name, f"is not a lymphodepletion drug the forms record "
                                   f"({', '.join(LYMPHODEPLETION_DRUGS)})")
        drugs.append(_read_drug(drugs_table.table(name), name))
    if not drugs:
        table.fail("drugs", "must name at least one drug")
    drugs_table.finish()
    regimen = Lymphodepletion(
        drugs=tuple(drugs),
        infusion_window_min_days=table.integer("infusion_window_min_days", 0, 60),
        infusion_window_max_days=table.integer("infusion_window_max_days", 0, 60),
    )
    low, high = regimen.infusion_window_min_days, regimen.infusion_window_max_days
    if high < low:
        table.fail("infusion_window_max_days", f"must be >= infusion_window_min_days ({low}), "
                                               f"got {high}")
    if not low <= -regimen.last_day <= high:
        table.fail("infusion_window_min_days", f"must allow D0, {-regimen.last_day} days after "
                                               f"the last dose on day {regimen.last_day}, "
                                               f"but the window is {low}..{high} days")
    table.finish()
    return regimen


def _read_drug(table: _Table, name: str) -> LymphodepletionDrug:
    drug = LymphodepletionDrug(
        drug=name,
        mg_per_m2=table.number("mg_per_m2", 0, 5000, above=True),
        days=table.integers("days", -60, -1),
    )
    table.finish()
    return drug


def _read_visits(table: _Table) -> tuple[VisitWindow, ...]:
    visits: list[VisitWindow] = []
    for code in table.names():
        if code not in VISITS:
            table.fail(code, f"is not a known visit code ({', '.join(VISITS)})")
        visits.append(_read_visit(table.table(code), code))
    visits.sort(key=lambda visit: visit.target_day)
    if not visits or visits[-1].code != FINAL_VISIT:
        table.fail(FINAL_VISIT, "is missing; follow-up ends with it")
    for earlier, later in itertools.pairwise(visits):
        if later.earliest_day <= earlier.latest_day:
            table.fail(f"{later.code}.window_days", f"makes the window of {later.code} "
                                                    f"overlap the window of {earlier.code}")
    table.finish()
    return tuple(visits)


def _read_visit(table: _Table, code: str) -> VisitWindow:
    day = int(code[1:])
    target_day = table.integer("target_day", 1, _MAX_DAYS)
    if target_day != day:
        table.fail("target_day", f"must be {day}, the day the visit code names, got {target_day}")
    window_days = table.integer("window_days", 0, target_day - 1)
    required_forms: tuple[str, ...] = ()
    if table.has("required_forms"):
        record_forms = [form for form in FORMS if form not in PHASE_FORM_COMMANDS]
        required_forms = table.codes("required_forms", record_forms, "recordable form")
    table.finish()
    return VisitWindow(code, target_day, window_days, required_forms)


def _read_form_places(table: _Table, visits: tuple[VisitWindow, ...]
                      ) -> tuple[FormPlace, ...]:
    """`[forms.CODE]`: `phases` (a non-empty list of phases) and `visits` (a list of visits of
    the schedule, or "all"; absent: the form is never recorded at a visit). Every form
    `record` takes must be placed, and a visit's required forms must be allowed at it."""
    visit_codes = tuple(visit.code for visit in visits)
    for name in table.names():
        if name in PHASE_FORM_COMMANDS:
            table.fail(name, f"names a form recorded only by `{PHASE_FORM_COMMANDS[name]}`, "
                             "whose place the subject's phases already fix")
        if name not in RECORD_FORMS:
            table.fail(name, f"is not a known form code{_suggestion(name, RECORD_FORMS)}")
    places = []
    for form in RECORD_FORMS:
        entry = table.table(form)
        phases = entry.codes("phases", STATES, "phase")
        listed: tuple[str, ...] = ()
        every = False
        if entry.has("visits"):
            value = entry.data["visits"]
            if value == ALL_VISITS:
                entry.take("visits")
                listed, every = visit_codes, True
            elif not isinstance(value, list) or not value:
                entry.fail("visits", f'must be "{ALL_VISITS}" or a non-empty list of '
                                     f"scheduled visit codes, got {_show(value)}")
            else:
                listed = entry.codes("visits", visit_codes, "scheduled visit")
        entry.finish()
        places.append(FormPlace(form, phases, listed, every))
    by_form = {place.form: place for place in places}
    for visit in visits:
        for form in visit.required_forms:
            if visit.code not in by_form[form].visits:
                table.fail(f"{form}.visits", f"must allow visit {visit.code}, which requires "
                                             f"{form} (visits.{visit.code}.required_forms)")
    table.finish()
    return tuple(places)


def _read_renal(table: _Table, visit_codes: tuple[str, ...]) -> RenalThresholds:
    renal = RenalThresholds(
        visits=table.codes("visits", visit_codes, "scheduled visit"),
        involvement_upcr_min_g_per_g=table.number("involvement_upcr_min_g_per_g", 0, 50),
        complete_upcr_below_g_per_g=table.number("complete_upcr_below_g_per_g", 0, 50,
                                                 above=True),
        partial_reduction_min_pct=table.number("partial_reduction_min_pct", 0, 100, above=True),
        partial_upcr_below_g_per_g=table.number("partial_upcr_below_g_per_g", 0, 50,
                                                above=True),
        egfr_min_pct_of_baseline=table.number("egfr_min_pct_of_baseline", 0, 200, above=True),
    )
    table.finish()
    return renal


def _show(value: object) -> str:
    """A TOML value for a message, shortened when long."""
    if isinstance(value, bool):
        shown = "true" if value else "false"
    elif isinstance(value, dict):
        shown = "a table"
    else:
        shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."


def _suggestion(word: str, known: Collection[str]) -> str:
    matches = difflib.get_close_matches(word, list(known), n=1)
    return f" (did you mean {matches[0]}?)" if matches else ""
