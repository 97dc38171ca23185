"""Study days are the site's local calendar dates (docs/clinical-rules.md "Study days"), seen
through the query commands.

Three sites where a careless UTC date or a 24-hour step through a daylight-saving change
would move a visit by a day:
- BER (Europe/Berlin): D0 2025-03-28, infused at 00:30 local (still 2025-03-27 in UTC), two
  days before the clocks go forward (2025-03-30 02:00 CET -> 03:00 CEST); its year of visits
  also crosses the change back (2025-10-26) and the next spring's (2026-03-29).
- KIR (Pacific/Kiritimati, UTC+14): infused at 00:30 local on 2025-06-11 (2025-06-10 in UTC).
- PPG (Pacific/Pago_Pago, UTC-11): infused at 23:30 local on 2025-09-10 (2025-09-11 in UTC).

Screening to lymphodepletion go through the executor with the clock at noon at
the site; the infusion and every query go through the CLI.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from events.schema import upgrade
from tests.support.clock import FakeClock
from tests.support.study import (
    ADMIN,
    PASSWORD,
    SCHEDULER_SECRET,
    TEST_KDF,
    Desk,
    screening_forms,
)
from workflow.bootstrap import build_app
from workflow.commands import messages as M
from workflow.commands.actors import Actors
from workflow.commands.executor import Executor
from workflow.identity import Password, Secret

# docs/clinical-rules.md, follow-up visits: target day ± window days
SCHEDULE = {"D1": (1, 0), "D4": (4, 1), "D7": (7, 1), "D10": (10, 1), "D14": (14, 2),
            "D21": (21, 2), "D28": (28, 2), "D60": (60, 7), "D90": (90, 7),
            "D180": (180, 14), "D270": (270, 14), "D360": (360, 14)}


@dataclass(frozen=True)
class Site:
    code: str
    tz: str
    subject: str
    d0: date  # the local infusion date
    infused_at: str  # as given to `trialflow infuse --at`
    utc_date: date  # the infusion's date in UTC (differs from d0 on purpose)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)

    @property
    def coordinator(self) -> str:
        return f"coord-{self.code.lower()}"

    @property
    def investigator(self) -> str:
        return f"inv-{self.code.lower()}"


SITES = (
    Site("BER", "Europe/Berlin", "B-001", date(2025, 3, 28), "2025-03-27T23:30:00Z",
         date(2025, 3, 27)),
    Site("KIR", "Pacific/Kiritimati", "K-001", date(2025, 6, 11), "2025-06-10T10:30:00Z",
         date(2025, 6, 10)),
    Site("PPG", "Pacific/Pago_Pago", "P-001", date(2025, 9, 10), "2025-09-10T23:30:00-11:00",
         date(2025, 9, 11)),
)
BY_CODE = {site.code: site for site in SITES}


# --- the CLI -------------------------------------------------------------------------------


def call(db: str, *argv: str) -> tuple[int, str, str]:
    from tests.support.auth import run_cli

    out, err = io.StringIO(), io.StringIO()
    status = run_cli(["--db", db, *argv], stdout=out, stderr=err,
                 environ=None)
    return int(status), out.getvalue(), err.getvalue()


def query(db: str, *argv: str) -> Any:
    status, out, err = call(db, "--json", *argv)
    assert status == 0, (argv, out, err)
    return json.loads(out)


def utc(site: Site, day: date, clock_time: time) -> str:
    """A local wall-clock time at the site, written as UTC (what --now receives)."""
    moment = datetime.combine(day, clock_time, site.zone).astimezone(UTC)
    return moment.isoformat().replace("+00:00", "Z")


def visits_of(db: str, site: Site, now: str) -> dict[str, dict[str, Any]]:
    return {v["visit"]: v for v in query(db, "visits", site.subject, "--now", now)}


# --- the study -----------------------------------------------------------------------------


def local_noon(clock: FakeClock, site: Site, day: date) -> None:
    clock.set(datetime.combine(day, time(12), site.zone))


def screen(flow: Desk, site: Site, on: date) -> None:
    """Consent and every screening form of an eligible woman (tests/support/study.py), with
    this site's coordinator."""
    c, subject = site.coordinator, site.subject
    flow.send(c, M.ConsentSubject(subject, on, "2.0"))
    for form, tokens in screening_forms():
        flow.send(c, M.RecordForm(subject, form, tuple(tokens), on))


