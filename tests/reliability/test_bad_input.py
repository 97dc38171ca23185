"""Bad input: a generated corpus over every CLI command, option, argument and form field.

Every case runs in-process through `cli.app.run` against a copy of one prepared SQLite study
(users with passwords and live session tokens, the scheduler's secret file, subjects in every
phase, an open query). For each case:

- the exit status is documented (0 done, 1 refused by a rule, 2 bad input, 3 retryable,
  4 integrity), never 70 (an internal error: a bug that escaped as an exception) nor 130
  (interrupted), and nothing escapes `run` as an exception;
- neither stream shows a traceback; a failure is one sentence on one line (`Error: …` on
  stderr, or the `error` of the one JSON document `{error, rule, detail}` with `--json`);
- with `--json` stdout is exactly one JSON document, and valid UTF-8 (a script reads bytes);
- unless the status is 0 the log is unchanged (the `events` table's last position and row
  count, and the `commands` table), but for the record of a failed authentication: a refusal
  whose rule is `authentication_failed` or `account_locked` may append `AuthenticationFailed`
  (and `AccountLocked`) to the `study` stream, with their command rows, and nothing else; a 0
  is a valid command, counted in `TALLY`;
- a form value that no field of its kind can take (NaN for a number, a date in year 9999, an
  empty or control-character value, invalid UTF-8, …) is refused.

Three corpora: `test_matrix` (deterministic: every command × every parameter × every value
class), `test_form_fields` (every form field × every value class through `record`) and
`test_corpus` (hypothesis: mixtures of valid skeletons and hostile values, several at a time).
Protocol files and seal files get their own hypothesis tests.

The bugs the corpus found are fixed; each has an explicit regression test at the end of this
module (`test_regression_*`). `KNOWN_BUGS` is where an open one would be named by where it
breaks: the corpus would tolerate exactly that signature (still checking that nothing was
written), with an `xfail(strict=True)` test, so that its fix shows up as XPASS. It is empty.

Profiles: the default is moderate, derandomised and fast (`make test`): the two matrices give
each parameter or field half the hostile classes (alternating), the hypothesis tests a few
examples each. `make soak` (`pytest -m soak`, HYPOTHESIS_PROFILE=soak) runs the
`@pytest.mark.soak` twins: both matrices with every value of every class, and each hypothesis
test with 40 times the examples and fresh randomness. `BAD_INPUT_TALLY=FILE` writes the count
of cases by command, parameter, value class and outcome.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import re
import shutil
import signal
import sqlite3
import tempfile
import traceback
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from cli.app import COMMANDS, cli, run, split_globals
from tests.support.clock import FakeClock
from tests.support.study import (
    ADMIN,
    COORDINATOR,
    INVESTIGATOR,
    MONITOR,
    SCHEDULER,
    SCHEDULER_SECRET,
    TEST_KDF,
    Desk,
    enrol,
    new_study,
    on_day,
    screen_eligible,
    through_infusion,
)
from tests.support.study import PASSWORD as FIRST_PASSWORD
from workflow.commands import messages as M
from workflow.forms import FORMS, FieldSpec, FormSpec, Kind

# --- hypothesis profiles ---------------------------------------------------------------------

settings.register_profile(
    "soak", max_examples=1000, deadline=None, derandomize=False,
    suppress_health_check=list(HealthCheck),
)
SOAK = os.environ.get("HYPOTHESIS_PROFILE") == "soak"
if SOAK:
    settings.load_profile("soak")


def budget(examples: int) -> settings:
    """Moderate and repeatable for CI; 40 times more, freshly random, under the soak profile."""
    if SOAK:
        return soak_budget(examples)
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


def soak_budget(examples: int) -> settings:
    """The `@pytest.mark.soak` twin of a `budget(examples)` test (`make soak` runs only those):
    40 times the examples, freshly random."""
    return settings(max_examples=examples * 40, deadline=None, derandomize=False,
                    suppress_health_check=list(HealthCheck))


# --- the study every case starts from ---------------------------------------------------------

TODAY = datetime.now(UTC).date()
NOW = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
PASSWORD = "Correct-Horse-Battery-9"  # every user's, changed by themselves from new_study's
USERS = (ADMIN, COORDINATOR, INVESTIGATOR, MONITOR, "dora", "audrey", "otto")
LOCKED = "lucy"  # a monitor whose account is locked after failed attempts


def day(days_ago: int) -> str:
    return (TODAY - timedelta(days=days_ago)).isoformat()


@dataclass
class Study:
    root: Path  # the working directory while this module runs; relative paths land here
    template: Path
    head: tuple[int, int, int]  # events: last position, rows; commands: rows
    tokens: dict[str, str]  # user -> live session token (empty without authentication)
    auth: bool
    secret_file: str | None  # the scheduler's secret (None without authentication)
    positions: dict[str, int]  # form -> position of that form recorded for S-001
    query_id: str
    seal: str  # `audit seal` of the template
    protocol_v3: str  # a valid protocol file text with version 3
    cells_s005: str  # the target dose of S-005, for a valid infusion
    counter: Iterator[int] = field(default_factory=itertools.count)
    current: Path | None = None  # the copy in use; replaced after a write


def _counts(path: Path) -> tuple[int, int, int]:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        last, rows = conn.execute(
            "SELECT coalesce(max(position), 0), count(*) FROM events").fetchone()
        commands = conn.execute("SELECT count(*) FROM commands").fetchone()[0]
    return int(last), int(rows), int(commands)


_DISPOSED: weakref.WeakSet[Any] = weakref.WeakSet()


def _dispose_engines() -> None:
    """Close the pooled connections of every engine the CLI built (its pools outlive `run`),
    once: an engine of an earlier case is not used again (disposing all of them at every case
    cost a sixth of the matrices' time as they piled up)."""
    from events import engine as engine_module

    for engine in list(getattr(engine_module, "_ENGINES", ())):
        if engine not in _DISPOSED:
            engine.dispose()
            _DISPOSED.add(engine)


def _to_lymphodepletion(flow: Desk, subject: str, start: date, clock: FakeClock) -> None:
    enrol(flow, subject, start, clock)
    coi = f"COI-{subject}"
    on_day(clock, start + timedelta(days=5))
    flow.send(COORDINATOR, M.RecordLeukapheresis(subject, start + timedelta(days=5), coi))
    on_day(clock, start + timedelta(days=8))
    flow.send(COORDINATOR, M.ReleaseProduct(subject, f"LOT-{subject}", coi, viable_cells=2e8))


def _today(clock: FakeClock) -> None:
    """Noon at the site today, or now if that is later than now: the store refuses a write
    decided ahead of its clock."""
    on_day(clock, TODAY)
    clock.set(min(clock(), datetime.now(UTC)))


def _build(root: Path) -> Study:
    from workflow.bootstrap import build_app
    from workflow.commands.executor import Executor
    from workflow.errors import RuleViolation
    from workflow.identity import Password, Secret
    from workflow.protocol import builtin_protocol_text

    template = root / "template.db"
    url = f"sqlite:///{template}"
    clock = FakeClock(f"{day(100)}T00:00:00+00:00")
    flow = new_study(url, clock)
    through_infusion(flow, "S-001", TODAY - timedelta(days=60), clock)  # follow_up, D0 = -30
    enrol(flow, "S-002", TODAY - timedelta(days=9), clock)  # cell_collection, not collected
    _to_lymphodepletion(flow, "S-004", TODAY - timedelta(days=20), clock)  # lymphodepletion
    _to_lymphodepletion(flow, "S-005", TODAY - timedelta(days=22), clock)
    bsa = 1.62
    for offset, cyclo in ((5, 0.0), (4, 0.0), (3, 1000 * bsa)):  # D-5..D-3: now in infusion
        on_day(clock, TODAY - timedelta(days=offset))
        flow.send(COORDINATOR, M.GiveLymphodepletion(
            "S-005", TODAY - timedelta(days=offset), round(25 * bsa, 1), round(cyclo, 1)))
    enrol(flow, "S-006", TODAY - timedelta(days=12), clock)  # collected, not released
    on_day(clock, TODAY - timedelta(days=2))
    flow.send(COORDINATOR, M.RecordLeukapheresis("S-006", TODAY - timedelta(days=2),
                                                 "COI-S-006"))
    screen_eligible(flow, "S-003", TODAY - timedelta(days=3), clock=clock)  # eligible, screening
    _today(clock)
    flow.send(COORDINATOR, M.RecordForm("S-001", "adverse_event", (
        "term=headache", f"onset_date={day(5)}", "grade=1", "serious_criteria=none"), TODAY))
    flow.send(COORDINATOR, M.RecordForm("S-001", "labs", ("c3_g_l=0.8", "c4_g_l=0.1"), TODAY))
    positions: dict[str, int] = {}
    for event in flow.store.read_stream("S-001"):
        if event.type == "FormRecorded":
            positions[str(event.payload["form"])] = event.position
    query = flow.send(MONITOR, M.OpenQuery("S-001", positions["vitals"], "weight_kg",
                                           "Please confirm the weight."))
    order = flow.subject("S-005").enrolment_order
    assert order is not None
    cells = flow.study().protocol.cohort_for(order).target_cells(58)
    tokens: dict[str, str] = {}
    auth = _has_authentication()
    secret_file: str | None = None
    if auth:  # each user sets a password of their own, and logs in (the real clock's session)
        flow.add_user(LOCKED, "monitor")  # locked out by failed attempts: `users unlock` works
        executor = Executor(build_app(url, kdf=TEST_KDF))
        for user in USERS:
            executor.execute(M.ChangePassword(user, Secret(PASSWORD)),
                             Password(user, Secret(FIRST_PASSWORD)))
            tokens[user] = executor.login(Password(user, Secret(PASSWORD)), 24)[0]
        (root / "scheduler.secret").write_text(SCHEDULER_SECRET + "\n", encoding="utf-8")
        secret_file = str(root / "scheduler.secret")
        for _ in range(flow.study().max_failed_attempts):
            with contextlib.suppress(RuleViolation):
                executor.authenticate(Password(LOCKED, Secret("not-the-password")))
        assert flow.study().account_locked(LOCKED)
    for argv in (["status"], ["projections", "status"]):  # read models caught up once
        assert run(["--db", url, *argv], stdout=io.StringIO(), stderr=io.StringIO(),
                   environ={}) == 0
    out, err = io.StringIO(), io.StringIO()
    from events.seals import generate

    generate(root / "seal.key")
    assert run(["--db", url, "audit", "seal", "--key", str(root / "seal.key")], stdout=out,
               stderr=err, environ={}) == 0, err
    _dispose_engines()
    with contextlib.closing(sqlite3.connect(template)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    text = builtin_protocol_text(2)
    assert "\nversion = 2\n" in text
    return Study(root=root, template=template, head=_counts(template), tokens=tokens,
                 auth=auth, secret_file=secret_file, positions=positions,
                 query_id=str(query.summary["query"]),
                 seal=out.getvalue(), protocol_v3=text.replace("\nversion = 2\n",
                                                               "\nversion = 3\n", 1),
                 cells_s005=repr(float(cells)))


def _has_authentication() -> bool:
    import importlib.util

    return importlib.util.find_spec("cli.auth") is not None


@contextlib.contextmanager
def cheap_password_hashing() -> Iterator[None]:
    """The tests' cheap scrypt parameters (TEST_KDF) for the passwords the CLI hashes while this
    module runs (`build_app`'s default, which `trialflow` uses), and for the work a check of
    an unknown user's password burns: a thousand authenticated cases fit the time budget, and
    the hashing cost is not what this corpus tests. Each stored hash names its parameters, so
    it is verified by them whatever the default."""
    from workflow import bootstrap

    defaults = bootstrap.build_app.__kwdefaults__
    assert defaults is not None and "kdf" in defaults
    saved = defaults["kdf"]
    defaults["kdf"] = TEST_KDF
    try:
        yield
    finally:
        defaults["kdf"] = saved


@contextlib.contextmanager
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory in memory when there is one: every write fsyncs (SQLite synchronous=FULL,
    exports), which on a disk costs more than the rest of a case."""
    memory = Path("/dev/shm")
    if memory.is_dir() and os.access(memory, os.W_OK):
        root = Path(tempfile.mkdtemp(prefix="trialflow-bad-input-", dir=memory))
        try:
            yield root
        finally:
            shutil.rmtree(root, ignore_errors=True)
    else:
        yield tmp_path_factory.mktemp("bad-input")


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Study]:
    with sandbox(tmp_path_factory) as root:
        yield from _study_in(root)


def _study_in(root: Path) -> Iterator[Study]:
    (root / "cases").mkdir()
    previous = Path.cwd()
    with cheap_password_hashing():
        built = _build(root)
        (root / "seal.json").write_text(built.seal, encoding="utf-8")
        (root / "protocol-v3.toml").write_text(built.protocol_v3, encoding="utf-8")
        os.chdir(root)  # every relative path a case names (exports, reports, CSV) stays here
        try:
            yield built
        finally:
            os.chdir(previous)
            _dispose_engines()
            _dump_tally()


# --- hostile values ----------------------------------------------------------------------------


def fs(raw: bytes) -> str:
    """An argv string as Python gets it from bytes that are not UTF-8 (surrogate escapes)."""
    return os.fsdecode(raw)


HOSTILE: dict[str, tuple[str, ...]] = {
    "empty": ("", " ", "\t"),
    "wrong_type": ("abc", "1.5", "0x10", "[1]", "{}", "null", "1,5", "1/2", "one"),
    "huge_number": ("1e308", "-1e308", "9" * 40, "-" + "9" * 40, str(2**63), str(2**64),
                    "99999999999999999999999", "1e309"),
    "nan_inf": ("NaN", "nan", "-nan", "inf", "-inf", "Infinity", "-Infinity", "1e400"),
    "far_date": ("0001-01-01", "1899-12-31", "9999-12-31", "2999-01-01", "10000-01-01",
                 "2024-02-30", "2024-13-01", "0000-00-00", "+002024-01-01", "20240101"),
    "far_time": ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-12:00",
                 "9999-12-31T23:59:59", "0001-01-01T00:00:00", "2024-01-01T25:00:00Z",
                 "1970-01-01T00:00:00Z", "@0", "@-1", "@" + "9" * 30, "@1e3", "@"),
    "unknown_subject": ("S-999", "s-001", "S_001", "X" * 21, "study", "reminders-S-001",
                        "S-001 ", "Q-999"),
    "unknown_user": ("nobody", "ADA", "ada ", "scheduler", "root", "admin"),
    "sql": ("'; DROP TABLE events; --", "\" OR 1=1 --", "' OR '1'='1", "%", "_",
            "Robert'); DELETE FROM events;--"),
    "shell": ("$(rm -rf /)", "`id`", "; ls", "| cat /etc/passwd", "&& echo pwned", "*", "~",
              "$HOME", "${IFS}", "> out.txt", "\\", "'", '"'),
    "invalid_utf8": (fs(b"\xff"), fs(b"S-\xc3\x28"), fs(b"\xed\xa0\x80"), fs(b"caf\xe9"),
                     fs(b"D28\x80")),
    "unicode": ("\u202e", "é", "Ｓ-００１", "\u200b", "\U0001f600", "\ufeff", "A\u0301",
                "１２", "١٢"),
    "control": ("\n", "line1\nline2", "\r", "\x1b[31mred", "\x07", "tab\there"),
    "long": ("A" * 10_000, "9" * 5000),
    "option_like": ("-", "--", "-1", "--bogus", "-x"),
}
CLASSES = tuple(HOSTILE)
# Classes no form field of any kind accepts, and those only a free-text field accepts.
NEVER_A_FIELD_VALUE = frozenset({"empty", "invalid_utf8", "control", "long"})
ONLY_TEXT_TAKES = frozenset({"huge_number", "nan_inf", "far_date", "far_time", "sql", "shell",
                             "unknown_subject", "unknown_user", "option_like", "unicode"})
GLOBAL_NAMES = frozenset({"--db", "--user", "--log-level", "--json", "--password-stdin",
                          "--secret-file", "--version", "--help", "-h"})


def hostile(cls: str, index: int) -> str:
    values = HOSTILE[cls]
    return values[index % len(values)]


# --- the commands: walking click's groups --------------------------------------------------------


def command_paths() -> list[tuple[str, ...]]:
    ctx = click.Context(cli)
    paths: list[tuple[str, ...]] = []

    def walk(path: tuple[str, ...], command: click.Command) -> None:
        if isinstance(command, click.Group):
            sub_ctx = click.Context(command, parent=ctx)
            for name in command.list_commands(sub_ctx):
                sub = command.get_command(sub_ctx, name)
                assert sub is not None, (path, name)
                walk((*path, name), sub)
        else:
            paths.append(path)

    for name in sorted(COMMANDS):
        command = cli.get_command(ctx, name)
        assert command is not None, name
        walk((name,), command)
    return paths


def command_of(path: Sequence[str]) -> click.Command:
    ctx = click.Context(cli)
    command: click.Command | None = cli
    for name in path:
        assert isinstance(command, click.Group)
        command = command.get_command(ctx, name)
        assert command is not None
    return command


def key_of(param: click.Parameter) -> str:
    """Arguments by name, options by their longest spelling (two flags may share a name)."""
    if isinstance(param, click.Option):
        return max(param.opts, key=len)
    return str(param.name)


def is_many(param: click.Parameter) -> bool:
    return isinstance(param, click.Argument) and param.nargs == -1


PATHS = command_paths()
GROUPS = sorted({path[0] for path in PATHS if len(path) > 1})


# --- valid skeletons -------------------------------------------------------------------------

Tokens = Callable[["Study", int], dict[str, Any]]  # nargs values (and the form), by variant


@dataclass(frozen=True)
class Skeleton:
    """A command line the study accepts (or refuses by a rule) when nothing is hostile."""

    user: str | None = None
    values: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    flags: tuple[str, ...] = ()  # flags a valid line carries
    never: tuple[str, ...] = ()  # flags never given (e.g. demo --replace wipes the database)
    passwords: tuple[str, ...] = ()  # stdin lines (with --password-stdin) the command reads
    tokens: Tokens | None = None  # values of nargs=-1 arguments (and `form` for record)


def _valid_field_value(form: FormSpec, spec: FieldSpec) -> str | None:
    """A value `spec` accepts in `form` for S-001 (None: a bare flag)."""
    override = {
        ("medication", "drug"): "prednisone", ("prior_treatment", "drug"): "rituximab",
        ("medication", "drug_class"): "glucocorticoid",
        ("prior_treatment", "drug_class"): "biologic",
        ("causality", "ae_position"): "AE", ("sae_report", "ae_position"): "AE",
        ("visit", "visit"): "D28", ("consent", "consent_form_version"): "2.0",
        ("consent", "site"): "PKU3",
    }.get((form.code, spec.code))
    if override is not None:
        return override
    kind = spec.kind
    if kind is Kind.FLAG:
        return None
    if kind is Kind.DATE:
        return day(1)
    if kind is Kind.DATETIME:
        return f"{day(1)}T10:00:00+08:00"
    if kind in (Kind.DECIMAL, Kind.INTEGER):
        low = spec.minimum or 0
        high = spec.maximum if spec.maximum is not None else low + 10
        number = low + (high - low) / 4 if kind is Kind.DECIMAL else int(low) + 1
        if kind is Kind.INTEGER and number > high:
            number = int(low)
        return repr(float(number)) if kind is Kind.DECIMAL else str(int(number))
    if kind in (Kind.ENUM, Kind.ENUM_LIST):
        return spec.allowed[0]
    if kind is Kind.YES_NO:
        return "no"
    if kind is Kind.TITER:
        return "1:80"
    return "ABC-1" if spec.identifier else "Some text"


def field_token(form: FormSpec, spec: FieldSpec, value: str | None, study: Study) -> str:
    if value == "AE":
        value = str(study.positions["adverse_event"])
    return spec.code if value is None else f"{spec.code}={value}"


def form_tokens(study: Study, form: FormSpec, optional: Sequence[str] = ()) -> list[str]:
    """The required fields, the first of `one_of`, and the `optional` ones, all valid."""
    wanted = [spec.code for spec in form.fields if spec.required]
    if form.one_of and not set(form.one_of) & set(wanted):
        wanted.append(form.one_of[0])
    wanted += [code for code in optional if code not in wanted]
    specs = [spec for spec in form.fields if spec.code in wanted]
    return [field_token(form, spec, _valid_field_value(form, spec), study) for spec in specs]


RECORDABLE = [code for code, form in FORMS.items() if form.command is None]


def _record_tokens(study: Study, variant: int) -> dict[str, Any]:
    form = FORMS[RECORDABLE[variant % len(RECORDABLE)]]
    return {"form": form.code, "fields": form_tokens(study, form)}


def _correct_tokens(study: Study, variant: int) -> dict[str, Any]:
    forms = sorted(study.positions)
    form = FORMS[forms[variant % len(forms)]]
    spec = next(s for s in form.fields if s.kind is not Kind.FLAG)
    return {"position": str(study.positions[form.code]),
            "fields": [field_token(form, spec, _valid_field_value(form, spec), study)]}


def _answer_tokens(study: Study, variant: int) -> dict[str, Any]:
    return {"fields": [] if variant % 2 else ["weight_kg=59"]}


def _dose_tokens(study: Study, variant: int) -> dict[str, Any]:
    return {"doses": ["fludarabine_mg=40.5", "cyclophosphamide_mg=0"]}


def _calc_tokens(study: Study, variant: int) -> dict[str, Any]:
    from workflow.instruments import catalog

    described = catalog.describe_all()
    item = described[variant % len(described)]
    words = []
    for spec in item.get("inputs", []):
        kind = spec.get("type") or spec.get("kind")
        name = str(spec["name"])
        if kind == "flag":
            continue
        value = {"choice": None, "list": None, "date": day(30), "titre": "80",
                 "count": "1e8"}.get(str(kind), "1")
        if kind in ("choice", "list"):
            value = str((spec.get("allowed") or spec.get("choices") or ["none"])[0])
        words.append(f"{name}={value}")
    return {"name": str(item["name"]), "inputs": words}


def skeletons(study: Study) -> dict[tuple[str, ...], Skeleton]:
    vitals = str(study.positions["vitals"])
    moments = {"--on": (day(0),), "--as-of": ("@40", NOW), "--now": (NOW,)}
    read = Skeleton(values={"subject": ("S-001",), **moments})
    report = {"--as-of": ("@40",), "--now": (NOW,)}
    notify = {"--smtp": ("127.0.0.1:1",), "--mail-from": ("trialflow@example.org",),
              "--mail-to": ("site@example.org",), "--webhook": ("http://127.0.0.1:1/hook",)}
    return {
        ("ae", "list"): read,
        ("ae", "windows"): read,
        ("audit", "diff"): Skeleton(values={"first": ("@10",), "second": ("@40", NOW)}),
        ("audit", "log"): Skeleton(values={"stream": ("S-001", "study"), "--as-of": ("@30",),
                                           "--csv": ("trail.csv",), "--after": ("5",)}),
        ("audit", "replay"): Skeleton(values={"--as-of": ("@40", NOW)}),
        ("audit", "keygen"): Skeleton(values={"--out": ("keygen.key",)}),
        ("audit", "seal"): Skeleton(values={"--key": (str(study.root / "seal.key"),)}),
        ("audit", "verify"): Skeleton(values={"--seal": (str(study.root / "seal.json"),),
                                              "--public-key": (
                                                  str(study.root / "seal.key.pub"),),
                                              "--root": (_root_of(study.seal),)}),
        ("calc",): Skeleton(tokens=_calc_tokens),
        ("complete",): Skeleton(COORDINATOR, {"subject": ("S-001",)}),
        ("confirm-eligibility",): Skeleton(INVESTIGATOR, {"subject": ("S-003",)}),
        ("consent",): Skeleton(COORDINATOR, {"subject": ("S-010",), "--on": (day(1),),
                                             "--consent-form-version": ("2.0",),
                                             "--command-id": ("consent-s-010",)}),
        ("correct",): Skeleton(COORDINATOR, {"subject": ("S-001",),
                                             "--reason": ("Transcription error.",)},
                               tokens=_correct_tokens),
        ("demo",): Skeleton(values={"--subjects": ("8",), "--seed": ("7",),
                                    "--start": ("2024-09-02",), "--reports": ("demo-out",)},
                            never=("--replace",)),
        ("deviations",): read,
        ("eligibility",): Skeleton(values={"subject": ("S-003",), **moments}),
        ("endpoints",): read,
        ("export", "csv"): Skeleton("dora", {"--out": ("csv-out",)}),
        ("export", "fhir"): Skeleton("dora", {"--out": ("bundle.json",)}),
        ("export", "ics"): Skeleton("dora", {"subject": ("S-001",), "--out": ("s-001.ics",)}),
        ("export", "odm"): Skeleton("dora", {"--out": ("odm.xml",)}),
        ("forms",): Skeleton(),
        ("infuse",): Skeleton(COORDINATOR, {
            "subject": ("S-005",), "--at": (f"{day(0)}T00:30:00+08:00",),
            "--cells": (study.cells_s005,), "--coi-id": ("COI-S-005",),
            "--reason": ("Per protocol.",)}),
        ("init",): Skeleton(values={"--protocol-version": ("2",), "--admin": ("ada",)},
                            passwords=(PASSWORD,)),
        ("leukapheresis",): Skeleton(COORDINATOR, {"subject": ("S-002",), "--on": (day(1),),
                                                   "--coi-id": ("COI-S-002",)}),
        ("login",): Skeleton(COORDINATOR, {"--hours": ("8",)}, passwords=(PASSWORD,)),
        ("logout",): Skeleton(COORDINATOR),
        ("lymphodepletion",): Skeleton(COORDINATOR, {"subject": ("S-004",), "--on": (day(0),),
                                                     "--reason": ("Per protocol.",)},
                                       tokens=_dose_tokens),
        ("off-study",): Skeleton(COORDINATOR, {"subject": ("S-002",),
                                               "--reason": ("consent_withdrawn",)}),
        ("projections", "rebuild"): Skeleton(values={"name": ("visits",)}),
        ("projections", "status"): Skeleton(),
        ("protocol", "amend"): Skeleton(ADMIN, {"version": ("3",)}),
        ("protocol", "diagram"): Skeleton(),
        ("protocol", "load"): Skeleton(ADMIN, {"file": (str(study.root / "protocol-v3.toml"),)}),
        ("protocol", "show"): Skeleton(),
        ("queries",): Skeleton(values={"subject": ("S-001",)}),
        ("query", "answer"): Skeleton(COORDINATOR, {
            "query_id": (study.query_id,), "--text": ("Checked against the source.",),
            "--reason": ("The source says 59 kg.",)}, tokens=_answer_tokens),
        ("query", "close"): Skeleton(MONITOR, {"query_id": (study.query_id,),
                                               "--reason": ("No longer needed.",)}),
        ("query", "open"): Skeleton(MONITOR, {"subject": ("S-001",), "position": (vitals,),
                                              "--field": ("weight_kg",),
                                              "--text": ("Please confirm the weight.",)}),
        ("reconsent",): Skeleton(COORDINATOR, {"subject": ("S-001",),
                                               "--consent-form-version": ("2.1",),
                                               "--on": (day(0),)}),
        ("record",): Skeleton(COORDINATOR, {"subject": ("S-001",), "--on": (day(0),),
                                            "--visit": ("D28",)}, tokens=_record_tokens),
        ("release",): Skeleton(COORDINATOR, {"subject": ("S-006",), "--lot": ("LOT-S-006",),
                                             "--coi-id": ("COI-S-006",),
                                             "--viable-cells": ("2e8",),
                                             "--reason": ("QC failed.",)}),
        ("reminders",): Skeleton(values={"subject": ("S-001",), "--now": (NOW,), **notify}),
        ("report", "html"): Skeleton(values={"--out": ("page.html",), **report}),
        ("report", "persistence"): Skeleton(values={"--out": ("persistence.svg",), **report}),
        ("report", "sledai"): Skeleton(values={"--out": ("sledai.svg",), **report}),
        ("report", "swimmer"): Skeleton(values={"--out": ("swimmer.svg",), **report}),
        # `scheduler run` never gets a valid line: it would run until a signal (see SAFE_LINE).
        ("scheduler", "run"): Skeleton(values={"--interval": ("0",), **notify}),
        ("scheduler", "tick"): Skeleton("scheduler", {"--now": (NOW,), **notify}),
        ("screen-fail",): Skeleton(COORDINATOR, {"subject": ("S-003",),
                                                 "--reason": ("screening_window_expired",)}),
        ("sdv",): Skeleton(MONITOR, {"subject": ("S-001",), "position": (vitals,)}),
        ("sdv-status",): Skeleton(values={"subject": ("S-001",)}),
        ("sign",): Skeleton(INVESTIGATOR, {"subject": ("S-001",), "position": (vitals,),
                                           "--meaning": ("reviewed",)}, passwords=(PASSWORD,)),
        ("signatures",): Skeleton(values={"subject": ("S-001",)}),
        ("sites", "add"): Skeleton(ADMIN, {"site": ("SITE9",), "--tz": ("Europe/Paris",)}),
        ("sites", "list"): Skeleton(),
        ("status",): read,
        ("study", "lock"): Skeleton("dora", {"--reason": ("Interim analysis.",)}),
        ("study", "unlock"): Skeleton(ADMIN, {"--reason": ("Analysis done.",)}),
        ("users", "add"): Skeleton(ADMIN, {"name": ("newbie",), "--role": ("monitor",),
                                           "--site": ("PKU3",)},
                                   passwords=(PASSWORD, "Fresh-Password-2025")),
        ("users", "deactivate"): Skeleton(ADMIN, {"name": ("otto",)}),
        ("users", "list"): Skeleton(),
        ("users", "passwd"): Skeleton(ADMIN, {"name": ("otto",)},
                                      passwords=(PASSWORD, "Another-Secret-77")),
        ("users", "policy"): Skeleton(ADMIN, {"--max-failed-attempts": ("7",)}),
        ("users", "unlock"): Skeleton(ADMIN, {"name": (LOCKED,),
                                              "--reason": ("She called from the site.",)}),
        ("visit",): Skeleton(COORDINATOR, {"subject": ("S-001",), "visit": ("D28",),
                                           "--on": (day(2),)}, flags=("--done",)),
        ("visits",): Skeleton(values={"subject": ("S-001",), **moments}),
    }


def generic_value(param: click.Parameter) -> str:
    """A plausible value for a parameter no skeleton names (commands added later)."""
    kind = param.type
    if isinstance(kind, click.Choice):
        return str(kind.choices[0])
    if param.name == "subject":
        return "S-001"
    return {"integer": "1", "integer range": "1", "float": "1.0", "DATE": day(0),
            "TIME": NOW}.get(kind.name, "x")


# --- one case: building the line, running it, judging it --------------------------------------


@dataclass
class Case:
    path: tuple[str, ...]
    values: dict[str, Any]  # key -> str | list[str] | True (flag) ; absent keys are omitted
    user: str | None
    json: bool = True
    globals_last: bool = False
    passwords: tuple[str, ...] | None = None  # stdin lines, with --password-stdin
    token: str | None = None  # TRIALFLOW_SESSION
    secret_file: str | None = None  # TRIALFLOW_SECRET_FILE (the scheduler's secret)
    extra: list[str] = field(default_factory=list)
    must_refuse: str | None = None  # why a 0 would be a bug
    db: str | None = None  # another --db than the copy of the study
    strict: bool = False  # known bugs are failures too (the explicit regression tests)
    label: tuple[str, str] = ("skeleton", "valid")  # (parameter, value class) for the tally

    def argv(self) -> list[str]:
        command = command_of(self.path)
        words: list[str] = list(self.path)
        for param in command.params:
            key = key_of(param)
            if key not in self.values or isinstance(param, click.Option):
                continue
            value = self.values[key]
            words += list(value) if isinstance(value, list) else [value]
        for param in command.params:
            key = key_of(param)
            if key not in self.values or not isinstance(param, click.Option):
                continue
            value = self.values[key]
            if value is True:
                words.append(key)
            elif isinstance(value, list):
                for item in value:
                    words += [key, item]
            else:
                words += [key, value]
        words += self.extra
        options: list[str] = []
        if self.user is not None:
            options += ["--user", self.user]
        if self.json:
            options.append("--json")
        if self.passwords is not None:
            options.append("--password-stdin")
        return [*words, *options] if self.globals_last else [*options, *words]


def base_case(study: Study, path: tuple[str, ...], variant: int = 0, *,
              optional: bool = False) -> Case:
    """The skeleton of `path` as a case: required parameters (and with `optional` every
    parameter the skeleton names), the skeleton's user, its token or passwords."""
    skeleton = skeletons(study).get(path, Skeleton())
    command = command_of(path)
    values: dict[str, Any] = {}
    produced = skeleton.tokens(study, variant) if skeleton.tokens else {}
    for param in command.params:
        key = key_of(param)
        if isinstance(param, click.Option) and param.is_flag:
            if key in skeleton.flags:
                values[key] = True
            continue
        if key in produced:
            values[key] = produced[key]
        elif is_many(param):
            continue
        elif key in skeleton.values:
            if param.required or optional or isinstance(param, click.Argument):
                candidates = skeleton.values[key]
                values[key] = candidates[variant % len(candidates)]
        elif param.required:
            values[key] = generic_value(param)
    case = Case(path, values, skeleton.user)
    if skeleton.passwords:
        case.passwords = skeleton.passwords
    elif skeleton.user in study.tokens:
        case.token = study.tokens[skeleton.user]
    elif skeleton.user == SCHEDULER:
        case.secret_file = study.secret_file
    return safe(case)


def safe(case: Case) -> Case:
    """`scheduler run` with a valid line runs until a signal: keep its interval invalid."""
    if case.path == ("scheduler", "run"):
        interval = case.values.get("--interval")
        if not isinstance(interval, str):  # absent (default 60) or a list
            case.values["--interval"] = "0"
            return case
        try:
            number = int(interval)
        except ValueError:
            return case  # click refuses it: the command never starts
        if 1 <= number <= 86400:
            case.values["--interval"] = "0"
    return case


# Commands that change what later cases see without an event (sessions, the read models).
MOVES_STATE = {("login",), ("logout",), ("init",), ("projections", "rebuild"),
               ("users", "passwd"), ("demo",)}


@dataclass
class Result:
    status: int | None
    out: str
    err: str
    error: BaseException | None
    before: tuple[int, int, int]
    after: tuple[int, int, int]
    # what was appended: (stream, type, actor, command id) of each new event, and the number
    # of `commands` rows that name one of those command ids
    appended: list[tuple[str, str, str, str]] = field(default_factory=list)
    appended_commands: int = 0


def _appended(path: Path, head: tuple[int, int, int]) -> tuple[list[tuple[str, str, str, str]],
                                                               int]:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        rows = [tuple(str(v) for v in row) for row in conn.execute(
            "SELECT stream_id, type, actor, command_id FROM events WHERE position > ? "
            "ORDER BY position", (head[0],))]
        ids = sorted({row[3] for row in rows})
        commands = conn.execute(
            f"SELECT count(*) FROM commands WHERE command_id IN ({', '.join('?' * len(ids))})",
            ids).fetchone()[0] if ids else 0
    return rows, int(commands)  # type: ignore[return-value]


class _Timeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """A hanging case fails instead of hanging the suite (e.g. a scheduler that started)."""
    def expire(signum: int, frame: object) -> None:
        raise _Timeout(f"the case ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def execute(study: Study, case: Case) -> Result:
    """Run `case` on the current copy of the study; a copy that was written is replaced."""
    if study.current is None or not study.current.exists():
        study.current = study.root / "cases" / f"{next(study.counter)}.db"
        shutil.copyfile(study.template, study.current)
    db = study.current
    argv = ["--db", case.db if case.db is not None else f"sqlite:///{db}", *case.argv()]
    environ = {"TRIALFLOW_SESSION": case.token} if case.token else {}
    if case.secret_file is not None:
        environ["TRIALFLOW_SECRET_FILE"] = case.secret_file
    stdin = "".join(line + "\n" for line in case.passwords or ())
    out, err = io.StringIO(), io.StringIO()
    status: int | None = None
    error: BaseException | None = None
    try:
        with time_limit(60):
            status = int(run(argv, stdout=out, stderr=err, stdin=io.StringIO(stdin),
                             environ=environ))
    except Exception as caught:  # judged below: a known bug or a failure of the test
        error = caught
    finally:
        _dispose_engines()
    after = _counts(db)
    appended, commands = _appended(db, study.head) if after != study.head else ([], 0)
    if after != study.head or error is not None or (status == 0 and case.path in MOVES_STATE):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        study.current = None
    return Result(status, out.getvalue(), err.getvalue(), error, study.head, after, appended,
                  commands)


# Bugs the corpus tolerates while they are open, by signature: (exception type, file,
# function) of the innermost project frame; one signature for a cause that shows up in many
# places (invalid UTF-8, dates out of range); ("contract", what, how) for a wrong result.
# Each open one needs an xfail(strict=True) test below, so that its fix shows up as XPASS.
SURROGATES = ("UnicodeEncodeError", "*", "surrogates not allowed")
DATE_RANGE = ("OverflowError", "*", "date value out of range")
STDOUT_NOT_UTF8 = ("contract", "--json stdout", "invalid UTF-8 echoed")
CONTROL_ECHOED = ("contract", "message", "control character echoed")
CHOICES_ON_LINES = ("contract", "message", "choices listed on several lines")
NO_SENTENCE_END = ("contract", "message", "file error without a full stop")
KNOWN_BUGS: dict[tuple[str, str, str], str] = {
    # None open: every bug this corpus found is fixed, and has a regression test at the end
    # of this module. A new one is named here by its signature only until it is fixed.
}


def violation(case: Case, sig: tuple[str, str, str], message: str) -> None:
    """A broken contract: tolerated (and counted) when it is a known bug, else a failure."""
    assert sig in KNOWN_BUGS and not case.strict, message
    TALLY[(" ".join(case.path), *case.label, f"known-bug {sig[2]}")] += 1


def _project_frames(error: BaseException) -> list[traceback.FrameSummary]:
    root = str(Path(__file__).resolve().parents[2]) + os.sep
    return [f for f in traceback.extract_tb(error.__traceback__)
            if f.filename.startswith(root) and "/tests/" not in f.filename
            and "/.venv/" not in f.filename]


def where(error: BaseException) -> str:
    """file:line of the innermost project frame."""
    frames = _project_frames(error)
    root = str(Path(__file__).resolve().parents[2]) + os.sep
    return f"{frames[-1].filename[len(root):]}:{frames[-1].lineno}" if frames else "?"


def signature(error: BaseException) -> tuple[str, str, str]:
    if isinstance(error, UnicodeEncodeError) and "surrogates not allowed" in str(error):
        return SURROGATES
    if isinstance(error, OverflowError) and "date value out of range" in str(error):
        return DATE_RANGE
    frames = _project_frames(error)
    root = str(Path(__file__).resolve().parents[2]) + os.sep
    if not frames:
        return (type(error).__name__, "?", "?")
    return (type(error).__name__, frames[-1].filename[len(root):], frames[-1].name)


TALLY: Counter[tuple[str, str, str, str]] = Counter()  # (command, parameter, class, outcome)
LAST_ERROR = [""]  # the error message of the last case judged (empty when it exited 0)


def _dump_tally() -> None:
    target = os.environ.get("BAD_INPUT_TALLY")
    if target:
        rows = [[*key, count] for key, count in sorted(TALLY.items())]
        Path(target).write_text(json.dumps(rows, indent=1), encoding="utf-8")


ONE_SENTENCE_END = re.compile(r"[.!?)`'\"]$")


def message_problem(message: str, rule: str | None) -> str | None:
    text = message.strip()
    if not text:
        return "the message is empty"
    if "\n" in text or "\r" in text:
        return "the message spans several lines"
    if not ONE_SENTENCE_END.search(text) and not (rule and rule in text):
        return "the message does not end a sentence nor name its rule"
    return None


def inputs_of(case: Case) -> list[str]:
    return [*case.argv(), *(case.passwords or ()), case.token or "", case.secret_file or ""]


def echoes_control(case: Case, message: str) -> bool:
    """Whether the only line breaks of `message` are those of an input echoed in it."""
    for word in inputs_of(case):
        if "\n" in word or "\r" in word:
            message = message.replace(word, "")
    return "\n" not in message.strip() and "\r" not in message.strip()


def check_message(case: Case, shown: str, message: str, rule: str | None) -> None:
    problem = message_problem(message, rule)
    if problem is None:
        return
    if problem.endswith("several lines") and "Choose from:\n" in message:
        violation(case, CHOICES_ON_LINES, f"{shown}: {problem}: {message!r}")
    elif problem.endswith("several lines") and echoes_control(case, message):
        violation(case, CONTROL_ECHOED, f"{shown}: {problem}: {message!r}")
    elif problem.endswith("nor name its rule") and message.startswith("Could not open file"):
        violation(case, NO_SENTENCE_END, f"{shown}: {problem}: {message!r}")
    else:
        raise AssertionError(f"{shown}: {problem}: {message!r}")


def judge(study: Study, case: Case, result: Result) -> str:
    """Assert the contract for one case; return the outcome for the tally."""
    command = " ".join(case.path)
    shown = f"{case.argv()!r} (stdin {case.passwords!r}, token {case.token!r})"
    LAST_ERROR[0] = ""
    if result.error is not None:
        sig = signature(result.error)
        trace = "".join(traceback.format_exception(result.error))
        assert sig in KNOWN_BUGS and not case.strict, f"{shown} raised out of run():\n{trace}"
        assert result.after == result.before, f"{shown} crashed AND wrote: {result.after}"
        TALLY[(command, *case.label, f"known-bug {sig[0]} at {where(result.error)}")] += 1
        return "known-bug"
    status = result.status
    # 70 is an internal error (a bug that escaped as an exception), 130 an interruption
    assert status in (0, 1, 2, 3, 4), f"{shown} exited {status}: {result.out}{result.err}"
    assert "Traceback" not in result.out + result.err, f"{shown}:\n{result.out}{result.err}"
    try:
        found, _ = split_globals(["--db", "x", *case.argv()])
        json_mode = bool(found.get("--json"))
    except click.UsageError:
        json_mode = "--json" in case.argv()
    rule: str | None = None  # the refusal's rule, as the JSON document or the message says
    listing = status == 0 and case.path == ("audit", "log") and (
        "--all" in case.values or "--jsonl" in case.values or case.values.get("--csv") == "-")
    if json_mode and not listing:
        try:
            result.out.encode("utf-8")
        except UnicodeEncodeError:
            violation(case, STDOUT_NOT_UTF8, f"{shown}: stdout is not UTF-8: {result.out!r}")
        try:
            document = json.loads(result.out)
        except ValueError as error:
            raise AssertionError(f"{shown}: stdout is not one JSON document: "
                                 f"{result.out[:2000]!r}") from error
        if status != 0:
            assert isinstance(document, dict) and set(document) == {"error", "rule", "detail"}, \
                f"{shown}: {document!r}"
            LAST_ERROR[0] = str(document["error"])
            rule = str(document["rule"])
            check_message(case, shown, str(document["error"]), document["rule"])
    elif status != 0:
        text = "\n".join(line for line in result.err.splitlines() if not line.startswith("{"))
        assert text.startswith("Error: ") or text == "Aborted.", f"{shown}: {result.err!r}"
        LAST_ERROR[0] = text.removeprefix("Error: ")
        rule = authentication_rule(LAST_ERROR[0])
        check_message(case, shown, text.removeprefix("Error: "), None)
    if status != 0:
        if result.after != result.before:  # allowed: the record of a failed authentication
            check_failed_attempt_record(shown, status, rule, result)
    elif case.must_refuse:
        raise AssertionError(f"{shown} was accepted although {case.must_refuse}")
    outcome = "ok" if status == 0 else f"exit {status}"
    recorded = ", failed attempt recorded" if status != 0 and result.after != result.before else ""
    TALLY[(command, *case.label, outcome + recorded)] += 1
    return outcome


# A failed authentication is recorded (by design): the refusal's rule, and the only events
# it may append, to the `study` stream, as the actor `unauthenticated`.
AUTHENTICATION_RULES = frozenset({"authentication_failed", "account_locked"})
AUTHENTICATION_RECORDS = frozenset({"AuthenticationFailed", "AccountLocked"})
AUTHENTICATION_MESSAGES = (  # the rule of a plain-text refusal, by its sentence
    (re.compile(r"User .* could not be authenticated: the user name or the "
                r"(password|session token) is wrong\."), "authentication_failed"),
    (re.compile(r"The account of .* is locked after failed attempts; an admin unlocks it "
                r"with `trialflow users unlock .*`\."), "account_locked"),
)


def authentication_rule(message: str) -> str | None:
    for sentence, rule in AUTHENTICATION_MESSAGES:
        if sentence.fullmatch(message):
            return rule
    return None


def check_failed_attempt_record(shown: str, status: int, rule: str | None,
                                result: Result) -> None:
    """A refusal that wrote: only the record of a failed authentication may be written, and
    only by a refusal of that rule."""
    wrote = f"{shown} exited {status} ({rule}) but wrote: {result.before} -> {result.after}"
    assert rule in AUTHENTICATION_RULES, wrote
    new_events = result.after[0] - result.before[0]
    assert new_events == result.after[1] - result.before[1] == len(result.appended) > 0, wrote
    assert all(stream == "study" and kind in AUTHENTICATION_RECORDS and actor == "unauthenticated"
               for stream, kind, actor, _ in result.appended), f"{wrote}: {result.appended}"
    commands = len({row[3] for row in result.appended})
    assert result.after[2] - result.before[2] == result.appended_commands == commands, (
        f"{wrote}: commands rows")


def check(study: Study, case: Case) -> str:
    note(f"argv: {case.argv()!r}")
    return judge(study, case, execute(study, case))


# --- corpus 1: every command x every parameter x every value class ------------------------------


def parameter_keys(study: Study, path: tuple[str, ...]) -> list[str]:
    """The parameters of `path`, an extra word, and for a command that acts as a user: --user,
    and the stdin passwords, the session token or the secret file it authenticates with."""
    command = command_of(path)
    keys = [key_of(p) for p in command.params if not (isinstance(p, click.Option)
                                                       and p.is_flag)]
    keys.append("extra")
    skeleton = skeletons(study).get(path, Skeleton())
    if skeleton.user is not None or path[0] in ("export", "init", "scheduler"):
        keys.append("--user")
    if skeleton.passwords:
        keys.append("password")
    elif skeleton.user in study.tokens:
        keys.append("token")
    elif skeleton.user == SCHEDULER and study.secret_file is not None:
        keys.append("secret_file")
    return keys


def with_hostile(study: Study, path: tuple[str, ...], key: str, cls: str,
                 index: int) -> Case:
    """The skeleton of `path` with the value of `key` (or a nargs word) from class `cls`."""
    case = base_case(study, path, index)
    value = hostile(cls, index)
    case.label = (key, cls)
    if key == "--user":
        case.user = value
    elif key == "extra":
        case.extra = [value]
    elif key == "password":
        case.passwords = (value, *(case.passwords or ())[1:])
    elif key == "token":
        case.token = value
    elif key == "secret_file":
        case.secret_file = value
    else:
        param = next(p for p in command_of(path).params if key_of(p) == key)
        if is_many(param):
            words = list(case.values.get(key) or [])
            name = words[0].partition("=")[0] if words else ""
            words[:1] = [f"{name}={value}" if name else value]
            case.values[key] = words
        elif isinstance(param, click.Option) and param.multiple:
            case.values[key] = [value]
        else:
            case.values[key] = value
    return safe(case)


def cells(count: int, every: bool) -> Iterator[tuple[int, int, str, int]]:
    """(row, column, class, value index) of a matrix of `count` rows (parameters or fields)
    by the hostile classes. Default: half the classes per row, alternating, so that each
    class meets every other row and each row every other class (all classes when there is
    one row), one value each; `every` (soak): every value of every class in every row."""
    for row in range(count):
        for column, cls in enumerate(CLASSES):
            if every:
                for index in range(len(HOSTILE[cls])):
                    yield row, column, cls, index
            elif count < 2 or (row + column) % 2 == 0:
                yield row, column, cls, row + column


def matrix(study: Study, path: tuple[str, ...], every: bool) -> None:
    keys = parameter_keys(study, path)
    judge(study, base_case(study, path), execute(study, base_case(study, path)))
    for k, _, cls, index in cells(len(keys), every):
        case = with_hostile(study, path, keys[k], cls, index)
        judge(study, case, execute(study, case))


@pytest.mark.parametrize("path", PATHS, ids=" ".join)
def test_matrix(study: Study, path: tuple[str, ...]) -> None:
    """Every parameter of `path` (and --user, an extra word, stdin passwords and the session
    token where the command reads them) with values of half the hostile classes (the other
    half go to its neighbours), the rest of the line valid."""
    matrix(study, path, every=False)


@pytest.mark.soak
@pytest.mark.parametrize("path", PATHS, ids=" ".join)
def test_matrix_every_value(study: Study, path: tuple[str, ...]) -> None:
    """Soak: every parameter of `path` with every value of every hostile class."""
    matrix(study, path, every=True)


def test_every_command_is_walked() -> None:
    assert {path[0] for path in PATHS} == set(COMMANDS)
    assert {"audit", "export", "query", "report", "users"} <= set(GROUPS)
    assert len(PATHS) >= 60


# --- corpus 2: every form field x every value class, through `record` ----------------------------


def field_case(study: Study, form: FormSpec, spec: FieldSpec, value: str | None,
               cls: str) -> Case:
    """`record S-001 FORM` by the investigator (who may record every form), the required
    fields valid and `spec` given `value` (None: its valid value)."""
    case = base_case(study, ("record",))
    case.user, case.token = INVESTIGATOR, study.tokens.get(INVESTIGATOR)
    words = form_tokens(study, form, optional=[spec.code])
    if value is not None:
        words = [f"{spec.code}={value}" if w.partition("=")[0] == spec.code else w
                 for w in words]
    case.values["form"] = form.code
    case.values["fields"] = words
    case.label = (f"{form.code}.{spec.code}", cls)
    if value is not None and (cls in NEVER_A_FIELD_VALUE or (
            cls in ONLY_TEXT_TAKES and spec.kind is not Kind.TEXT
            and not well_formed(spec, value))):
        case.must_refuse = f"{value!r} is no {spec.kind} value for {form.code}.{spec.code}"
    if form.command is not None:
        case.must_refuse = f"{form.code} is recorded by `{form.command}` only"
    return case


# Values of the hostile classes that a non-text kind takes as they are (found by the soak):
# epoch zero is a date and time with an offset after 1900 (the forms' earliest date), and
# 20240101 (a date without dashes) is a whole number, in range or not.
WELL_FORMED_FOR = {"1970-01-01T00:00:00Z": frozenset({Kind.DATETIME}),
                   "20240101": frozenset({Kind.DECIMAL, Kind.INTEGER})}


def well_formed(spec: FieldSpec, value: str) -> bool:
    """Whether `value` is a well-formed value of `spec` (its kind and range), so that only
    the clinical rules, not the input's form, may refuse it."""
    if spec.kind not in WELL_FORMED_FOR.get(value, frozenset()):
        return False
    if spec.kind is Kind.DATETIME:
        return True
    number = float(value)
    low = spec.minimum is None or (number > spec.minimum if spec.above_minimum
                                   else number >= spec.minimum)
    return low and (spec.maximum is None or number <= spec.maximum)


FIELDS = [(form, spec) for form in FORMS.values() for spec in form.fields]


def form_fields(study: Study, form_code: str, every: bool) -> None:
    form = FORMS[form_code]
    accepted: dict[int, bool] = {}
    for k, _, cls, index in cells(len(form.fields), every):
        spec = form.fields[k]
        if k not in accepted:
            baseline = field_case(study, form, spec, None, "valid")
            accepted[k] = judge(study, baseline, execute(study, baseline)) == "ok"
        case = field_case(study, form, spec, hostile(cls, index), cls)
        outcome = judge(study, case, execute(study, case))
        if accepted[k] and case.must_refuse and outcome != "known-bug":
            # the same line with a valid value is accepted: this value is bad input
            assert outcome == "exit 2", (case.argv(), outcome)


@pytest.mark.parametrize("form_code", list(FORMS))
def test_form_fields(study: Study, form_code: str) -> None:
    """Each field of the form with half the hostile classes (alternating from field to
    field); a value no field of its kind takes must be refused (exit 2), whatever else the
    line says."""
    form_fields(study, form_code, every=False)


@pytest.mark.soak
@pytest.mark.parametrize("form_code", list(FORMS))
def test_form_fields_every_value(study: Study, form_code: str) -> None:
    """Soak: each field of the form with every value of every hostile class."""
    form_fields(study, form_code, every=True)


# --- corpus 3 (hypothesis): mixtures, several hostile values at a time --------------------------

HOSTILE_VALUES = st.sampled_from(CLASSES).flatmap(
    lambda cls: st.tuples(st.just(cls), st.sampled_from(HOSTILE[cls])))
ARBITRARY_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=30)


@st.composite
def hostile_value(draw: st.DrawFn) -> tuple[str, str]:
    choice = draw(st.integers(0, 9))
    if choice == 0:
        return "generated_text", draw(ARBITRARY_TEXT)
    if choice == 1:
        raw = draw(st.binary(min_size=1, max_size=12).filter(lambda b: b"\x00" not in b))
        return "invalid_utf8", fs(raw)
    if choice == 2:
        number = draw(st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                                st.integers(-(2**70), 2**70)))
        return "huge_number", repr(number)
    return draw(HOSTILE_VALUES)


@st.composite
def cases(draw: st.DrawFn, study: Study, path: tuple[str, ...]) -> Case:
    skeleton = skeletons(study).get(path, Skeleton())
    variant = draw(st.integers(0, 50))
    case = base_case(study, path, variant, optional=draw(st.booleans()))
    command = command_of(path)
    hostile_keys: list[str] = []
    labels: list[str] = []
    for param in command.params:
        key = key_of(param)
        if isinstance(param, click.Option) and param.is_flag:
            if key in skeleton.never:
                continue
            if draw(st.integers(0, 3)) == 0:
                case.values[key] = True
            continue
        mode = draw(st.sampled_from(["keep", "keep", "keep", "omit", "hostile"]))
        if mode == "omit":
            case.values.pop(key, None)
        elif mode == "hostile":
            cls, value = draw(hostile_value())
            hostile_keys.append(key)
            labels.append(cls)
            if is_many(param):
                words = list(case.values.get(key) or [])
                position = draw(st.integers(0, len(words)))
                if words and position < len(words) and "=" in words[position]:
                    name = words[position].partition("=")[0]
                    words[position] = f"{name}={value}"
                else:
                    words.insert(position, value)
                case.values[key] = words
            elif isinstance(param, click.Option) and param.multiple:
                case.values[key] = [value]
            else:
                case.values[key] = value
    who = draw(st.integers(0, 9))
    if who == 0:
        cls, case.user = draw(hostile_value())
        labels.append(cls)
    elif who == 1:
        case.user = draw(st.sampled_from([*USERS, "scheduler", None]))
    if draw(st.integers(0, 9)) == 0:
        cls, word = draw(hostile_value())
        case.extra = [word]
        labels.append(cls)
    case.json = draw(st.booleans())
    case.globals_last = draw(st.booleans())
    for word in [*case.extra, *(str(v) for v in case.values.values() if isinstance(v, str))]:
        if word.partition("=")[0] in GLOBAL_NAMES:  # would be taken as a global option
            case.extra = []
            case.values = {k: v for k, v in case.values.items()
                           if not (isinstance(v, str) and v.partition("=")[0] in GLOBAL_NAMES)}
            break
    for key, value in list(case.values.items()):
        if isinstance(value, list):
            case.values[key] = [w for w in value if w.partition("=")[0] not in GLOBAL_NAMES]
    case.label = ("+".join(hostile_keys) or "skeleton", "+".join(labels) or "valid")
    return safe(case)


CHEAP = [p for p in PATHS if p[0] not in ("report", "demo")]
COSTLY = [p for p in PATHS if p[0] in ("report", "demo")]


@pytest.mark.parametrize("path", CHEAP, ids=" ".join)
@budget(12)
@given(data=st.data())
def test_corpus(study: Study, path: tuple[str, ...], data: st.DataObject) -> None:
    check(study, data.draw(cases(study, path)))


@pytest.mark.parametrize("path", COSTLY, ids=" ".join)
@budget(3)
@given(data=st.data())
def test_corpus_costly_commands(study: Study, path: tuple[str, ...],
                                data: st.DataObject) -> None:
    """Reports render plots (hundreds of milliseconds each): fewer examples."""
    check(study, data.draw(cases(study, path)))


@pytest.mark.soak
@pytest.mark.parametrize("path", CHEAP, ids=" ".join)
@soak_budget(12)
@given(data=st.data())
def test_corpus_soak(study: Study, path: tuple[str, ...], data: st.DataObject) -> None:
    check(study, data.draw(cases(study, path)))


@pytest.mark.soak
@pytest.mark.parametrize("path", COSTLY, ids=" ".join)
@soak_budget(3)
@given(data=st.data())
def test_corpus_costly_commands_soak(study: Study, path: tuple[str, ...],
                                     data: st.DataObject) -> None:
    check(study, data.draw(cases(study, path)))


@st.composite
def record_cases(draw: st.DrawFn, study: Study) -> Case:
    """`record` of any form with optional fields, one of them hostile (or two fields)."""
    form = FORMS[draw(st.sampled_from(list(FORMS)))]
    optional = draw(st.lists(st.sampled_from(form.field_codes), max_size=4, unique=True))
    words = form_tokens(study, form, optional)
    case = base_case(study, ("record",))
    case.values["form"] = form.code
    target = draw(st.sampled_from(form.fields))
    cls, value = draw(hostile_value())
    words = [w for w in words if w.partition("=")[0] != target.code]
    words.insert(draw(st.integers(0, len(words))), f"{target.code}={value}")
    if draw(st.integers(0, 4)) == 0:
        words.append(draw(st.sampled_from([words[0], target.code, "=", "colour=blue",
                                           f"{target.code}"])))
    case.values["fields"] = words
    case.json = draw(st.booleans())
    case.label = (f"{form.code}.{target.code}", cls)
    return case


@budget(150)
@given(data=st.data())
def test_record_any_field(study: Study, data: st.DataObject) -> None:
    check(study, data.draw(record_cases(study)))


@pytest.mark.soak
@soak_budget(150)
@given(data=st.data())
def test_record_any_field_soak(study: Study, data: st.DataObject) -> None:
    check(study, data.draw(record_cases(study)))


# --- global options -------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["--log-level", "shout", "status"],
    ["--log-level", fs(b"\xff"), "status"],
    ["status", "--log-level"],
    ["status", "--user"],
    ["--user", "", "--json", "record", "S-001", "vitals", "weight_kg=60"],
    ["--json", "no-such-command"],
    ["--json", "status", "S-001", "--", "--json"],
    ["--json", "status", "--bogus"],
    ["--json", "forms", "extra-word"],
    ["--json", "--user", "cora", "record", "S-001", "vitals", "weight_kg=60", "--db"],
], ids=repr)
def test_global_options(study: Study, argv: list[str]) -> None:
    case = Case(("forms",), {}, None, json=False)
    case.argv = lambda: argv  # type: ignore[method-assign]
    judge(study, case, execute(study, case))


