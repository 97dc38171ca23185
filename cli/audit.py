"""`trialflow audit …`: the audit trail (log), state as of a moment (replay), what changed
between two moments (diff), chain verification and seals."""

from __future__ import annotations

import csv
import json
import os
import stat
import textwrap
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import click

from cli.context import Env
from cli.render import emit, table
from projections.as_of import MAX_POSITION

if TYPE_CHECKING:
    from events.envelope import RecordedEvent

MAX_SEAL_BYTES = 64 * 2**20  # a seal names every stream: 64 MiB holds some 500,000


@click.group("audit", help="Audit trail, state as of a moment, what changed between two "
             "moments, integrity verification and seals (docs/audit.md).")
def audit() -> None:
    pass


@audit.command("log", help="""The audit trail: every change in order with who (actor and role),
when (recorded and occurred), what (type; a form's values; a correction's old → new per field)
and why (reason).

\b
STREAM is a subject ID, `study` or `reminders-SUBJECT`. Outputs: a table on a terminal, one
JSON document with --json, JSON lines with --jsonl, a spreadsheet with --csv FILE (one row per
changed field; `-` for stdout).

\b
--all writes the whole log as JSON lines (the only output of --all; --json then also means
JSON lines), a batch at a time in constant memory; --after POSITION resumes after the last
position a reader got.""")
@click.argument("stream", required=False)
@click.option("--all", "whole_log", is_flag=True, help="Every stream, in position order, as "
              "JSON lines.")
@click.option("--after", type=click.IntRange(0, MAX_POSITION), default=None, metavar="POSITION",
              help="With --all: start after this position (resume).")
@click.option("--as-of", "as_of", default=None, metavar="TIME|@N",
              help="Only what was recorded by then: ISO 8601 time (UTC if no offset) or "
              "@POSITION.")
@click.option("--jsonl", is_flag=True, help="One JSON object per event and line.")
@click.option("--csv", "csv_file", default=None, metavar="FILE",
              help="Write CSV to FILE (`-`: stdout), one row per changed field.")
@click.pass_obj
def log(env: Env, stream: str | None, whole_log: bool, after: int | None, as_of: str | None,
        jsonl: bool, csv_file: str | None) -> None:
    from events.streams import check_stream_id
    from projections.as_of import as_of_position
    from projections.audit_trail import trail_entry

    if whole_log == (stream is not None):
        raise click.UsageError("Give either a STREAM or --all.")
    if after is not None and not whole_log:
        raise click.UsageError("--after goes with --all.")
    if whole_log and csv_file is not None:
        raise click.UsageError("--all writes JSON lines only (--jsonl); --csv takes a STREAM.")
    if jsonl and csv_file is not None:
        raise click.UsageError("Choose one of --jsonl and --csv.")
    store = env.app.store
    bound = as_of_position(as_of, store)
    if whole_log:
        from cli.progress import progress_bar

        batches = store.read_batches(after=after or 0, up_to=bound)
        # progress only while the lines go elsewhere than the terminal the bar is drawn on
        shown = not env.stdout_is_terminal
        try:
            with progress_bar(env, "audit log (positions)", enabled=shown) as advance:
                head = (bound if bound is not None else store.last_position()) if advance else 0
                _write_lines(env, batches, None if advance is None
                             else lambda done: advance(done, max(head, done)))
        finally:  # a generator: closing it releases its connection now, not when collected
            getattr(batches, "close", lambda: None)()
        return
    assert stream is not None
    events = store.read_stream(check_stream_id(stream), up_to_position=bound)
    if jsonl:
        _write_lines(env, [events])
        return
    entries = [trail_entry(e) for e in events]
    if csv_file is not None:
        rows = _write_csv(env, csv_file, entries)
        if csv_file != "-":
            emit(env, {"stream": stream, "as_of": as_of, "csv": csv_file,
                       "events": len(entries), "rows": rows},
                 f"Wrote {rows} rows ({len(entries)} events of {stream}) to {csv_file}.")
        return
    emit(env, {"stream": stream, "as_of": as_of, "position": bound, "events": entries},
         lambda: _log_text(stream, as_of, entries))


def _write_lines(env: Env, batches: Iterable[list[RecordedEvent]],
                 advance: Callable[[int], None] | None = None) -> None:
    """JSON lines, one write per batch as it is read: nothing is collected. `advance(position)`
    after each batch (a progress bar)."""
    from projections.audit_trail import trail_entry

    out = env.stdout
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode
    try:
        for batch in batches:
            out.write("".join([dumps(trail_entry(event)) + "\n" for event in batch]))
            if advance is not None and batch:
                advance(batch[-1].position)
        out.flush()
    except BrokenPipeError:  # the reader stopped (`| head`): stop too, quietly
        _silence(out)


