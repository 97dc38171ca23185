"""Forms where they belong (issue 15): which forms may be recorded in which phases and visits
is protocol data (`[forms]`); a form outside its place is refused (rule `form_not_in_phase`,
exit 1) naming the subject and its phase, the form, the phase of its clinical date (and the
visit) and where it belongs. The place is judged on the form's clinical date, so late entry of
screening data is ordinary work. On SQLite and PostgreSQL, through the one executor."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

import pytest

from tests.support.auth import run_cli
from tests.support.clock import FakeClock
from tests.support.study import (
    ADMIN,
    COORDINATOR,
    INVESTIGATOR,
    Desk,
    amend,
    enrol,
    new_study,
    on_day,
    screen_eligible,
    through_infusion,
)
from tests.support.study import (
    refused as refused_by,
)
from workflow.commands import messages as M
from workflow.errors import InvalidInput
from workflow.form_places import phases_on
from workflow.protocol import (
    RECORD_FORMS,
    builtin_protocol,
    builtin_protocol_text,
    load_protocol_text,
)

CONSENT = date(2025, 3, 3)  # enrol(): confirmed on 03-06; through_infusion(): D0 = 04-02
CONFIRMED = CONSENT + timedelta(days=3)
D0 = CONSENT + timedelta(days=30)


@pytest.fixture
def desk(db_url: str) -> tuple[Desk, FakeClock]:
    clock = FakeClock(datetime(2025, 3, 3, 4, tzinfo=UTC))
    return new_study(db_url, clock), clock


def refused(flow: Desk, message: M.Message, *words: str) -> str:
    """The message is refused with rule form_not_in_phase, its sentence holds `words`, and
    nothing is written."""
    return str(refused_by(flow, COORDINATOR, message, "form_not_in_phase", *words))


def record(subject: str, form: str, *tokens: str, on: date | None = None,
           visit: str | None = None) -> M.RecordForm:
    return M.RecordForm(subject, form, tokens, on, visit)


def test_follow_up_forms_are_refused_in_screening(desk: tuple[Desk, FakeClock]) -> None:
    """The issue's two cases: a persistence sample and the D90 disease activity of a subject
    who is still in screening."""
    flow, clock = desk
    screen_eligible(flow, "S-001", CONSENT, clock=clock)
    sentence = refused(flow, record("S-001", "cart_persistence", "copies_per_ug=120"),
                       "Subject S-001 (phase screening)", "cart_persistence",
                       "dated 2025-03-03 falls in screening",
                       "belongs in follow_up, at any follow-up visit")
    assert sentence.count(".") == 1 and sentence.endswith(".")  # one sentence
    refused(flow, record("S-001", "disease_activity", "arthritis", "pga=1", visit="D90"),
            "Subject S-001 (phase screening)", "disease_activity of visit D90",
            "falls in screening", "the forms of a visit are dated in follow_up",
            "belongs in screening, cell_collection, lymphodepletion or follow_up")
    refused(flow, record("S-001", "labs", "egfr_ml_min=90", visit="D1"),
            "labs of visit D1", "falls in screening")
    flow.send(COORDINATOR, record("S-001", "disease_activity", "arthritis", "pga=1"))
    flow.send(COORDINATOR, record("S-001", "labs", "egfr_ml_min=90"))  # screening labs


def test_the_cli_refuses_with_exit_1_and_the_rule(desk: tuple[Desk, FakeClock],
                                                  db_url: str) -> None:
    flow, clock = desk
    screen_eligible(flow, "S-001", CONSENT, clock=clock)
    before = flow.store.last_position()
    out = io.StringIO()
    status = run_cli(["--db", db_url, "--user", COORDINATOR, "--json", "record", "S-001",
                      "disease_activity", "arthritis", "--visit", "D90", "--on",
                      CONSENT.isoformat()], stdout=out, stderr=io.StringIO())
    body = json.loads(out.getvalue())
    assert status == 1, body
    assert body["rule"] == "form_not_in_phase"
    assert "disease_activity of visit D90" in body["error"]
    assert flow.store.last_position() == before


def test_a_visit_takes_the_forms_the_protocol_places_at_it(
        desk: tuple[Desk, FakeClock]) -> None:
    flow, clock = desk
    d0 = through_infusion(flow, "S-001", CONSENT, clock)
    day = d0 + timedelta(days=90)
    on_day(clock, day)
    for form, tokens in (("disease_activity", ("arthritis", "pga=1")),
                         ("labs", ("upcr_g_per_g=0.4",)),
                         ("cart_persistence", ("copies_per_ug=180",)),
                         ("medication", ("drug=prednisone", "drug_class=glucocorticoid",
                                         "dose_mg_per_day=5", "start_date=2025-06-01"))):
        flow.send(COORDINATOR, record("S-001", form, *tokens, visit="D90"))
    refused(flow, record("S-001", "demographics", "sex=female", visit="D90"),
            "Subject S-001 (phase follow_up)", "demographics is not recorded at visit D90",
            "protocol version 2", "belongs in screening, at no follow-up visit")
    refused(flow, record("S-001", "prior_treatment", "drug=rituximab", "drug_class=biologic"),
            "prior_treatment dated 2025-07-01 falls in follow_up", "belongs in screening")
    flow.send(COORDINATOR, record("S-001", "cart_persistence", "copies_per_ug=900"))  # unscheduled
    flow.send(COORDINATOR, record("S-001", "exclusion_checklist",
                                  *(f"{code}=no" for code in builtin_protocol(2)
                                    .exclusion_checklist)))


def test_late_entry_is_judged_on_the_clinical_date(desk: tuple[Desk, FakeClock]) -> None:
    """In cell_collection, screening history dated in screening is late data entry; dated
    today it is out of place. The day of the confirmation belongs to both phases."""
    flow, clock = desk
    enrol(flow, "S-001", CONSENT, clock)
    on_day(clock, CONSENT + timedelta(days=10))
    assert flow.subject("S-001").phase == "cell_collection"
    history = ("drug=azathioprine", "drug_class=immunosuppressant", "outcome=intolerance")
    flow.send(COORDINATOR, record("S-001", "prior_treatment", *history,
                                  on=CONSENT + timedelta(days=1)))
    flow.send(COORDINATOR, record("S-001", "prior_treatment", *history, on=CONFIRMED))
    refused(flow, record("S-001", "prior_treatment", *history),
            "Subject S-001 (phase cell_collection)",
            "prior_treatment dated 2025-03-13 falls in cell_collection",
            "where protocol version 2 does not record it", "belongs in screening")
    refused(flow, record("S-001", "sle_classification", "ana_titer=640",
                         on=CONFIRMED + timedelta(days=1)), "falls in cell_collection")
    flow.send(COORDINATOR, record("S-001", "vitals", "weight_kg=57.5"))  # pre-apheresis weight


def test_the_form_s_own_date_decides_not_the_day_of_entry(
        desk: tuple[Desk, FakeClock]) -> None:
    """A persistence sample drawn before D0 is refused though the subject is in follow-up; a
    disease activity assessment before the first dose is a baseline, after it is not."""
    flow, clock = desk
    d0 = through_infusion(flow, "S-001", CONSENT, clock)
    on_day(clock, d0 + timedelta(days=7))
    refused(flow, record("S-001", "cart_persistence", "copies_per_ug=5",
                         f"sample_date={d0 - timedelta(days=2)}"),
            "Subject S-001 (phase follow_up)", "dated 2025-03-31 falls in infusion")
    flow.send(COORDINATOR, record("S-001", "cart_persistence", "copies_per_ug=5",
                                  f"sample_date={d0}"))  # D0: the infusion's own day
    refused(flow, record("S-001", "disease_activity", "arthritis",
                         on=d0 - timedelta(days=1)), "falls in infusion",
            "belongs in screening, cell_collection, lymphodepletion or follow_up")
    flow.send(COORDINATOR, record("S-001", "disease_activity", "arthritis",
                                  on=d0 - timedelta(days=6)))  # after release, before dosing
    flow.send(COORDINATOR, record("S-001", "cart_persistence", "copies_per_ug=8400",
                                  f"sample_date={d0 + timedelta(days=4)}", visit="D4"))


def test_after_leaving_only_the_safety_forms_are_recorded(
        desk: tuple[Desk, FakeClock]) -> None:
    flow, clock = desk
    enrol(flow, "S-001", CONSENT, clock)
    on_day(clock, CONSENT + timedelta(days=12))
    flow.send(INVESTIGATOR, M.TakeOffStudy("S-001", "consent_withdrawn",
                                           CONSENT + timedelta(days=10)))
    refused(flow, record("S-001", "labs", "egfr_ml_min=88"),
            "Subject S-001 (phase off_study)", "labs dated 2025-03-15 falls in off_study",
            "belongs in screening, cell_collection, lymphodepletion, infusion or follow_up")
    flow.send(COORDINATOR, record("S-001", "labs", "egfr_ml_min=88",
                                  on=CONSENT + timedelta(days=9)))  # before leaving
    outcome = flow.send(COORDINATOR, record(
        "S-001", "adverse_event", "term=headache", "category=other", "grade=1",
        f"onset_date={CONSENT + timedelta(days=11)}"))
    flow.send(INVESTIGATOR, record("S-001", "causality",
                                   f"ae_position={outcome.result.positions[0]}",
                                   "relatedness=not_related"))


def _without_forms_table(version: int) -> str:
    text = builtin_protocol_text(2)
    text = text[:text.index("[forms.demographics]")] + text[text.index("[reminders]"):]
    return text.replace("version = 2\n", f"version = {version}\n", 1)


def test_a_protocol_without_the_table_restricts_no_form(desk: tuple[Desk, FakeClock]) -> None:
    """The texts loaded before the table existed stay in old databases: they load, and place
    no form; a visit's forms are still dated from D0 on."""
    flow, clock = desk
    flow.send(ADMIN, M.LoadProtocol(_without_forms_table(3), "im19_sle_v3.toml"))
    amend(flow, 3)
    screen_eligible(flow, "S-001", CONSENT, clock=clock)
    assert flow.subject("S-001").protocol_version == 3
    flow.send(COORDINATOR, record("S-001", "cart_persistence", "copies_per_ug=1"))
    refused(flow, record("S-001", "disease_activity", "arthritis", visit="D90"),
            "disease_activity of visit D90", "falls in screening", "dated in follow_up")