@pytest.mark.parametrize("url", [
    "not a url", "sqlite:///cases/no/such/dir/x.db", "mysql://127.0.0.1:1/x",
    "sqlite:///:memory:", "sqlite:///empty.db", "postgresql://127.0.0.1:1/x", "",
    fs(b"sqlite:///\xff.db"),
], ids=repr)
def test_hostile_database_urls(study: Study, url: str) -> None:
    """A --db that is no database, an empty one, or one that refuses the connection: one
    sentence and a documented status (the study's copy is not touched)."""
    for path in (("status",), ("record",)):
        case = base_case(study, path)
        case.db = url
        case.label = ("--db", "hostile_url")
        assert judge(study, case, execute(study, case)) != "ok", (url, path)


# --- protocol files ---------------------------------------------------------------------------

SECTIONS = ("protocol", "enrolment", "screening", "eligibility", "reminders", "safety",
            "endpoints", "lymphodepletion")
WRONG_TYPES = ('"text"', "true", "[1, 2]", "{ a = 1 }", "-1", "nan", "inf", "1e999",
               "9999999999999999999999", '""', "[]", "1979-05-27T07:32:00Z")


@dataclass
class ProtocolFile:
    data: bytes
    key: str | None = None  # a key the error must name
    what: str = ""
    name: str = "protocol.toml"


