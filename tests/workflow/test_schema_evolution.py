"""LymphodepletionGiven changed shape (schema version 2, workflow/upcasters.py). Events the old
code recorded (tests/fixtures/events/lymphodepletion_v1.jsonl, stored rows loaded as they
are) still replay, project, verify and export, through the upcaster.

The strongest check is a comparison: the fixture's history recorded again by today's code
(`record_story`, same clock and command ids, so only the five dose events and the hashes
differ) must fold, project and export to exactly what the stored v1 log gives.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from events.chain import verify
from events.envelope import RecordedEvent, event_hash
from events.errors import IntegrityFailure
from events.schema import upgrade
from events.store import EventStore
from events.upcasting import UnknownSchemaVersion
from projections.exports import take_snapshot
from projections.exports.csv_export import build_csv
from projections.exports.fhir import build_fhir
from projections.exports.odm import build_odm
from projections.runner import Runner
from projections.tables import deviations as deviations_table
from projections.views import memory_view, open_view
from tests.exports.support import ODM_NS, cli
from tests.fixtures.events import Row, dump_rows, load_rows, read_rows
from tests.fixtures.events.story import DEVIATION_REASON, finish_s002, open_story, record_story
from tests.projections.support import memory_snapshot, snapshot
from workflow import event_types as T
from workflow.bootstrap import build_app
from workflow.subject import SubjectState, fold_subject
from workflow.upcasters import lymphodepletion_v1_to_v2

SUBJECTS = ("S-001", "S-002")
DOSE_POSITIONS = (28, 29, 30, 56, 57)  # the LymphodepletionGiven rows of the fixture
OFF_DOSE = 29  # S-001 D-4: fludarabine 50 mg instead of 40.5 mg, a recorded deviation
V1_KEYS = {"given_on", "regimen_day", "bsa_m2", "fludarabine_mg", "cyclophosphamide_mg",
           "expected_mg", "deviation", "protocol_version"}


def _database(path: Path, rows: list[Row]) -> str:
    url = f"sqlite:///{path}"
    app = build_app(url)
    upgrade(app.engine)
    load_rows(app.engine, rows)
    app.engine.dispose()
    return url


@pytest.fixture(scope="module")
def v1_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("v1") / "trialflow.db"
    _database(path, read_rows())
    return path


@pytest.fixture(scope="module")
def v2_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same history recorded by today's code."""
    path = tmp_path_factory.mktemp("v2") / "trialflow.db"
    story = record_story(f"sqlite:///{path}")
    story.flow.store.engine.dispose()
    return path


@pytest.fixture
def v1(v1_file: Path) -> Iterator[EventStore]:
    """The fixture's database, read only by the tests that take it."""
    store = build_app(f"sqlite:///{v1_file}").store
    yield store
    store.engine.dispose()


@pytest.fixture
def v2(v2_file: Path) -> Iterator[EventStore]:
    store = build_app(f"sqlite:///{v2_file}").store
    yield store
    store.engine.dispose()


def _copy(source: Path, tmp_path: Path, name: str) -> str:
    target = tmp_path / name
    shutil.copyfile(source, target)
    return f"sqlite:///{target}"


def _doses(store: EventStore) -> list[RecordedEvent]:
    return [e for e in store.read_all() if e.type == T.LYMPHODEPLETION_GIVEN]


# --- the fixture ---------------------------------------------------------------------------


def test_the_fixture_holds_v1_payloads_stored_as_they_were(v1: EventStore) -> None:
    rows = read_rows()
    assert dump_rows(v1.engine) == rows  # loaded byte for byte, positions and hashes kept
    doses = [row for row in rows if row["type"] == T.LYMPHODEPLETION_GIVEN]
    assert [row["position"] for row in doses] == list(DOSE_POSITIONS)
    for row in doses:
        assert row["schema_version"] == 1
        assert set(json.loads(row["payload"])) == V1_KEYS
    assert {row["schema_version"] for row in rows} == {1}


def test_today_the_same_commands_write_version_2(v2: EventStore) -> None:
    for event in _doses(v2):
        assert event.schema_version == 2
        assert json.loads(event.payload_text) == event.payload  # stored as it is read
        assert "doses" in event.payload and "fludarabine_mg" not in event.payload


