"""Build a study through the real command handlers (no back door into the store)."""

from __future__ import annotations

from datetime import date, datetime, timedelta

from events.schema import upgrade
from tests.support.clock import FakeClock
from workflow.bootstrap import build_app
from workflow.commands import Workflow

SITE, TZ = "PKU3", "Asia/Shanghai"
ADMIN, COORDINATOR, INVESTIGATOR, MONITOR = "ada", "cora", "ivan", "mona"

EXCLUSIONS_NO = [f"{code}=no" for code in (
    "prior_cart_or_gene_therapy", "active_infection", "hbv_hcv_hiv_syphilis", "active_cns_lupus",
    "malignancy_5y", "pregnant_or_lactating", "live_vaccine_4w", "other_trial_3m",
    "severe_organ_dysfunction")]


def on_day(clock: FakeClock, day: date) -> None:
    """Move the clock to noon at the site (UTC+8) on `day`."""
    clock.set(datetime.fromisoformat(f"{day.isoformat()}T04:00:00+00:00"))


def new_study(url: str, clock: FakeClock, *, protocol_version: int = 2) -> Workflow:
    app = build_app(url, clock=clock)
    upgrade(app.engine)
    flow = Workflow(app)
    flow.initialise(ADMIN, protocol_version=protocol_version)
    flow.add_site(ADMIN, SITE, TZ, None)
    flow.add_site(ADMIN, "OTHER", "Europe/Berlin", None)
    flow.add_user(ADMIN, COORDINATOR, "coordinator", SITE, None)
    flow.add_user(ADMIN, INVESTIGATOR, "investigator", SITE, None)
    flow.add_user(ADMIN, MONITOR, "monitor", None, None)
    flow.add_user(ADMIN, "dora", "data_manager", None, None)
    flow.add_user(ADMIN, "audrey", "auditor", None, None)
    flow.add_user(ADMIN, "otto", "coordinator", "OTHER", None)
    return flow


def screening_forms(weight_kg: float = 58) -> list[tuple[str, list[str]]]:
    """Every screening form an eligible woman of childbearing potential needs
    (clinical-rules.md inclusion criteria 1–9), as (form, tokens)."""
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


def screen_eligible(flow: Workflow, subject: str, consent_on: date, *,
                    weight_kg: float = 58, clock: FakeClock | None = None) -> None:
    """Consent and record every screening form an eligible woman of childbearing potential
    needs (clinical-rules.md inclusion criteria 1–9)."""
    on = consent_on
    c = COORDINATOR
    if clock is not None:
        on_day(clock, on)
    flow.consent(c, subject, on, "2.0", None)
    rec = screening_forms(weight_kg)
    for form, tokens in rec:
        flow.record(c, subject, form, tokens, on, None, None)


def enrol(flow: Workflow, subject: str, consent_on: date, clock: FakeClock) -> None:
    screen_eligible(flow, subject, consent_on, clock=clock)
    on_day(clock, consent_on + timedelta(days=3))
    flow.confirm_eligibility(INVESTIGATOR, subject, None)


def through_infusion(flow: Workflow, subject: str, start: date, clock: FakeClock) -> date:
    """Enrol, collect, release, lymphodepletion D-5..D-3 and infuse on D0; returns D0."""
    enrol(flow, subject, start, clock)
    c = COORDINATOR
    coi = f"COI-{subject}"
    on_day(clock, start + timedelta(days=7))
    flow.leukapheresis(c, subject, start + timedelta(days=7), coi, None)
    on_day(clock, start + timedelta(days=20))
    flow.release(c, subject, f"LOT-{subject}", coi, failed=False, reason=None,
                 viable_cells=2e8, command_id=None)
    d0 = start + timedelta(days=30)
    bsa = 1.62  # sqrt(162 * 58 / 3600) = 1.6155 -> 1.62
    for offset, cyclo in ((-5, 0.0), (-4, 0.0), (-3, 1000 * bsa)):
        on_day(clock, d0 + timedelta(days=offset))
        flow.lymphodepletion(c, subject, d0 + timedelta(days=offset), round(25 * bsa, 1),
                             round(cyclo, 1), deviation=False, reason=None, command_id=None)
    order = flow.subject(subject).enrolment_order
    assert order is not None
    cells = flow.study().protocol.cohort_for(order).target_cells(58)
    on_day(clock, d0)
    flow.infuse(c, subject, datetime.fromisoformat(f"{d0.isoformat()}T10:00:00+08:00"), cells,
                coi, deviation=False, reason=None, command_id=None)
    return d0