@st.composite
def protocol_files(draw: st.DrawFn, text: str) -> ProtocolFile:
    raw = text.encode("utf-8")
    lines = text.splitlines(keepends=True)
    kind = draw(st.sampled_from(["truncate", "garble", "invalid_utf8", "wrong_type",
                                 "unknown_key", "missing_section", "duplicate", "junk",
                                 "surrogate_name"]))
    if kind == "truncate":
        cut = draw(st.integers(0, len(raw) - 1))
        return ProtocolFile(raw[:cut], what=f"truncated at {cut}")
    if kind == "garble":
        start = draw(st.integers(0, len(raw) - 1))
        junk = draw(st.binary(min_size=1, max_size=16))
        return ProtocolFile(raw[:start] + junk + raw[start + len(junk):],
                            what=f"garbled at {start}")
    if kind == "invalid_utf8":
        start = draw(st.integers(0, len(raw)))
        bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80\x80"]))
        return ProtocolFile(raw[:start] + bad + raw[start:], what="invalid UTF-8")
    if kind == "wrong_type":
        candidates = [i for i, line in enumerate(lines)
                      if re.match(r"^[a-z_]+ = [^\[\n]", line)]
        i = draw(st.sampled_from(candidates))
        name = lines[i].split(" = ")[0]
        value = draw(st.sampled_from(WRONG_TYPES))
        changed = [*lines[:i], f"{name} = {value}\n", *lines[i + 1:]]
        return ProtocolFile("".join(changed).encode(), key=None, what=f"{name} = {value}")
    if kind == "unknown_key":
        headers = [i for i, line in enumerate(lines) if line.startswith("[")]
        i = draw(st.sampled_from(headers))
        changed = [*lines[:i + 1], "bogus_setting = 1\n", *lines[i + 1:]]
        return ProtocolFile("".join(changed).encode(), key="bogus_setting",
                            what=f"unknown key after {lines[i].strip()}")
    if kind == "missing_section":
        section = draw(st.sampled_from(SECTIONS))
        kept: list[str] = []
        skipping = False
        for line in lines:
            if line.startswith("["):
                header = line.strip().strip("[]")
                skipping = header == section or header.startswith(section + ".")
            if not skipping:
                kept.append(line)
        return ProtocolFile("".join(kept).encode(), key=section, what=f"no [{section}]")
    if kind == "duplicate":
        return ProtocolFile(raw + b"\n[protocol]\nversion = 4\n", what="duplicate table")
    if kind == "surrogate_name":
        return ProtocolFile(raw, name=fs(b"protocol-\xff.toml"), what="name not UTF-8")
    junk = draw(st.binary(max_size=200))
    return ProtocolFile(junk, what="junk")


