"""Property: for random valid histories, incremental catch-up equals rebuild equals the as-of
fold at the last position, and the as-of fold at any position p equals a rebuild of the first
p events."""

from __future__ import annotations

import tempfile
from datetime import date
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projections.runner import Runner
from projections.views import open_view
from tests.projections.support import lifecycle, memory_snapshot, snapshot, table_snapshot
from tests.support.clock import FakeClock
from tests.support.study import new_study

STEPS = 16  # steps of one subject's lifecycle (tests/projections/support.py)


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[int], list[bool], list[int], list[float]]:
    """(the subject of each step in order, catch up after it?, visit shifts, as-of points)."""
    lengths = [draw(st.integers(0, STEPS)) for _ in range(3)]
    steps = [i for i, n in enumerate(lengths) for _ in range(n)]
    order = draw(st.permutations(steps))
    # a subject's own steps stay in order: the k-th occurrence of i is its k-th step
    catch = draw(st.lists(st.booleans(), min_size=len(order), max_size=len(order)))
    shifts = draw(st.lists(st.integers(-2, 2), min_size=3, max_size=3))
    points = draw(st.lists(st.floats(0.05, 1.0), min_size=2, max_size=2))
    return list(order), catch, shifts, points


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories())
def test_catch_up_rebuild_and_as_of_agree(history: tuple[list[int], list[bool], list[int],
                                                         list[float]]) -> None:
    order, catch, shifts, points = history
    with tempfile.TemporaryDirectory() as directory:
        url = f"sqlite:///{Path(directory) / 'trialflow.db'}"
        clock = FakeClock("2025-01-01T04:00:00+00:00")
        flow = new_study(url, clock)
        runner = Runner(flow.store.engine, flow.store)
        plans = [lifecycle(flow, clock, f"S-00{i + 1}", date(2025, 1, 6 + 9 * i), shifts)
                 for i in range(3)]
        done = [0, 0, 0]
        for subject, catch_up in zip(order, catch, strict=True):
            plans[subject][done[subject]]()
            done[subject] += 1
            if catch_up:
                runner.catch_up()
        runner.catch_up()
        incremental = snapshot(open_view(flow.store.engine, flow.store))
        assert incremental == memory_snapshot(flow.store)
        runner.rebuild()
        assert snapshot(open_view(flow.store.engine, flow.store)) == incremental
        head = flow.store.last_position()
        for point in points:
            position = max(1, int(head * point))
            runner.rebuild(up_to=position)
            tables = table_snapshot(flow.store, position)
            assert tables == memory_snapshot(flow.store, position)
        flow.store.engine.dispose()