# --- the table as protocol data -----------------------------------------------------------


def test_the_shipped_versions_place_every_recordable_form() -> None:
    first, second = builtin_protocol(1), builtin_protocol(2)
    assert first.form_places == second.form_places
    assert second.form_places is not None
    assert tuple(place.form for place in second.form_places) == RECORD_FORMS
    persistence = second.form_place("cart_persistence")
    assert persistence is not None and persistence.phases == ("follow_up",)
    assert persistence.every_visit and persistence.visits == second.visit_codes
    demographics = second.form_place("demographics")
    assert demographics is not None
    assert (demographics.phases, demographics.visits) == (("screening",), ())
    adverse_event = second.form_place("adverse_event")
    assert adverse_event is not None and "off_study" in adverse_event.phases
    assert load_protocol_text(_without_forms_table(3), "old.toml").form_places is None


def _in_forms(form: str, old: str, new: str) -> Callable[[str], str]:
    def mutate(text: str) -> str:
        start = text.index(f"[forms.{form}]\n")
        at = text.index(old, start)
        return text[:at] + new + text[at + len(old):]

    return mutate


def _drop_form(form: str) -> Callable[[str], str]:
    def mutate(text: str) -> str:
        start = text.index(f"[forms.{form}]\n")
        end = text.index("\n[", start) + 1
        return text[:start] + text[end:]

    return mutate