def corrupted_protocol_file(study: Study, data: st.DataObject) -> None:
    """`protocol load FILE` with a broken file: exit 2 naming the file (and the key when one
    is at fault), nothing written; an edit that leaves a valid protocol may load (exit 0)."""
    broken = data.draw(protocol_files(study.protocol_v3))
    note(broken.what)
    target = study.root / "protocols"
    target.mkdir(exist_ok=True)
    path = target / broken.name
    path.write_bytes(broken.data)
    case = base_case(study, ("protocol", "load"))
    case.values["file"] = str(path)
    case.label = ("file", broken.what.split(" ")[0])
    result = execute(study, case)
    outcome = judge(study, case, result)
    if outcome == "known-bug":
        return
    if result.status == 2:
        message = json.loads(result.out)["error"]
        as_bytes = os.fsencode(path).decode("utf-8", "backslashreplace")  # \\xff for 0xff
        assert (str(path) in message or repr(str(path))[1:-1] in message
                or as_bytes in message), message
        if broken.key is not None:
            assert broken.key in message, (broken.what, message)
    else:
        assert result.status in (0, 1), (broken.what, result.status, result.out)


@budget(60)
@given(data=st.data())
def test_corrupted_protocol_file(study: Study, data: st.DataObject) -> None:
    corrupted_protocol_file(study, data)


