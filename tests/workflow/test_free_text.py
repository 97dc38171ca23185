"""The free-text rule (workflow/commands/messages.py `check_message_text`): a bidirectional
control character (U+202A–U+202E, U+2066–U+2069, U+200E, U+200F, U+061C) anywhere, or a text
made only of invisible characters (spaces, zero-width and other format characters, combining
marks alone), is refused in every text of every message — one sentence naming the field and
the subject, exit 2, before anything is written — while accents, CJK, emoji and right-to-left
scripts are accepted."""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from events.errors import InvalidStreamId
from tests.support.clock import FakeClock
from tests.support.study import COORDINATOR, MONITOR, new_study, on_day
from workflow.commands import messages as M
from workflow.errors import InvalidInput
from workflow.identity import Secret

SECRET = Secret("s" * 40)
SAMPLES: dict[type[M.Message], M.Message] = {type(m): m for m in (
    M.InitialiseStudy("ada", SECRET, SECRET, 2),
    M.AddSite("PKU3", "Asia/Shanghai"),
    M.AddUser("cora", "coordinator", "PKU3", SECRET),
    M.DeactivateUser("cora"),
    M.ChangePassword("cora", SECRET),
    M.UnlockAccount("cora", "identity checked by phone"),
    M.SetLockoutPolicy(5),
    M.SetAmendmentReview(False),
    M.LoadProtocol("version = 3\n", "im19_v3.toml"),
    M.AmendProtocol(3),
    M.ConsentSubject("S-001", date(2025, 1, 6), "2.0"),
    M.ReconsentSubject("S-001", "3.0"),
    M.RecordForm("S-001", "adverse_event", ("term=fever", "grade=1"), None, "D7"),
    M.CorrectRecord("S-001", 5, ("grade=2",), "transcription error"),
    M.VoidRecord("S-001", 5, "entered twice"),
    M.ConfirmEligibility("S-001"),
    M.RecordScreenFailure("S-001", "other", note="anti-dsDNA negative"),
    M.RecordLeukapheresis("S-001", date(2025, 1, 13), "COI-1"),
    M.ReleaseProduct("S-001", "LOT-1", "COI-1", True, "sterility failed"),
    M.GiveLymphodepletion("S-001", date(2025, 1, 31), 40.5, 0.0, True, "renal dose"),
    M.Infuse("S-001", datetime(2025, 2, 5, 10), 1e8, "COI-1", True, "late delivery"),
    M.RecordVisit("S-001", "D7", "done"),
    M.CompleteStudy("S-001"),
    M.TakeOffStudy("S-001", "death"),
    M.OpenQuery("S-001", 5, "term", "please check the term"),
    M.VerifySource("S-001", 5),
    M.Sign("S-001", 5, "approved"),
    M.AnswerQuery("Q-9", "corrected", ("term=pyrexia",), "per source"),
    M.CloseQuery("Q-9", "resolved"),
    M.LockStudy("database lock"),
    M.UnlockStudy("late SAE follow-up"),
    M.RecordExport("odm", "study.xml", "0" * 64, 12),
    M.IssueReminder("S-001", "visit:D7@2025-02-12", "due", "2025-02-12T00:00:00+08:00",
                    "D7 window: due."),
    M.CancelReminder("S-001", "r-1", "no longer planned"),
    M.RecordDelivery("S-001", "r-1", "email"),
    M.RecordDeliveryFailure("S-001", "r-1", "email", "SMTPError: refused"),
    M.CopySubjects("S-001", ("S-009",), 9, 102),
)}
# The texts people type: each must pass the rule (and its field's own) with any script.
FREE_TEXT = {
    M.UnlockAccount: ("reason",), M.LoadProtocol: ("text", "source"),
    M.ConsentSubject: ("consent_form_version",), M.ReconsentSubject: ("consent_form_version",),
    M.RecordForm: ("fields",), M.CorrectRecord: ("fields", "reason"), M.VoidRecord: ("reason",),
    M.RecordScreenFailure: ("note",), M.RecordLeukapheresis: ("coi_id",),
    M.ReleaseProduct: ("lot", "coi_id", "reason"), M.GiveLymphodepletion: ("reason",),
    M.Infuse: ("coi_id", "reason"), M.OpenQuery: ("text",),
    M.AnswerQuery: ("text", "fields", "reason"), M.CloseQuery: ("reason",),
    M.LockStudy: ("reason",), M.UnlockStudy: ("reason",), M.RecordExport: ("file",),
    M.IssueReminder: ("detail",), M.CancelReminder: ("reason",),
}
BIDI = ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068",
        "\u2069", "\u200e", "\u200f", "\u061c"]
INVISIBLE = ["\u200b", " \u200b ", "\ufeff", "  \ufeff", "\u200c\u200d", "\u2060", "\u00a0",
             "\u3000", "\u0301", "\u0301\u0302", "\u3164", "\u2800", "\u180e\u200b"]
