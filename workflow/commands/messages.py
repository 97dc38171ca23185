"""Every write as a frozen message with an imperative name: its fields are the request.

A message that exists is well formed (each field checked on its own, in `__post_init__`: bad
input, exit 2); whether it may be carried out is for its decision (workflow/commands/decide_*.py)
against the loaded state. `canonical()` is the request as JSON (secrets left out): its SHA-256
with the actor's name is the command's idempotency hash, so a repeat with the same
`--command-id` and the same message appends nothing, and the same id with another message is
refused.

`loads` says what the executor loads for the decision besides the study: the subject's stream
(`subject`), the subject holding a query (`query`), the subject's reminders (`reminders`), a
template subject (`template`), the preview of a protocol amendment over every subject
(`amendment`) or nothing more (`study`). `command` is the CLI command that
sends the message (docs/cli.md prints the table of messages, commands and roles).
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, fields
from datetime import date, datetime
from typing import Any, ClassVar, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from events.streams import check_subject_id
from workflow.errors import InvalidInput
from workflow.identity import UNAUTHENTICATED, Secret
from workflow.monitoring import query_position
from workflow.signing import MEANINGS

NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,39}")
MAX_NOTE: Final = 500
OFF_STUDY_REASONS: Final = ("consent_withdrawn", "investigator_decision", "lost_to_follow_up",
                            "death", "manufacturing_failure")
EXPORT_KINDS: Final[tuple[str, ...]] = ("odm", "fhir", "csv", "ics")
_SHA256: Final = re.compile(r"[0-9a-f]{64}")


class Message:
    """Base of every write. Subclasses are frozen dataclasses."""

    loads: ClassVar[str] = "study"
    command: ClassVar[str] = ""
    # Fields whose text comes from outside trialflow's users (a notifier's error): the free-text
    # rule escapes what it would refuse there, so the fact is still recorded.
    outside_text: ClassVar[tuple[str, ...]] = ()
    # How the free-text rule names a field when its option is not the clearest name; `{field}`
    # shows another field's value.
    text_labels: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every message class checks its own fields first (its `__post_init__`, normalising
        them: stripped, a blank optional reason read as none), then, once and last, every text
        it carries passes the free-text rule (`check_message_text`). The rule is attached
        here, so no message class can leave a field out of it."""
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__post_init__")

        def __post_init__(self: Message) -> None:
            if own is not None:
                own(self)
            else:
                inherited = getattr(super(cls, self), "__post_init__", None)
                if inherited is not None:
                    inherited()
            if type(self) is cls:  # the outermost call: the message is complete
                check_message_text(self)

        cls.__post_init__ = __post_init__  # type: ignore[attr-defined]

    def canonical(self) -> dict[str, Any]:
        """The request as plain JSON values, secrets left out (never hashed, never stored)."""
        values = {f.name: _plain(getattr(self, f.name)) for f in fields(self)  # type: ignore[arg-type]
                  if not isinstance(getattr(self, f.name), Secret)}
        return {"message": type(self).__name__, "fields": values}


def _plain(value: Any) -> Any:
    if isinstance(value, date | datetime):
        return value.isoformat()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------------- field checks
RESERVED_NAMES: Final = frozenset({UNAUTHENTICATED})  # the actor of failed attempts


def check_name(value: str, field_name: str = "name") -> str:
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise InvalidInput(f"{field_name} {value!r} must be 1 to 40 letters, digits, dots, "
                           "hyphens or underscores.", field=field_name)
    if value in RESERVED_NAMES:
        raise InvalidInput(f"{field_name} {value!r} is reserved: the log names failed sign-in "
                           "attempts so.", field=field_name)
    return value


def check_text(value: str | None, field_name: str, limit: int = 200) -> str:
    """A required text of 1 to `limit` characters without control characters, stripped. What
    the text may hold besides (no bidirectional controls, not only invisible characters) is
    the free-text rule every message applies to all its texts (`check_message_text`)."""
    text = (value or "").strip()
    if not text or len(text) > limit or any(ord(c) < 32 for c in text):
        raise InvalidInput(f"--{field_name.replace('_', '-')} must be 1 to {limit} printable "
                           "characters.", field=field_name)
    return text