@pytest.mark.soak
@soak_budget(60)
@given(data=st.data())
def test_corrupted_protocol_file_soak(study: Study, data: st.DataObject) -> None:
    corrupted_protocol_file(study, data)


def test_protocol_file_that_is_a_directory_or_missing(study: Study) -> None:
    for file in (str(study.root), str(study.root / "missing.toml"), "/dev/null", ""):
        case = base_case(study, ("protocol", "load"))
        case.values["file"] = file
        result = execute(study, case)
        assert judge(study, case, result) == "exit 2", (file, result.out)


# --- seal files -----------------------------------------------------------------------------------


def _root_of(seal_text: str) -> str:
    seal = json.loads(seal_text)
    return f"{seal['position']}:{seal['root']}"


def _reroot(seal: dict[str, Any], key: Path) -> dict[str, Any]:
    """Signed again with the study's seal key: a seal that says something else, not an
    altered one."""
    from events.chain import seal_body
    from events.seals import load_private

    seal["signature"] = load_private(key).sign(seal_body(seal))
    return seal


@dataclass
class SealFile:
    data: bytes
    what: str
    same: bool = False  # still the same seal (whitespace): 0 is right


@st.composite
def seal_files(draw: st.DrawFn, text: str, key: Path) -> SealFile:
    raw = text.encode("utf-8")
    seal = json.loads(text)
    streams = sorted(seal["streams"])
    kind = draw(st.sampled_from(["truncate", "not_json", "invalid_utf8", "edit",
                                 "wrong_hash", "later_version", "unknown_stream",
                                 "bad_version", "bad_position", "bad_shape", "reformat",
                                 "empty"]))
    if kind == "truncate":
        cut = draw(st.integers(0, len(raw) - 1))
        # only the final newline cut: still the same seal
        return SealFile(raw[:cut], f"truncated at {cut}", same=not raw[cut:].strip())
    if kind == "not_json":
        return SealFile(draw(st.binary(max_size=100)), "not JSON")
    if kind == "empty":
        return SealFile(b"", "empty")
    if kind == "invalid_utf8":
        start = draw(st.integers(0, len(raw)))
        return SealFile(raw[:start] + b"\xff\xfe" + raw[start:], "invalid UTF-8")
    stream = draw(st.sampled_from(streams))
    if kind == "edit":  # changed without recomputing the root: the seal was altered
        seal["streams"][stream]["version"] += draw(st.integers(1, 5))
        return SealFile(json.dumps(seal).encode(), f"edited version of {stream}")
    if kind == "wrong_hash":
        seal["streams"][stream]["hash"] = draw(st.sampled_from(["0" * 64, "x", "", "A" * 64]))
        return SealFile(json.dumps(_reroot(seal, key)).encode(), f"wrong hash of {stream}")
    if kind == "later_version":
        seal["streams"][stream]["version"] += draw(st.integers(1, 10**6))
        return SealFile(json.dumps(_reroot(seal, key)).encode(), f"later version of {stream}")
    if kind == "unknown_stream":
        seal["streams"]["S-404"] = {"version": 1, "hash": "0" * 64}
        return SealFile(json.dumps(_reroot(seal, key)).encode(), "unknown stream")
    if kind == "bad_version":
        version = draw(st.sampled_from([0, -1, -(2**70), 2**70]))
        seal["streams"][stream]["version"] = version
        return SealFile(json.dumps(_reroot(seal, key)).encode(), f"version {version} of {stream}")
    if kind == "bad_position":
        position = draw(st.sampled_from(["Infinity", "NaN", "-Infinity", "1e400", '"12"',
                                         "-1", str(2**70), "null", "[]"]))
        body = json.dumps({**seal, "position": "POSITION"}).replace('"POSITION"', position)
        return SealFile(body.encode(), f"position {position}")
    if kind == "bad_shape":
        body = draw(st.sampled_from(["[]", "null", "1", '"seal"', '{"streams": []}',
                                     '{"root": "", "streams": {}, "position": 0}',
                                     '{"root": 1, "streams": {"S-001": 1}, "position": 1}']))
        return SealFile(body.encode(), f"shape {body}")
    return SealFile(json.dumps(seal, indent=draw(st.sampled_from([None, 0, 4]))).encode(),
                    "reformatted", same=True)