def up_to_lymphodepletion(flow: Desk, clock: FakeClock, site: Site) -> None:
    """Consent at D0-30 ... the regimen's last dose on D0-3, each step at noon at the site."""
    c, subject, d0 = site.coordinator, site.subject, site.d0
    start = d0 - timedelta(days=30)
    coi = f"COI-{subject}"
    local_noon(clock, site, start)
    screen(flow, site, start)
    local_noon(clock, site, start + timedelta(days=3))
    flow.send(site.investigator, M.ConfirmEligibility(subject))
    local_noon(clock, site, start + timedelta(days=7))
    flow.send(c, M.RecordLeukapheresis(subject, start + timedelta(days=7), coi))
    local_noon(clock, site, start + timedelta(days=20))
    flow.send(c, M.ReleaseProduct(subject, f"LOT-{subject}", coi, viable_cells=2e8))
    bsa = 1.62  # sqrt(162 * 58 / 3600)
    for offset, cyclophosphamide in ((-5, 0.0), (-4, 0.0), (-3, 1000 * bsa)):
        day = d0 + timedelta(days=offset)
        local_noon(clock, site, day)
        flow.send(c, M.GiveLymphodepletion(subject, day, round(25 * bsa, 1),
                                           round(cyclophosphamide, 1)))


def three_sites(url: str, clock: FakeClock) -> Desk:
    """A study with the three sites, each with its coordinator and investigator (every user
    with the test password, set by themselves after the admin added them)."""
    app = build_app(url, clock=clock, store_clock=clock, kdf=TEST_KDF)
    upgrade(app.engine)
    flow = Desk(Actors(Executor(app)), clock)
    flow.executor.execute(M.InitialiseStudy(ADMIN, Secret(PASSWORD), Secret(SCHEDULER_SECRET)),
                          Password(ADMIN, Secret(PASSWORD)))
    flow.actors.know(ADMIN, PASSWORD)
    for site in SITES:
        flow.send(ADMIN, M.AddSite(site.code, site.tz))
        flow.add_user(site.coordinator, "coordinator", site.code)
        flow.add_user(site.investigator, "investigator", site.code)
    return flow


def build(url: str) -> str:
    clock = FakeClock("2025-01-01T00:00:00+00:00")
    flow = three_sites(url, clock)
    for site in SITES:  # one after the other: recorded times only move forward
        up_to_lymphodepletion(flow, clock, site)
    for site in SITES:  # through the CLI, recorded by the database clock (after the above)
        cells = flow.study().protocol.cohort_for(1).target_cells(58)
        status, out, err = call(url, "--user", site.coordinator, "--json", "infuse",
                                site.subject, "--at", site.infused_at, "--cells", str(cells),
                                "--coi-id", f"COI-{site.subject}")
        assert status == 0, (out, err)
        assert json.loads(out)["d0"] == site.d0.isoformat()
    return url


# --- tests ---------------------------------------------------------------------------------


def test_the_infusions_straddle_utc_midnight() -> None:
    """The fixture itself: each infusion's UTC date differs from its local date."""
    for site in SITES:
        moment = datetime.fromisoformat(site.infused_at.replace("Z", "+00:00"))
        assert moment.astimezone(UTC).date() == site.utc_date != site.d0
        assert moment.astimezone(site.zone).date() == site.d0
    berlin = BY_CODE["BER"]
    offsets = {datetime.combine(berlin.d0 + timedelta(days=n), time(12), berlin.zone)
               .utcoffset() for n in (0, 4)}
    assert offsets == {timedelta(hours=1), timedelta(hours=2)}  # D4 is in summer time


def test_every_visit_is_d0_plus_n_days_in_the_site_calendar(db_url: str) -> None:
    db = build(db_url)
    for site in SITES:
        d0 = site.d0
        now = utc(site, d0 + timedelta(days=5), time(12))
        rows = visits_of(db, site, now)
        assert list(rows) == ["screening", "D0", *SCHEDULE]
        assert (rows["D0"]["status"], rows["D0"]["done_on"]) == ("done", d0.isoformat())
        for visit, (day, width) in SCHEDULE.items():
            row = rows[visit]
            assert (row["target_date"], row["window_start"], row["window_end"]) == (
                (d0 + timedelta(days=day)).isoformat(),
                (d0 + timedelta(days=day - width)).isoformat(),
                (d0 + timedelta(days=day + width)).isoformat()), (site.code, visit)
        (window,) = query(db, "ae", "windows", site.subject, "--now", now)["windows"]
        assert (window["d0"], window["window_start"], window["window_end"]) == (
            d0.isoformat(), d0.isoformat(), (d0 + timedelta(days=28)).isoformat())
        status = query(db, "status", site.subject, "--now", now)
        assert (status["phase"], status["study_day"], status["days_in_phase"]) == (
            "follow_up", 5, 5), site.code
        (infusion,) = [e for e in query(db, "audit", "log", site.subject)["events"]
                       if e["type"] == "InfusionGiven"]
        assert infusion["payload"]["infused_at"].startswith(d0.isoformat())