def _silence(out: TextIO) -> None:
    """After a broken pipe, point the descriptor at /dev/null so the interpreter's final flush
    does not complain (the recipe of the Python docs, "Note on SIGPIPE")."""
    try:
        fileno = out.fileno()
    except (OSError, ValueError, AttributeError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fileno)
    os.close(devnull)


def _write_csv(env: Env, target: str, entries: list[dict[str, Any]]) -> int:
    """The trail as CSV on stdout (`-`) or in FILE: atomically, never through a symbolic link
    (cli/output_files.py); cells safe for spreadsheets (`audit_trail.csv_rows`)."""
    import io

    from cli.output_files import check_target, replacing
    from projections.audit_trail import CSV_COLUMNS, csv_rows

    def write(handle: TextIO) -> int:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, lineterminator="\r\n")
        writer.writeheader()
        count = 0
        for entry in entries:
            for row in csv_rows(entry):
                writer.writerow(row)
                count += 1
        return count

    if target == "-":
        return write(env.stdout)
    path = Path(target)
    check_target(path, "--csv")
    with replacing(path, "--csv") as stream:
        handle = io.TextIOWrapper(stream, encoding="utf-8", newline="")
        count = write(handle)
        handle.flush()
        handle.detach()  # the stream stays open for `replacing` to sync and rename
    return count


WHAT_WIDTH = 64  # the "what" column wraps here, so a long form stays readable


LONG_VALUE = 48  # longer values (a protocol's text) are cut in the table; --json has them all


def _show(value: Any) -> str:
    from projections.audit_trail import csv_value

    text = "(none)" if value is None else csv_value(value)
    if len(text) > LONG_VALUE:
        text = f"{text[:LONG_VALUE - 8]}… ({len(text)} chars)"
    return text


def _what_lines(entry: dict[str, Any]) -> list[str]:
    """What an event did: a correction one line per field (old → new), a form its values,
    a phase change from → to, anything else its payload; long lines wrapped."""
    p = entry["payload"]
    if p is None:  # a stored payload that is not a JSON object (audit verify names it)
        lines = [f"UNREADABLE PAYLOAD {entry.get('payload_text', '')!r}"]
    elif entry["type"] == "FormCorrected" and entry["changes"]:
        lines = [f"{c['form']}.{c['field']}: {_show(c['old'])} → {_show(c['new'])}"
                 for c in entry["changes"]]
    elif entry["type"] == "RecordVoided" and entry["changes"]:
        lines = [f"{entry['changes'][0]['form']} at position "
                 f"{entry['changes'][0]['target_position']} voided (entered in error)"]
    elif entry["changes"]:
        first = entry["changes"][0]
        lines = [f"{first['form']}: " + ", ".join(
            f"{c['field']}={_show(c['new'])}" for c in entry["changes"])]
    elif entry["type"] == "PhaseChanged":
        lines = [f"{p.get('from')} → {p.get('to')} on {p.get('on')} ({p.get('trigger')})"]
    else:
        lines = [", ".join(f"{k}={_show(v)}" for k, v in p.items()) or "-"]
    wrapped: list[str] = []
    for line in lines:
        wrapped.extend(textwrap.wrap(line, WHAT_WIDTH, subsequent_indent="  ",
                                     break_on_hyphens=False) or [line])
    return wrapped


def _log_text(stream: str, as_of: str | None, entries: list[dict[str, Any]]) -> str:
    bound = f" as of {as_of}" if as_of else ""
    if not entries:
        return f"Stream {stream} has no events{bound}."
    rows: list[list[Any]] = []
    for e in entries:
        kind = e["type"]
        if e["changes"] and e["changes"][0]["target_position"] is not None:
            kind += f" of @{e['changes'][0]['target_position']}"
        for i, what in enumerate(_what_lines(e)):
            if i == 0:
                rows.append([e["position"], e["version"], e["recorded_at"], e["occurred_at"],
                             f"{e['actor']} ({e['role']})", kind, what, e["reason"]])
            else:
                rows.append(["", "", "", "", "", "", what, ""])
    title = f"Audit trail of {stream}{bound}: {len(entries)} events"
    return title + "\n\n" + table(
        ["pos", "ver", "recorded_at", "occurred_at", "who", "type", "what", "why"], rows)


@audit.command("verify", help="""Check the whole log: positions without a gap, every
stream's hash chain, the global chain through every position, every payload, the command
table against the events it names. Exit 4 naming the first gap, the missing streams and the
first broken link.

\b
--seal FILE also checks a signed seal from `audit seal` (its signature with the public key
of --public-key or TRIALFLOW_SEAL_PUBLIC_KEY, or of the private key in TRIALFLOW_SEAL_KEY),
--root POSITION:HASH a root printed by `audit seal` and kept outside the database.""")
@click.option("--seal", "seal_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also check against a signed seal made earlier by `audit seal`.")
@click.option("--public-key", "public_key", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="The seal key's public key (env TRIALFLOW_SEAL_PUBLIC_KEY).")
@click.option("--root", "root_text", default=None, metavar="POSITION:HASH",
              help="Also check that the log's chain passes through this root.")
