"""The monitoring page's data review (issue 16): data queries by state, source-verification
progress per subject and form, signatures recorded and pending — read with the functions of
`queries`, `sdv-status` and `signatures`, at the page's log position.

On a copy of the demo study (a closed query Q-270 answered with a correction, then S-002's
corrected persistence form source-verified; six completions signed by the investigator) with
one more query opened by the monitor and left open."""

from __future__ import annotations

import html
import io
import json
import re
import sqlite3
from pathlib import Path

import pytest

from cli.app import run
from events.store import EventStore
from projections.reports.html import MonitoringData, Review, pending_signatures, render_html
from workflow import event_types as T
from workflow.bootstrap import build_app
from workflow.signing import signatures

PASSWORD = "im19-demo-password\n"  # the demo's public password (a demo database only)


def _run(url: str, *args: str, stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = run(["--db", url, *args], stdout=out, stderr=err, stdin=io.StringIO(stdin),
                 environ={})
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def study(demo_url: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A copy of the demo with S-001's vitals weight queried (open)."""
    copy = tmp_path_factory.mktemp("review") / "review.db"
    # the backup API, not a file copy: the demo's last transactions may still be in its WAL
    with sqlite3.connect(demo_url.removeprefix("sqlite:///")) as source, \
            sqlite3.connect(copy) as target:
        source.backup(target)
    source.close()
    target.close()
    url = f"sqlite:///{copy}"
    app = build_app(url)
    vitals = next(e.position for e in app.store.read_stream("S-001")
                  if e.type == T.FORM_RECORDED and e.payload["form"] == "vitals")
    app.engine.dispose()
    status, _, err = _run(url, "--user", "mona", "--password-stdin", "query", "open", "S-001",
                          str(vitals), "--field", "weight_kg",
                          "--text", "Please check <the scale> reading.", stdin=PASSWORD)
    assert status == 0, err
    return url


def _section(page: str, ident: str) -> str:
    start = page.index(f'<section id="{ident}">')
    return page[start:page.index("</section>", start)]


def _fact(section: str, name: str) -> str:
    found = re.search(f"<tr><th>{re.escape(name)}</th><td>([^<]*)</td></tr>", section)
    assert found is not None, name
    return found.group(1)


def _page(url: str, tmp: Path, *args: str) -> str:
    target = tmp / "monitoring.html"
    status, _, err = _run(url, "report", "html", "--out", str(target), *args)
    assert status == 0, err
    return target.read_text("utf-8")


def test_queries_sdv_and_signatures_on_the_page(study: str, tmp_path: Path) -> None:
    page = _page(study, tmp_path)
    queries = _section(page, "queries")
    assert [_fact(queries, s) for s in ("open", "answered", "closed", "total")] == \
        ["1", "0", "1", "2"]
    rows = re.findall(r"<tr><td>(Q-\d+)</td><td>(\w+)</td><td>(S-\d+)</td>", queries)
    assert [(state, subject) for _, state, subject in rows] == [("open", "S-001"),
                                                                ("closed", "S-002")]
    assert rows[1][0] == "Q-270"
    assert "Please check &lt;the scale&gt; reading." in queries  # escaped

    sdv = _section(page, "source-verification")
    verified, total = re.fullmatch(r"(\d+) of (\d+) \(0%\)",
                                   _fact(sdv, "Forms source-verified")).groups()  # type: ignore[union-attr]
    assert verified == "1" and int(total) > 300
    assert "S-002 1/" in _fact(sdv, "Per subject") and "S-001 0/" in _fact(sdv, "Per subject")
    assert ("<tr><td>S-002</td><td>cart_persistence</td><td>12</td><td>1</td><td>8%</td>"
            "<td>0</td></tr>") in sdv
    assert "<tr><td>S-001</td><td>vitals</td><td>1</td><td>0</td><td>0%</td><td>0</td></tr>" \
        in sdv

    signed = _section(page, "signatures")
    assert _fact(signed, "Signatures pending") == "0"
    assert _fact(signed, "Signatures recorded") == "valid 6"
    assert "No signature pending." in signed
    assert signed.count("<td>SubjectCompleted</td><td>approved</td><td>ivan</td>") == 6


def test_a_completion_not_yet_signed_is_pending(study: str, tmp_path: Path) -> None:
    """As of S-001's completion (signed the next day), it awaits the investigator."""
    app = build_app(study)
    completed = next(e.position for e in app.store.read_stream("S-001")
                     if e.type == T.SUBJECT_COMPLETED)
    app.engine.dispose()
    page = _page(study, tmp_path, "--as-of", f"@{completed}")
    signed = _section(page, "signatures")
    assert _fact(signed, "Signatures pending") == "1"
    assert _fact(signed, "Signatures recorded") == "none"
    assert f"<tr><td>S-001</td><td>{completed}</td><td>completion</td>" in signed
    queries = _section(page, "queries")  # then: Q-270 closed, the new query not yet opened
    assert [_fact(queries, s) for s in ("open", "closed")] == ["0", "1"]


def test_a_signature_on_a_corrected_record_is_pending_again(study: str) -> None:
    """A signature that applies to an earlier version (the record corrected after signing)
    leaves the record pending, with the reason; a valid one after it clears it."""
    app = build_app(study)
    store: EventStore = app.store
    events = store.read_stream("S-001")
    app.engine.dispose()
    checked = signatures(events)
    assert pending_signatures(events, checked) == []
    forged = [{**checked[0], "state": "earlier_version",
               "manifestation": "Signed by ivan — applies to the version before the "
                                "correction at position 999"}]
    (pending,) = pending_signatures(events, forged)
    assert (pending["subject"], pending["record"], pending["position"]) == (
        "S-001", "completion", checked[0]["target_position"])
    assert "earlier version" in pending["why"] and "999" in pending["why"]


def test_a_page_without_the_event_log_says_so() -> None:
    data = MonitoringData(
        title="t", generated={"position": 1, "now": "n", "as_of": None, "source": "memory"},
        status={"phases": {}, "cohorts": []}, subjects=[], visits=[], adverse_events=[],
        deviations=[], endpoints=[])
    page = render_html(data, {})
    for ident in ("queries", "source-verification", "signatures", "overdue"):
        assert "Not read" in _section(page, ident)
    data.review, data.overdue = Review(), []
    page = render_html(data, {})
    assert "Nothing is overdue." in _section(page, "overdue")
    assert "No query has been opened." in _section(page, "queries")
    assert "No form recorded yet." in _section(page, "source-verification")
    assert "No signature pending." in _section(page, "signatures")


def test_the_overdue_part_of_todo_is_on_the_page(study: str, tmp_path: Path) -> None:
    """Mid-study (as of position 300, the clock in January 2025) the page lists exactly the
    tasks `todo` calls overdue, in its order, each with who acts and the command; at the end
    of the demo, nothing."""
    moment = ("--as-of", "@300", "--now", "2025-01-20T00:00:00Z")
    status, out, err = _run(study, "--json", "todo", *moment)
    assert status == 0, err
    overdue = [t for t in json.loads(out) if t["state"] == "overdue"]
    assert len(overdue) >= 3 and {t["kind"] for t in overdue} == {"visit"}
    section = _section(_page(study, tmp_path, *moment), "overdue")
    rows = re.findall(r"<tr><td>(S-\d+)</td><td>(\w+)</td><td>(\w+)</td><td>([\d-]+)</td>"
                      r"<td>(\w+)</td><td>([^<]+)</td><td>([^<]+)</td></tr>", section)
    assert rows == [(t["subject"], t["site"], t["kind"], t["due"], t["role"],
                     html.escape(t["action"]), html.escape(t["command"])) for t in overdue]
    assert "Nothing is overdue." in _section(_page(study, tmp_path), "overdue")


def test_the_page_reads_each_subject_s_stream_once(study: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The page folds each subject three ways (its history, its data review, its tasks) from
    one read of its stream at the page's position (`View.stream`)."""
    from collections import Counter

    reads: Counter[str] = Counter()
    original = EventStore.read_stream

    def counting(self: EventStore, stream_id: str, **kwargs: object) -> object:
        if stream_id.startswith("S-"):
            reads[stream_id] += 1
        return original(self, stream_id, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(EventStore, "read_stream", counting)
    _page(study, tmp_path)
    assert len(reads) == 8 and set(reads.values()) == {1}, reads
