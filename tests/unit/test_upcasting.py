"""The upcaster registry (events/upcasting.py), the read view of RecordedEvent, NewEvent's
schema version, and workflow's registrations (workflow/upcasters.py)."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

import pytest

from events.envelope import NewEvent, RecordedEvent, canonical_json, event_hash
from events.errors import IntegrityFailure
from events.upcasting import REGISTRY, UnknownSchemaVersion, Upcasters
from workflow import event_types as T
from workflow.upcasters import (
    CURRENT_VERSIONS,
    lymphodepletion_payload,
    lymphodepletion_v1_to_v2,
    register_upcasters,
)

V1_DOSE = {"given_on": "2025-02-01", "regimen_day": -4, "bsa_m2": 1.62,
           "fludarabine_mg": 50.0, "cyclophosphamide_mg": 0.0,
           "expected_mg": {"fludarabine": 40.5, "cyclophosphamide": 0.0},
           "deviation": True, "protocol_version": 2}
V2_DOSE = {"given_on": "2025-02-01", "regimen_day": -4, "bsa": {"value": 1.62, "unit": "m2"},
           "doses": {"fludarabine": {"given": {"value": 50.0, "unit": "mg"},
                                     "expected": {"value": 40.5, "unit": "mg"}},
                     "cyclophosphamide": {"given": {"value": 0.0, "unit": "mg"},
                                          "expected": {"value": 0.0, "unit": "mg"}}},
           "deviation": True, "protocol_version": 2}


def _rename(old: str, new: str) -> Any:
    def step(payload: Mapping[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in payload.items() if k != old}
        out[new] = payload[old]
        return out
    return step


def three_versions() -> Upcasters:
    """`Weighed`: v1 {"kg"} -> v2 {"mass_kg"} -> v3 {"mass": {"value", "unit"}}."""
    registry = Upcasters()
    registry.declare("Weighed", 3)
    registry.register("Weighed", 1, _rename("kg", "mass_kg"))
    registry.register("Weighed", 2, lambda p: {"mass": {"value": p["mass_kg"], "unit": "kg"}})
    registry.check()
    return registry


def recorded(kind: str, schema_version: int, payload: Mapping[str, Any] | str) -> RecordedEvent:
    text = payload if isinstance(payload, str) else canonical_json(payload)
    fields: dict[str, Any] = {
        "position": 7, "stream_id": "S-001", "version": 3, "type": kind,
        "schema_version": schema_version, "payload": text,
        "occurred_at": "2025-02-01T00:00:00+08:00", "recorded_at": "2025-02-01T04:00:00.000000Z",
        "actor": "cora", "role": "coordinator", "site": "PKU3", "reason": None,
        "command_id": "c", "correlation_id": "c", "causation_id": None, "prev_hash": "0" * 64}
    fields["hash"] = event_hash(fields)
    return RecordedEvent(**{("payload_text" if k == "payload" else k): v
                            for k, v in fields.items()})


# --- the registry --------------------------------------------------------------------------


def test_steps_chain_to_the_current_version() -> None:
    registry = three_versions()
    assert registry.current_version("Weighed") == 3
    assert registry.upcast("Weighed", 1, {"kg": 58}) == {"mass": {"value": 58, "unit": "kg"}}
    assert registry.upcast("Weighed", 2, {"mass_kg": 58}) == {
        "mass": {"value": 58, "unit": "kg"}}


def test_a_current_or_undeclared_payload_is_returned_as_it_is() -> None:
    registry = three_versions()
    current = {"mass": {"value": 58, "unit": "kg"}}
    assert registry.upcast("Weighed", 3, current) is current
    other = {"anything": 1}
    assert registry.upcast("Unknown", 9, other) is other
    assert registry.current_version("Unknown") == 1


def test_a_future_version_is_refused_with_a_clear_integrity_error() -> None:
    registry = three_versions()
    with pytest.raises(UnknownSchemaVersion) as refused:
        registry.upcast("Weighed", 4, {}, where="Event at position 9 (stream S-001 version 2)",
                        stream_id="S-001", version=2)
    assert isinstance(refused.value, IntegrityFailure)  # exit 4 in the CLI
    assert str(refused.value) == (
        "Event at position 9 (stream S-001 version 2): Weighed schema version 4 is not one "
        "this trialflow reads (versions 1 to 3); the event is stored as it was, read it with "
        "the trialflow version that wrote it or a later one.")
    assert (refused.value.stream_id, refused.value.version) == ("S-001", 2)
    with pytest.raises(UnknownSchemaVersion, match="schema version 0 is not one"):
        registry.upcast("Weighed", 0, {})


def test_a_missing_step_is_found_by_check_and_refused_on_read() -> None:
    registry = Upcasters()
    registry.declare("Weighed", 3)
    registry.register("Weighed", 2, lambda p: dict(p))
    with pytest.raises(ValueError, match=r"Weighed .* has no upcaster from version 1"):
        registry.check()
    with pytest.raises(UnknownSchemaVersion, match="no upcaster from schema version 1 to 2"):
        registry.upcast("Weighed", 1, {})


@pytest.mark.parametrize(("action", "message"), [
    (lambda r: r.register("Weighed", 1, lambda p: dict(p)), "already has an upcaster"),
    (lambda r: r.register("Weighed", 3, lambda p: dict(p)), "declare it at 4"),
    (lambda r: r.register("Weighed", 0, lambda p: dict(p)), "no schema version 0"),
    (lambda r: r.declare("Weighed", 2), "already declared at schema version 3"),
    (lambda r: r.declare("Other", 0), "positive integer"),
])
def test_inconsistent_registrations_are_refused(action: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        action(three_versions())


def test_an_upcaster_past_the_declared_version_is_refused() -> None:
    registry = Upcasters()
    registry.register("Weighed", 1, lambda p: dict(p))  # reaches version 2 ...
    with pytest.raises(ValueError, match="reaches schema version 2"):
        registry.declare("Weighed", 1)  # ... but the type says 1 is current


def test_registering_the_same_upcaster_again_is_a_no_op() -> None:
    registry = Upcasters()
    step = _rename("a", "b")
    registry.register("T", 1, step)
    registry.register("T", 1, step)
    registry.declare("T", 2)
    registry.declare("T", 2)
    assert registry.upcast("T", 1, {"a": 1}) == {"b": 1}


def test_upcasting_is_pure() -> None:
    registry = three_versions()
    stored = {"kg": 58}
    first = registry.upcast("Weighed", 1, stored)
    again = registry.upcast("Weighed", 1, stored)
    assert stored == {"kg": 58}  # the stored payload is not touched
    assert first == again and first is not again
    v1 = copy.deepcopy(V1_DOSE)
    assert lymphodepletion_v1_to_v2(v1) == lymphodepletion_v1_to_v2(v1) == V2_DOSE
    assert v1 == V1_DOSE


# --- workflow's registrations --------------------------------------------------------------


def test_every_workflow_event_type_is_declared() -> None:
    names = {value for name, value in vars(T).items() if name.isupper() and isinstance(value, str)}
    assert set(REGISTRY.current_versions) >= names
    for name in names:
        assert REGISTRY.current_version(name) == CURRENT_VERSIONS.get(name, 1)
    assert REGISTRY.current_version(T.LYMPHODEPLETION_GIVEN) == 2
    REGISTRY.check()


def test_workflow_registrations_into_a_fresh_registry() -> None:
    registry = Upcasters()
    register_upcasters(registry)
    assert registry.upcast(T.LYMPHODEPLETION_GIVEN, 1, dict(V1_DOSE)) == V2_DOSE
    with pytest.raises(UnknownSchemaVersion):
        registry.upcast(T.FORM_RECORDED, 2, {})


def test_lymphodepletion_v1_to_v2_equals_what_the_command_builds() -> None:
    built = lymphodepletion_payload(
        given_on="2025-02-01", regimen_day=-4, bsa_m2=1.62,
        given={"fludarabine": 50.0, "cyclophosphamide": 0.0},
        expected={"fludarabine": 40.5, "cyclophosphamide": 0.0}, deviation=True,
        protocol_version=2)
    assert built == V2_DOSE == lymphodepletion_v1_to_v2(V1_DOSE)


def test_lymphodepletion_v1_edge_cases() -> None:
    # a drug given outside the regimen has no expected amount; a regimen drug without a dose
    # key was given 0 mg; a payload without a BSA has none; unknown keys are kept
    v1 = {"given_on": "2025-02-01", "fludarabine_mg": 40.5, "expected_mg": {
        "fludarabine": 40.5, "bendamustine": 90.0}, "note": "kept"}
    assert lymphodepletion_v1_to_v2(v1) == {
        "given_on": "2025-02-01", "note": "kept", "bsa": None, "doses": {
            "fludarabine": {"given": {"value": 40.5, "unit": "mg"},
                            "expected": {"value": 40.5, "unit": "mg"}},
            "bendamustine": {"given": {"value": 0.0, "unit": "mg"},
                             "expected": {"value": 90.0, "unit": "mg"}}}}
    v1 = {"given_on": "2025-02-01", "fludarabine_mg": 40.5, "cyclophosphamide_mg": 500.0,
          "expected_mg": {"fludarabine": 40.5}, "bsa_m2": 1.62}
    doses = lymphodepletion_v1_to_v2(v1)["doses"]
    assert doses["cyclophosphamide"] == {"given": {"value": 500.0, "unit": "mg"},
                                         "expected": None}


# --- RecordedEvent.payload and NewEvent ----------------------------------------------------


def test_payload_is_upcast_while_the_stored_text_and_hash_stay() -> None:
    event = recorded(T.LYMPHODEPLETION_GIVEN, 1, V1_DOSE)
    text = event.payload_text
    assert event.payload == V2_DOSE
    assert event.payload is event.payload  # decoded and upcast once
    assert event.payload_text == text and json.loads(text) == V1_DOSE
    assert event.schema_version == 1
    assert event.computed_hash() == event.hash  # the hash covers the stored text


def test_a_current_or_undeclared_payload_is_read_as_stored() -> None:
    assert recorded(T.LYMPHODEPLETION_GIVEN, 2, V2_DOSE).payload == V2_DOSE
    assert recorded("NotClinical", 5, {"x": 1}).payload == {"x": 1}


def test_reading_a_future_version_fails_but_the_event_still_verifies() -> None:
    event = recorded(T.LYMPHODEPLETION_GIVEN, 3, {"new": "shape"})
    assert event.computed_hash() == event.hash
    with pytest.raises(UnknownSchemaVersion, match=(
            r"^Event at position 7 \(stream S-001 version 3\): LymphodepletionGiven schema "
            r"version 3 is not one")):
        _ = event.payload


def test_new_events_take_their_type_s_current_version() -> None:
    assert NewEvent(T.LYMPHODEPLETION_GIVEN, V2_DOSE).schema_version == 2
    assert NewEvent(T.FORM_RECORDED, {}).schema_version == 1
    assert NewEvent("NotClinical", {}).schema_version == 1
    assert NewEvent("NotClinical", {}, schema_version=4).schema_version == 4
    assert NewEvent(T.LYMPHODEPLETION_GIVEN, V2_DOSE, schema_version=2).schema_version == 2


def test_an_old_shape_is_never_written() -> None:
    with pytest.raises(ValueError, match="LymphodepletionGiven payloads are written at schema "
                                         "version 2, not 1"):
        NewEvent(T.LYMPHODEPLETION_GIVEN, V1_DOSE, schema_version=1)
