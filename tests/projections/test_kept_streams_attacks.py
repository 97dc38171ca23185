"""Attacks on the catch-ups' kept streams and kept study facts (projections/kept_streams.py):
each test tries to make a catch-up write rows that differ from a fold of the whole log, or
fail where it did not before. Each names the guard it covers."""

from __future__ import annotations

import copy
import threading
from datetime import date
from pathlib import Path

from sqlalchemy import select

from events.engine import create_store_engine
from events.store import EventStore
from projections import registry, shadow
from projections.kept_streams import kept_streams
from projections.runner import Runner
from tests.projections.support import lifecycle, memory_snapshot, table_snapshot
from tests.projections.test_kept_streams import _copy, kept_facts
from tests.support.clock import FakeClock
from tests.support.study import ADMIN, COORDINATOR, Desk, amend, new_study, open_desk
from workflow.commands import messages as M
from workflow.subject import fold_subject

START = "2025-01-06T04:00:00+00:00"  # noon in Shanghai, 20:00 the day before in Los Angeles
LA_DAY = date(2025, 1, 5)  # the day in Los Angeles at START


def _desk(url: str, clock: FakeClock) -> Desk:
    """A desk whose recorded times follow `clock` (rows' local dates are then
    deterministic)."""
    return open_desk(url, clock, recorded_by_clock=True)


def _study(url: str) -> tuple[Desk, Runner]:
    clock = FakeClock(START)
    flow = new_study(url, clock, recorded_by_clock=True)
    lifecycle(flow, clock, "S-001", date(2025, 1, 6), [0])[0]()  # consent and screening
    runner = Runner(flow.store.engine, flow.store)
    runner.catch_up()  # from position 0: reads the study stream, keeps no facts
    _vitals(flow, "S-001", date(2025, 1, 6))
    runner.catch_up()  # keeps the facts for the head
    return flow, runner


def _third_site(desk: Desk) -> None:
    """A study event (a new site, Los Angeles) and a subject there: its rows' local dates
    differ from those of a study that does not know the site (UTC)."""
    desk.send(ADMIN, M.AddSite("THIRD", "America/Los_Angeles"))
    desk.add_user("tina", "coordinator", "THIRD")
    desk.send("tina", M.ConsentSubject("S-301", LA_DAY, "2.0"))


def _vitals(desk: Desk, subject: str, day: date, user: str = COORDINATOR) -> None:
    desk.send(user, M.RecordForm(subject, "vitals", ("heart_rate=70",), day))


def _branching(tmp_path: Path) -> tuple[Path, Desk, Runner, Path]:
    """A study on a file, caught up with its facts kept, and an older copy of it saved: the
    file's path, the desk and runner of the live process, the copy's path."""
    path = tmp_path / "trialflow.db"
    flow, runner = _study(f"sqlite:///{path}")
    older = tmp_path / "older.db"
    _copy(path, older)
    return path, flow, runner, older


def _put_back(flow: Desk, older: Path, path: Path) -> Desk:
    """The older copy put back in place under the live process; a fresh desk on it (another
    process writing the other branch)."""
    flow.store.engine.dispose()
    _copy(older, path)
    return _desk(f"sqlite:///{path}", FakeClock(START))


