"""Build a study through the one executor, every step sent by a proven user (no back door into
the store or the credentials)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest

from events.schema import upgrade
from events.store import EventStore
from tests.support.clock import FakeClock
from workflow.bootstrap import build_app
from workflow.commands import messages as M
from workflow.commands.actors import Actors
from workflow.commands.executor import Executor, Outcome
from workflow.errors import RuleViolation
from workflow.identity import Kdf, Password, Secret
from workflow.study import Study, load_study
from workflow.subject import SubjectState, load_subject

SITE, TZ = "PKU3", "Asia/Shanghai"
ADMIN, COORDINATOR, INVESTIGATOR, MONITOR = "ada", "cora", "ivan", "mona"
PASSWORD = "correct-horse-battery"  # every test user's
SCHEDULER = "scheduler"
SCHEDULER_SECRET = "test-scheduler-secret-" + "s" * 30  # the service account's (≥ 40)
# Cheap password hashes for tests (each row names its parameters, so the CLI verifies them
# as they were made); the default parameters are tested in tests/workflow/test_executor.py.
TEST_KDF = Kdf(n=16, r=1, p=1)

EXCLUSIONS_NO = [f"{code}=no" for code in (
    "prior_cart_or_gene_therapy", "active_infection", "hbv_hcv_hiv_syphilis", "active_cns_lupus",
    "malignancy_5y", "pregnant_or_lactating", "live_vaccine_4w", "other_trial_3m",
    "severe_organ_dysfunction")]


@dataclass
class Desk:
    """A study under test: the executor, the users acting through it, and reads of the log."""

    actors: Actors
    clock: FakeClock

    @property
    def executor(self) -> Executor:
        return self.actors.executor

    @property
    def store(self) -> EventStore:
        return self.actors.executor.store

    def send(self, user: str, message: M.Message, command_id: str | None = None) -> Outcome:
        return self.actors.send(user, message, command_id)

    def study(self) -> Study:
        return load_study(self.store)

    def subject(self, subject: str) -> SubjectState:
        return load_subject(self.store, subject)

    def add_user(self, name: str, role: str, site: str | None = None) -> None:
        """A person added by the admin, who then sets their own password (PASSWORD)."""
        self.actors.add_user(ADMIN, name, role, site, PASSWORD)


def on_day(clock: FakeClock, day: date) -> None:
    """Move the clock to noon at the site (UTC+8) on `day`."""
    clock.set(datetime.fromisoformat(f"{day.isoformat()}T04:00:00+00:00"))


def open_desk(url: str, clock: FakeClock, *, recorded_by_clock: bool = False) -> Desk:
    """A desk on an existing study made by `new_study` (the same passwords);
    `recorded_by_clock` as there."""
    app = build_app(url, clock=clock, kdf=TEST_KDF,
                    store_clock=clock if recorded_by_clock else None)
    actors = Actors(Executor(app))
    for name in load_study(app.store).users:
        if name == SCHEDULER:
            actors.know(name, SCHEDULER_SECRET, service=True)
        else:
            actors.know(name, PASSWORD)
    return Desk(actors, clock)


PEOPLE = ((COORDINATOR, "coordinator", SITE), (INVESTIGATOR, "investigator", SITE),
          (MONITOR, "monitor", None), ("dora", "data_manager", None), ("audrey", "auditor", None),
          ("otto", "coordinator", "OTHER"))


def new_study(url: str, clock: FakeClock, *, protocol_version: int = 2,
              recorded_by_clock: bool = False,
              people: tuple[tuple[str, str, str | None], ...] = PEOPLE,
              purpose: str = "study") -> Desk:
    """Sites PKU3 (Asia/Shanghai) and OTHER (Europe/Berlin), the admin ada, the scheduler and
    `people`, each of whom set their own password (PASSWORD). `recorded_by_clock`: the
    recorded times follow `clock` too (as-of tests), not the database's clock."""
    app = build_app(url, clock=clock, kdf=TEST_KDF,
                    store_clock=clock if recorded_by_clock else None)
    upgrade(app.engine)
    desk = Desk(Actors(Executor(app)), clock)
    desk.executor.execute(M.InitialiseStudy(ADMIN, Secret(PASSWORD), Secret(SCHEDULER_SECRET),
                                            protocol_version, purpose),
                          Password(ADMIN, Secret(PASSWORD)))
    desk.actors.know(ADMIN, PASSWORD)
    desk.actors.know(SCHEDULER, SCHEDULER_SECRET, service=True)
    desk.send(ADMIN, M.AddSite(SITE, TZ))
    if any(site == "OTHER" for _, _, site in people):
        desk.send(ADMIN, M.AddSite("OTHER", "Europe/Berlin"))
    for name, role, site in people:
        desk.add_user(name, role, site)
    return desk


def scheduler_secret_file(folder: Path) -> Path:
    """A file holding the test scheduler's secret (for `--secret-file`)."""
    path = folder / "scheduler.secret"
    if not path.exists():
        path.write_text(SCHEDULER_SECRET + "\n", encoding="utf-8")
    return path


