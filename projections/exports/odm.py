"""CDISC ODM 1.3.2 export: the study's metadata and every recorded value with its audit trail.

The file is `FileType="Transactional"`: each ItemData is one write to one field, in log
order, and carries the AuditRecord of that write (ODM's audit-trail convention: the original
value is an `Insert`, a correction an `Update` of the same ItemOID whose AuditRecord holds
the ReasonForChange, a void a `Remove` of each item the record held, with its reason).
Replaying the ItemData of an ItemGroupData in document order gives the current values;
nothing is ever deleted from the document, as in the log.

- Study: GlobalVariables (title, registry id), BasicDefinitions (units of the form fields)
  and one MetaDataVersion built from `workflow.forms.FORMS` and the protocol in force:
  StudyEventDefs for the phases (SCREENING, CELL_COLLECTION, LYMPHODEPLETION, D0), each
  follow-up visit of every loaded protocol version (windows of the version in force),
  UNSCHEDULED and the AE log; a FormDef, ItemGroupDef and ItemDefs per form (DataType from the
  field's kind) and a CodeList per set of allowed codes.
- AdminData: a User per study user and per actor of an exported event, a Location per site
  and one for the sponsor (users without a site), each naming the MetaDataVersion.
- ClinicalData: SubjectData per consented subject (SiteRef its site), StudyEventData per study
  event with forms (records.py decides which), FormData per recorded form (FormRepeatKey =
  the log position of the original record), ItemGroupData, ItemData.

Only times from the log appear: CreationDateTime and AsOfDateTime are the `recorded_at` of
the last exported event, DateTimeStamp each write's `recorded_at`. OIDs are prefixed by kind
(SE., F., IG., I., CL., MU., U., L.) because ODM wants them unique within a MetaDataVersion.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Final

from events.envelope import RecordedEvent
from projections.exports.records import (
    AE_LOG,
    CELL_COLLECTION,
    GENERAL_FORMS,
    INFUSION,
    LYMPHODEPLETION,
    SAFETY_FORMS,
    SCREENING,
    UNSCHEDULED,
    Entry,
    FormRecord,
    form_records,
)
from projections.exports.snapshot import EPOCH, Snapshot
from projections.exports.values import value_text
from projections.progress import Progress, Tick, ticker
from workflow import event_types as T
from workflow import signing
from workflow.forms import FORMS, FieldSpec, Kind
from workflow.protocol import Protocol, VisitWindow
from workflow.signing import MEANINGS
from workflow.study import Study

ODM_NS: Final = "http://www.cdisc.org/ns/odm/v1.3"
XML_LANG: Final = "{http://www.w3.org/XML/1998/namespace}lang"
SPONSOR: Final = "L.SPONSOR"
# ODM 1.3.2 TransactionType of an entry: the original record, a correction, a void (each
# item the record held is removed, with the void's AuditRecord and reason)
TRANSACTIONS: Final[dict[str, str]] = {"original": "Insert", "correction": "Update",
                                       "void": "Remove"}
DATA_TYPES: Final[dict[Kind, str]] = {
    Kind.DATE: "date",
    Kind.DATETIME: "datetime",
    Kind.DECIMAL: "float",
    Kind.INTEGER: "integer",
    Kind.TITER: "integer",
    Kind.ENUM: "text",
    Kind.YES_NO: "text",
    Kind.FLAG: "text",
    Kind.TEXT: "text",
    Kind.ENUM_LIST: "text",
}
YES_NO: Final[tuple[str, ...]] = ("yes", "no")
NOT_UNITS: Final = frozenset({"0-3", "reciprocal titre"})  # scales, said in the Description
# ODM UserType by role: site staff are the investigator's team; the rest of the study team is
# the sponsor's; the auditor and the scheduler are neither.
USER_TYPES: Final[dict[str, str]] = {
    "investigator": "Investigator", "coordinator": "Investigator", "monitor": "Sponsor",
    "data_manager": "Sponsor", "admin": "Sponsor",
}


def _tag(name: str) -> str:
    """Elements are built unqualified and the root declares ODM's namespace as the default
    (`xmlns`): ElementTree's `default_namespace` refuses unqualified attributes."""
    return name


def _add(parent: ET.Element, name: str, attrs: Mapping[str, str | None] | None = None,
         text: str | None = None) -> ET.Element:
    element = ET.SubElement(parent, _tag(name),
                            {k: v for k, v in (attrs or {}).items() if v is not None})
    if text is not None:
        element.text = text
    return element


