"""The monitoring-visit page: one self-contained HTML file (no external resource: inline CSS,
the plots as base64 data URIs). Every text that comes from data is escaped.

`monitoring_data(view, clock, store=...)` gathers the documents the query commands print
(`status`, `visits`, `ae list`, `deviations`, `endpoints`, the post-enrolment findings of
`eligibility`; with the event store, the data review: `queries`, `sdv-status` and
`signatures`, folded by workflow/monitoring.py and workflow/signing.py from each subject's
stream up to the view's position: the same functions, never a second code path);
`render_html(data, images)` is a pure function of them and of the images' bytes.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any, Final

from events.envelope import RecordedEvent
from events.store import EventStore
from projections.progress import Tick
from projections.queries import (
    Clock,
    ae_list,
    deviation_list,
    endpoint_list,
    post_enrolment_findings,
    study_status,
    visit_list,
)
from projections.todo import todo_list
from projections.views import View
from workflow import event_types as T
from workflow.monitoring import QUERY_STATES, fold_monitoring
from workflow.signing import record_of, signatures

SECTIONS: Final = ("status", "overdue", "subjects", "visits", "adverse-events", "deviations",
                   "post-enrolment-findings", "endpoints", "queries", "source-verification",
                   "signatures", "swimmer", "sledai", "persistence")
# The records that close a subject's casebook: each awaits the investigator's signature.
SIGNED_RECORDS: Final = {T.SUBJECT_COMPLETED: "completion", T.SUBJECT_OFF_STUDY: "off study"}
PLOTS: Final = {
    "swimmer": "Swimmer plot: subjects through the phases",
    "sledai": "SLEDAI-2K over study days",
    "persistence": "CAR-T persistence (transgene copies/µg, log scale)",
}
MIME: Final = {"png": "image/png", "svg": "image/svg+xml"}


@dataclass
class MonitoringData:
    title: str
    generated: dict[str, Any]  # position, now, as_of
    status: dict[str, Any]
    subjects: list[dict[str, Any]]
    visits: list[dict[str, Any]]  # due or overdue now
    adverse_events: list[dict[str, Any]]
    deviations: list[dict[str, Any]]
    endpoints: list[dict[str, Any]]
    notes: dict[str, str] = field(default_factory=dict)  # plot -> caption
    findings: list[dict[str, Any]] = field(default_factory=list)  # post-enrolment findings
    review: Review | None = None  # queries, source verification, signatures (None: not read)
    overdue: list[dict[str, Any]] | None = None  # the overdue part of `todo` (None: not read)


@dataclass
class Review:
    """The data review at the view's position: every query (`queries`), every form's source
    verification (`sdv-status`), every signature checked (`signatures`) and what still awaits
    a signature."""

    queries: list[dict[str, Any]] = field(default_factory=list)
    forms: list[dict[str, Any]] = field(default_factory=list)
    signatures: list[dict[str, Any]] = field(default_factory=list)
    pending: list[dict[str, Any]] = field(default_factory=list)

    def queries_by_state(self) -> dict[str, int]:
        counts = dict.fromkeys(QUERY_STATES, 0)
        for query in self.queries:
            counts[query["state"]] = counts.get(query["state"], 0) + 1
        return counts

    def sdv_progress(self) -> list[dict[str, Any]]:
        """Per subject and form: forms recorded, verified, and cleared by a correction."""
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for form in self.forms:
            row = rows.setdefault((form["subject"], form["form"]), {
                "subject": form["subject"], "form": form["form"], "forms": 0, "verified": 0,
                "cleared": 0})
            row["forms"] += 1
            row["verified"] += bool(form["verified"])
            row["cleared"] += form["cleared_by"] is not None
        for row in rows.values():
            row["percent"] = round(100 * row["verified"] / row["forms"])
        return [rows[key] for key in sorted(rows)]


def read_review(view: View, store: EventStore, tick: Tick | None = None) -> Review:
    """Each subject's stream up to the view's position, folded by the functions `queries`,
    `sdv-status` and `signatures` use (`tick`: one unit per subject)."""
    review = Review()
    for row in view.subjects():
        subject = row["subject"]
        events = view.stream(store, subject)
        folded = fold_monitoring(subject, events)
        review.queries += [q.to_json() for _, q in sorted(folded.queries.items())]
        review.forms += [f.to_json() for _, f in sorted(folded.forms.items())]
        checked = signatures(list(events))
        review.signatures += checked
        review.pending += pending_signatures(events, checked)
        if tick is not None:
            tick("report: data review (subjects)")
    order = {state: index for index, state in enumerate(QUERY_STATES)}
    review.queries.sort(key=lambda q: (order.get(q["state"], len(order)), q["subject"],
                                       q["id"]))
    return review


def pending_signatures(events: Sequence[RecordedEvent], checked: Sequence[Mapping[str, Any]]
                       ) -> list[dict[str, Any]]:
    """What awaits the investigator's signature in one stream: a record closing the casebook
    (completion, off study) with no valid signature, and a signed record whose signature no
    longer holds (a later correction or void: `earlier_version`; `broken`) and that has no
    valid signature since."""
    by_position = {e.position: e for e in events}

    def record(position: Any) -> int | None:
        try:
            return record_of(int(position), by_position)
        except (TypeError, ValueError):
            return None

    valid = {record(s["target_position"]) for s in checked if s["state"] == "valid"}
    pending: dict[int, dict[str, Any]] = {}
    for event in events:
        if event.type in SIGNED_RECORDS and event.position not in valid:
            pending[event.position] = {
                "subject": event.stream_id, "position": event.position,
                "record": SIGNED_RECORDS[event.type], "recorded_at": event.recorded_at,
                "why": "not signed"}
    for signature in checked:
        target = record(signature["target_position"])
        if signature["state"] == "valid" or target is None or target in valid:
            continue
        signed = by_position.get(target)
        pending[target] = {
            "subject": signature["subject"], "position": target,
            "record": SIGNED_RECORDS.get(signed.type, signed.type) if signed else "?",
            "recorded_at": signed.recorded_at if signed else None,
            "why": (f"signature at position {signature['position']} is "
                    f"{signature['state'].replace('_', ' ')}: "
                    f"{signature['manifestation']}")}
    return [pending[key] for key in sorted(pending)]


def monitoring_data(view: View, clock: Clock, *, now: str, as_of: str | None,
                    title: str = "IM19-SLE monitoring report",
                    store: EventStore | None = None, tick: Tick | None = None
                    ) -> MonitoringData:
    """`tick`: one unit per subject reviewed, one for the overdue tasks."""
    overdue = None
    if store is not None:
        overdue = overdue_tasks(view, store, clock)
        if tick is not None:
            tick("report: overdue tasks")
    return MonitoringData(
        title=title,
        generated={"position": view.position, "now": now, "as_of": as_of,
                   "source": view.source},
        status=study_status(view, clock),
        subjects=view.subjects(),
        visits=visit_list(view, clock, None, due=True, overdue=True),
        adverse_events=ae_list(view, None),
        deviations=deviation_list(view, None),
        endpoints=endpoint_list(view, None),
        findings=post_enrolment_findings(view),
        review=None if store is None else read_review(view, store, tick),
        overdue=overdue,
    )


def overdue_tasks(view: View, store: EventStore, clock: Clock) -> list[dict[str, Any]]:
    """The overdue part of `todo` at the page's clock, most urgent first (the same tasks, from
    workflow/tasks.py: reporting clocks past due, overdue visits, procedures, answers...)."""
    return [task for task in todo_list(view, store, clock.now(None))
            if task["state"] == "overdue"]


# --- rendering -----------------------------------------------------------------------------------


def _text(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ", ".join(_text(v) for v in value) or "–"
    return str(value)


def _cell(value: Any, title: str | None = None) -> str:
    attribute = f' title="{escape(title)}"' if title else ""
    return f"<td{attribute}>{escape(_text(value))}</td>"


Column = tuple[str, Callable[[Mapping[str, Any]], Any]]


def _table(columns: Sequence[Column], rows: Sequence[Mapping[str, Any]], empty: str,
           titles: Callable[[Mapping[str, Any], int], str | None] | None = None) -> str:
    if not rows:
        return f'<p class="empty">{escape(empty)}</p>'
    head = "".join(f"<th>{escape(name)}</th>" for name, _ in columns)
    body = []
    for row in rows:
        cells = "".join(_cell(get(row), titles(row, i) if titles else None)
                        for i, (_, get) in enumerate(columns))
        body.append(f"<tr>{cells}</tr>")
    return (f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


def _key(name: str) -> Callable[[Mapping[str, Any]], Any]:
    return lambda row: row.get(name)


def _path(*keys: str) -> Callable[[Mapping[str, Any]], Any]:
    def get(row: Mapping[str, Any]) -> Any:
        value: Any = row
        for key in keys:
            value = value.get(key) if isinstance(value, Mapping) else None
        return value
    return get


def _section(ident: str, heading: str, body: str) -> str:
    return (f'<section id="{escape(ident)}"><h2>{escape(heading)}</h2>\n{body}\n</section>')


def _status_body(status: Mapping[str, Any]) -> str:
    phases = ", ".join(f"{k} {v}" for k, v in status["phases"].items() if v) or "none"
    cohorts = ", ".join(f"{c['cohort']} {c['filled']}/{c['places']}" for c in status["cohorts"])
    primary = status.get("primary_endpoint") or {}
    facts: list[tuple[str, Any]] = [
        ("Protocol version in force", status.get("protocol_version")),
        ("Subjects (consented)", status.get("subjects")),
        ("Subjects per phase", phases),
        ("Exits", ", ".join(f"{k} {v}" for k, v in status.get("exits", {}).items()) or None),
        ("Enrolled / cap", f"{status.get('enrolled')} / {status.get('cap')}"),
        ("Cohorts (filled/places)", cohorts),
        ("Open safety windows", status.get("open_safety_windows")),
        ("Overdue visits", len(status.get("overdue_visits", []))),
        ("Overdue SAE reports", len(status.get("overdue_reports", []))),
        ("Screening windows expiring", ", ".join(
            f"{e['subject']} ({e['days_left']} days left)"
            for e in status.get("screening_expiring", [])) or None),
        ("Primary safety endpoint: events / subjects",
         f"{primary.get('events', 0)} / {primary.get('subjects', 0)}"),
    ]
    rows = "".join(f"<tr><th>{escape(k)}</th>{_cell(v)}</tr>" for k, v in facts)
    return f'<table class="facts"><tbody>{rows}</tbody></table>'


SUBJECT_COLUMNS: Final[tuple[Column, ...]] = (
    ("subject", _key("subject")), ("site", _key("site")), ("phase", _key("phase")),
    ("since", _key("phase_since")), ("protocol", _key("protocol_version")),
    ("cohort", _key("cohort")), ("consent", _key("consent_date")),
    ("eligibility confirmed", _key("eligibility_confirmed_on")),
    ("collected", _key("collected_on")), ("infused (D0)", _key("infused_on")),
    ("exit reason", _key("exit_reason")), ("exited", _key("exited_on")),
)
VISIT_COLUMNS: Final[tuple[Column, ...]] = (
    ("subject", _key("subject")), ("visit", _key("visit")), ("status", _key("status")),
    ("target", _key("target_date")),
    ("window", lambda r: f"{r.get('window_start')} to {r.get('window_end')}"),
    ("days left", _key("days_left")),
    ("reminders due", lambda r: [x["kind"] for x in r.get("reminders_due") or []]),
)
AE_COLUMNS: Final[tuple[Column, ...]] = (
    ("subject", _key("subject")), ("position", _key("position")), ("term", _key("term")),
    ("onset", _key("onset_date")), ("study day", _key("study_day")), ("grade", _key("grade")),
    ("serious", _key("serious")), ("relatedness", _key("relatedness")),
    ("safety window", _key("in_safety_window")), ("CRS", _key("crs_grade")),
    ("ICANS", _key("icans_grade")), ("outcome", _key("outcome")),
)
FINDING_COLUMNS: Final[tuple[Column, ...]] = (
    ("subject", _key("subject")), ("on", _key("on")), ("position", _key("position")),
    ("form", _key("form")), ("field", _key("field")),
    ("value", lambda r: _yes_no(r.get("value"))),
    ("criterion", _key("criterion")),
)
DEVIATION_COLUMNS: Final[tuple[Column, ...]] = (
    ("subject", _key("subject")), ("kind", _key("kind")), ("visit", _key("visit")),
    ("on", _key("on")), ("position", _key("position")), ("detail", _key("detail")),
)
ENDPOINT_COLUMNS: Final[tuple[tuple[str, str, str], ...]] = (
    ("SLEDAI-2K baseline", "sledai2k", "baseline"), ("SLEDAI D90", "sledai2k", "D90"),
    ("SLEDAI D180", "sledai2k", "D180"), ("SLEDAI D360", "sledai2k", "D360"),
    ("change D360", "sledai2k", "change_D360"), ("improved D360", "sledai2k", "improved_D360"),
    ("LLDAS D180", "lldas", "D180"), ("LLDAS D360", "lldas", "D360"),
    ("renal D180", "renal_response", "D180"), ("renal D360", "renal_response", "D360"),
    ("peak copies/µg", "persistence", "peak_copies_per_ug"),
    ("peak day", "persistence", "peak_day"),
    ("last detectable day", "persistence", "last_detectable_day"),
    ("detectable D90", "persistence", "detectable_D90"),
    ("detectable D180", "persistence", "detectable_D180"),
    ("detectable D360", "persistence", "detectable_D360"),
)


def _yes_no(value: Any) -> Any:
    """A recorded yes/no as the word typed; any other value as it is."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return value