def damaged_seal_file(study: Study, data: st.DataObject) -> None:
    """`audit verify --seal FILE`: unreadable (exit 2) or not matching (exit 4), one sentence;
    the same seal reformatted still verifies (exit 0)."""
    broken = data.draw(seal_files(study.seal, study.root / "seal.key"))
    note(broken.what)
    path = study.root / "seals" / "seal.json"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(broken.data)
    case = base_case(study, ("audit", "verify"))
    case.values["--seal"] = str(path)
    case.values["--public-key"] = str(study.root / "seal.key.pub")
    case.label = ("--seal", broken.what.split(" ")[0])
    result = execute(study, case)
    if judge(study, case, result) == "known-bug":
        return
    expected = {0} if broken.same else {2, 4}
    assert result.status in expected, (broken.what, result.status, result.out)



@budget(60)
@given(data=st.data())
def test_damaged_seal_file(study: Study, data: st.DataObject) -> None:
    damaged_seal_file(study, data)


@pytest.mark.soak
@soak_budget(60)
@given(data=st.data())
def test_damaged_seal_file_soak(study: Study, data: st.DataObject) -> None:
    damaged_seal_file(study, data)


# --- the bugs, one explicit case each -------------------------------------------------------------

SURROGATE = fs(b"\xff\xfe")
LONG = "A" * 300  # longer than NAME_MAX (255)