# Guard: KeptStreams.study_for keys the kept Study by the study stream's last event (version
# and hash) at the checkpoint, not by the checkpoint's position: a database put back to an
# older copy whose log then went another way, with a study event, up to the very position the
# facts were kept for (found by this review when the key was the position; then the lost
# branch's facts were used, and S-301's local dates came out in UTC).
def test_study_facts_kept_across_a_log_put_back_to_an_older_copy(tmp_path: Path) -> None:
    path, flow, runner, older = _branching(tmp_path)
    start = flow.store.last_position()
    scratch = tmp_path / "scratch.db"  # the other branch's length, learnt on a copy
    _copy(older, scratch)
    dry = _desk(f"sqlite:///{scratch}", FakeClock(START))
    _third_site(dry)
    length = dry.store.last_position() - start
    dry.store.engine.dispose()
    while flow.store.last_position() < start + length:  # this branch: subject events only
        _vitals(flow, "S-001", date(2025, 1, 6))
    assert flow.store.last_position() == start + length
    runner.catch_up()
    assert kept_facts(flow.store, start + length) is not None  # kept: no THIRD site
    other = _put_back(flow, older, path)
    _third_site(other)  # the other branch, to the very position the facts were kept for
    assert other.store.last_position() == start + length
    runner.catch_up()  # a study event: reads the table (right), keeps nothing
    _vitals(other, "S-301", LA_DAY, user="tina")
    other.store.engine.dispose()
    runner.catch_up()  # no study event since the checkpoint: the lost branch's kept facts
    # have the same position but another study head, so the table is read
    assert table_snapshot(flow.store) == memory_snapshot(flow.store)


# Guard: the hash in KeptStreams.study_for's key, not only the study stream's version: two
# branches whose study streams reach the same version, one adding the site THIRD in Tokyo,
# the other in Los Angeles (after the older copy is put back). A key of the version alone
# would fold S-301 with Tokyo's facts, a day ahead of Los Angeles at START.
def test_study_facts_of_another_branch_at_the_same_study_version(tmp_path: Path) -> None:
    path, flow, runner, older = _branching(tmp_path)
    flow.send(ADMIN, M.AddSite("THIRD", "Asia/Tokyo"))
    flow.add_user("tina", "coordinator", "THIRD")
    runner.catch_up()
    _vitals(flow, "S-001", date(2025, 1, 6))
    runner.catch_up()  # keeps the Tokyo facts
    tokyo = kept_facts(flow.store)
    assert tokyo is not None and tokyo.sites["THIRD"] == "Asia/Tokyo"
    version = flow.study().version
    other = _put_back(flow, older, path)
    _third_site(other)  # THIRD in Los Angeles, tina, and S-301 there
    assert other.study().version == version  # the same study version, another stream
    runner.catch_up()  # study events: the table is read, nothing kept
    _vitals(other, "S-301", LA_DAY, user="tina")
    other.store.engine.dispose()
    runner.catch_up()  # no study event: the kept Tokyo facts must not be used
    assert table_snapshot(flow.store) == memory_snapshot(flow.store)
    kept = kept_facts(flow.store)
    assert kept is not None and kept.sites["THIRD"] == "America/Los_Angeles"


# Guard: the study-head key of KeptStreams.study_for (a second store on the same database moved
# the study checkpoint past a study event; the first store's kept facts are older). Also that
# PerStore keeps one KeptStreams per store object.
def test_two_stores_on_one_database_never_share_stale_facts(db_url: str) -> None:
    flow, runner1 = _study(db_url)
    engine2 = create_store_engine(db_url)
    store2 = EventStore(engine2)
    runner2 = Runner(engine2, store2)
    assert kept_streams(flow.store) is not kept_streams(store2)
    assert kept_facts(flow.store) is not None
    _third_site(flow)
    runner2.catch_up()  # the study event, caught up through the other store
    _vitals(flow, "S-301", LA_DAY, user="tina")
    _vitals(flow, "S-001", date(2025, 1, 6))
    runner1.catch_up()  # its kept facts are for an older position: read again
    assert table_snapshot(flow.store) == memory_snapshot(flow.store)
    _vitals(flow, "S-301", LA_DAY, user="tina")
    runner2.catch_up()  # store2 kept facts with THIRD at the study event's position only
    runner1.catch_up()
    assert table_snapshot(flow.store) == memory_snapshot(flow.store)
    engine2.dispose()