_FINDINGS_NOTE: Final = ('<p class="note">Values dated after a subject\'s eligibility '
                         "confirmation that would have counted against eligibility (an "
                         "exclusion answered yes, a positive pregnancy test, contraception not "
                         "agreed): listed for the investigator and the monitor, never judged "
                         "(<code>eligibility SUBJECT</code>).</p>")


def _endpoints_body(endpoints: Sequence[Mapping[str, Any]]) -> str:
    columns: list[Column] = [("subject", _key("subject"))]
    columns += [(label, _path(section, key)) for label, section, key in ENDPOINT_COLUMNS]

    def why(row: Mapping[str, Any], index: int) -> str | None:
        if index == 0:
            return None
        _, section, key = ENDPOINT_COLUMNS[index - 1]
        return str((row.get("missing") or {}).get(f"{section}.{key}") or "") or None

    note = ('<p class="note">A dash is a missing value; hover over it for the reason '
            "(the <code>endpoints SUBJECT</code> document has them all).</p>")
    return note + _table(columns, endpoints, "No subject yet.", why)


OVERDUE_COLUMNS: Final[tuple[Column, ...]] = (
    ("subject", _key("subject")), ("site", _key("site")), ("task", _key("kind")),
    ("due", _key("due")), ("who acts", _key("role")), ("what", _key("action")),
    ("command", _key("command")),
)
QUERY_COLUMNS: Final[tuple[Column, ...]] = (
    ("id", _key("id")), ("state", _key("state")), ("subject", _key("subject")),
    ("position", _key("position")), ("form", _key("form")), ("field", _key("field")),
    ("value when opened", _key("value")), ("question", _key("text")),
    ("opened by", _key("opened_by")), ("opened", _key("opened_at")),
    ("answer", _key("answer")), ("answered by", _key("answered_by")),
    ("correction at", _key("correction_position")), ("closed by", _key("closed_by")),
)
SDV_COLUMNS: Final[tuple[Column, ...]] = (
    ("subject", _key("subject")), ("form", _key("form")), ("forms recorded", _key("forms")),
    ("source-verified", _key("verified")), ("progress", lambda r: f"{r['percent']}%"),
    ("verification cleared by a correction", _key("cleared")),
)
PENDING_COLUMNS: Final[tuple[Column, ...]] = (
    ("subject", _key("subject")), ("position", _key("position")), ("record", _key("record")),
    ("recorded", _key("recorded_at")), ("why", _key("why")),
)
SIGNATURE_COLUMNS: Final[tuple[Column, ...]] = (
    ("subject", _key("subject")), ("position", _key("position")),
    ("signs position", _key("target_position")), ("record", _key("target_type")),
    ("meaning", _key("meaning")), ("signed by", _key("printed_name")), ("role", _key("role")),
    ("signed", _key("signed_at")), ("state", _key("state")),
)
_NOT_READ: Final = '<p class="empty">Not read (the page was made without the event log).</p>'


