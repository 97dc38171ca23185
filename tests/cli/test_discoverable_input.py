"""Discoverable input (issue 16): `forms` shows types, units, ranges and codes; `forms
--codes` the code lists the rules use; `screen-fail --reason` takes a code and `--note` the
free text; every command's --help lists the global options; docs/cli.md names every command;
shell completion of subjects, forms and fields."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import click
import pytest

from cli.app import COMMANDS, GLOBAL_OPTIONS, cli
from cli.completion import (
    attach_completions,
    complete_fields,
    complete_form,
    complete_reason,
    complete_subject,
    strip_global_options,
    subject_ids,
)
from tests.support.auth import run_cli
from workflow.bootstrap import build_app
from workflow.forms import FORMS

ROOT = Path(__file__).resolve().parents[2]


def call(*argv: str, db: str | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = run_cli([*(["--db", db] if db else []), *argv], stdout=out, stderr=err,
                     environ={})
    return status, out.getvalue(), err.getvalue()


@pytest.fixture
def study(sqlite_url: str) -> str:
    """A database with subjects S-001 and S-002 in screening."""
    db = sqlite_url
    assert call("init", "--admin", "ada", db=db)[0] == 0
    assert call("--user", "ada", "sites", "add", "PKU3", "--tz", "Asia/Shanghai", db=db)[0] == 0
    assert call("--user", "ada", "users", "add", "cora", "--role", "coordinator", "--site",
                "PKU3", db=db)[0] == 0
    from datetime import date, timedelta

    on = (date.today() - timedelta(days=3)).isoformat()
    for subject in ("S-001", "S-002"):
        status, out, err = call("--user", "cora", "consent", subject, "--on", on,
                                "--consent-form-version", "2.0", db=db)
        assert status == 0, (out, err)
    return db


# --- forms ----------------------------------------------------------------------------------


def test_forms_shows_each_field_s_type_unit_range_and_codes() -> None:
    status, out, _ = call("forms")
    assert status == 0
    assert re.search(r"^field +type +unit +range +required +codes$", out, re.M)
    assert re.search(r"^weight_kg +decimal +kg +> 0, <= 400 +no", out, re.M)
    assert re.search(r"^grade +integer +- +>= 1, <= 5 +yes", out, re.M)
    assert re.search(r"^serious_criteria +enum_list .*hospitalisation", out, re.M)
    for code in FORMS:
        assert re.search(rf"^{code}: ", out, re.M), code


def test_forms_json_keeps_its_shape_and_one_form_can_be_asked_for() -> None:
    status, out, _ = call("--json", "forms")
    data = json.loads(out)
    assert status == 0 and [f["form"] for f in data] == list(FORMS)
    assert set(data[0]) == {"form", "title", "command", "assessment", "date_field", "one_of",
                            "fields"}
    assert set(data[0]["fields"][0]) == {"field", "kind", "unit", "required", "allowed",
                                         "minimum", "maximum", "minimum_exclusive"}
    status, out, _ = call("--json", "forms", "vitals")
    assert status == 0 and [f["form"] for f in json.loads(out)] == ["vitals"]
    status, out, _ = call("--json", "forms", "vital")
    assert status == 2 and "did you mean vitals" in out


def test_forms_codes_lists_the_drug_lists_aliases_reasons_and_spellings() -> None:
    status, out, _ = call("forms", "--codes")
    assert status == 0
    assert re.search(r"^mycophenolate mofetil +cellcept, mmf$", out, re.M)
    assert re.search(r"^rituximab +mabthera, rituxan, rtx$", out, re.M)
    assert re.search(r"^hcq +hydroxychloroquine$", out, re.M)
    assert "screening_window_expired" in out and "consent_withdrawn" in out
    assert re.search(r"^hospitalisation +hospitalization", out, re.M)
    status, out, _ = call("--json", "forms", "--codes")
    data = json.loads(out)
    assert data["drug_aliases"]["mmf"] == "mycophenolate mofetil"
    assert "age" in data["screen_failure_reasons"]["inclusion"]


# --- screen-fail: a code and a note -------------------------------------------------------


def test_screen_fail_takes_a_code_and_a_note(study: str) -> None:
    status, out, err = call("--user", "cora", "--json", "screen-fail", "S-001", "--reason",
                            "anti-dsDNA negative", db=study)
    assert status == 2, (out, err)
    assert "screen-failure code" in out and "--note" in out
    status, out, _ = call("--user", "cora", "--json", "screen-fail", "S-001", "--reason",
                          "consent_withdrawl", db=study)
    assert status == 2 and "did you mean consent_withdrawn?" in out
    status, out, _ = call("--user", "cora", "--json", "screen-fail", "S-001", "--reason",
                          "other", db=study)
    assert status == 2 and "--note" in out
    status, out, err = call("--user", "cora", "--json", "screen-fail", "S-001", "--reason",
                            "Consent-Withdrawn", "--note", "moved abroad", db=study)
    assert status == 0, (out, err)
    assert json.loads(out)["reason"] == "consent_withdrawn"
    failed = [e for e in build_app(study).store.read_stream("S-001") if e.type == "ScreenFailed"]
    assert [e.payload for e in failed] == [{"reason": "consent_withdrawn",
                                            "note": "moved abroad"}]
    status, out, err = call("--user", "cora", "screen-fail", "S-002", "--reason", "weight",
                            db=study)
    assert status == 0 and "(weight)" in out, err
    failed = [e for e in build_app(study).store.read_stream("S-002") if e.type == "ScreenFailed"]
    assert failed[0].payload == {"reason": "weight"}  # no note: none stored
    status, out, _ = call("status", "S-001", db=study)
    assert status == 0, out


# --- --help lists every option --------------------------------------------------------------


def _command_paths() -> list[tuple[str, ...]]:
    paths: list[tuple[str, ...]] = []
    ctx = click.Context(cli)
    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        assert command is not None, name
        paths.append((name,))
        if isinstance(command, click.Group):
            paths.extend((name, sub) for sub in command.commands)
    return paths


@pytest.mark.parametrize("path", _command_paths(), ids=" ".join)
def test_every_help_lists_the_global_options(path: tuple[str, ...]) -> None:
    status, out, err = call(*path, "--help")
    assert status == 0, err
    for option in GLOBAL_OPTIONS:
        assert option in out, (path, option)
    command = cli.get_command(click.Context(cli), path[0])
    for part in path[1:]:
        assert isinstance(command, click.Group)
        command = command.commands[part]
    assert command is not None
    for param in command.params:  # and each of its own options
        for option in param.opts if isinstance(param, click.Option) else ():
            assert option in out, (path, option)


def test_the_top_help_lists_the_global_options() -> None:
    status, out, _ = call("--help")
    assert status == 0
    assert all(option in out for option in GLOBAL_OPTIONS)


# --- docs/cli.md names every command --------------------------------------------------------


def _documented_commands(text: str) -> set[str]:
    """The first word of each command in the Commands table of docs/cli.md."""
    section = text.split("## Commands", 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    names: set[str] = set()
    for row in rows:  # the first cell: its code spans up to the first `|` outside them
        for match in re.finditer(r"`([^`]+)`|\s\|\s", row[1:]):
            if match.group(1) is None:
                break
            names.add(match.group(1).split()[0])
    return names


def test_docs_cli_md_names_every_command() -> None:
    documented = _documented_commands((ROOT / "docs" / "cli.md").read_text(encoding="utf-8"))
    missing = sorted(set(COMMANDS) - documented)
    assert not missing, f"docs/cli.md's Commands table lacks {missing}"


# --- shell completion -----------------------------------------------------------------------


class _Env:
    def __init__(self, db_url: str) -> None:
        self.db_url = db_url


def _context(name: str, db: str = "sqlite:///nowhere/none.db", **params: object) -> click.Context:
    root = click.Context(cli, obj=_Env(db))
    command = cli.get_command(root, name)
    assert command is not None
    ctx = click.Context(command, parent=root, info_name=name)
    ctx.params.update(params)
    return ctx


def _values(items: list[click.shell_completion.CompletionItem]) -> list[str]:
    return [item.value for item in items]


def test_subjects_complete_from_the_database(study: str) -> None:
    ctx = _context("status", study)
    param = next(p for p in ctx.command.params if p.name == "subject")
    assert _values(complete_subject(ctx, param, "")) == ["S-001", "S-002"]
    assert _values(complete_subject(ctx, param, "s-002")) == ["S-002"]
    assert _values(param.shell_complete(ctx, "S-00")) == ["S-001", "S-002"]  # attached


def test_subject_completion_is_quiet_about_a_missing_database(tmp_path: Path) -> None:
    missing = tmp_path / "none.db"
    assert subject_ids(f"sqlite:///{missing}") == []
    assert not missing.exists()  # never created
    assert subject_ids("not a url") == []


def test_forms_fields_and_codes_complete() -> None:
    ctx = _context("record")
    param = next(p for p in ctx.command.params if p.name == "form")
    forms = _values(complete_form(ctx, param, ""))
    assert "vitals" in forms and "adverse_event" in forms
    assert "infusion" not in forms  # a phase form: its own command records it
    assert _values(complete_form(ctx, param, "vi")) == ["vitals"]
    fields = next(p for p in ctx.command.params if p.name == "fields")
    ctx = _context("record", form="vitals", fields=("weight_kg=60",))
    assert "weight_kg=" not in _values(complete_fields(ctx, fields, ""))
    assert _values(complete_fields(ctx, fields, "hei")) == ["height_cm="]
    ctx = _context("record", form="disease_activity", fields=())
    assert "hematuria" in _values(complete_fields(ctx, fields, "hem"))  # a flag: bare
    ctx = _context("record", form="adverse_event", fields=())
    assert _values(complete_fields(ctx, fields, "serious_criteria=ho")) == [
        "serious_criteria=hospitalisation"]
    assert _values(complete_fields(ctx, fields, "serious_criteria=death,ho")) == [
        "serious_criteria=death,hospitalisation"]
    assert _values(complete_fields(ctx, fields, "expected=")) == ["expected=yes",
                                                                  "expected=no"]
    assert complete_fields(_context("record", form="nonsense"), fields, "x") == []
    split = _context("record", form="adverse_event", fields=("serious_criteria", "="))
    assert _values(complete_fields(split, fields, "ho")) == ["hospitalisation"]  # bash: at "="
    reason = _context("screen-fail")
    assert "consent_withdrawn" in _values(complete_reason(reason, fields, "con"))


def test_attach_completions_reaches_subcommands_and_skips_correct() -> None:
    group = click.Group("g", commands=[click.Command("c", params=[click.Argument(["subject"])])])
    attach_completions(group)
    assert group.commands["c"].params[0]._custom_shell_complete is complete_subject
    correct = cli.get_command(click.Context(cli), "correct")
    assert correct is not None
    fields = next(p for p in correct.params if p.name == "fields")
    assert fields._custom_shell_complete is None  # the form is the record's, not on the line


def test_global_options_are_taken_out_of_the_words_completed() -> None:
    environ = {"COMP_WORDS": "trialflow --db sqlite:///x.db --json status S-0",
               "COMP_CWORD": "5"}
    strip_global_options(environ)
    assert environ == {"COMP_WORDS": "trialflow status S-0", "COMP_CWORD": "2"}
    environ = {"COMP_WORDS": "trialflow record --db=sqlite:///x.db S-001 vi", "COMP_CWORD": "4"}
    strip_global_options(environ)
    assert environ == {"COMP_WORDS": "trialflow record S-001 vi", "COMP_CWORD": "3"}