# The free-text rule (issue 14). Bidirectional formatting characters reorder what a screen,
# a PDF or a spreadsheet shows without changing what is stored ("Trojan Source", CVE-2021-42574):
# an AE term or a reason could read differently from what was signed and exported. They are
# the embeddings and overrides U+202A–U+202E, the isolates U+2066–U+2069 and the marks U+200E,
# U+200F and U+061C. A text made only of invisible characters records nothing anyone can read.
BIDI_CONTROLS: Final = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
                                 "\u200e\u200f\u061c")
# Invisible: separators (spaces, line and paragraph separators), control and format characters
# (zero-width space, joiners, word joiner, BOM, …: categories Cc, Cf), lone surrogates, and
# combining marks, which show nothing without a letter to sit on.
_INVISIBLE_CATEGORIES: Final = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Mn", "Mc", "Me"})
_BLANK_LETTERS: Final = frozenset("\u115f\u1160\u3164\uffa0\u2800")  # fillers drawn as nothing


def _invisible(char: str) -> bool:
    return unicodedata.category(char) in _INVISIBLE_CATEGORIES or char in _BLANK_LETTERS


def check_free_text(value: str, field_name: str, *, label: str | None = None, where: str = "",
                    subject: str | None = None) -> str:
    """The free-text rule: refuse (exit 2) a text holding a bidirectional control character
    anywhere, or made only of invisible characters; an empty text is left to the field's own
    rule (required or optional). The one sentence names the field (`label`, default its
    option `--field-name`) after `where` (`Subject S-001: `, `Query Q-12: `); the character is
    named by its code point, never echoed."""
    if not BIDI_CONTROLS.isdisjoint(value):  # the usual text passes both tests at C speed
        char = next(char for char in value if char in BIDI_CONTROLS)
        raise InvalidInput(
            f"{_named(field_name, label, where)} holds the bidirectional control character "
            f"U+{ord(char):04X} ({unicodedata.name(char)}), which can make a text display "
            "other than it is stored; remove it.", rule="bidi_control", field=field_name,
            subject=subject)
    if value and all(_invisible(char) for char in value):
        raise InvalidInput(
            f"{_named(field_name, label, where)} is made only of invisible characters (spaces, "
            "zero-width or other format characters, combining marks without a letter); give a "
            "visible text.", rule="invisible_text", field=field_name, subject=subject)
    return value


def _named(field_name: str, label: str | None, where: str) -> str:
    """How a refusal of the free-text rule names the field (its sentence's start)."""
    shown = f"{where}{label or '--' + field_name.replace('_', '-')}"
    return shown[:1].upper() + shown[1:]


def escape_free_text(value: str) -> str:
    """`value` with what the free-text rule refuses written as `\\uXXXX` escapes instead (a
    text from outside, recorded all the same): every bidirectional control character, and
    every character of a text made only of invisible characters."""
    if value and all(_invisible(char) for char in value):
        return value.encode("unicode_escape").decode("ascii")
    return "".join(f"\\u{ord(char):04x}" if char in BIDI_CONTROLS else char for char in value)


def _shown_text(value: object) -> str:
    """A field's value as a label may show it: as it is, or escaped when the rule would refuse
    it (a refused character is named, never echoed)."""
    text = str(value)
    if any(char in BIDI_CONTROLS for char in text) or (text and all(map(_invisible, text))):
        return ascii(text)
    return text


def check_message_text(message: Message) -> None:
    """Every text a message carries through the free-text rule (`Message.__init_subclass__`
    calls this once each message is built): each `str` field, each `str` of a tuple field, and
    of the form tokens `FIELD=VALUE` (`fields`) the whole token for bidirectional controls and
    its value for invisible text, named `field FIELD`. Secrets are no text here (`Secret`)."""
    subject = getattr(message, "subject", None)
    query = getattr(message, "query", None)
    where = (f"Subject {subject}: " if isinstance(subject, str) else
             f"Query {query}: " if isinstance(query, str) else "")
    about = subject if isinstance(subject, str) else None
    specs = fields(message)  # type: ignore[arg-type]
    shown = {spec.name: _shown_text(getattr(message, spec.name)) for spec in specs
             if isinstance(getattr(message, spec.name), str)} if message.text_labels else {}
    for spec in specs:
        name = spec.name
        value = getattr(message, name)
        if name in message.outside_text:
            if isinstance(value, str):
                _set(message, name, escape_free_text(value))
            continue
        items = value if isinstance(value, tuple) else (value,)
        for item in items:
            if not isinstance(item, str):
                continue
            if name != "fields":
                label = message.text_labels.get(name)
                check_free_text(item, name, where=where, subject=about,
                                label=None if label is None else label.format_map(shown))
                continue
            code, sep, text = item.partition("=")
            code = code.strip()
            plain = code.isascii() and code.isprintable() and bool(code)
            label = f"field {code if plain else ascii(code)}"
            field_name = code if plain else name  # never a refused character in `detail`
            check_free_text(item, field_name, label=label, where=where, subject=about)
            if sep:
                check_free_text(text, field_name, label=label, where=where, subject=about)