def _translated(parent: ET.Element, name: str, text: str) -> ET.Element:
    element = _add(parent, name)
    _add(element, "TranslatedText", {XML_LANG: "en"}, text)
    return element


def _yes_no(flag: bool) -> str:
    return "Yes" if flag else "No"


# --- metadata ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyEventSpec:
    key: str
    name: str
    type: str  # Scheduled | Unscheduled | Common
    description: str
    forms: tuple[tuple[str, bool], ...]  # (form, mandatory)

    @property
    def oid(self) -> str:
        return f"SE.{self.key}"


def _general(required: Iterable[str] = ()) -> tuple[tuple[str, bool], ...]:
    needed = set(required)
    return tuple((form, form in needed) for form in GENERAL_FORMS)


def all_visits(study: Study) -> list[tuple[VisitWindow, int]]:
    """The follow-up visits of every loaded protocol version, by target day: the window of the
    version in force where it has the visit, else of the newest version that has it."""
    in_force = study.protocol
    found: dict[str, tuple[VisitWindow, int]] = {v.code: (v, in_force.version)
                                                 for v in in_force.visits}
    for version in sorted(study.protocol_texts, reverse=True):
        for visit in study.protocol_of(version).visits:
            found.setdefault(visit.code, (visit, version))
    return sorted(found.values(), key=lambda item: (item[0].target_day, item[0].code))


def study_event_specs(study: Study) -> list[StudyEventSpec]:
    """The study events of the MetaDataVersion, in schedule order."""
    protocol = study.protocol
    regimen = protocol.lymphodepletion
    specs = [
        StudyEventSpec(SCREENING, "Screening", "Scheduled",
                       "From consent until an investigator confirms eligibility (within "
                       f"{protocol.screening_window_days} days of consent).",
                       (("consent", True), *_general())),
        StudyEventSpec(CELL_COLLECTION, "Cell collection", "Scheduled",
                       "Leukapheresis, manufacturing and product release.",
                       (("leukapheresis", True), ("product_release", True), *_general())),
        StudyEventSpec(LYMPHODEPLETION, "Lymphodepletion", "Scheduled",
                       "Lymphodepletion on study days "
                       f"{', '.join(str(day) for day in regimen.days)}.",
                       (("lymphodepletion", True), *_general())),
        StudyEventSpec(INFUSION, "Infusion (D0)", "Scheduled",
                       f"CAR-T infusion, {regimen.infusion_window_min_days} to "
                       f"{regimen.infusion_window_max_days} days after the last "
                       "lymphodepletion dose.",
                       (("infusion", True), *_general())),
    ]
    for visit, version in all_visits(study):
        note = "" if version == protocol.version else f" (protocol version {version})"
        specs.append(StudyEventSpec(
            visit.code, f"Visit {visit.code}", "Scheduled",
            f"Follow-up visit {visit.code}: study day {visit.target_day} ± "
            f"{visit.window_days} days, D0 being the infusion day{note}.",
            (("visit", True), *_general(visit.required_forms))))
    specs.append(StudyEventSpec(UNSCHEDULED, "Unscheduled", "Unscheduled",
                                "Forms recorded from follow-up on without a visit.",
                                _general()))
    specs.append(StudyEventSpec(AE_LOG, "Adverse events", "Common",
                                "Adverse events, causality assessments and SAE reports.",
                                tuple((form, False) for form in SAFETY_FORMS)))
    return specs


def _unit_oids() -> dict[str, str]:
    """Unit -> MeasurementUnit OID, in the order the forms first name them."""
    oids: dict[str, str] = {}
    for spec in FORMS.values():
        for field in spec.fields:
            unit = field.unit
            if not unit or unit in NOT_UNITS or unit in oids:
                continue
            slug = re.sub(r"[^A-Za-z0-9]+", "_", unit).strip("_") or "unit"
            oid, n = f"MU.{slug}", 2
            while oid in oids.values():
                oid, n = f"MU.{slug}_{n}", n + 1
            oids[unit] = oid
    return oids


def _code_lists() -> tuple[dict[tuple[str, str], str], dict[str, tuple[str, ...]]]:
    """(form, field) -> CodeList OID, and OID -> codes; one list per distinct set of codes."""
    by_codes: dict[tuple[str, ...], str] = {YES_NO: "CL.yes_no"}
    lists: dict[str, tuple[str, ...]] = {"CL.yes_no": YES_NO}
    refs: dict[tuple[str, str], str] = {}
    for spec in FORMS.values():
        for field in spec.fields:
            if field.kind in (Kind.YES_NO, Kind.FLAG):
                refs[(spec.code, field.code)] = "CL.yes_no"
            elif field.kind is Kind.ENUM:
                oid = by_codes.get(field.allowed)
                if oid is None:
                    oid = f"CL.{field.code}"
                    if oid in lists:
                        oid = f"CL.{spec.code}.{field.code}"
                    by_codes[field.allowed] = oid
                    lists[oid] = field.allowed
                refs[(spec.code, field.code)] = oid
    return refs, lists