def test_the_upcaster_gives_what_today_s_code_writes(v1: EventStore, v2: EventStore) -> None:
    old, new = _doses(v1), _doses(v2)
    assert [e.position for e in old] == [e.position for e in new] == list(DOSE_POSITIONS)
    for before, after in zip(old, new, strict=True):
        stored = json.loads(before.payload_text)
        assert lymphodepletion_v1_to_v2(stored) == before.payload == after.payload
        assert stored == json.loads(before.payload_text)  # the upcaster left its input alone
        assert before.schema_version == 1  # the envelope keeps the stored version


# --- verify --------------------------------------------------------------------------------


def test_audit_verify_hashes_the_stored_bytes(v1: EventStore) -> None:
    result = verify(v1)
    assert (result.events, result.position) == (57, 57)
    for event in _doses(v1):
        assert event.payload["doses"]  # upcast when read ...
        assert event.computed_hash() == event.hash  # ... hashed as stored
        assert event_hash(event.envelope()) == event.hash
        assert json.loads(event.envelope()["payload"]) == json.loads(event.payload_text)


def test_audit_verify_cli_passes_on_the_v1_log(v1_file: Path) -> None:
    status, out, err = cli(f"sqlite:///{v1_file}", "--json", "audit", "verify")
    assert status == 0, err
    assert json.loads(out)["events"] == 57


def test_the_audit_trail_shows_an_old_event_as_stored_and_as_read(v1_file: Path) -> None:
    status, out, err = cli(f"sqlite:///{v1_file}", "--json", "audit", "log", "S-001")
    assert status == 0, err
    entries = {e["position"]: e for e in json.loads(out)["events"]}
    dose = entries[OFF_DOSE]
    assert dose["schema_version"] == 1 and set(dose["payload"]) == V1_KEYS
    assert dose["payload"]["fludarabine_mg"] == 50.0
    assert "doses" in dose["payload_read_as"] and "fludarabine_mg" not in dose["payload_read_as"]
    assert all("payload_read_as" not in e for p, e in entries.items() if p not in DOSE_POSITIONS)


def _edited(row: Row, **payload: Any) -> Row:
    stored = json.loads(row["payload"])
    stored.update(payload)
    return {**row, "payload": json.dumps(stored, sort_keys=True, separators=(",", ":"))}


def test_an_edited_old_payload_is_detected(tmp_path: Path) -> None:
    # someone hides the deviation: fludarabine 50 mg rewritten to the expected 40.5 mg
    rows = [(_edited(row, fludarabine_mg=40.5, deviation=False) if row["position"] == OFF_DOSE
             else row) for row in read_rows()]
    url = _database(tmp_path / "edited.db", rows)
    with pytest.raises(IntegrityFailure, match=r"stream S-001 version 21 .*position 29"):
        verify(build_app(url).store)
    status, out, _ = cli(url, "--json", "audit", "verify")
    assert status == 4
    assert json.loads(out)["detail"] == {"stream": "S-001", "version": 21}


def test_an_old_payload_rewritten_in_the_new_shape_is_detected(tmp_path: Path) -> None:
    """Migrating stored rows in place would break the chain: only upcasting on read keeps it."""
    rows = read_rows()
    target = next(row for row in rows if row["position"] == DOSE_POSITIONS[0])
    upcast = lymphodepletion_v1_to_v2(json.loads(target["payload"]))
    target["payload"] = json.dumps(upcast, sort_keys=True, separators=(",", ":"))
    target["schema_version"] = 2
    url = _database(tmp_path / "migrated.db", rows)
    with pytest.raises(IntegrityFailure, match="stream S-001 version 20 "):
        verify(build_app(url).store)


# --- replay --------------------------------------------------------------------------------


def _fold(store: EventStore, subject: str, up_to: int | None = None) -> SubjectState:
    return fold_subject(subject, store.read_stream(subject, up_to_position=up_to))


def test_old_doses_replay_in_the_new_shape(v1: EventStore) -> None:
    s1, s2 = _fold(v1, "S-001"), _fold(v1, "S-002")
    assert (s1.phase, s1.infused_on) == ("follow_up", date(2025, 2, 5))
    assert s1.lymphodepletion_days == [date(2025, 1, 31), date(2025, 2, 1), date(2025, 2, 2)]
    off = s1.doses[1]
    assert (off.position, off.reason) == (OFF_DOSE, DEVIATION_REASON)
    assert off.payload["doses"]["fludarabine"] == {
        "given": {"value": 50.0, "unit": "mg"}, "expected": {"value": 40.5, "unit": "mg"}}
    assert off.payload["bsa"] == {"value": 1.62, "unit": "m2"}
    assert s1.doses[2].payload["doses"]["cyclophosphamide"]["given"] == {
        "value": 1620.0, "unit": "mg"}
    assert (s2.phase, len(s2.doses)) == ("lymphodepletion", 2)