# Guard: fold_onto folds on a copy (copy_subject copies every collection apply_subject
# changes), and no row code changes the SubjectState or Study it is given: a kept stream
# from an earlier catch-up still equals the fold of its own events after later catch-ups
# with a correction and voids, and the kept Study is unchanged by the folds using it.
def test_kept_states_and_facts_are_never_changed_by_later_folds(sqlite_url: str) -> None:
    clock = FakeClock(START)
    flow = new_study(sqlite_url, clock, recorded_by_clock=True)
    runner = Runner(flow.store.engine, flow.store)
    for step in lifecycle(flow, clock, "S-001", date(2025, 1, 6), [0, 2, -1]):
        step()
        runner.catch_up()
    kept = kept_streams(flow.store)
    earlier = kept._streams["S-001"]
    head = flow.store.last_position()
    facts = kept_facts(flow.store, head)
    assert facts is not None
    facts_before = copy.deepcopy(facts)
    state = flow.subject("S-001")
    causality = [f for f in state.forms.values() if f.form == "causality"]
    vitals = [f for f in state.forms.values() if f.form == "vitals"]
    visit = state.visit_records["D14"]
    flow.send(COORDINATOR, M.CorrectRecord("S-001", vitals[0].position, ("height_cm=163",),
                                           "transcription"))
    runner.catch_up()
    flow.send(COORDINATOR, M.VoidRecord("S-001", causality[0].position, "wrong AE"))
    runner.catch_up()
    activity = max(f.position for f in state.forms.values() if f.form == "disease_activity")
    flow.send(COORDINATOR, M.VoidRecord("S-001", activity, "wrong subject"))
    runner.catch_up()
    flow.send(COORDINATOR, M.VoidRecord("S-001", visit.position, "wrong subject"))
    runner.catch_up()
    assert earlier.state == fold_subject("S-001", earlier.events)
    later = kept._streams["S-001"]
    assert later is not earlier and later.state == fold_subject("S-001", later.events)
    assert later.state.visit_records.keys() != earlier.state.visit_records.keys()
    now = kept_facts(flow.store)
    assert now is facts and now == facts_before  # the same kept object, never changed
    assert table_snapshot(flow.store) == memory_snapshot(flow.store)
    runner.rebuild()
    assert table_snapshot(flow.store) == memory_snapshot(flow.store)


# Guard: study_for's exact study head and the catch-up only keeping facts when no study event
# was applied, with rebuild(up_to) moving the checkpoint back below a study event and
# catch_up(up_to) going forward over it; and _onto's "kept beyond the head" re-read.
def test_up_to_back_and_forth_over_a_study_event(sqlite_url: str) -> None:
    flow, runner = _study(sqlite_url)
    before_site = flow.store.last_position()
    _third_site(flow)
    runner.catch_up()
    _vitals(flow, "S-301", LA_DAY, user="tina")
    _vitals(flow, "S-001", date(2025, 1, 6))
    runner.catch_up()
    head = flow.store.last_position()
    for back, forward in ((before_site, head - 1), (before_site - 2, before_site),
                          (before_site, head)):
        runner.rebuild(up_to=back)
        assert table_snapshot(flow.store, back) == (
            memory_snapshot(flow.store, back))
        runner.catch_up(up_to=forward)
        assert table_snapshot(flow.store, forward) == (
            memory_snapshot(flow.store, forward))
    runner.catch_up()
    assert table_snapshot(flow.store) == memory_snapshot(flow.store)


# Guard: KeptStreams' lock and the catch-up transaction's lock (BEGIN IMMEDIATE / FOR
# UPDATE): two threads catching up on one store (two runners, as two queries make) while a
# third writes never lose or misfold an event.
def test_two_threads_catch_up_on_one_store_while_a_writer_appends(db_url: str) -> None:
    flow, runner = _study(db_url)
    other_runner = Runner(flow.store.engine, flow.store)
    errors: list[BaseException] = []
    done = threading.Event()

    def catching_up(r: Runner) -> None:
        try:
            while not done.is_set():
                r.catch_up()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=catching_up, args=(r,)) for r in (runner, other_runner)]
    for thread in threads:
        thread.start()
    try:
        for i in range(6):
            _vitals(flow, "S-001", date(2025, 1, 6))
            if i == 2:
                flow.send(COORDINATOR, M.CorrectRecord(
                    "S-001", flow.store.last_position(), ("heart_rate=72",), "typo"))
    finally:
        done.set()
        for thread in threads:
            thread.join()
    assert errors == []
    runner.catch_up()
    assert table_snapshot(flow.store) == memory_snapshot(flow.store)