def _number(value: float | None) -> str:
    return "?" if value is None else f"{value:g}"


def _describe(field: FieldSpec) -> str:
    parts = [str(field.kind)]
    if field.unit:
        parts.append(f"unit {field.unit}")
    if field.minimum is not None or field.maximum is not None:
        low = ">" if field.above_minimum else ">="
        parts.append(f"{low} {_number(field.minimum)} and <= {_number(field.maximum)}")
    if field.kind is Kind.FLAG:
        parts.append("yes when present, no when absent")
    if field.kind is Kind.ENUM_LIST:
        parts.append(f"comma-separated codes of {', '.join(field.allowed)}; none when empty")
    if field.kind is Kind.TITER:
        parts.append("the reciprocal titre (80 for 1:80, 0 for negative)")
    if field.required:
        parts.append("required")
    return "; ".join(parts) + "."


def _length(field: FieldSpec) -> str | None:
    if field.kind is Kind.TEXT:
        return str(field.max_length)
    if field.kind is Kind.ENUM:
        return str(max(len(code) for code in field.allowed))
    if field.kind in (Kind.YES_NO, Kind.FLAG):
        return str(max(len(code) for code in YES_NO))
    if field.kind is Kind.ENUM_LIST:
        return str(len(",".join(field.allowed)))
    return None


def _study(root: ET.Element, snapshot: Snapshot, mdv_oid: str) -> None:
    protocol = snapshot.protocol
    study = _add(root, "Study", {"OID": protocol.registry_id})
    variables = _add(study, "GlobalVariables")
    _add(variables, "StudyName", text=protocol.title)
    _add(variables, "StudyDescription", text=(
        f"{protocol.title}; registry record {protocol.registry_id}; protocol version "
        f"{protocol.version} in force; trialflow event log up to position "
        f"{snapshot.position}."))
    _add(variables, "ProtocolName", text=protocol.registry_id)
    units = _unit_oids()
    basic = _add(study, "BasicDefinitions")
    for unit, oid in units.items():
        element = _add(basic, "MeasurementUnit", {"OID": oid, "Name": unit})
        _translated(element, "Symbol", unit)
    mdv = _add(study, "MetaDataVersion", {
        "OID": mdv_oid, "Name": f"Protocol version {protocol.version}",
        "Description": "Forms of trialflow's Forms table; visits of every loaded protocol "
                       "version."})
    events = study_event_specs(snapshot.study)
    protocol_element = _add(mdv, "Protocol")
    for order, spec in enumerate(events, start=1):
        _add(protocol_element, "StudyEventRef", {
            "StudyEventOID": spec.oid, "OrderNumber": str(order),
            "Mandatory": _yes_no(spec.type == "Scheduled")})
    for spec in events:
        element = _add(mdv, "StudyEventDef", {"OID": spec.oid, "Name": spec.name,
                                              "Repeating": "No", "Type": spec.type})
        _translated(element, "Description", spec.description)
        for order, (form, mandatory) in enumerate(spec.forms, start=1):
            _add(element, "FormRef", {"FormOID": f"F.{form}", "OrderNumber": str(order),
                                      "Mandatory": _yes_no(mandatory)})
    for form_spec in FORMS.values():
        element = _add(mdv, "FormDef", {"OID": f"F.{form_spec.code}", "Name": form_spec.code,
                                        "Repeating": "Yes"})
        _translated(element, "Description", form_spec.title)
        _add(element, "ItemGroupRef", {"ItemGroupOID": f"IG.{form_spec.code}", "OrderNumber": "1",
                                       "Mandatory": "Yes"})
    for form_spec in FORMS.values():
        element = _add(mdv, "ItemGroupDef", {"OID": f"IG.{form_spec.code}", "Name": form_spec.code,
                                             "Repeating": "No"})
        _translated(element, "Description", form_spec.title)
        for order, field in enumerate(form_spec.fields, start=1):
            _add(element, "ItemRef", {"ItemOID": f"I.{form_spec.code}.{field.code}",
                                      "OrderNumber": str(order),
                                      "Mandatory": _yes_no(field.required)})
    code_list_refs, code_lists = _code_lists()
    for form_spec in FORMS.values():
        for field in form_spec.fields:
            element = _add(mdv, "ItemDef", {
                "OID": f"I.{form_spec.code}.{field.code}", "Name": field.code,
                "DataType": DATA_TYPES[field.kind], "Length": _length(field)})
            _translated(element, "Description", _describe(field))
            if field.unit in units:
                _add(element, "MeasurementUnitRef", {"MeasurementUnitOID": units[field.unit]})
            code_list = code_list_refs.get((form_spec.code, field.code))
            if code_list is not None:
                _add(element, "CodeListRef", {"CodeListOID": code_list})
    for oid, codes in code_lists.items():
        element = _add(mdv, "CodeList", {"OID": oid, "Name": oid[3:], "DataType": "text"})
        for order, code in enumerate(codes, start=1):
            item = _add(element, "CodeListItem", {"CodedValue": code,
                                                  "OrderNumber": str(order)})
            _translated(item, "Decode", code.replace("_", " "))