VISIBLE = ["Érythème polymorphe", "细胞因子释放综合征", "fever 🤒", "👩‍⚕️ reviewed", "حمى",
           "e\u0301", "Ångström ÿ ß", "नमस्ते", "한국어 텍스트", "ok\u200bok", "Ａ"]


def _messages() -> Iterator[type[M.Message]]:
    def below(cls: type[M.Message]) -> Iterator[type[M.Message]]:
        for sub in cls.__subclasses__():
            yield sub
            yield from below(sub)

    yield from below(M.Message)


def _with(message: M.Message, name: str, text: str) -> M.Message:
    """`message` built again with `text` in field `name` (a token's value for `fields`)."""
    if name == "fields":
        tokens = getattr(message, name)
        code = tokens[0].partition("=")[0]
        return dataclasses.replace(message, fields=(f"{code}={text}", *tokens[1:]))  # type: ignore[type-var]
    return dataclasses.replace(message, **{name: text})  # type: ignore[type-var]


def _texts(message: M.Message) -> list[str]:
    return [f.name for f in dataclasses.fields(message)  # type: ignore[arg-type]
            if isinstance(getattr(message, f.name), str | tuple)]


def _named(sample: M.Message, name: str) -> str:
    """How a refusal names field `name` of `sample`."""
    if name == "fields":
        return f"field {getattr(sample, name)[0].partition('=')[0]}"
    label = type(sample).text_labels.get(name)
    if label is None:
        return "--" + name.replace("_", "-")
    return label.format_map({f.name: getattr(sample, f.name)
                             for f in dataclasses.fields(sample)})  # type: ignore[arg-type]


def test_every_message_class_has_a_sample() -> None:
    concrete = {cls for cls in _messages()
                if cls not in (M.SubjectMessage, M.QueryMessage, M.ReminderMessage)}
    assert concrete == set(SAMPLES)


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_a_bidi_control_is_refused_in_every_text_of_every_message(cls: type[M.Message]) -> None:
    sample = SAMPLES[cls]
    for name in _texts(sample):
        if name in cls.outside_text:
            continue
        for char in ("\u202e", "\u2067", "\u200f"):
            value = getattr(sample, name)
            text = f"x{char}y" if name == "fields" or not isinstance(value, str) else value + char
            with pytest.raises((InvalidInput, InvalidStreamId)):
                _with(sample, name, text)


@pytest.mark.parametrize("cls", list(FREE_TEXT), ids=lambda c: c.__name__)
def test_free_text_refusals_name_the_field_and_the_subject(cls: type[M.Message]) -> None:
    sample = SAMPLES[cls]
    subject = getattr(sample, "subject", None)
    for name in FREE_TEXT[cls]:
        named = _named(sample, name)
        for text, rule in [*((f"a{c}b", "bidi_control") for c in BIDI),
                           *((t, "invisible_text") for t in INVISIBLE)]:
            if not text.strip():  # blank: the field's own rule (below)
                continue
            with pytest.raises(InvalidInput) as refused:
                _with(sample, name, text)
            error = refused.value
            assert error.rule == rule, (name, text, error.message)
            assert named.lower() in error.message.lower(), error.message
            assert error.message.count(". ") == 0, error.message  # one sentence
            assert error.message.endswith("."), error.message
            assert not any(c in error.message for c in BIDI)  # named, never echoed
            if isinstance(subject, str):
                assert error.subject == subject and subject in error.message
            if rule == "bidi_control":
                assert f"U+{ord(text[1]):04X}" in error.message


@pytest.mark.parametrize("cls", list(FREE_TEXT), ids=lambda c: c.__name__)
def test_blank_text_is_refused_by_the_fields_own_rule(cls: type[M.Message]) -> None:
    """Text Python strips to nothing (spaces, U+00A0, U+3000, …) was refused before the rule
    by each required field's own check, which names the field; an optional reason of
    `query close` reads blank as none (tests/workflow/test_monitoring.py)."""
    sample = SAMPLES[cls]
    for name in FREE_TEXT[cls]:
        for text in (" ", "\u00a0", "\u3000 ", "\t "):
            if cls is M.CloseQuery:
                assert _with(sample, name, text).reason is None  # type: ignore[attr-defined]
                continue
            with pytest.raises(InvalidInput) as refused:
                _with(sample, name, text)
            message = refused.value.message.lower()
            names = ("field",) if name == "fields" else (name.replace("_", "-"),
                                                         _named(sample, name).lower())
            assert any(named in message for named in names), (name, message)


@pytest.mark.parametrize("cls", list(FREE_TEXT), ids=lambda c: c.__name__)
def test_any_script_is_accepted(cls: type[M.Message]) -> None:
    sample = SAMPLES[cls]
    for name in FREE_TEXT[cls]:
        for text in VISIBLE:
            message = _with(sample, name, text)
            stored = getattr(message, name)
            assert (stored[0].endswith(text) if name == "fields" else stored == text), name