def check_amount(value: float, field_name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
            value) or value < 0 or value > 1e13:
        raise InvalidInput(f"{field_name} must be a finite number from 0, got {value}.",
                           field=field_name)
    return float(value)


def check_position(value: int, field_name: str = "position") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2**63:
        raise InvalidInput(f"{field_name} must be a log position from 1, got {value!r}.",
                           field=field_name)
    return value


def _set(message: Message, name: str, value: Any) -> None:
    object.__setattr__(message, name, value)


# ---------------------------------------------------------------------- study administration
@dataclass(frozen=True)
class InitialiseStudy(Message):
    """The first write of a study: its first admin (whose password this sets), the scheduler
    service account (with its generated secret) and the protocol version in force."""

    admin: str
    password: Secret
    scheduler_secret: Secret
    protocol_version: int = 2
    purpose: str = "study"
    command: ClassVar[str] = "init --admin"

    def __post_init__(self) -> None:
        check_name(self.admin, "admin")
        if self.purpose not in ("study", "demo"):
            raise InvalidInput(f"purpose {self.purpose!r} is not study or demo.", field="purpose")


@dataclass(frozen=True)
class AddSite(Message):
    site: str
    tz: str
    command: ClassVar[str] = "sites add"

    def __post_init__(self) -> None:
        check_name(self.site, "site")
        try:
            ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError, OSError, TypeError):  # OSError: too long
            raise InvalidInput(f"Time zone {self.tz!r} is not an IANA time zone such as "
                               "Asia/Shanghai.", field="tz") from None


@dataclass(frozen=True)
class AddUser(Message):
    """A person's first password is set by the admin and is temporary; a service account's is
    a secret trialflow generated."""

    name: str
    role: str
    site: str | None
    password: Secret
    command: ClassVar[str] = "users add"

    def __post_init__(self) -> None:
        from workflow.study import ROLES

        check_name(self.name)
        if self.role not in ROLES:
            raise InvalidInput(f"Role {self.role!r} is not one of {', '.join(ROLES)}.",
                               field="role")
        if self.site is not None:
            check_name(self.site, "site")


@dataclass(frozen=True)
class DeactivateUser(Message):
    name: str
    command: ClassVar[str] = "users deactivate"

    def __post_init__(self) -> None:
        check_name(self.name)


@dataclass(frozen=True)
class ChangePassword(Message):
    """Users change their own password; an admin sets a person's, which is then temporary."""

    name: str
    password: Secret
    command: ClassVar[str] = "users passwd"

    def __post_init__(self) -> None:
        check_name(self.name)


@dataclass(frozen=True)
class UnlockAccount(Message):
    name: str
    reason: str
    command: ClassVar[str] = "users unlock"

    def __post_init__(self) -> None:
        check_name(self.name)
        _set(self, "reason", check_text(self.reason, "reason", MAX_NOTE))


@dataclass(frozen=True)
class SetLockoutPolicy(Message):
    max_failed_attempts: int
    command: ClassVar[str] = "users policy"

    def __post_init__(self) -> None:
        value = self.max_failed_attempts
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100:
            raise InvalidInput("--max-failed-attempts must be a whole number from 1 to 100.",
                               field="max_failed_attempts")


@dataclass(frozen=True)
class LoadProtocol(Message):
    text: str
    source: str
    command: ClassVar[str] = "protocol load"
    text_labels: ClassVar[dict[str, str]] = {"text": "the protocol file {source}",
                                             "source": "the name of the protocol file"}


@dataclass(frozen=True)
class AmendProtocol(Message):
    """`reviewed`: the digest of the preview the admin reviewed (`protocol preview`); the
    executor computes the preview again (`loads = "amendment"`) and the decision compares."""

    version: int
    reviewed: str | None = None
    loads: ClassVar[str] = "amendment"
    command: ClassVar[str] = "protocol amend"

    def __post_init__(self) -> None:
        if self.reviewed is None:
            return
        digest = self.reviewed.strip().lower() if isinstance(self.reviewed, str) else ""
        if not _SHA256.fullmatch(digest):
            raise InvalidInput("--reviewed must be the 64-character digest `trialflow protocol "
                               "preview` printed.", field="reviewed")
        _set(self, "reviewed", digest)