def strict(study: Study, path: tuple[str, ...], changes: Mapping[str, Any] | None = None, *,
           db: str | None = None, passwords: tuple[str, ...] | None = None,
           token: str | None = None) -> str:
    """The skeleton of `path` with `changes`, judged with no known bug tolerated."""
    case = base_case(study, path)
    for key, value in (changes or {}).items():
        if key == "--user":
            case.user = value
        elif key == "extra":
            case.extra = [value]
        elif value is None:
            case.values.pop(key, None)
        else:
            case.values[key] = value
    if passwords is not None:
        case.passwords = passwords
    if token is not None:
        case.token = token
    case.db, case.strict = db, True
    return judge(study, case, execute(study, case))


def by_path(value: object) -> str | None:
    return " ".join(value) if isinstance(value, tuple) else None


def refusal(study: Study, path: tuple[str, ...], changes: Mapping[str, Any] | None = None,
            **kwargs: Any) -> tuple[str, str]:
    """`strict`, and the error message of the refusal (empty when the case was accepted)."""
    outcome = strict(study, path, changes, **kwargs)
    return outcome, LAST_ERROR[0]


@pytest.mark.parametrize("path,changes,named", [
    (("study", "lock"), {"--reason": SURROGATE}, "--reason"),
    (("query", "open"), {"--text": SURROGATE}, "--text"),
    (("correct",), {"--reason": SURROGATE}, "--reason"),
    (("record",), {"form": "adverse_event", "fields": [f"term=x{SURROGATE}",
                                                       f"onset_date={day(2)}", "grade=1"]},
     "field term"),
    (("screen-fail",), {"--reason": SURROGATE}, "--reason"),
    (("visit",), {"visit": SURROGATE}, "Argument"),
    (("consent",), {"--command-id": SURROGATE}, "--command-id"),
    (("logout",), {"--user": SURROGATE}, "--user"),
    (("reminders",), {"subject": SURROGATE}, "Argument"),
    (("users", "passwd"), {"name": SURROGATE}, "Argument"),
], ids=by_path)
def test_regression_invalid_utf8_argument(study: Study, path: tuple[str, ...],
                                          changes: dict[str, Any], named: str) -> None:
    """Was: UnicodeEncodeError where the value was first encoded (the request hash, sqlite3,
    password hashing). Now cli/app.py refuses an argument that is not UTF-8 at the boundary,
    naming the option or field and showing the bytes as \\xNN."""
    outcome, message = refusal(study, path, changes)
    assert outcome == "exit 2", message
    assert "is not valid UTF-8" in message and named in message and "\\xff\\xfe" in message


def test_regression_invalid_utf8_session_token(study: Study) -> None:
    """Was: UnicodeEncodeError in workflow/identity.py _token_hash. Now a TRIALFLOW_*
    variable that is not UTF-8 is refused at the boundary (exit 2, naming it)."""
    outcome, message = refusal(study, ("complete",), token=SURROGATE)
    assert outcome == "exit 2" and "TRIALFLOW_SESSION" in message, message


def test_regression_invalid_utf8_password(study: Study) -> None:
    """Was: UnicodeEncodeError in workflow/identity.py _scrypt. Now cli/auth.py refuses a
    --password-stdin line that is not UTF-8 (exit 2)."""
    outcome, message = refusal(study, ("login",), passwords=(SURROGATE,))
    assert outcome == "exit 2" and "stdin" in message and "UTF-8" in message, message


@pytest.mark.parametrize("path,changes,named", [
    (("release",), {"--viable-cells": "nan"}, "--viable-cells"),
    (("infuse",), {"--cells": "inf"}, "--cells"),
    (("lymphodepletion",), {"doses": ["fludarabine_mg=nan", "cyclophosphamide_mg=0"]},
     "fludarabine_mg"),
    (("lymphodepletion",), {"doses": ["fludarabine_mg=1e400", "cyclophosphamide_mg=0"]},
     "fludarabine_mg"),
], ids=by_path)
def test_regression_nan_in_float_options(study: Study, path: tuple[str, ...],
                                         changes: dict[str, Any], named: str) -> None:
    """Was: ValueError from events/envelope.py canonical_json (JSON has no NaN). Now the
    options are finite floats (cli/options.py) and the messages check doses when they are
    made, before any request is hashed (workflow/commands/messages.py)."""
    outcome, message = refusal(study, path, changes)
    assert outcome == "exit 2" and named in message, message