def test_a_query_message_names_its_query() -> None:
    with pytest.raises(InvalidInput) as refused:
        M.CloseQuery("Q-9", "\u200b")
    assert refused.value.message.startswith("Query Q-9: --reason is made only of invisible")


def test_a_blank_optional_reason_stays_no_reason() -> None:
    assert M.CloseQuery("Q-9", "   ").reason is None


def test_a_notifiers_error_is_escaped_not_refused() -> None:
    """What a mail server says is recorded all the same (the scheduler must not stop)."""
    failure = M.RecordDeliveryFailure("S-001", "r-1", "email", "bad \u202egnp.exe")
    assert failure.error == "bad \\u202egnp.exe"
    assert M.RecordDeliveryFailure("S-001", "r-1", "email", "\u200b").error == "\\u200b"


# --- through the CLI: refused before anything is written ------------------------------------


def call(db: str, *argv: str) -> tuple[int, dict[str, Any]]:
    from tests.support.auth import run_cli

    out, err = io.StringIO(), io.StringIO()
    status = run_cli(["--db", db, "--json", *argv], stdout=out, stderr=err, environ=None)
    return int(status), json.loads(out.getvalue())


@pytest.fixture
def screening(sqlite_url: str) -> tuple[str, int]:
    """S-001 consented (screening), with vitals recorded: the study and the vitals' position."""
    clock = FakeClock()
    desk = new_study(sqlite_url, clock)
    day = date.today() - timedelta(days=3)
    on_day(clock, day)
    desk.send(COORDINATOR, M.ConsentSubject("S-001", day, "2.0"))
    vitals = desk.send(COORDINATOR, M.RecordForm("S-001", "vitals", ("weight_kg=58",), day))
    desk.store.engine.dispose()
    return sqlite_url, vitals.result.positions[0]


def _last(db: str) -> int:
    from workflow.bootstrap import build_app

    app = build_app(db)
    try:
        return app.store.last_position()
    finally:
        app.engine.dispose()


def test_the_cli_refuses_before_anything_is_written(screening: tuple[str, int],
                                                    tmp_path: Path) -> None:
    db, vitals = screening
    day = (date.today() - timedelta(days=1)).isoformat()
    before = _last(db)
    cases = [
        (["--user", COORDINATOR, "record", "S-001", "adverse_event", "term=fever\u202e",
          f"onset_date={day}", "grade=1"], "term", "field term", "bidi_control"),
        (["--user", COORDINATOR, "correct", "S-001", str(vitals), "weight_kg=59",
          "--reason", "\u200b"], "reason", "--reason", "invisible_text"),
        (["--user", COORDINATOR, "record", "S-001", "medication", "drug=  \ufeff",
          "drug_class=antimalarial"], "drug", "field drug", "invisible_text"),
        (["--user", MONITOR, "query", "open", "S-001", str(vitals), "--field", "weight_kg",
          "--text", "check \u2066this\u2069"], "text", "--text", "bidi_control"),
        (["--user", COORDINATOR, "screen-fail", "S-001", "--reason", "other", "--note",
          "\u0301"], "note", "--note", "invisible_text"),
        (["--user", COORDINATOR, "consent", "S-002", "--on", day, "--consent-form-version",
          "2.0\u200f"], "consent_form_version", "--consent-form-version", "bidi_control"),
    ]
    for argv, field, named, rule in cases:
        status, document = call(db, *argv)
        assert status == 2, (argv, document)
        assert document["rule"] == rule and document["detail"]["field"] == field, document
        message = document["error"]
        assert named in message and "S-00" in message and message.endswith("."), message
        assert _last(db) == before, argv  # nothing written, not even a failed sign-in

    folder = tmp_path / "exports"
    folder.mkdir()
    out = folder / "study\u202elmx.xml"
    status, document = call(db, "--user", "dora", "export", "odm", "--out", str(out))
    assert status == 2 and document["rule"] == "bidi_control", document
    assert list(folder.iterdir()) == []
    assert _last(db) == before


def test_the_cli_accepts_any_script(screening: tuple[str, int]) -> None:
    db, vitals = screening
    day = (date.today() - timedelta(days=1)).isoformat()
    term = "Érythème 细胞因子释放综合征 🤒 👩‍⚕️ حمى e\u0301"
    status, document = call(db, "--user", COORDINATOR, "record", "S-001", "adverse_event",
                            f"term={term}", f"onset_date={day}", "grade=1")
    assert status == 0 and document["values"]["term"] == term, document
    status, document = call(db, "--user", COORDINATOR, "record", "S-001", "medication",
                            "drug=Mycophénolate 霉酚酸酯", "drug_class=immunosuppressant")
    assert status == 0, document
    status, document = call(db, "--user", COORDINATOR, "correct", "S-001", str(vitals),
                            "weight_kg=59", "--reason", "corrigé — 修正 ✅")
    assert status == 0, document