@dataclass(frozen=True)
class SetAmendmentReview(Message):
    required: bool
    command: ClassVar[str] = "protocol review-policy"

    def __post_init__(self) -> None:
        if not isinstance(self.required, bool):
            raise InvalidInput("The review policy is required or optional.", field="required")


# ---------------------------------------------------------------------- a subject's lifecycle
@dataclass(frozen=True)
class SubjectMessage(Message):
    subject: str
    loads: ClassVar[str] = "subject"

    def __post_init__(self) -> None:
        check_subject_id(self.subject)


@dataclass(frozen=True)
class ConsentSubject(SubjectMessage):
    on: date
    consent_form_version: str
    command: ClassVar[str] = "consent"

    def __post_init__(self) -> None:
        super().__post_init__()
        _set(self, "consent_form_version",
             check_text(self.consent_form_version, "consent_form_version"))


@dataclass(frozen=True)
class ReconsentSubject(SubjectMessage):
    consent_form_version: str
    on: date | None = None
    command: ClassVar[str] = "reconsent"

    def __post_init__(self) -> None:
        super().__post_init__()
        _set(self, "consent_form_version",
             check_text(self.consent_form_version, "consent_form_version"))


@dataclass(frozen=True)
class RecordForm(SubjectMessage):
    form: str
    fields: tuple[str, ...]
    on: date | None = None
    visit: str | None = None
    command: ClassVar[str] = "record"

    def __post_init__(self) -> None:
        super().__post_init__()
        _set(self, "fields", tuple(self.fields))


@dataclass(frozen=True)
class CorrectRecord(SubjectMessage):
    position: int
    fields: tuple[str, ...]
    reason: str
    command: ClassVar[str] = "correct"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_position(self.position)
        _set(self, "fields", tuple(self.fields))
        if not self.reason or not self.reason.strip():
            raise InvalidInput("A correction needs --reason.", field="reason")


@dataclass(frozen=True)
class VoidRecord(SubjectMessage):
    """Mark a record entered in error (a form, a procedure, an AE, a visit): it stays in the
    log, every read model leaves it out."""

    position: int
    reason: str
    command: ClassVar[str] = "void"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_position(self.position)
        if not self.reason or not self.reason.strip():
            raise InvalidInput("A void needs --reason.", field="reason")


@dataclass(frozen=True)
class ConfirmEligibility(SubjectMessage):
    on: date | None = None  # the clinical date of the confirmation (default today at the site)
    command: ClassVar[str] = "confirm-eligibility"


@dataclass(frozen=True)
class RecordScreenFailure(SubjectMessage):
    reason: str  # a code of codes.SCREEN_FAILURE_REASONS (`screen_failure_code`)
    on: date | None = None  # the clinical date of the screen failure (default today)
    note: str | None = None  # free text: what the code leaves out
    command: ClassVar[str] = "screen-fail"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_text(self.reason, "reason")
        code = screen_failure_code(self.reason)
        if self.note is not None:
            check_text(self.note, "note", limit=1000)
        elif code == "other":
            raise InvalidInput("--reason other needs --note saying what the reason is.",
                               field="note")