# --- admin data ---------------------------------------------------------------------------


def _location(site: str | None) -> str:
    return f"L.{site}" if site else SPONSOR


def _effective_dates(snapshot: Snapshot) -> tuple[str, dict[str, str]]:
    """The day the protocol in force took effect, and each site's first day (UTC dates)."""
    in_force: int | None = None
    since = EPOCH[:10]
    sites: dict[str, str] = {}
    for event in snapshot.study_events:
        day = event.recorded_at[:10]
        first_load = event.type == T.PROTOCOL_LOADED and in_force is None
        if first_load or event.type == T.PROTOCOL_AMENDED:
            in_force, since = int(event.payload["version"]), day
        elif event.type == T.SITE_ADDED:
            sites.setdefault(str(event.payload["site"]), day)
    return since, sites


def _admin(root: ET.Element, snapshot: Snapshot, mdv_oid: str,
           records: Iterable[FormRecord]) -> None:
    study = snapshot.study
    registry = snapshot.registry_id
    users: dict[str, tuple[str, str | None]] = {
        name: (user.role, user.site) for name, user in study.users.items()}
    locations: set[str | None] = {None, *study.sites}
    for record in records:
        for entry in record.entries:
            users.setdefault(entry.actor, (entry.role, entry.site))
            locations.add(entry.site)
    admin = _add(root, "AdminData", {"StudyOID": registry})
    for name in sorted(users):
        role, site = users[name]
        element = _add(admin, "User", {"OID": f"U.{name}",
                                       "UserType": USER_TYPES.get(role, "Other")})
        _add(element, "LoginName", text=name)
        _add(element, "DisplayName", text=f"{name} ({role})")
        if site:
            _add(element, "LocationRef", {"LocationOID": _location(site)})
    since, site_days = _effective_dates(snapshot)
    for site in sorted(s for s in locations if s):
        element = _add(admin, "Location", {"OID": _location(site), "Name": site,
                                           "LocationType": "Site"})
        _add(element, "MetaDataVersionRef", {
            "StudyOID": registry, "MetaDataVersionOID": mdv_oid,
            "EffectiveDate": max(since, site_days.get(site, since))})
    element = _add(admin, "Location", {"OID": SPONSOR, "Name": "Sponsor",
                                       "LocationType": "Sponsor"})
    _add(element, "MetaDataVersionRef", {"StudyOID": registry, "MetaDataVersionOID": mdv_oid,
                                         "EffectiveDate": since})
    for meaning in MEANINGS:  # 21 CFR Part 11 §11.50: the meaning of each signature
        definition = _add(admin, "SignatureDef", {"OID": f"SD.{meaning}",
                                                  "Methodology": "Electronic"})
        _add(definition, "Meaning", text=f"The signer {meaning} this record.")
        _add(definition, "LegalReason", text="Electronic signature under 21 CFR Part 11, "
             "bound to the signed record's hash.")


# --- clinical data ------------------------------------------------------------------------


def _audit(parent: ET.Element, entry: Entry, study: Study) -> None:
    audit = _add(parent, "AuditRecord")
    _add(audit, "UserRef", {"UserOID": f"U.{entry.actor}"})
    _add(audit, "LocationRef", {"LocationOID": _location(entry.site)})
    _add(audit, "DateTimeStamp", text=entry.recorded_at)
    if entry.kind in ("correction", "void") and entry.reason:
        _add(audit, "ReasonForChange", text=entry.reason)
    _add(audit, "SourceID", text=f"trialflow event position {entry.position}")


