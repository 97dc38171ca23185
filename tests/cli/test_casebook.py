"""`trialflow casebook SUBJECT [--html FILE] [--json]` (issue 16): the subject's whole record,
form by form, with each value's history (entry, corrections, voids: who, when, why), queries,
source-verification marks and signatures (valid or earlier_version), in text, JSON and a
printable HTML page whose user-entered text is escaped.

The study is built once through the executor: S-001 screened, its vitals signed, then
corrected (the signature now applies to the earlier version) and the correction signed (valid);
a second vitals form voided; a query opened on the demographics, a medication form
source-verified. A `<script>` goes into the correction's reason and the query's text.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support.auth import run_cli
from tests.support.clock import FakeClock
from tests.support.study import (
    COORDINATOR,
    INVESTIGATOR,
    MONITOR,
    new_study,
    screen_eligible,
    through_infusion,
)
from workflow.commands import messages as M

SCRIPT = "<script>alert('x')</script>"
REASON = f"scale recalibrated {SCRIPT}"
QUERY = f"Is the date of birth right? {SCRIPT}"


@dataclass(frozen=True)
class Built:
    url: str
    vitals: int
    correction: int
    old_signature: int  # on the original vitals: earlier_version
    new_signature: int  # on the correction: valid
    voided: int  # the second vitals form
    void: int
    demographics: int
    query: str
    medication: int  # source-verified
    sdv: int
    infusion: int  # S-002's, signed
    infusion_signature: int


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    path = tmp_path_factory.mktemp("casebook") / "study.db"
    url = f"sqlite:///{path}"
    start = datetime.now(UTC).date() - timedelta(days=20)
    earlier = start - timedelta(days=60)
    clock = FakeClock(datetime.combine(earlier, datetime.min.time(), UTC))
    flow = new_study(url, clock)
    through_infusion(flow, "S-002", earlier, clock)
    infused = flow.subject("S-002").infusion
    assert infused is not None
    infusion_signature = flow.send(INVESTIGATOR, M.Sign("S-002", infused.position, "reviewed")
                                   ).result.positions[0]
    screen_eligible(flow, "S-001", start, clock=clock)
    state = flow.subject("S-001")
    vitals = state.forms_of("vitals")[0].position
    demographics = state.forms_of("demographics")[0].position
    medication = state.forms_of("medication")[0].position
    old_signature = flow.send(INVESTIGATOR, M.Sign("S-001", vitals, "approved")
                              ).result.positions[0]
    correction = flow.send(COORDINATOR, M.CorrectRecord("S-001", vitals, ("weight_kg=58.5",),
                                                        REASON)).result.positions[0]
    new_signature = flow.send(INVESTIGATOR, M.Sign("S-001", correction, "approved")
                              ).result.positions[0]
    voided = flow.send(COORDINATOR, M.RecordForm("S-001", "vitals", ("weight_kg=99",), start)
                       ).result.positions[0]
    void = flow.send(COORDINATOR, M.VoidRecord("S-001", voided, "entered twice")
                     ).result.positions[0]
    opened = flow.send(MONITOR, M.OpenQuery("S-001", demographics, "date_of_birth", QUERY)
                       ).result.positions[0]
    sdv = flow.send(MONITOR, M.VerifySource("S-001", medication)).result.positions[0]
    flow.executor.engine.dispose()
    return Built(url, vitals, correction, old_signature, new_signature, voided, void,
                 demographics, f"Q-{opened}", medication, sdv, infused.position,
                 infusion_signature)


@pytest.fixture
def study(built: Built, tmp_path: Path) -> Built:
    target = tmp_path / "trialflow.db"
    shutil.copyfile(built.url.removeprefix("sqlite:///"), target)
    return replace(built, url=f"sqlite:///{target}")


def call(db: str, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = run_cli(["--db", db, *argv], stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


def _form(book: dict[str, Any], position: int) -> dict[str, Any]:
    return next(form for group in book["study_events"] for form in group["forms"]
                if form["position"] == position)


def test_json_holds_each_value_s_history_voids_queries_sdv_and_signatures(
        study: Built) -> None:
    status, out, err = call(study.url, "--json", "casebook", "S-001")
    assert status == 0, err
    book = json.loads(out)
    assert book["subject"] == "S-001" and book["site"] == "PKU3"
    assert book["log_position"] >= study.sdv and book["stream_head_hash"]
    assert [group["study_event"] for group in book["study_events"]] == ["SCREENING"]

    vitals = _form(book, study.vitals)
    assert vitals["values"]["weight_kg"] == 58.5 and not vitals["voided"]
    weight = next(f for f in vitals["fields"] if f["field"] == "weight_kg")
    assert weight["value"] == 58.5
    assert [(h["kind"], h["value"], h["actor"]) for h in weight["history"]] == [
        ("original", 58, COORDINATOR), ("correction", 58.5, COORDINATOR)]
    assert weight["history"][1]["reason"] == REASON
    assert weight["history"][1]["position"] == study.correction
    assert sorted(vitals["signatures"]) == [study.old_signature, study.new_signature]

    voided = _form(book, study.voided)
    assert voided["voided"] is True and voided["sdv"] is None
    assert [e["kind"] for e in voided["entries"]] == ["original", "void"]
    assert voided["entries"][1]["reason"] == "entered twice"
    assert voided["entries"][1]["position"] == study.void

    demographics = _form(book, study.demographics)
    assert demographics["queries"] == [study.query]
    (query,) = book["queries"]
    assert (query["id"], query["state"], query["field"], query["text"], query["opened_by"]) == (
        study.query, "open", "date_of_birth", QUERY, MONITOR)

    medication = _form(book, study.medication)
    assert medication["sdv"]["verified"] is True
    assert (medication["sdv"]["verified_by"], medication["sdv"]["verified_position"]) == (
        MONITOR, study.sdv)
    assert _form(book, study.vitals)["sdv"]["verified"] is False

    states = {s["position"]: s["state"] for s in book["signatures"]}
    assert states == {study.old_signature: "earlier_version", study.new_signature: "valid"}


def test_text_is_readable_sections_with_every_part(study: Built) -> None:
    status, out, err = call(study.url, "casebook", "S-001")
    assert status == 0, err
    assert "== SCREENING ==" in out
    assert f"-- vitals (position {study.vitals}" in out
    assert "weight_kg: 58.5" in out
    assert "entered 58 by cora (coordinator, PKU3) at " in out
    assert "corrected to 58.5 by cora (coordinator, PKU3) at " in out
    assert f"reason: {REASON}" in out
    assert f"-- vitals (position {study.voided}" in out and "[VOIDED" in out
    assert "VOIDED by cora (coordinator, PKU3)" in out
    assert f"position {study.void}; reason: entered twice" in out
    assert f"Query {study.query} (open) on date_of_birth" in out and QUERY in out
    assert f"verified by {MONITOR}" in out and f"(position {study.sdv})" in out
    assert f"Signature at position {study.old_signature}:" in out
    assert "[earlier version]" in out and "[valid]" in out
    for leak in ("None", "{'", "['", "True", "False"):
        assert leak not in out, leak


def test_html_is_a_self_contained_page_with_user_text_escaped(study: Built,
                                                              tmp_path: Path) -> None:
    target = tmp_path / "casebook.html"
    status, out, err = call(study.url, "--json", "casebook", "S-001", "--html", str(target))
    assert status == 0, err
    written = json.loads(out)
    assert written["file"] == str(target) and len(written["sha256"]) == 64
    page = target.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "@media print" in page
    assert "<script" not in page and "&lt;script&gt;" in page
    assert "http://" not in page and "https://" not in page and "<link" not in page
    assert "hash-chained" in page and "Casebook of S-001" in page
    head = json.loads(call(study.url, "--json", "casebook", "S-001")[1])["log_position"]
    assert f"as of position {head}" in page
    assert "Generated at " in page
    assert 'entered <b class="nw">58</b>' in page
    assert 'corrected to <b class="nw">58.5</b>' in page
    assert "VOIDED" in page and "entered twice" in page
    assert study.query in page and "(open)" in page
    assert f"verified by {MONITOR}" in page
    assert "[earlier_version]" in page and "[valid]" in page
    assert "None" not in page


def test_an_unknown_subject_is_bad_input_and_a_link_is_refused(study: Built,
                                                             tmp_path: Path) -> None:
    status, out, _ = call(study.url, "--json", "casebook", "S-999")
    assert status == 2 and "S-999" in json.loads(out)["error"]
    link = tmp_path / "link.html"
    link.symlink_to(tmp_path / "elsewhere.html")
    status, out, _ = call(study.url, "--json", "casebook", "S-001", "--html", str(link))
    assert status == 2 and json.loads(out)["rule"] == "bad_output_path"
    assert not (tmp_path / "elsewhere.html").exists()


def test_procedures_fall_under_their_study_events(study: Built) -> None:
    status, out, err = call(study.url, "--json", "casebook", "S-002")
    assert status == 0, err
    book = json.loads(out)
    assert [group["study_event"] for group in book["study_events"]] == [
        "SCREENING", "CELL_COLLECTION", "LYMPHODEPLETION", "D0"]
    infusion = _form(book, study.infusion)
    assert infusion["form"] == "infusion" and infusion["study_event"] == "D0"
    assert infusion["signatures"] == [study.infusion_signature]
    assert infusion["sdv"] == {"verified": False, "verified_by": None, "verified_at": None,
                               "verified_position": None, "cleared_by": None}
    (signature,) = book["signatures"]
    assert signature["state"] == "valid" and signature["on_form"] is True
    status, out, err = call(study.url, "casebook", "S-002")
    assert status == 0, err
    for heading in ("SCREENING", "CELL_COLLECTION", "LYMPHODEPLETION", "D0"):
        assert f"== {heading} ==" in out
    assert f"-- infusion (position {study.infusion}" in out
    assert f"Signature at position {study.infusion_signature}:" in out and "[valid]" in out
    assert "Queries: none; signatures: 1." in out
    for leak in ("None", "{'", "['", "True", "False"):
        assert leak not in out, leak


# --- the HTML in a real browser ------------------------------------------------------------------

MEASURE = """<script>
const e = document.documentElement;
document.body.dataset.scrollWidth = e.scrollWidth;
document.body.dataset.innerWidth = window.innerWidth;
document.body.dataset.height = e.scrollHeight;
document.body.dataset.scripts = document.scripts.length;
</script></body>"""
VOIDED_TINT = (0xFB, 0xEA, 0xEA)  # .voided background in projections/casebook.py
BADGE_RED = (0xBB, 0x00, 0x00)  # .badge background


def _measured(page: Path, tmp_path: Path, width: int) -> dict[str, int]:
    """The page's layout as the browser computed it, read back through the dumped DOM of a
    copy with one measuring script added at the end."""
    from tests.support import browser

    copy = tmp_path / f"measure-{width}.html"
    copy.write_text(page.read_text(encoding="utf-8").replace("</body>", MEASURE),
                    encoding="utf-8")
    body = browser.dom(copy, tmp_path / f"profile-m{width}", width)
    found = dict(re.findall(r'data-(scroll-width|inner-width|height|scripts)="(\d+)"', body))
    assert len(found) == 4, body[:500]
    return {key: int(value) for key, value in found.items()}


def _share(image: Any, colour: tuple[int, int, int], tolerance: int = 6) -> int:
    """How many pixels of the screenshot have this colour (within a few levels per channel)."""
    import numpy

    pixels = numpy.asarray(image, dtype=numpy.int16)
    return int((numpy.abs(pixels - numpy.array(colour)) <= tolerance).all(axis=2).sum())


@pytest.mark.browser
def test_html_rendered_in_a_headless_browser_reads_as_a_printable_casebook(
        study: Built, tmp_path: Path) -> None:
    """The page as Chromium draws it: the whole page fits a 1000-pixel and a 480-pixel window
    without sideways scrolling, the user's `<script>` stays text (only the test's measuring
    script runs), the screenshot shows text, the voided form's tint and its red badge where
    the page puts them, and printing gives a multi-page PDF."""
    from PIL import Image

    from tests.support import browser

    page = tmp_path / "casebook.html"
    status, _, err = call(study.url, "casebook", "S-001", "--html", str(page))
    assert status == 0, err
    wide, narrow = _measured(page, tmp_path, 1000), _measured(page, tmp_path, 480)
    for layout in (wide, narrow):
        assert layout["scroll-width"] <= layout["inner-width"], layout
        assert layout["scripts"] == 1, layout  # ours: the escaped <script> never became one
    height = min(wide["height"], 16_000)
    assert height > 2_000, wide  # every form of a screened subject, one under another
    shot = browser.screenshot(page, tmp_path / "casebook.png", tmp_path / "profile-s", 1000,
                              height)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1000, height)
    grey = image.convert("L")
    ink = sum(grey.histogram()[:100]) / (image.size[0] * image.size[1])
    assert 0.002 < ink < 0.3, ink  # text drawn, not a blank or a black page
    top = grey.crop((0, 0, 1000, 120))
    assert sum(top.histogram()[:100]) > 500  # the title "Casebook of S-001" at the top
    assert _share(image, VOIDED_TINT) > 20_000  # the voided vitals form, tinted
    assert _share(image, BADGE_RED, tolerance=12) > 300  # its "VOIDED" badge
    printed = browser.pdf(page, tmp_path / "casebook.pdf", tmp_path / "profile-p")
    assert printed.startswith(b"%PDF")
    pages = len(re.findall(rb"/Type\s*/Page[^s]", printed))
    assert pages >= 2, pages