def screen_failure_code(value: str) -> str:
    """The code of codes.SCREEN_FAILURE_REASONS that `value` names (any case, `-` or `_`,
    British or American spelling); refused (exit 2) with the codes, the closest first."""
    import difflib

    from workflow.instruments.codes import SCREEN_FAILURE_REASONS, canonical_code

    typed = re.sub(r"[\s-]+", "_", value.strip())
    code = canonical_code(typed, SCREEN_FAILURE_REASONS)
    if code is not None:
        return code
    close = difflib.get_close_matches(typed.lower(), SCREEN_FAILURE_REASONS, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    raise InvalidInput(
        f"--reason must be a screen-failure code ({hint}one of "
        f"{', '.join(SCREEN_FAILURE_REASONS)}; `trialflow forms --codes` lists them), got "
        f"{_shown_text(value)[:60]!r}; free text goes in --note.", field="reason")


@dataclass(frozen=True)
class RecordLeukapheresis(SubjectMessage):
    on: date
    coi_id: str
    command: ClassVar[str] = "leukapheresis"

    def __post_init__(self) -> None:
        super().__post_init__()
        _set(self, "coi_id", check_text(self.coi_id, "coi_id"))


@dataclass(frozen=True)
class ReleaseProduct(SubjectMessage):
    lot: str
    coi_id: str
    failed: bool = False
    reason: str | None = None
    viable_cells: float | None = None
    on: date | None = None  # the clinical date of the release (default today at the site)
    command: ClassVar[str] = "release"

    def __post_init__(self) -> None:
        super().__post_init__()
        _set(self, "lot", check_text(self.lot, "lot"))
        if self.viable_cells is not None:
            check_amount(self.viable_cells, "viable_cells")
        if self.failed and not self.reason:
            raise InvalidInput("A failed release needs --reason.", field="reason")


@dataclass(frozen=True)
class GiveLymphodepletion(SubjectMessage):
    on: date
    fludarabine_mg: float
    cyclophosphamide_mg: float
    deviation: bool = False
    reason: str | None = None
    command: ClassVar[str] = "lymphodepletion"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_amount(self.fludarabine_mg, "fludarabine_mg")
        check_amount(self.cyclophosphamide_mg, "cyclophosphamide_mg")
        if self.deviation and not self.reason:
            raise InvalidInput("--deviation needs --reason.", field="reason")


@dataclass(frozen=True)
class Infuse(SubjectMessage):
    at: datetime
    cells: float
    coi_id: str
    deviation: bool = False
    reason: str | None = None
    command: ClassVar[str] = "infuse"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_amount(self.cells, "cells")
        if self.deviation and not self.reason:
            raise InvalidInput("--deviation needs --reason.", field="reason")


@dataclass(frozen=True)
class RecordVisit(SubjectMessage):
    """A follow-up visit done or missed on `on` (default today at the site). A missed visit
    needs `reason` (why it did not happen); a done visit may carry one, which the deviation
    of a visit outside its window then shows. A blank reason is none."""

    visit: str
    status: str
    on: date | None = None
    reason: str | None = None
    command: ClassVar[str] = "visit"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.status not in ("done", "missed"):
            raise InvalidInput("Say --done or --missed.", field="status")
        why = self.reason.strip() if self.reason and self.reason.strip() else None
        if why is not None:
            why = check_text(why, "reason", MAX_NOTE)
        _set(self, "reason", why)
        if self.status == "missed" and why is None:
            raise InvalidInput(f"Subject {self.subject}: a missed visit needs --reason (why "
                               f"visit {self.visit} did not happen).", field="reason",
                               subject=self.subject)


@dataclass(frozen=True)
class CompleteStudy(SubjectMessage):
    on: date | None = None  # the clinical date of completion (default today at the site)
    command: ClassVar[str] = "complete"


@dataclass(frozen=True)
class TakeOffStudy(SubjectMessage):
    reason: str
    on: date | None = None  # the clinical date of leaving the study (default today)
    command: ClassVar[str] = "off-study"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.reason not in OFF_STUDY_REASONS:
            raise InvalidInput(f"--reason must be one of {', '.join(OFF_STUDY_REASONS)}.",
                               field="reason")


# ---------------------------------------------------------------------- data review
@dataclass(frozen=True)
class OpenQuery(SubjectMessage):
    position: int
    field: str
    text: str
    command: ClassVar[str] = "query open"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_position(self.position)
        _set(self, "text", check_text(self.text, "text", MAX_NOTE))


@dataclass(frozen=True)
class QueryMessage(Message):
    query: str
    loads: ClassVar[str] = "query"

    @property
    def query_position(self) -> int:
        return query_position(self.query)

    def __post_init__(self) -> None:
        _set(self, "query", f"Q-{query_position(self.query)}")


@dataclass(frozen=True)
class AnswerQuery(QueryMessage):
    """An answer, and with `fields` a correction of the queried form by the rules of
    `CorrectRecord`, in the same append."""

    text: str
    fields: tuple[str, ...] = ()
    reason: str | None = None
    command: ClassVar[str] = "query answer"

    def __post_init__(self) -> None:
        super().__post_init__()
        _set(self, "text", check_text(self.text, "text", MAX_NOTE))
        _set(self, "fields", tuple(self.fields))
        if self.reason is not None and not self.fields:
            raise InvalidInput("--reason explains a correction: give FIELD=VALUE as well, or "
                               "say it in --text.", field="reason")


@dataclass(frozen=True)
class CloseQuery(QueryMessage):
    reason: str | None = None
    command: ClassVar[str] = "query close"

    def __post_init__(self) -> None:
        super().__post_init__()
        why = self.reason.strip() if self.reason and self.reason.strip() else None
        if why is not None:
            why = check_text(why, "reason", MAX_NOTE)
        _set(self, "reason", why)


@dataclass(frozen=True)
class VerifySource(SubjectMessage):
    position: int
    command: ClassVar[str] = "sdv"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_position(self.position)


@dataclass(frozen=True)
class LockStudy(Message):
    reason: str
    command: ClassVar[str] = "study lock"

    def __post_init__(self) -> None:
        _set(self, "reason", check_text(self.reason, "reason", MAX_NOTE))


@dataclass(frozen=True)
class UnlockStudy(Message):
    reason: str
    command: ClassVar[str] = "study unlock"

    def __post_init__(self) -> None:
        _set(self, "reason", check_text(self.reason, "reason", MAX_NOTE))


# ---------------------------------------------------------------------- signatures and exports
@dataclass(frozen=True)
class Sign(SubjectMessage):
    """An electronic signature: needs the password itself (a session is not enough)."""

    position: int
    meaning: str
    command: ClassVar[str] = "sign"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_position(self.position)
        if self.meaning not in MEANINGS:
            raise InvalidInput(f"--meaning {self.meaning!r} is not one of "
                               f"{', '.join(MEANINGS)}.", field="meaning")


@dataclass(frozen=True)
class RecordExport(Message):
    kind: str
    file: str
    sha256: str
    position: int
    subject: str | None = None
    command: ClassVar[str] = "export"
    text_labels: ClassVar[dict[str, str]] = {"file": "the name of the export file"}

    def __post_init__(self) -> None:
        if self.kind not in EXPORT_KINDS:
            raise InvalidInput(f"Export kind {self.kind!r} is not one of "
                               f"{', '.join(EXPORT_KINDS)}.", field="kind")
        if not self.file or len(self.file) > 255 or any(ord(c) < 32 for c in self.file):
            raise InvalidInput("An export's file name must be 1 to 255 printable characters.",
                               field="file")
        if not _SHA256.fullmatch(self.sha256):
            raise InvalidInput("An export's sha256 must be 64 lower-case hex digits.",
                               field="sha256")
        if isinstance(self.position, bool) or not isinstance(self.position, int) or \
                self.position < 0:
            raise InvalidInput("An export's position must be a whole number from 0.",
                               field="position")
        if self.subject is not None:
            check_subject_id(self.subject)


# ---------------------------------------------------------------------- reminders (scheduler)
@dataclass(frozen=True)
class ReminderMessage(Message):
    subject: str
    loads: ClassVar[str] = "reminders"
    command: ClassVar[str] = "scheduler tick|run"

    def __post_init__(self) -> None:
        check_subject_id(self.subject)


@dataclass(frozen=True)
class IssueReminder(ReminderMessage):
    obligation: str
    kind: str
    due_at: str  # ISO 8601 with offset
    detail: str
    generation: int = 0


@dataclass(frozen=True)
class CancelReminder(ReminderMessage):
    reminder_id: str
    reason: str


@dataclass(frozen=True)
class RecordDelivery(ReminderMessage):
    reminder_id: str
    channel: str


@dataclass(frozen=True)
class RecordDeliveryFailure(ReminderMessage):
    reminder_id: str
    channel: str
    error: str
    outside_text: ClassVar[tuple[str, ...]] = ("error",)  # a notifier's error, as it came


# ---------------------------------------------------------------------- demo studies only
@dataclass(frozen=True)
class CopySubjects(Message):
    """Copies of a template subject's history into new subjects (`trialflow demo --subjects
    N`); refused in any study not created by `trialflow demo`."""

    template: str
    subjects: tuple[str, ...]
    first_order: int
    protocol_version: int
    spread_days: int = 365  # copy i is shifted by (offset + i) % spread_days days
    offset: int = 0
    loads: ClassVar[str] = "template"
    command: ClassVar[str] = "demo --subjects"

    def __post_init__(self) -> None:
        check_subject_id(self.template)
        _set(self, "subjects", tuple(check_subject_id(s) for s in self.subjects))