def _overdue_body(tasks: list[dict[str, Any]] | None) -> str:
    if tasks is None:
        return _NOT_READ
    note = ('<p class="note">Every task past its due date or clock, most urgent first: the '
            "overdue part of <code>trialflow todo</code>, with who must act and the command "
            "that does it.</p>")
    return note + _table(OVERDUE_COLUMNS, tasks, "Nothing is overdue.")


def _facts(facts: Sequence[tuple[str, Any]], ident: str) -> str:
    rows = "".join(f"<tr><th>{escape(k)}</th>{_cell(v)}</tr>" for k, v in facts)
    return f'<table class="facts" id="{escape(ident)}"><tbody>{rows}</tbody></table>'


def _queries_body(review: Review | None) -> str:
    if review is None:
        return _NOT_READ
    counts = review.queries_by_state()
    summary = _facts([(f"{state}", count) for state, count in counts.items()]
                     + [("total", len(review.queries))], "queries-by-state")
    note = ('<p class="note">Every data query, open first, then answered (awaiting the '
            "monitor), then closed (<code>queries</code>).</p>")
    return summary + note + _table(QUERY_COLUMNS, review.queries, "No query has been opened.")


def _sdv_body(review: Review | None) -> str:
    if review is None:
        return _NOT_READ
    progress = review.sdv_progress()
    total = sum(r["forms"] for r in progress)
    verified = sum(r["verified"] for r in progress)
    subjects: dict[str, list[int]] = {}
    for row in progress:
        counts = subjects.setdefault(row["subject"], [0, 0])
        counts[0] += row["verified"]
        counts[1] += row["forms"]
    facts: list[tuple[str, Any]] = [
        ("Forms source-verified", f"{verified} of {total}"
         + (f" ({round(100 * verified / total)}%)" if total else "")),
        ("Per subject", ", ".join(f"{s} {v}/{n}" for s, (v, n) in subjects.items()) or None),
    ]
    note = ('<p class="note">Per subject and form: the forms recorded (voided ones left out; '
            "the infusion counts as a form), how many are source-verified now, and how many "
            "lost their verification to a later correction (<code>sdv-status</code>).</p>")
    return (_facts(facts, "sdv-summary") + note
            + _table(SDV_COLUMNS, progress, "No form recorded yet."))


