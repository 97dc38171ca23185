"""`trialflow report …` end to end: files written, paths and digests printed, the HTML page
valid, self-contained and escaped, bad input refused (exit 2) without writing anything."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from cli.app import run
from projections.reports.html import SECTIONS, MonitoringData, render_html

PNG = b"\x89PNG\r\n\x1a\n"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}


def _run(url: str, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = run(["--db", url, *args], stdout=out, stderr=err, environ={})
    return status, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("kind", ["swimmer", "sledai", "persistence"])
def test_plot_commands_write_png(demo_url: str, tmp_path: Path, kind: str) -> None:
    target = tmp_path / f"{kind}.png"
    status, out, err = _run(demo_url, "report", kind, "--out", str(target))
    assert status == 0, err
    assert out.strip() == str(target)
    assert target.read_bytes().startswith(PNG)


def test_json_gives_file_and_sha256_and_as_of(demo_url: str, tmp_path: Path) -> None:
    target = tmp_path / "swimmer-2024-12.svg"
    status, out, err = _run(demo_url, "--json", "report", "swimmer", "--out", str(target),
                            "--as-of", "2024-12-10T12:00:00Z")
    assert status == 0, err
    data = json.loads(out)
    assert data == {"file": str(target),
                    "sha256": hashlib.sha256(target.read_bytes()).hexdigest()}
    assert b"<svg" in target.read_bytes()[:500]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


@pytest.mark.parametrize("args", [
    ("report", "sledai", "--out", "{tmp}/sledai.gif"),
    ("report", "persistence", "--out", "{tmp}/missing/persistence.png"),
    ("report", "html", "--out", "{tmp}/missing/report.html"),
    ("report", "swimmer", "--out", "{tmp}/s.png", "--as-of", "yesterday"),
    ("report", "swimmer"),
])
def test_bad_input_is_refused(demo_url: str, tmp_path: Path, args: tuple[str, ...]) -> None:
    line = [a.replace("{tmp}", str(tmp_path)) for a in args]
    status, out, _ = _run(demo_url, "--json", *line)
    assert status == 2
    assert json.loads(out)["error"]
    assert list(tmp_path.iterdir()) == []


class _Page(HTMLParser):
    """Collects ids, images and outside references, and checks that tags nest."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.ids: list[str] = []
        self.images: list[str] = []
        self.references: list[str] = []
        self.tags: set[str] = set()
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        found = dict(attrs)
        if found.get("id"):
            self.ids.append(str(found["id"]))
        if tag == "img":
            self.images.append(str(found.get("src")))
        for name in ("src", "href"):
            value = found.get(name)
            if value is not None and not value.startswith(("data:", "#")):
                self.references.append(value)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    page.close()
    assert page.stack == []
    return page


def test_html_page(demo_url: str, tmp_path: Path) -> None:
    """As the system stood early on 2025-01-09 (the clock defaults to that moment): S-008's
    D1 visit is due that day."""
    target = tmp_path / "monitoring.html"
    status, out, err = _run(demo_url, "report", "html", "--out", str(target),
                            "--as-of", "2025-01-09T00:00:00Z")
    assert status == 0, err
    assert out.strip() == str(target)
    text = target.read_text("utf-8")
    assert text.startswith("<!DOCTYPE html>")
    page = _parse(text)
    assert set(SECTIONS) <= set(page.ids) and len(page.ids) == len(set(page.ids))
    assert page.references == [] and not {"script", "link", "iframe"} & page.tags
    assert len(page.images) == 3
    for src in page.images:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        assert base64.b64decode(src[len(prefix):]).startswith(PNG)
    words = " ".join(page.text)
    for expected in ("S-003", "screen_failed", "cytokine release syndrome", "pneumonia",
                     "visit_out_of_window", "as of 2025-01-09T00:00:00Z"):
        assert expected in words
    visits = text[text.index('<section id="visits">'):]
    visits = visits[:visits.index("</section>")]
    assert "<td>S-008</td><td>D1</td><td>due</td>" in visits


def test_html_escapes_every_text() -> None:
    evil = '<script>alert("x")</script>&'
    data = MonitoringData(
        title=f"Report {evil}",
        generated={"position": 3, "now": evil, "as_of": "@3"},
        status={"phases": {"screening": 1}, "cohorts": [{"cohort": evil, "filled": 0,
                                                         "places": 3}],
                "exits": {}, "overdue_visits": [], "overdue_reports": [],
                "screening_expiring": []},
        subjects=[{"subject": "S-1", "site": evil, "phase": "screening"}],
        visits=[],
        adverse_events=[{"subject": "S-1", "term": evil, "position": 2}],
        deviations=[{"subject": "S-1", "kind": "k", "detail": evil}],
        endpoints=[{"subject": "S-1", "sledai2k": {"baseline": None},
                    "missing": {"sledai2k.baseline": evil}}],
        notes={"swimmer": evil},
    )
    images: dict[str, Any] = {"swimmer": (PNG, "png")}
    text = render_html(data, images)
    assert "<script" not in text and "&lt;script&gt;" in text
    page = _parse(text)
    assert set(SECTIONS) <= set(page.ids) and len(page.images) == 1
    assert evil in " ".join(page.text)  # shown as text, exactly