BROKEN: list[tuple[str, Callable[[str], str], str, str]] = [
    ("form left out", _drop_form("labs"), "forms.labs", "is missing"),
    ("unknown phase", _in_forms("labs", '"screening"', '"screenig"'),
     "forms.labs.phases", "did you mean screening"),
    ("no phase", _in_forms("labs", 'phases = ["screening", "cell_collection", '
                                   '"lymphodepletion", "infusion", "follow_up"]',
                           "phases = []"),
     "forms.labs.phases", "non-empty list"),
    ("visits neither all nor a list", _in_forms("labs", 'visits = "all"', 'visits = "some"'),
     "forms.labs.visits", 'must be "all" or a non-empty list'),
    ("unscheduled visit", _in_forms("labs", 'visits = "all"', 'visits = ["D5"]'),
     "forms.labs.visits", "not a known scheduled visit code"),
    ("a required form not allowed at its visit",
     _in_forms("cart_persistence", 'visits = "all"', 'visits = ["D180", "D360"]'),
     "forms.cart_persistence.visits", "must allow visit D90"),
    ("unknown form", lambda text: text.replace("[forms.labs]", "[forms.lab]\nphases = "
                                               '["screening"]\n\n[forms.labs]', 1),
     "forms.lab", "did you mean labs"),
    ("phase form", lambda text: text.replace("[forms.labs]", "[forms.infusion]\nphases = "
                                             '["infusion"]\n\n[forms.labs]', 1),
     "forms.infusion", "`trialflow infuse`"),
    ("unknown key", _in_forms("labs", 'visits = "all"', 'visits = "all"\nwindow = 3'),
     "forms.labs.window", "is not a known key"),
]


@pytest.mark.parametrize(("mutate", "key", "problem"),
                         [pytest.param(m, k, p, id=case) for case, m, k, p in BROKEN])
def test_a_broken_forms_table_is_refused_naming_the_key(mutate: Callable[[str], str],
                                                       key: str, problem: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        load_protocol_text(mutate(builtin_protocol_text(2)), "broken.toml")
    message = caught.value.message
    assert message.startswith(f"broken.toml: key {key} "), message
    assert problem in message, message


def test_phases_on_a_date_follow_the_recorded_acts(desk: tuple[Desk, FakeClock]) -> None:
    flow, clock = desk
    d0 = through_infusion(flow, "S-001", CONSENT, clock)
    state, protocol = flow.subject("S-001"), flow.study().protocol
    released, last_dose = CONSENT + timedelta(days=20), d0 - timedelta(days=3)
    expected = {
        CONSENT - timedelta(days=30): ("screening",),  # history before consent
        CONSENT: ("screening",),
        CONFIRMED: ("screening", "cell_collection"),
        released: ("cell_collection", "lymphodepletion"),
        released + timedelta(days=1): ("lymphodepletion",),
        last_dose: ("lymphodepletion", "infusion"),
        d0: ("infusion", "follow_up"),
        d0 + timedelta(days=400): ("follow_up",),
    }
    for day, phases in expected.items():
        assert phases_on(state, protocol, day) == phases, day
