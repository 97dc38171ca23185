"""A subject's casebook: its whole record, form by form, as it stands at one log position, with
each value's history, the queries, the source-verification marks and the signatures
(`trialflow casebook`, issue 16).

Pure assembly of what exists: `projections.exports.records.form_records` (every form and
procedure with its entries: original, corrections, void), `workflow.monitoring.fold_monitoring`
(queries, source data verification) and `workflow.signing.signatures` (each signature checked
against the record it signs). `casebook` gives one JSON-able document (its keys are documented
in docs/cli-header.md, "The casebook"); `casebook_text` and `casebook_html` render it. Every
text a user typed is escaped in the HTML (`html.escape`).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any, Final

from events.envelope import RecordedEvent
from projections.exports.records import FormRecord, form_records
from projections.exports.values import value_text
from workflow.monitoring import fold_monitoring
from workflow.signing import record_of, signatures
from workflow.study import Study
from workflow.subject import fold_subject


def casebook(study: Study, subject: str, events: Sequence[RecordedEvent], *, log_position: int,
             generated_at: str) -> dict[str, Any]:
    """The casebook of `subject` from its stream `events` (those up to `log_position`)."""
    events = [e for e in events if e.position <= log_position]
    state = fold_subject(subject, events)
    review = fold_monitoring(subject, events)
    signed = signatures(events)
    by_position = {e.position: e for e in events}
    records = form_records(study, subject, events)
    known = {record.position for record in records}
    queries = [q.to_json() for _, q in sorted(review.queries.items())]
    forms: list[dict[str, Any]] = []
    for record in records:
        sdv = review.forms.get(record.position)
        forms.append({
            "position": record.position,
            "form": record.form,
            "study_event": record.study_event,
            "visit": record.visit,
            "recorded_on": record.recorded_on.isoformat(),
            "voided": record.voided,
            "values": dict(record.values),
            "fields": _fields(record),
            "entries": [_entry(entry) for entry in record.entries],
            "sdv": None if sdv is None else {
                "verified": sdv.verified, "verified_by": sdv.verified_by,
                "verified_at": sdv.verified_at, "verified_position": sdv.verified_position,
                "cleared_by": sdv.cleared_by},
            "queries": [q["id"] for q in queries if q["position"] == record.position],
            "signatures": [s["position"] for s in signed
                           if _signed_record(s, by_position) == record.position],
        })
    groups: dict[str, list[dict[str, Any]]] = {}  # by study event, in order of first form
    for form in forms:
        groups.setdefault(form["study_event"], []).append(form)
    last = events[-1] if events else None
    return {
        "subject": subject,
        "site": state.site,
        "phase": state.phase,
        "cohort": state.cohort,
        "generated_at": generated_at,
        "log_position": log_position,
        "stream_version": last.version if last else 0,
        "stream_head_hash": last.hash if last else None,
        "study_events": [{"study_event": name, "forms": items}
                         for name, items in groups.items()],
        "queries": queries,
        "signatures": [{**s, "record_position": _signed_record(s, by_position),
                        "on_form": _signed_record(s, by_position) in known} for s in signed],
    }


def _signed_record(signature: Mapping[str, Any], by_position: Mapping[int, RecordedEvent]
                   ) -> int | None:
    try:
        return record_of(int(signature["target_position"]), by_position)
    except (TypeError, ValueError):
        return None


def _entry(entry: Any) -> dict[str, Any]:
    return {"kind": entry.kind, "position": entry.position, "actor": entry.actor,
            "role": entry.role, "site": entry.site, "recorded_at": entry.recorded_at,
            "reason": entry.reason, "values": dict(entry.values)}


def _fields(record: FormRecord) -> list[dict[str, Any]]:
    """Each field the record ever held, in the order first written, with its history."""
    fields: dict[str, dict[str, Any]] = {}
    for entry in record.entries:
        for code, value in entry.values.items():
            item = fields.setdefault(code, {"field": code, "value": None, "history": []})
            if entry.kind != "void":
                item["value"] = value
            item["history"].append({
                "kind": entry.kind, "value": value, "position": entry.position,
                "actor": entry.actor, "role": entry.role, "site": entry.site,
                "recorded_at": entry.recorded_at, "reason": entry.reason})
    return list(fields.values())


# --- text ------------------------------------------------------------------------------------

NOWRAP_MAX: Final = 32  # characters: a value this short and without spaces is never broken
_KIND_WORDS: Final = {"original": "entered", "correction": "corrected to", "void": "voided"}


def shown(value: Any) -> str:
    """A value as a person reads it, exactly as recorded (never rounded: it is the record),
    never a Python representation: yes/no, lists comma-separated, decimals without an
    exponent or a trailing `.0`."""
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={shown(v)}" for k, v in value.items()) or "-"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))  # 58.0 -> 58: as recorded, never rounded
    return value_text(value)


def _who(item: Mapping[str, Any]) -> str:
    where = f", {item['site']}" if item.get("site") else ""
    return f"{item['actor']} ({item['role']}{where}) at {item['recorded_at']}"


def _history_line(item: Mapping[str, Any]) -> str:
    word = _KIND_WORDS.get(item["kind"], item["kind"])
    value = f" (was {shown(item['value'])})" if item["kind"] == "void" else \
        f" {shown(item['value'])}"
    why = f"; reason: {item['reason']}" if item.get("reason") else ""
    return f"{word}{value} by {_who(item)}, position {item['position']}{why}"


def sdv_sentence(form: Mapping[str, Any]) -> str:
    sdv = form["sdv"]
    if form["voided"]:
        return "not subject to verification (voided)"
    if sdv is None:
        return "not subject to verification"
    if sdv["verified"]:
        return (f"verified by {sdv['verified_by']} at {sdv['verified_at']} "
                f"(position {sdv['verified_position']})")
    if sdv["cleared_by"] is not None:
        return f"not verified (cleared by the correction at position {sdv['cleared_by']})"
    return "not verified"


def query_lines(query: Mapping[str, Any]) -> list[str]:
    lines = [f"{query['id']} ({query['state']}) on {query['field']} "
             f"(value then: {shown(query['value'])}): \"{query['text']}\" "
             f"opened by {query['opened_by']} at {query['opened_at']}"]
    if query["answered_by"]:
        fix = (f", with the correction at position {query['correction_position']}"
               if query["correction_position"] else "")
        lines.append(f"answered by {query['answered_by']} at {query['answered_at']}: "
                     f"\"{query['answer']}\"{fix}")
    if query["closed_by"]:
        why = f": {query['close_reason']}" if query["close_reason"] else ""
        lines.append(f"closed by {query['closed_by']} at {query['closed_at']}{why}")
    return lines


def signature_line(signature: Mapping[str, Any]) -> str:
    state = {"valid": "valid", "earlier_version": "earlier version",
             "broken": "BROKEN"}.get(str(signature["state"]), str(signature["state"]))
    return (f"position {signature['position']}: {signature['manifestation']} "
            f"[{state}]; signs {signature['target_type']} at position "
            f"{signature['target_position']}")


def _other_queries(book: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Queries on no form of the casebook (none today: a query names a recorded form)."""
    shown_ids = {identifier for group in book["study_events"] for form in group["forms"]
                 for identifier in form["queries"]}
    return [q for q in book["queries"] if q["id"] not in shown_ids]