def screening_forms(weight_kg: float = 58) -> list[tuple[str, list[str]]]:
    """Every screening form an eligible woman of childbearing potential needs
    (docs/clinical-rules.md inclusion criteria 1–9), as (form, tokens)."""
    return [
        ("demographics", ["date_of_birth=1990-05-01", "sex=female",
                          "childbearing_potential=yes", "partner_childbearing_potential=no"]),
        ("vitals", [f"weight_kg={weight_kg}", "height_cm=162"]),
        ("sle_classification", ["ana_titer=320", "joint_involvement", "anti_dsdna_or_anti_smith",
                                "low_c3_and_low_c4"]),
        ("disease_activity", ["arthritis", "proteinuria", "low_complement",
                              "increased_dna_binding", "pga=2", "new_activity=yes"]),
        ("prior_treatment", ["drug=prednisone", "drug_class=glucocorticoid",
                             "start_date=2019-01-01", "outcome=inadequate_response"]),
        ("prior_treatment", ["drug=mycophenolate mofetil", "drug_class=immunosuppressant",
                             "start_date=2020-01-01", "stop_date=2022-01-01",
                             "outcome=inadequate_response"]),
        ("prior_treatment", ["drug=rituximab", "drug_class=biologic", "start_date=2022-02-01",
                             "stop_date=2023-06-01", "outcome=relapse"]),
        ("medication", ["drug=prednisone", "drug_class=glucocorticoid", "dose_mg_per_day=15",
                        "start_date=2024-01-01"]),
        ("medication", ["drug=hydroxychloroquine", "drug_class=antimalarial",
                        "dose_mg_per_day=400", "start_date=2023-01-01"]),
        ("pregnancy_test", ["specimen=serum", "result=negative"]),
        ("contraception", ["agreed=yes"]),
        ("exclusion_checklist", EXCLUSIONS_NO),
    ]


def screen_eligible(flow: Desk, subject: str, consent_on: date, *,
                    weight_kg: float = 58, clock: FakeClock | None = None) -> None:
    """Consent and record every screening form an eligible woman of childbearing potential
    needs (docs/clinical-rules.md inclusion criteria 1–9)."""
    if clock is not None:
        on_day(clock, consent_on)
    flow.send(COORDINATOR, M.ConsentSubject(subject, consent_on, "2.0"))
    for form, tokens in screening_forms(weight_kg):
        flow.send(COORDINATOR, M.RecordForm(subject, form, tuple(tokens), consent_on))


def enrol(flow: Desk, subject: str, consent_on: date, clock: FakeClock) -> None:
    screen_eligible(flow, subject, consent_on, clock=clock)
    on_day(clock, consent_on + timedelta(days=3))
    flow.send(INVESTIGATOR, M.ConfirmEligibility(subject))


def to_lymphodepletion(flow: Desk, subject: str, start: date, clock: FakeClock) -> str:
    """Enrol, collect on day 7 and release on day 20; returns the chain-of-identity id."""
    enrol(flow, subject, start, clock)
    coi = f"COI-{subject}"
    on_day(clock, start + timedelta(days=7))
    flow.send(COORDINATOR, M.RecordLeukapheresis(subject, start + timedelta(days=7), coi))
    on_day(clock, start + timedelta(days=20))
    flow.send(COORDINATOR, M.ReleaseProduct(subject, f"LOT-{subject}", coi, viable_cells=2e8))
    return coi


def through_infusion(flow: Desk, subject: str, start: date, clock: FakeClock) -> date:
    """Enrol, collect, release, lymphodepletion D-5..D-3 and infuse on D0; returns D0."""
    coi = to_lymphodepletion(flow, subject, start, clock)
    d0 = start + timedelta(days=30)
    bsa = 1.62  # sqrt(162 * 58 / 3600) = 1.6155 -> 1.62
    for offset, cyclo in ((-5, 0.0), (-4, 0.0), (-3, 1000 * bsa)):
        on_day(clock, d0 + timedelta(days=offset))
        flow.send(COORDINATOR, M.GiveLymphodepletion(subject, d0 + timedelta(days=offset),
                                                     round(25 * bsa, 1), round(cyclo, 1)))
    order = flow.subject(subject).enrolment_order
    assert order is not None
    cells = flow.study().protocol.cohort_for(order).target_cells(58)
    on_day(clock, d0)
    flow.send(COORDINATOR, M.Infuse(subject, datetime.fromisoformat(
        f"{d0.isoformat()}T10:00:00+08:00"), cells, coi))
    return d0


def amend(flow: Desk, version: int) -> None:
    """The admin previews the amendment and puts it in force with the reviewed digest
    (`protocol preview`, `protocol amend --reviewed`: docs/amendments.md)."""
    from projections.amendment import preview_of

    flow.send(ADMIN, M.AmendProtocol(version, preview_of(flow.store, str(version)).digest))


def refused(flow: Desk, user: str, message: M.Message, rule: str, *words: str
            ) -> RuleViolation:
    """`message` sent by `user` is refused with `rule`, its sentence holds every one of
    `words`, and nothing is written."""
    before = flow.store.last_position()
    with pytest.raises(RuleViolation) as caught:
        flow.send(user, message)
    assert caught.value.rule == rule, caught.value
    for word in words:
        assert word in str(caught.value), (word, str(caught.value))
    assert flow.store.last_position() == before  # nothing written
    return caught.value