# Guard: the driver-level checkpoint SQL (_sqlite_checkpoints, _sqlite_move) quotes the
# table set's own checkpoint table (a shadow build and a catch-up of the shadow tables move
# `shadow_…` checkpoints, never the live ones) and stores what the Core statement stores.
def test_driver_checkpoints_move_the_right_table_set(db_url: str) -> None:
    flow, runner = _study(db_url)
    engine = flow.store.engine
    live_at = flow.store.last_position()
    _vitals(flow, "S-001", date(2025, 1, 6))
    shadow.build(engine, flow.store)
    shadow_set = shadow._shadow_set()
    _vitals(flow, "S-001", date(2025, 1, 6))
    Runner(engine, flow.store, shadow_set).catch_up()
    head = flow.store.last_position()
    with engine.connect() as conn:
        live = {r.name: r for r in conn.execute(select(registry.LIVE.checkpoints)).all()}
        shadowed = {r.name: r for r in conn.execute(select(shadow_set.checkpoints)).all()}
    assert {int(r.position) for r in live.values()} == {live_at}
    assert {int(r.position) for r in shadowed.values()} == {head}
    assert all(isinstance(r.updated_at, str) and r.updated_at.endswith("+00:00")
               for r in shadowed.values())
    runner.catch_up()
    assert [p["lag"] for p in runner.status()] == [0] * len(registry.NAMES)
    assert table_snapshot(flow.store) == memory_snapshot(flow.store)


# Guard: PerStore lets a store's kept state go with the store (weakref.finalize), so a
# process opening stores one after another holds no streams of the stores it let go.
def test_kept_state_goes_with_its_store(sqlite_url: str) -> None:
    import gc

    from projections import kept_streams as module

    flow, _ = _study(sqlite_url)
    store = EventStore(create_store_engine(sqlite_url))
    Runner(store.engine, store).rebuild()
    _vitals(flow, "S-001", date(2025, 1, 6))
    Runner(store.engine, store).catch_up()
    key = id(store)
    assert len(kept_streams(store)) == 1 and key in module._KEPT._values
    store.engine.dispose()
    del store
    gc.collect()
    assert key not in module._KEPT._values



# Guard: Runner.catch_up's `study_ahead`. A catch-up of some projections moves the study's
# checkpoint (and its facts) to the head; a later catch_up(up_to=M) of the others then folds
# their subjects with the study as it was at M (read from the stream), not with the table's
# later facts: here the amendment put in force after M, which would add a re-consent task.
def test_catch_up_to_a_position_behind_the_study_facts(db_url: str) -> None:
    clock = FakeClock(START)
    flow = new_study(db_url, clock, recorded_by_clock=True, protocol_version=1)
    flow.send(COORDINATOR, M.ConsentSubject("S-001", date(2025, 1, 6), "1.0"))
    runner = Runner(flow.store.engine, flow.store)
    runner.catch_up()
    _vitals(flow, "S-001", date(2025, 1, 6))
    before_amendment = flow.store.last_position()
    amend(flow, 2)
    runner.catch_up(names=["subjects"])  # the study's facts now hold version 2 in force
    runner.catch_up(up_to=before_amendment)
    stored = table_snapshot(flow.store, before_amendment)
    tasks = stored["rm_task_inputs"]
    assert tasks and all("reconsent" not in row for row in tasks)
    ahead = {table.name for table in registry.TABLES["subjects"]}  # caught up to the head
    assert {name: rows for name, rows in stored.items() if name not in ahead} == {
        name: rows for name, rows in memory_snapshot(flow.store, before_amendment).items()
        if name not in ahead}
    runner.catch_up()
    tasks = table_snapshot(flow.store)["rm_task_inputs"]
    assert any("reconsent" in row for row in tasks)  # the amendment, once caught up to
    assert table_snapshot(flow.store) == memory_snapshot(flow.store)