def casebook_text(book: Mapping[str, Any]) -> str:
    out = [f"Casebook of {book['subject']}: site {shown(book['site'])}, phase "
           f"{shown(book['phase'])}, cohort {shown(book['cohort'])}",
           f"Generated at {book['generated_at']} from the hash-chained event log as of "
           f"position {book['log_position']} (stream version {book['stream_version']}, head "
           f"hash {shown(book['stream_head_hash'])})."]
    queries = {q["id"]: q for q in book["queries"]}
    signed = {s["position"]: s for s in book["signatures"]}
    if not book["study_events"]:
        out += ["", "No forms recorded."]
    for group in book["study_events"]:
        out += ["", f"== {group['study_event']} =="]
        for form in group["forms"]:
            flag = "  [VOIDED: entered in error]" if form["voided"] else ""
            visit = f", visit {form['visit']}" if form["visit"] else ""
            out += ["", f"-- {form['form']} (position {form['position']}{visit}, for "
                    f"{form['recorded_on']}){flag}"]
            original = form["entries"][0]
            out.append(f"  entered by {_who(original)}")
            for field in form["fields"]:  # the history of a value written more than once
                out.append(f"  {field['field']}: {shown(field['value'])}")
                history = field["history"]
                if any(item["kind"] == "correction" for item in history):
                    out += [f"      {_history_line(item)}" for item in history
                            if item["kind"] != "void"]
            if not form["fields"]:
                out.append("  (no values)")
            out += [f"  VOIDED by {_who(e)}, position {e['position']}; reason: "
                    f"{shown(e['reason'])}" for e in form["entries"] if e["kind"] == "void"]
            out.append(f"  Source verification: {sdv_sentence(form)}")
            for identifier in form["queries"]:
                lines = query_lines(queries[identifier])
                out.append(f"  Query {lines[0]}")
                out += [f"      {line}" for line in lines[1:]]
            for position in form["signatures"]:
                out.append(f"  Signature at {signature_line(signed[position])}")
    stray = _other_queries(book)
    if stray:
        out += ["", "== Other queries =="]
    for query in stray:
        lines = query_lines(query)
        out.append(f"  Query {lines[0]}")
        out += [f"      {line}" for line in lines[1:]]
    others = [s for s in book["signatures"] if not s["on_form"]]
    if others:
        out += ["", "== Other signatures =="]
        out += [f"  Signature at {signature_line(s)}" for s in others]
    out += ["", f"Queries: {len(book['queries'])} ("
            + ", ".join(f"{n} {state}" for state in ("open", "answered", "closed")
                        if (n := sum(q["state"] == state for q in book["queries"])))
            + f"); signatures: {len(book['signatures'])}."
            if book["queries"] else
            f"Queries: none; signatures: {len(book['signatures'])}."]
    return "\n".join(out)