def _signatures_body(review: Review | None) -> str:
    if review is None:
        return _NOT_READ
    states: dict[str, int] = {}
    for signature in review.signatures:
        states[signature["state"]] = states.get(signature["state"], 0) + 1
    facts: list[tuple[str, Any]] = [
        ("Signatures pending", len(review.pending)),
        ("Signatures recorded", ", ".join(f"{k} {v}" for k, v in sorted(states.items()))
         or "none"),
    ]
    note = ('<p class="note">Pending: a record that closes a casebook (completion, off '
            "study) without a valid signature, and a signed record corrected or voided since "
            "(its signature applies to the earlier version) with no valid signature after it "
            "(<code>sign SUBJECT POSITION</code>, <code>signatures SUBJECT</code>).</p>")
    return (_facts(facts, "signature-summary") + note
            + "<h3>Awaiting a signature</h3>"
            + _table(PENDING_COLUMNS, review.pending, "No signature pending.")
            + "<h3>Signatures recorded</h3>"
            + _table(SIGNATURE_COLUMNS, review.signatures, "No signature recorded."))


def _image(name: str, data: bytes, fmt: str, caption: str | None) -> str:
    uri = f"data:{MIME[fmt]};base64,{base64.b64encode(data).decode('ascii')}"
    text = f'<p class="note">{escape(caption)}</p>' if caption else ""
    return (f'<figure><img alt="{escape(PLOTS[name])}" src="{escape(uri)}">'
            f"<figcaption>{escape(PLOTS[name])}</figcaption></figure>{text}")


