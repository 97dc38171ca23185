"""Shared fixtures: a fresh SQLite file or PostgreSQL database per test; and the order in which
the test files run, longest first."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.pg import drop_spares, fresh_database


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'trialflow.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Both backends: tests using this run once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'trialflow.db'}"
    else:
        with fresh_database() as url:
            yield url


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """Each test starts with structlog's defaults (the CLI configures it per run)."""
    import structlog

    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


# --- the order of the test files ---------------------------------------------------------------
#
# `make test` hands whole files to its workers (`--dist loadfile`), in the order collected. Run
# in the order of the directory tree, a long file met near the end keeps one worker busy while
# the other has nothing left to do; so the files run longest first (each file's tests keep
# their order). A file's cost is its seconds in the last run that ran it (pytest's cache,
# .pytest_cache, kept per file), else its seconds below (measured with 2 workers; the files
# not named take less than 4 s), else a fiftieth of a second per test.

DECLARED_SECONDS = {
    "tests/reliability/test_pg_credentials.py": 28,
    "tests/reliability/test_database_faults.py": 25,
    "tests/reliability/test_bad_input.py": 24,
    "tests/reliability/test_crash_safety.py": 20,
    "tests/demo/test_demo.py": 19,
    "tests/cli/test_query_commands.py": 18,
    "tests/cli/test_monitoring_cli.py": 18,
    "tests/reports/test_report_plots.py": 17,
    "tests/cli/test_audit_trail.py": 17,
    "tests/workflow/test_executor.py": 15,
    "tests/reliability/test_load.py": 15,
    "tests/contract/test_store_postgres.py": 13,
    "tests/workflow/test_mending.py": 12,
    "tests/cli/test_opening_errors.py": 11,
    "tests/reliability/test_read_only.py": 11,
    "tests/reports/test_report_data.py": 11,
    "tests/scheduler/test_kinds.py": 10,
    "tests/cli/test_identity.py": 10,
    "tests/reliability/test_lock_timeout.py": 10,
    "tests/cli/test_tamper_evidence.py": 9,
    "tests/projections/test_runner.py": 9,
    "tests/demo/test_demo_variants.py": 8,
    "tests/demo/test_readme_tour.py": 8,
    "tests/workflow/test_adverse_event_rules.py": 8,
    "tests/scheduler/test_exactly_once.py": 8,
    "tests/cli/test_progress.py": 8,
    "tests/scheduler/test_delivery.py": 7,
    "tests/cli/test_cli_contract.py": 6,
    "tests/workflow/test_form_places.py": 6,
    "tests/projections/test_calendar.py": 5,
    "tests/scheduler/test_credentials.py": 5,
    "tests/cli/test_todo.py": 4,
}
CACHE_KEY = "trialflow/file-seconds"
_session_seconds: defaultdict[str, float] = defaultdict(float)


def _file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def _recorded(config: pytest.Config) -> dict[str, float]:
    """The seconds of the last runs: read once, by the process that starts the run, and given
    to the xdist workers (so that they sort alike even if another run writes the cache)."""
    given = getattr(config, "workerinput", {}).get(CACHE_KEY)
    if given is not None:
        return dict(given)
    cache = getattr(config, "cache", None)
    found = cache.get(CACHE_KEY, {}) if cache is not None else {}
    return {k: float(v) for k, v in found.items() if isinstance(v, int | float)} \
        if isinstance(found, dict) else {}


def pytest_configure(config: pytest.Config) -> None:
    # xdist sorts the files by their number of tests unless told not to: keep our order.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False
    if not hasattr(config, "workerinput"):
        config.stash[_recorded_key] = _recorded(config)


_recorded_key = pytest.StashKey[dict[str, float]]()


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: object) -> None:  # xdist: a worker is about to start
    config = node.config  # type: ignore[attr-defined]
    node.workerinput[CACHE_KEY] = config.stash.get(_recorded_key, {})  # type: ignore[attr-defined]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    recorded = _recorded(config)
    counts: dict[str, int] = defaultdict(int)
    for item in items:
        counts[_file_of(item.nodeid)] += 1
    order = {name: i for i, name in enumerate(counts)}  # dicts keep the collection order

    def cost(name: str) -> float:
        return recorded.get(name, DECLARED_SECONDS.get(name, 0.02 * counts[name]))

    items.sort(key=lambda item: (-cost(_file_of(item.nodeid)), order[_file_of(item.nodeid)]))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Each file's seconds (setup, call and teardown of its tests), added up where the reports
    arrive (the xdist controller, or the only process)."""
    _session_seconds[_file_of(report.nodeid)] += report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Record each file's seconds after a whole run (`make test`, or pytest without arguments
    and without selecting tests): a few tests of a file say little about the whole file."""
    drop_spares()  # the PostgreSQL databases this process kept for reuse (tests/support/pg.py)
    config = session.config
    cache = getattr(config, "cache", None)
    if cache is None or hasattr(config, "workerinput") or not _session_seconds:
        return
    whole = (config.args_source == pytest.Config.ArgsSource.TESTPATHS
             and not config.option.keyword and not config.option.markexpr.replace(
                 "not soak", "").strip() and not getattr(config.option, "deselect", None)
             and not getattr(config.option, "lf", False) and not session.shouldstop
             and not session.shouldfail)
    if whole:
        recorded = dict(config.stash.get(_recorded_key, {}))
        recorded.update({name: round(seconds, 1) for name, seconds in _session_seconds.items()})
        cache.set(CACHE_KEY, recorded)