# --- HTML ------------------------------------------------------------------------------------

_CSS: Final = """
body{font-family:Georgia,'Times New Roman',serif;margin:2em auto;max-width:60em;color:#111;
line-height:1.35}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #333;margin-top:1.6em}
h3{margin:1.2em 0 .3em}.meta{color:#444;font-size:.9em}
table{border-collapse:collapse;width:100%;margin:.3em 0 .6em}
th,td{border:1px solid #999;padding:.2em .4em;text-align:left;vertical-align:top;
font-size:.9em}th{background:#eee;white-space:nowrap}
.form{border:1px solid #ccc;padding:.2em .8em .6em;margin:.8em 0;page-break-inside:avoid;
break-inside:avoid}
.voided{background:#fbeaea}.voided h3{text-decoration:line-through}
.badge{font-family:sans-serif;font-size:.75em;padding:0 .4em;border-radius:3px;
background:#b00;color:#fff;text-decoration:none;display:inline-block}
.history{margin:0;padding-left:1.2em}.note{font-size:.85em;color:#333}
.nw{white-space:nowrap}code{overflow-wrap:anywhere}
@media (max-width:40em){body{margin:.5em}.nw{white-space:normal}td{overflow-wrap:anywhere}}
.state-valid{color:#060}.state-earlier_version{color:#a60}.state-broken{color:#b00}
@media print{body{margin:0;max-width:none;font-size:10pt}h2{page-break-after:avoid;
break-after:avoid}.form{border-color:#999}a{color:inherit;text-decoration:none}}
@page{margin:1.5cm}
"""


def _e(value: Any) -> str:
    return html.escape(shown(value))


def _who_html(item: Mapping[str, Any]) -> str:
    where = f", {item['site']}" if item.get("site") else ""
    return (f"{html.escape(str(item['actor']))} ({html.escape(str(item['role']) + where)}) at "
            f'<span class="nw">{html.escape(str(item["recorded_at"]))}</span>')


def _value_html(value: Any, tag: str = "span") -> str:
    """A value escaped in `tag`; a short one without spaces (a date, a code, a number) is never
    broken across lines at its hyphens."""
    text = shown(value)
    if len(text) <= NOWRAP_MAX and not any(c.isspace() for c in text):
        return f'<{tag} class="nw">{html.escape(text)}</{tag}>'
    return f"<{tag}>{html.escape(text)}</{tag}>"