def _signature(parent: ET.Element, event: RecordedEvent, study: Study) -> None:
    p = event.payload
    signature = _add(parent, "Signature")
    _add(signature, "UserRef", {"UserOID": f"U.{p['printed_name']}"})
    user = study.users.get(p["printed_name"])
    _add(signature, "LocationRef", {"LocationOID": _location(user.site if user else None)})
    _add(signature, "SignatureRef", {"SignatureOID": f"SD.{p['meaning']}"})
    _add(signature, "DateTimeStamp", text=event.recorded_at)


def _signatures(streams: Iterable[list[RecordedEvent]]) -> dict[int, RecordedEvent]:
    """The signature each record carries now, by the position of its original entry: the
    latest whose signed version is still the record's current one (workflow/signing.py, the
    one rule). A signature on an earlier version (a later correction superseded it) or a
    broken one is left out: ODM allows one Signature per FormData, and it must sign what the
    FormData shows."""
    found: dict[int, RecordedEvent] = {}
    for events in streams:
        by_position = {e.position: e for e in events}
        for row in signing.signatures(events):
            if row["state"] == "valid":
                record = signing.record_of(int(row["target_position"]), by_position)
                found[record] = by_position[int(row["position"])]
    return found


def _clinical(root: ET.Element, snapshot: Snapshot, mdv_oid: str,
              records: Mapping[str, list[FormRecord]], tick: Tick) -> None:
    study = snapshot.study
    signatures = _signatures(list(events) for events in snapshot.streams.values())
    order = {spec.key: index for index, spec in enumerate(study_event_specs(study))}
    clinical = _add(root, "ClinicalData", {"StudyOID": snapshot.registry_id,
                                           "MetaDataVersionOID": mdv_oid})
    for subject, state in snapshot.subjects.items():
        element = _add(clinical, "SubjectData", {"SubjectKey": subject})
        _add(element, "SiteRef", {"LocationOID": _location(state.site)})
        by_event: dict[str, list[FormRecord]] = {}
        for record in records.get(subject, []):
            by_event.setdefault(record.study_event, []).append(record)
        for key in sorted(by_event, key=lambda k: (order.get(k, len(order)), k)):
            event = _add(element, "StudyEventData", {"StudyEventOID": f"SE.{key}"})
            for record in by_event[key]:
                form = _add(event, "FormData", {"FormOID": f"F.{record.form}",
                                                "FormRepeatKey": str(record.position)})
                signed = signatures.get(record.position)
                if signed is not None:  # the one that signs the version shown
                    _signature(form, signed, study)
                group = _add(form, "ItemGroupData", {"ItemGroupOID": f"IG.{record.form}"})
                for entry in record.entries:
                    transaction = TRANSACTIONS[entry.kind]
                    for code, value in entry.values.items():
                        item = _add(group, "ItemData", {
                            "ItemOID": f"I.{record.form}.{code}",
                            "TransactionType": transaction, "Value": value_text(value)})
                        _audit(item, entry, study)
        tick("ODM: clinical data (subjects)")


def _version() -> str:
    try:
        return metadata.version("trialflow")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "unknown"


def build_odm(snapshot: Snapshot, progress: Progress | None = None) -> bytes:
    """The ODM 1.3.2 document of `snapshot`, UTF-8, indented, ending in a newline.
    `progress`: forms and clinical data per subject, then the XML written (one unit)."""
    protocol: Protocol = snapshot.protocol
    mdv_oid = f"MDV.v{protocol.version}"
    tick = ticker(progress, 2 * len(snapshot.subjects) + 1)
    records = {}
    for subject in snapshot.subjects:
        records[subject] = form_records(snapshot.study, subject, snapshot.streams[subject])
        tick("ODM: forms (subjects)")
    root = ET.Element(_tag("ODM"), {
        "xmlns": ODM_NS,
        "Description": f"{protocol.title} ({protocol.registry_id}): trialflow export",
        "FileType": "Transactional",
        "Granularity": "All",
        "FileOID": f"trialflow.{protocol.registry_id}.position-{snapshot.position}",
        "CreationDateTime": snapshot.as_of,
        "AsOfDateTime": snapshot.as_of,
        "ODMVersion": "1.3.2",
        "Originator": "trialflow",
        "SourceSystem": "trialflow",
        "SourceSystemVersion": _version(),
    })
    _study(root, snapshot, mdv_oid)
    _admin(root, snapshot, mdv_oid, [r for rows in records.values() for r in rows])
    _clinical(root, snapshot, mdv_oid, records, tick)
    tick("ODM: writing the XML", 0)
    ET.indent(root, space="  ")
    body = ET.tostring(root, encoding="unicode")
    tick("ODM: XML written", 1)
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + body + "\n").encode("utf-8")