def test_replay_equals_today_s_recording(v1: EventStore, v2: EventStore) -> None:
    for subject in SUBJECTS:
        assert _fold(v1, subject) == _fold(v2, subject)
        for position in (27, 28, OFF_DOSE, 30, 55, 56):  # as of any point of the log
            assert _fold(v1, subject, position) == _fold(v2, subject, position)


def test_status_and_deviations_of_the_v1_log(v1_file: Path, v2_file: Path) -> None:
    now = "2025-02-20T00:00:00Z"
    for argv in (("status", "S-001"), ("status", "S-002"), ("status",), ("deviations",),
                 ("visits", "S-001")):
        old = cli(f"sqlite:///{v1_file}", "--json", *argv, "--now", now)
        new = cli(f"sqlite:///{v2_file}", "--json", *argv, "--now", now)
        assert old[0] == 0, old[2]
        assert old[1] == new[1], argv
    _, out, _ = cli(f"sqlite:///{v1_file}", "--json", "deviations")
    [deviation] = json.loads(out)
    assert (deviation["kind"], deviation["position"]) == ("dose_off_regimen", OFF_DOSE)
    assert "fludarabine 50 mg against the expected 40.5 mg" in deviation["detail"]


# --- project -------------------------------------------------------------------------------


def test_projections_of_the_v1_log(tmp_path: Path, v1_file: Path, v2: EventStore) -> None:
    store = build_app(_copy(v1_file, tmp_path, "v1.db")).store
    runner = Runner(store.engine, store)
    runner.catch_up()
    tables = snapshot(open_view(store.engine, store))
    assert tables == memory_snapshot(store) == memory_snapshot(v2)
    runner.rebuild()
    assert snapshot(open_view(store.engine, store)) == tables
    [row] = [json.loads(text) for text in tables["rm_deviations"]]  # canonical JSON rows
    assert (row["subject"], row["position"], row["kind"]) == ("S-001", OFF_DOSE,
                                                              "dose_off_regimen")
    assert "fludarabine 50 mg against the expected 40.5 mg" in row["detail"]
    phases = {r["subject"]: r["phase"] for r in map(json.loads, tables["rm_subjects"])}
    assert phases == {"S-001": "follow_up", "S-002": "lymphodepletion"}


def test_as_of_views_of_the_v1_log(v1: EventStore, v2: EventStore) -> None:
    before = memory_view(v1, OFF_DOSE - 1)
    after = memory_view(v1, OFF_DOSE)
    assert before.rows(deviations_table) == []
    assert [r["position"] for r in after.rows(deviations_table)] == [OFF_DOSE]
    for position in (OFF_DOSE, 31, 57):
        assert memory_snapshot(v1, position) == memory_snapshot(v2, position)


# --- export --------------------------------------------------------------------------------


def test_exports_of_the_v1_log_equal_today_s(v1: EventStore, v2: EventStore) -> None:
    old, new = take_snapshot(v1), take_snapshot(v2)
    assert build_odm(old) == build_odm(new)
    assert build_fhir(old) == build_fhir(new)
    old_csv, new_csv = build_csv(old), build_csv(new)
    assert old_csv.keys() == new_csv.keys()
    for name in old_csv:
        if name not in ("events.csv", "SHA256SUMS"):  # these carry the stored rows
            assert old_csv[name] == new_csv[name], name