def _form_html(form: Mapping[str, Any], queries: Mapping[str, Mapping[str, Any]],
               signed: Mapping[int, Mapping[str, Any]]) -> str:
    badge = ' <span class="badge">VOIDED — entered in error</span>' if form["voided"] else ""
    visit = f", visit {_e(form['visit'])}" if form["visit"] else ""
    rows = []
    for field in form["fields"]:
        history = "".join(
            (f"<li>voided (value then {_value_html(item['value'], 'b')})" if item["kind"] == "void"
             else f"<li>{html.escape(_KIND_WORDS.get(item['kind'], item['kind']))} "
             f"{_value_html(item['value'], 'b')}")
            + f" by {_who_html(item)}, position {item['position']}"
            + (f"; reason: <i>{_e(item['reason'])}</i>" if item.get("reason") else "")
            + "</li>" for item in field["history"])
        rows.append(f"<tr><td>{_e(field['field'])}</td><td>{_value_html(field['value'])}</td>"
                    f'<td><ul class="history">{history}</ul></td></tr>')
    body = ("<table><tr><th>field</th><th>value now</th><th>history</th></tr>"
            + "".join(rows) + "</table>") if rows else "<p>No values.</p>"
    voids = [e for e in form["entries"] if e["kind"] == "void"]
    body += "".join(f"<p>Voided by {_who_html(e)}, position {e['position']}; reason: "
                    f"<i>{_e(e['reason'])}</i></p>" for e in voids)
    body += f"<p>Source verification: {html.escape(sdv_sentence(form))}</p>"
    for identifier in form["queries"]:
        lines = query_lines(queries[identifier])
        body += ("<p>Query " + "<br>".join(html.escape(line) for line in lines) + "</p>")
    for position in form["signatures"]:
        body += _signature_html(signed[position])
    classes = "form voided" if form["voided"] else "form"
    return (f'<div class="{classes}" id="p{form["position"]}"><h3>{_e(form["form"])} '
            f"<small>(position {form['position']}{visit}, for {_value_html(form['recorded_on'])})"
            f"</small>{badge}</h3>{body}</div>")


def _signature_html(signature: Mapping[str, Any]) -> str:
    state = html.escape(str(signature["state"]))
    return (f'<p>Signature <span class="state-{state}">[{state}]</span> at '
            f"{html.escape(signature_line(signature))}</p>")


def casebook_html(book: Mapping[str, Any]) -> str:
    """A printable, self-contained page (inline CSS, no external resource)."""
    queries = {q["id"]: q for q in book["queries"]}
    signed = {s["position"]: s for s in book["signatures"]}
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Casebook {_e(book['subject'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>Casebook of {_e(book['subject'])}</h1>",
        f'<p class="meta">Site {_e(book["site"])} · phase {_e(book["phase"])} · cohort '
        f"{_e(book['cohort'])}<br>Generated at {_e(book['generated_at'])} from the "
        f"hash-chained event log as of position {book['log_position']} (stream version "
        f"{book['stream_version']}, head hash <code>{_e(book['stream_head_hash'])}</code>)."
        "</p>",
        '<p class="note">This page is generated from trialflow\'s append-only, hash-chained '
        "event log; the log, not this page, is the record (<code>trialflow audit verify</code> "
        "checks it). Every value shows its history: the original entry, each correction and any "
        "void, with who, when and why.</p>",
    ]
    if not book["study_events"]:
        parts.append("<p>No forms recorded.</p>")
    for group in book["study_events"]:
        parts.append(f"<h2>{_e(group['study_event'])}</h2>")
        parts += [_form_html(form, queries, signed) for form in group["forms"]]
    stray = _other_queries(book)
    if stray:
        parts.append("<h2>Other queries</h2>")
        parts += ["<p>Query " + "<br>".join(html.escape(line) for line in query_lines(q))
                  + "</p>" for q in stray]
    others = [s for s in book["signatures"] if not s["on_form"]]
    if others:
        parts.append("<h2>Other signatures</h2>")
        parts += [_signature_html(s) for s in others]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