def test_berlin_visit_dates_cross_both_daylight_saving_changes(sqlite_url: str) -> None:
    db = build(sqlite_url)
    site = BY_CODE["BER"]
    rows = visits_of(db, site, utc(site, site.d0, time(12)))
    assert (rows["D1"]["target_date"], rows["D4"]["window_start"], rows["D4"]["target_date"],
            rows["D4"]["window_end"]) == ("2025-03-29", "2025-03-31", "2025-04-01",
                                          "2025-04-02")
    assert (rows["D270"]["target_date"], rows["D360"]["window_start"],
            rows["D360"]["target_date"], rows["D360"]["window_end"]) == (
        "2025-12-23", "2026-03-09", "2026-03-23", "2026-04-06")


@pytest.mark.parametrize("code", [site.code for site in SITES])
def test_visit_status_flips_on_the_local_day(sqlite_url: str, code: str) -> None:
    db = build(sqlite_url)
    site = BY_CODE[code]
    d1 = site.d0 + timedelta(days=1)  # D1 ±0: its window is that one local day
    last_second, midnight = time(23, 59, 59), time(0, 0, 0)

    def d1_status(day: date, at: time) -> tuple[str, int | None]:
        row = visits_of(db, site, utc(site, day, at))["D1"]
        return row["status"], row["days_left"]

    assert d1_status(site.d0, last_second) == ("upcoming", None)
    assert d1_status(d1, midnight) == ("due", 0)
    assert d1_status(d1, last_second) == ("due", 0)
    assert d1_status(d1 + timedelta(days=1), midnight) == ("overdue", None)

    # D4 ±1: due from local midnight of D3
    d3 = site.d0 + timedelta(days=3)
    before = visits_of(db, site, utc(site, d3 - timedelta(days=1), last_second))["D4"]
    opened = visits_of(db, site, utc(site, d3, midnight))["D4"]
    assert (before["status"], opened["status"], opened["days_left"]) == ("upcoming", "due", 2)

    # the D0..D28 safety window closes at the end of local D28
    d28 = site.d0 + timedelta(days=28)

    def window(day: date, at: time) -> tuple[str, int | None]:
        (row,) = query(db, "ae", "windows", site.subject, "--now", utc(site, day, at))[
            "windows"]
        return row["state"], row["days_left"]

    assert window(site.d0, midnight) == ("open", 28)
    assert window(site.d0 - timedelta(days=1), last_second) == ("not_started", None)
    assert window(d28, last_second) == ("open", 0)
    assert window(d28 + timedelta(days=1), midnight) == ("closed", None)

    # the study day of `status SUBJECT` turns at local midnight too
    assert query(db, "status", site.subject, "--now", utc(site, d1, midnight))[
        "study_day"] == 1
    assert query(db, "status", site.subject, "--now", utc(site, site.d0, last_second))[
        "study_day"] == 0


def test_on_uses_the_site_calendar(db_url: str) -> None:
    db = build(db_url)
    for site in SITES:
        day_before = query(db, "status", site.subject, "--on",
                           (site.d0 - timedelta(days=1)).isoformat())
        assert (day_before["phase"], day_before["study_day"]) == ("infusion", None), site.code
        d0 = query(db, "status", site.subject, "--on", site.d0.isoformat())
        assert (d0["phase"], d0["study_day"], d0["cohort"]) == (
            "follow_up", 0, "1e6_per_kg"), site.code
        before = [v["visit"] for v in query(db, "visits", site.subject, "--on",
                                            (site.d0 - timedelta(days=1)).isoformat())]
        assert before == ["screening", "D0"], site.code
        on_d0 = {v["visit"]: v for v in query(db, "visits", site.subject, "--on",
                                              site.d0.isoformat())}
        assert on_d0["D0"]["done_on"] == site.d0.isoformat()
        assert on_d0["D1"]["status"] == "upcoming"
        assert query(db, "ae", "windows", site.subject, "--on", site.d0.isoformat())[
            "windows"][0]["days_left"] == 28