CSS: Final = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5rem;
color:#222;max-width:1400px}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;border-bottom:1px solid #ccc;
padding-bottom:.2rem;margin-top:2rem}h3{font-size:1rem;margin-bottom:.2rem}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}
thead th{background:#f3f3f3}table.facts th{background:#f8f8f8;font-weight:600}
.meta,.note,.empty{color:#555;font-size:.85rem}nav a{margin-right:.8rem}
img{max-width:100%;height:auto;border:1px solid #eee}figure{margin:.5rem 0}
"""


def render_html(data: MonitoringData, images: Mapping[str, tuple[bytes, str]]) -> str:
    """The page. `images`: plot name -> (bytes, format `png` or `svg`)."""
    g = data.generated
    meta = (f"Log position {g['position']}"
            + (f", as of {g['as_of']}" if g.get("as_of") else "")
            + f"; due and overdue computed for {g['now']}.")
    nav = "".join(f'<a href="#{escape(s)}">{escape(s)}</a>' for s in SECTIONS)
    body = [
        _section("status", "Study status", _status_body(data.status)),
        _section("overdue", "Overdue tasks", _overdue_body(data.overdue)),
        _section("subjects", "Subjects", _table(SUBJECT_COLUMNS, data.subjects,
                                                "No subject has consented yet.")),
        _section("visits", "Visits due or overdue", _table(
            VISIT_COLUMNS, data.visits, "No visit is due or overdue.")),
        _section("adverse-events", "Adverse events", _table(
            AE_COLUMNS, data.adverse_events, "No adverse event recorded.")),
        _section("deviations", "Protocol deviations", _table(
            DEVIATION_COLUMNS, data.deviations, "No protocol deviation.")),
        _section("post-enrolment-findings", "Post-enrolment findings", _FINDINGS_NOTE + _table(
            FINDING_COLUMNS, data.findings, "No post-enrolment finding.")),
        _section("endpoints", "Endpoints", _endpoints_body(data.endpoints)),
        _section("queries", "Data queries by state", _queries_body(data.review)),
        _section("source-verification", "Source data verification", _sdv_body(data.review)),
        _section("signatures", "Electronic signatures", _signatures_body(data.review)),
    ]
    for name, heading in PLOTS.items():
        found = images.get(name)
        content = (_image(name, found[0], found[1], data.notes.get(name)) if found
                   else '<p class="empty">Not drawn.</p>')
        body.append(_section(name, heading, content))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{escape(data.title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<header><h1>{escape(data.title)}</h1><p class=\"meta\">{escape(meta)}</p>"
        f"<nav>{nav}</nav></header>\n<main>\n" + "\n".join(body) + "\n</main>\n</body>\n</html>\n"
    )