def test_exports_carry_the_upcast_values(v1: EventStore) -> None:
    snapshot_ = take_snapshot(v1)
    csv_files = build_csv(snapshot_)
    lines = csv_files["lymphodepletion.csv"].decode().splitlines()
    assert lines[0].endswith("given_on,fludarabine_mg,cyclophosphamide_mg,corrected,voided")
    assert "S-001,29,LYMPHODEPLETION,,2025-02-01,2025-02-01,50.0,0.0,no,no" in lines
    assert "S-001,30,LYMPHODEPLETION,,2025-02-02,2025-02-02,40.5,1620.0,no,no" in lines
    # the log's own export keeps each row as stored: v1 text, schema_version 1
    [row] = [r for r in csv.DictReader(io.StringIO(csv_files["events.csv"].decode()))
             if r["position"] == str(OFF_DOSE)]
    stored = next(e for e in v1.read_all() if e.position == OFF_DOSE)
    assert (row["schema_version"], row["payload"]) == ("1", stored.payload_text)

    document = etree.fromstring(build_odm(snapshot_))
    ns = {"odm": ODM_NS}
    form = document.find(".//odm:SubjectData[@SubjectKey='S-001']//odm:FormData"
                         f"[@FormRepeatKey='{OFF_DOSE}']", ns)
    assert form is not None
    values = {item.get("ItemOID"): item.get("Value")
              for item in form.findall(".//odm:ItemData", ns)}
    assert {oid.rsplit(".", 1)[-1]: value for oid, value in values.items()} == {
        "given_on": "2025-02-01", "fludarabine_mg": "50.0", "cyclophosphamide_mg": "0.0"}

    bundle = json.loads(build_fhir(snapshot_))
    [s001] = [entry["resource"] for entry in bundle["entry"]
              if entry["resource"]["resourceType"] == "ResearchSubject"
              and entry["resource"]["identifier"][0]["value"] == "S-001"]
    # FHIR carries no doses; the phase the three v1 doses ended is there, to the day
    [phase] = [p for p in s001["progress"] if p["subjectState"]["text"] == "lymphodepletion"]
    assert (phase["startDate"], phase["endDate"]) == ("2025-01-26", "2025-02-02")


# --- a log of both versions --------------------------------------------------------------


def test_a_stream_of_v1_then_v2_doses(tmp_path: Path, v1_file: Path, v2_file: Path) -> None:
    """S-002 had two doses recorded by the old code; today's code records the third and the
    infusion into the same stream. Everything agrees with the history recorded today."""
    mixed = open_story(_copy(v1_file, tmp_path, "mixed.db"), seed="after the upgrade")
    pure = open_story(_copy(v2_file, tmp_path, "pure.db"), seed="after the upgrade")
    runner = Runner(mixed.flow.store.engine, mixed.flow.store)
    runner.catch_up()  # projected before the new events: then caught up incrementally
    finish_s002(mixed)
    finish_s002(pure)
    store = mixed.flow.store
    versions = [(e.position, e.schema_version) for e in store.read_stream("S-002")
                if e.type == T.LYMPHODEPLETION_GIVEN]
    assert versions == [(56, 1), (57, 1), (58, 2)]
    state = _fold(store, "S-002")
    assert (state.phase, len(state.doses), state.infused_on) == ("follow_up", 3,
                                                                 date(2025, 3, 15))
    assert _fold(store, "S-002") == _fold(pure.flow.store, "S-002")
    assert verify(store).events == 61
    runner.catch_up()
    tables = snapshot(open_view(store.engine, store))
    assert tables == memory_snapshot(store) == memory_snapshot(pure.flow.store)
    old, new = take_snapshot(store), take_snapshot(pure.flow.store)
    assert build_odm(old) == build_odm(new)
    assert build_fhir(old) == build_fhir(new)
    assert build_csv(old)["lymphodepletion.csv"] == build_csv(new)["lymphodepletion.csv"]
    for flow in (mixed.flow, pure.flow):
        flow.store.engine.dispose()


# --- a version this code does not know ---------------------------------------------------


def test_a_future_version_is_refused_on_read_but_verifies(tmp_path: Path) -> None:
    rows = read_rows()
    last = rows[-1]  # S-002 version 21
    future = {**last, "position": last["position"] + 1, "version": last["version"] + 1,
              "schema_version": 3, "payload": '{"given_on":"2025-03-12","shape":"v3"}',
              "command_id": "f" * 36, "correlation_id": "f" * 36, "prev_hash": last["hash"]}
    future["hash"] = event_hash(future)
    url = _database(tmp_path / "future.db", [*rows, future])
    store = build_app(url).store
    assert verify(store).events == 58  # the stored bytes are intact
    with pytest.raises(UnknownSchemaVersion, match=(
            r"position 58 \(stream S-002 version 22\): LymphodepletionGiven schema version 3 "
            r"is not one this trialflow reads \(versions 1 to 2\)")):
        _fold(store, "S-002")
    status, out, _ = cli(url, "--json", "status", "S-002", "--now", "2025-03-13T00:00:00Z")
    assert status == 4
    assert "schema version 3" in json.loads(out)["error"]
    assert _fold(store, "S-001").phase == "follow_up"  # other streams read on