@click.pass_obj
def verify(env: Env, seal_file: Path | None, public_key: Path | None,
           root_text: str | None) -> None:
    from cli.progress import progress_bar
    from events.chain import Verification, parse_root, parse_seal, verify_against_seal
    from events.chain import verify as verify_chains

    root = None
    if root_text is not None:
        try:
            root = parse_root(root_text)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--root") from None
    result: Verification
    if seal_file is not None:
        public = _public_key(env, public_key)
        try:
            found = seal_file.stat()
            if not stat.S_ISREG(found.st_mode) or found.st_size > MAX_SEAL_BYTES:
                raise click.BadParameter(f"{seal_file} is not a seal file (a regular file of at "
                                         f"most {MAX_SEAL_BYTES // 2**20} MiB)",
                                         param_hint="--seal")
            text = seal_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise click.BadParameter(
                f"cannot read {seal_file}: {error}", param_hint="--seal"
            ) from error
        sealed = parse_seal(text, str(seal_file), public)
        with progress_bar(env, "verifying (positions)") as advance:
            result = verify_against_seal(env.app.store, sealed, progress=advance)
        if root is not None:
            with progress_bar(env, "verifying the root (positions)") as advance:
                result = verify_chains(env.app.store, root=root, progress=advance)
    else:
        with progress_bar(env, "verifying (positions)") as advance:
            result = verify_chains(env.app.store, root=root, progress=advance)
    data = {"ok": True, "events": result.events, "streams": result.streams,
            "position": result.position, "root": f"{result.position}:{result.root}",
            "commands": result.commands, "seal_checked": seal_file is not None,
            "root_checked": None if root is None else str(result.root_checked)}
    checked = [what for what, done in (("the seal", seal_file is not None),
                                       (f"the root at position "
                                        f"{getattr(result.root_checked, 'position', '')}",
                                        root is not None)) if done]
    emit(env, data, lambda: (
        f"OK: {result.events} events in {result.streams} streams verify up to position "
        f"{result.position}" + (f", and match {' and '.join(checked)}." if checked else ".")
    ))


