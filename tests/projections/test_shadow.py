"""Shadow read models (projections/shadow.py): `projections rebuild --shadow` folds the log
under the code installed now into `shadow_…` tables while the live ones keep serving reads;
`projections diff` names exactly what a code change alters, per subject and read model;
`projections promote` swaps them in one transaction (a failure half-way leaves the live
tables as they were). A "code change" here is a patched endpoint rule: S-001's SLEDAI-2K
baseline comes out as 99."""

from __future__ import annotations

import io
import json
from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy import inspect, select

from events.engine import create_store_engine
from events.store import EventStore
from projections import shadow, subject_rows
from projections import tables as t
from projections.runner import Runner
from projections.subject_rows import Rows, SubjectContext
from projections.views import open_view
from tests.support.clock import FakeClock
from tests.support.study import COORDINATOR, Desk, new_study, on_day, through_infusion
from workflow.commands import messages as M
from workflow.errors import RuleViolation

START = date(2025, 1, 6)
ORIGINAL = subject_rows.endpoint_rows


def changed_rule(ctx: SubjectContext) -> Rows:
    """The "new code": S-001's baseline SLEDAI-2K is 99, everything else as before."""
    rows = ORIGINAL(ctx)
    if ctx.state.subject == "S-001":
        result = json.loads(json.dumps(rows["rm_endpoints"][0]["result"]))
        result["sledai2k"]["baseline"] = 99
        rows = {"rm_endpoints": [{**rows["rm_endpoints"][0], "result": result}]}
    return rows


def baselines(desk: Desk) -> dict[str, Any]:
    view = open_view(desk.executor.app.engine, desk.store)
    return {r["subject"]: r["result"]["sledai2k"]["baseline"] for r in view.rows(t.endpoints)}


@pytest.fixture
def desk(db_url: str) -> Desk:
    clock = FakeClock()
    desk = new_study(db_url, clock)
    through_infusion(desk, "S-001", START, clock)
    through_infusion(desk, "S-002", START + timedelta(days=1), clock)
    Runner(desk.executor.app.engine, desk.store).catch_up()
    return desk


def test_shadow_build_diff_and_promote(desk: Desk, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = desk.executor.app.engine
    before = baselines(desk)
    assert before["S-001"] != 99
    monkeypatch.setattr(subject_rows, "endpoint_rows", changed_rule)  # the new code
    built = shadow.build(engine, desk.store)
    assert built.subjects == 2
    assert baselines(desk) == before  # the live tables keep serving reads
    on_day(desk.clock, START + timedelta(days=40))  # an event after the shadow build
    desk.send(COORDINATOR, M.RecordForm("S-002", "vitals", ("weight_kg=57",), None))
    found = shadow.diff(engine, desk.store)
    assert found["head"] == desk.store.last_position()
    assert found["subjects"] == ["S-001"] and found["differences"] == 1
    (entry,) = found["by_table"]
    assert (entry["projection"], entry["table"], entry["added"], entry["removed"]) == (
        "endpoints", "rm_endpoints", [], [])
    (change,) = entry["changed"]
    assert (change["key"], change["column"]) == ({"subject": "S-001"}, "result")
    assert change["after"]["sledai2k"]["baseline"] == 99
    assert change["before"]["sledai2k"]["baseline"] == before["S-001"]
    shadow.promote(engine, desk.store)
    assert baselines(desk) == {**before, "S-001": 99}
    names = set(inspect(engine).get_table_names())
    assert not {n for n in names if n.startswith(shadow.PREFIX)}
    assert {"ix_rm_adverse_events_subject"} <= {
        i["name"] for i in inspect(engine).get_indexes("rm_adverse_events")}
    statuses = {s["name"]: s["state"] for s in Runner(engine, desk.store).status()}
    assert set(statuses.values()) == {"ok"}
    with pytest.raises(RuleViolation) as caught:
        shadow.diff(engine, desk.store)
    assert caught.value.rule == "no_shadow_build"


def test_a_promote_failing_half_way_changes_nothing(desk: Desk,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    engine = desk.executor.app.engine
    before = baselines(desk)
    monkeypatch.setattr(subject_rows, "endpoint_rows", changed_rule)
    shadow.build(engine, desk.store)
    swapped: list[str] = []
    original = shadow._swap

    def failing(conn: Any, live: Any, copy: Any) -> None:
        if len(swapped) == 3:
            raise RuntimeError("the disk is full")
        original(conn, live, copy)
        swapped.append(live.name)

    monkeypatch.setattr(shadow, "_swap", failing)
    with pytest.raises(RuntimeError):
        shadow.promote(engine, desk.store)
    assert len(swapped) == 3
    assert baselines(desk) == before
    assert shadow.diff(engine, desk.store)["subjects"] == ["S-001"]  # the shadow is still there


def test_cli_shadow_commands(desk: Desk, monkeypatch: pytest.MonkeyPatch) -> None:
    from cli.app import run

    url = desk.executor.app.engine.url.render_as_string(hide_password=False)

    def call(*argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        status = run(["--db", url, *argv], stdout=out, stderr=err, environ={})
        return status, out.getvalue(), err.getvalue()

    status, _, err = call("projections", "diff")
    assert status == 1 and "rebuild --shadow" in err
    status, _, err = call("projections", "rebuild", "visits", "--shadow")
    assert status == 2 and "give no NAME" in err
    monkeypatch.setattr(subject_rows, "endpoint_rows", changed_rule)
    status, out, _ = call("projections", "rebuild", "--shadow")
    assert status == 0 and "into the shadow tables" in out
    status, out, _ = call("projections", "diff")
    assert status == 0 and "1 difference(s) over 1 subject(s)" in out and "S-001" in out
    status, out, _ = call("--json", "projections", "diff")
    assert json.loads(out)["subjects"] == ["S-001"]
    status, out, _ = call("projections", "promote")
    assert status == 0 and "are live" in out
    engine = create_store_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(select(t.endpoints.c.subject, t.endpoints.c.result)).all()
    assert {r.subject: r.result["sledai2k"]["baseline"] for r in rows}["S-001"] == 99
    Runner(engine, EventStore(engine)).catch_up()  # the promoted tables catch up as before
    engine.dispose()