def test_regression_nan_doses_in_the_workflow(study: Study) -> None:
    """The write side itself (not only the CLI's option types) refuses NaN and infinite doses
    before anything is hashed or written: the messages refuse them when they are made (so each
    message is made inside `pytest.raises`), before the executor sees them."""
    from workflow.bootstrap import build_app
    from workflow.commands.actors import Actors
    from workflow.commands.executor import Executor
    from workflow.errors import InvalidInput

    copy = study.root / "cases" / "workflow-nan.db"
    shutil.copyfile(study.template, copy)
    flow = Actors(Executor(build_app(f"sqlite:///{copy}", kdf=TEST_KDF)))
    flow.know(COORDINATOR, PASSWORD)
    calls: list[Callable[[], object]] = [
        lambda: flow.send(COORDINATOR, M.ReleaseProduct("S-006", "LOT", "COI-S-006", False,
                                                        None, float("nan"))),
        lambda: flow.send(COORDINATOR, M.GiveLymphodepletion("S-004", TODAY, float("inf"),
                                                             0.0)),
        lambda: flow.send(COORDINATOR, M.Infuse("S-005", datetime.now(UTC), float("-inf"),
                                                "COI-S-005")),
    ]
    try:
        for call in calls:
            with pytest.raises(InvalidInput):
                call()
        assert _counts(copy) == study.head
    finally:
        _dispose_engines()
        copy.unlink()


@pytest.mark.parametrize("path,changes", [
    (("status",), {"subject": "S-001", "--now": "9999-12-31T23:59:59"}),
    (("status",), {"subject": "S-001", "--now": "0001-01-01T00:00:00+05:00"}),
    (("eligibility",), {"--now": "0001-01-01T00:00:00+14:00"}),
    (("ae", "windows"), {"--now": "9999-12-31T23:59:59-12:00"}),
    (("audit", "log"), {"--as-of": "9999-12-31T23:59:59-12:00"}),
    (("audit", "replay"), {"--as-of": "0001-01-01T00:00:00+14:00"}),
    (("consent",), {"--on": "0001-01-01"}),
    (("audit", "diff"), {"second": "9999-12-31T23:59:59"}),
], ids=by_path)
def test_regression_far_times(study: Study, path: tuple[str, ...],
                              changes: dict[str, Any]) -> None:
    """Was: OverflowError from datetime.astimezone near year 1 or 9999. Now dates and times
    are taken from 1900 to 2200 (cli/writes.py, projections/as_of.py)."""
    outcome, message = refusal(study, path, changes)
    assert outcome == "exit 2" and "1900 to 2200" in message, message


@pytest.mark.parametrize("path,changes", [
    (("status",), {"--as-of": "@" + "9" * 30}),
    (("audit", "diff"), {"second": "@" + "9" * 30}),
    (("correct",), {"position": str(2**63)}),
    (("sdv",), {"position": "9" * 30}),
    (("query", "open"), {"position": "0"}),
    (("audit", "log"), {"stream": None, "--all": True, "--after": "9" * 40}),  # soak
], ids=by_path)
def test_regression_huge_positions(study: Study, path: tuple[str, ...],
                                   changes: dict[str, Any]) -> None:
    """Was: OverflowError from sqlite3 in events/store.py _fetch. Now positions are 1 to
    2**63 - 1 (cli/options.py POSITION) and @N 0 to 2**63 - 1 (projections/as_of.py)."""
    outcome, message = refusal(study, path, changes)
    assert outcome == "exit 2" and str(2**63 - 1) in message, message


def test_regression_smtp_port_with_unicode_digit(study: Study) -> None:
    """Was: ValueError from int("²") in projections/notifiers.py from_settings."""
    changes = {"--smtp": "localhost:²", "--mail-to": ["site@example.org"]}
    outcome, message = refusal(study, ("reminders",), changes)
    assert outcome == "exit 2" and "--smtp" in message, message


@pytest.mark.parametrize("path,changes,named", [
    (("export", "odm"), {"--out": ""}, "--out"),
    (("export", "fhir"), {"--out": LONG + ".json"}, "--out"),
    (("export", "ics"), {"--out": LONG + ".ics"}, "--out"),
    (("export", "csv"), {"--out": LONG}, "--out"),
    (("report", "html"), {"--out": ""}, "--out"),
    (("report", "html"), {"--out": LONG + ".html"}, "--out"),
    (("report", "swimmer"), {"--out": LONG + "/x.svg"}, "--out"),
    (("demo",), {"--reports": LONG}, "--reports"),
    (("sites", "add"), {"--tz": LONG}, "Time zone"),
], ids=by_path)
def test_regression_unmapped_os_errors(study: Study, path: tuple[str, ...],
                                       changes: dict[str, Any], named: str) -> None:
    """Was: the OSError of open/os.replace/zoneinfo escaped (cli/export_cmd.py _write,
    cli/report_cmd.py write_output, workflow/commands.py add_site). Now one sentence naming
    the option (cli/errors.py output_error)."""
    outcome, message = refusal(study, path, changes)
    assert outcome in ("exit 1", "exit 2") and named in message, message


@pytest.mark.parametrize("damage", ["version 0", "version -1", "position Infinity",
                                    "position NaN", "position 1e400", "position \"12\""])
def test_regression_seal_values(study: Study, damage: str) -> None:
    """Was: IndexError (version 0) in events/chain.py verify_against_seal, OverflowError
    (position Infinity) in parse_seal. Now a seal holds whole numbers in range or is refused
    as unreadable (exit 4, like any damaged seal)."""
    seal = json.loads(study.seal)
    kind, _, value = damage.partition(" ")
    if kind == "version":
        seal["streams"]["S-001"]["version"] = int(value)
        body = json.dumps(_reroot(seal, study.root / "seal.key"))
    else:
        body = json.dumps({**seal, "position": "P"}).replace('"P"', value)
    path = study.root / "seals" / "explicit.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(body, encoding="utf-8")
    outcome, message = refusal(study, ("audit", "verify"), {
        "--seal": str(path), "--public-key": str(study.root / "seal.key.pub")})
    assert outcome == "exit 4" and "not a readable seal" in message, message


@pytest.mark.parametrize("url,path,expected", [
    ("not a url", ("status",), "exit 2"),
    ("mysql://127.0.0.1:1/x", ("status",), "exit 2"),
    ("postgresql+nodriver://127.0.0.1:1/x", ("status",), "exit 2"),
    ("sqlite:///x.db?timeout=abc", ("status",), "exit 2"),
    ("sqlite:///cases/no/such/dir/x.db", ("record",), "exit 1"),
    ("postgresql://127.0.0.1:1/x", ("record",), "exit 3"),
], ids=repr)
def test_regression_hostile_database_url(study: Study, url: str, path: tuple[str, ...],
                                         expected: str) -> None:
    """Was: ArgumentError, ModuleNotFoundError, or OperationalError from cli/auth.py and
    workflow/identity.py connecting outside the store's mapping. Now: a URL that is none or
    names another database is bad input (2), a file that cannot be opened is refused (1,
    database_unreachable), a server that does not answer is retryable (3)."""
    outcome, message = refusal(study, path, db=url)
    assert outcome == expected, message


def test_regression_found_by_the_soak(study: Study) -> None:
    """Found by `make soak` once the first bugs were fixed: an ANA titre of 5000 digits in
    `calc` (int() refuses 4300+ digits: workflow/instruments/eular_acr_2019.py), a report
    --out of 10000 characters (Path.is_dir raises ENAMETOOLONG: cli/report_cmd.py
    check_out), and --json after a bare `--` (an argument, not the global option: the error
    went to stdout as JSON while stderr stayed empty)."""
    from workflow.instruments import catalog

    item = next(i for i in catalog.describe_all() if "ana_titer" in
                {str(spec["name"]) for spec in i.get("inputs", [])})
    case = base_case(study, ("calc",))
    case.values["name"] = str(item["name"])
    case.values["inputs"] = ["ana_titer=" + "9" * 5000]
    assert judge(study, case, execute(study, case)) == "exit 2"
    assert "ana_titer" in LAST_ERROR[0], LAST_ERROR[0]
    outcome, message = refusal(study, ("report", "html"), {"--out": "A" * 10_000 + ".html"})
    assert outcome == "exit 2" and "--out" in message, message
    case = base_case(study, ("leukapheresis",))
    case.values["subject"] = SURROGATE
    case.extra, case.json, case.globals_last = ["--", "--json"], False, True
    case.strict = True
    assert judge(study, case, execute(study, case)) == "exit 2"


def test_regression_json_stdout_not_utf8(study: Study) -> None:
    """Was: the argument echoed raw into the JSON document, so stdout was not UTF-8."""
    outcome, message = refusal(study, ("projections", "status"), {"extra": SURROGATE})
    assert outcome == "exit 2" and "\\xff\\xfe" in message, message


@pytest.mark.parametrize("path,changes", [
    (("users", "deactivate"), {"name": "line1\nline2"}),
    (("complete",), {"--user": "\r"}),
    (("forms",), {"extra": "line1\nline2"}),
    (("consent",), {"subject": "S-1\x1b[31m"}),
    (("sites", "add"), {"--tz": "Europe/\u2028Paris"}),
], ids=by_path)
def test_regression_control_characters_echoed(study: Study, path: tuple[str, ...],
                                              changes: dict[str, Any]) -> None:
    """Was: a newline in a value echoed raw into the one-line error. Now cli/app.py escapes
    control characters and line separators of every message."""
    outcome, message = refusal(study, path, changes)
    assert outcome in ("exit 1", "exit 2"), message
    assert not any(c in message for c in "\n\r\x1b\u2028"), message


def test_regression_file_error_message(study: Study) -> None:
    """Was: `Could not open file '…': File name too long` without a full stop."""
    outcome, message = refusal(study, ("audit", "log"), {"--csv": LONG + ".csv"})
    assert outcome == "exit 2" and message.endswith("."), message


def test_regression_missing_choice_spans_lines(study: Study) -> None:
    """Was: click 8.2 lists a missing Choice's values one per line."""
    outcome, message = refusal(study, ("sign",), {"--meaning": None})
    assert outcome == "exit 2" and "--meaning" in message and "approved" in message, message


@pytest.mark.parametrize("group", GROUPS)
def test_regression_group_without_subcommand(study: Study, group: str) -> None:
    """Was: the whole help text as the error. Now one sentence listing the commands."""
    case = Case((group,), {}, None, strict=True)
    assert judge(study, case, execute(study, case)) == "exit 2"
    message = LAST_ERROR[0]
    assert message.startswith(f"`trialflow {group}` needs a command: "), message


def test_no_command_at_all(study: Study) -> None:
    case = Case(("forms",), {}, None, strict=True)
    case.argv = lambda: ["--json"]  # type: ignore[method-assign]
    assert judge(study, case, execute(study, case)) == "exit 2"
    assert LAST_ERROR[0].startswith("`trialflow` needs a command: ae, audit"), LAST_ERROR[0]