@audit.command("seal", help="""Verify, then print a seal signed with the seal key: the log's
root (the global chain hash at the head), the head position, every stream's head and the time,
as JSON; and on stderr the root as one line to publish or e-mail (check it later with `audit
verify --root`). The key: --key FILE or TRIALFLOW_SEAL_KEY (made by `audit keygen`).""")
@click.option("--key", "key_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="The seal key's private key file (env TRIALFLOW_SEAL_KEY).")
@click.pass_obj
def seal(env: Env, key_file: Path | None) -> None:
    from events.chain import make_seal
    from events.seals import KeyProblem, load_private

    path = key_file or _env_path(env, "TRIALFLOW_SEAL_KEY")
    if path is None:
        raise click.UsageError("A seal is signed: give the seal key with --key FILE or "
                               "TRIALFLOW_SEAL_KEY (make one with `trialflow audit keygen`).")
    try:
        key = load_private(path)
    except KeyProblem as error:
        raise click.BadParameter(str(error), param_hint="--key") from None
    data = make_seal(env.app.store, key, now=env.app.clock())
    env.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    env.stderr.write(f"Root: {data['position']}:{data['root']}  (publish this line; check "
                     f"with `trialflow audit verify --root {data['position']}:{data['root']}`)\n")


@audit.command("keygen", help="""Make a seal key: an Ed25519 private key in FILE (mode 0600,
never overwritten) and its public key in FILE.pub. Keep the private key outside the database
server (it signs seals) and give auditors the public key (it checks them).""")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where the private key is written.")
@click.pass_obj
def keygen(env: Env, out: Path) -> None:
    from events.seals import KeyProblem, generate

    try:
        public, fingerprint = generate(out)
    except KeyProblem as error:
        raise click.BadParameter(str(error), param_hint="--out") from None
    emit(env, {"private_key": str(out), "public_key": str(public), "key_id": fingerprint},
         f"Seal key written to {out} (keep it secret, outside the database server); its "
         f"public key to {public} (key id {fingerprint[:16]}).")


def _env_path(env: Env, name: str) -> Path | None:
    value = env.environ.get(name)
    return Path(value) if value else None


def _public_key(env: Env, given: Path | None) -> Any:
    """The public key seals are checked with: --public-key, TRIALFLOW_SEAL_PUBLIC_KEY, or the
    public half of the private key in TRIALFLOW_SEAL_KEY."""
    from events.seals import KeyProblem, load_public

    path = given or _env_path(env, "TRIALFLOW_SEAL_PUBLIC_KEY") or _env_path(
        env, "TRIALFLOW_SEAL_KEY")
    if path is None:
        raise click.UsageError("Checking a seal needs the seal key's public key: --public-key "
                               "FILE or TRIALFLOW_SEAL_PUBLIC_KEY.")
    try:
        return load_public(path)
    except KeyProblem as error:
        raise click.BadParameter(str(error), param_hint="--public-key") from None


@audit.command("replay", help="Every subject as the system showed it at a moment: phase, "
               "eligibility, safety window and open SAE clocks, adverse events, visits with "
               "their status. Folded in memory from the log up to that moment, with the clock "
               "at that moment (for @N: when event N was recorded); no table is read.")
@click.option("--as-of", "as_of", required=True, metavar="TIME|@N",
              help="ISO 8601 recorded time (UTC if no offset) or @POSITION.")
@click.pass_obj
def replay(env: Env, as_of: str) -> None:
    from projections.audit_trail import replay as replay_at

    data = replay_at(env.app.store, as_of)
    emit(env, data, lambda: _replay_text(data))


@audit.command("diff", help="What changed between two moments (each TIME|@N, the earlier "
               "first): per subject the phase, eligibility, safety window, visits whose status "
               "changed, adverse events added or changed (by position), and the events "
               "recorded in between (count and types).")
@click.argument("first", metavar="TIME1|@N")
@click.argument("second", metavar="TIME2|@N")
@click.pass_obj
def diff(env: Env, first: str, second: str) -> None:
    from projections.audit_trail import diff as compare

    data = compare(env.app.store, first, second)
    emit(env, data, lambda: _diff_text(data))


def _moment_text(data: dict[str, Any]) -> str:
    return f"{data['as_of']} (position {data['position']}, clock {data['at'] or '-'})"


def _replay_text(data: dict[str, Any]) -> str:
    head = f"As of {_moment_text(data)}"
    subjects = data["subjects"]
    if not subjects:
        return head + ": no subjects."
    lines = [head, ""]
    lines.append(table(
        ["subject", "phase", "days", "study_day", "cohort", "eligibility", "safety_window",
         "open_sae_clocks", "aes", "next_step"],
        [[s["subject"], s["phase"], s["days_in_phase"], s["study_day"], s["cohort"],
          s["eligibility"], _window_text(s["safety_window"]),
          ", ".join(f"{c['clock']} (AE {c['ae_position']}) {c['state']}"
                    for c in s["open_sae_clocks"]) or None,
          len(s["adverse_events"]), s["next_step"]] for s in subjects]))
    lines += ["", table(
        ["subject", "visit", "target", "window", "status", "done_on"],
        [[s["subject"], v["visit"], v["target_date"],
          f"{v['window_start']}..{v['window_end']}", v["status"], v["done_on"]]
         for s in subjects for v in s["visits"]])]
    return "\n".join(lines)


def _window_text(window: dict[str, Any] | None) -> str | None:
    if window is None:
        return None
    left = f", {window['days_left']} days left" if window["days_left"] is not None else ""
    return f"{window['state']} {window['window_start']}..{window['window_end']}{left}"


def _counts_text(counts: dict[str, Any]) -> str:
    types = ", ".join(f"{kind} {n}" for kind, n in counts["types"].items())
    return f"{counts['count']}" + (f" ({types})" if types else "")


def _diff_text(data: dict[str, Any]) -> str:
    lines = [f"From {_moment_text(data['from'])}", f"to   {_moment_text(data['to'])}",
             f"Events in between: {_counts_text(data['events'])}"]
    if data["study_events"]["count"]:
        lines.append(f"Study stream: {_counts_text(data['study_events'])}")
    if not data["subjects"]:
        lines.append("No subject changed.")
    for s in data["subjects"]:
        lines += ["", f"{s['subject']}" + (" (new)" if s["new_subject"] else "")]
        for key in ("phase", "eligibility", "safety_window"):
            if s[key]:
                lines.append(f"  {key}: {s[key]['from'] or '(none)'} → {s[key]['to'] or '(none)'}")
        for v in s["visits"]:
            done = f" on {v['done_on']}" if v["done_on"] else ""
            lines.append(f"  visit {v['visit']}: {v['from'] or '(none)'} → {v['to']}{done}")
        for ae in s["adverse_events"]["added"]:
            lines.append(f"  AE @{ae['position']} added: {ae['term']}, grade {ae['grade']}"
                         + (", serious" if ae["serious"] else ""))
        for ae in s["adverse_events"]["changed"]:
            changes = "; ".join(f"{k} {c['from']} → {c['to']}" for k, c in ae["changes"].items())
            lines.append(f"  AE @{ae['position']} changed ({ae['term']}): {changes}")
        lines.append(f"  events: {_counts_text(s['events'])}")
    return "\n".join(lines)
