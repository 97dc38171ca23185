"""Shell completion (Click's): commands, subject ids, forms, fields and codes.

Enable it with `eval "$(_TRIALFLOW_COMPLETE=bash_source trialflow)"` (zsh: `zsh_source`,
fish: `fish_source`; docs/cli-header.md). Commands and options come from Click; the callbacks
here complete the values: a SUBJECT from the database (`--db`, `TRIALFLOW_DB` or the default,
read quietly: nothing when it cannot be read, never created), a FORM and its `field=value`
tokens from workflow.forms.FORMS, a screen-failure `--reason` from the codes.

`attach_completions` gives every `subject`, `form` and `fields` argument of a command (and of
its subcommands) its callback, so the commands need not name them one by one.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import MutableMapping, Sequence

import click
from click.shell_completion import CompletionItem

MAX_SUBJECTS = 500  # a completion lists at most this many subject ids


_given_words: list[str] = []  # the words being completed, global options included


def strip_global_options(environ: MutableMapping[str, str] | None = None) -> None:
    """Take the global options (and their values) out of the words Click completes (bash and
    zsh: COMP_WORDS, COMP_CWORD), as `run` takes them out of a command line: Click knows
    none of them. `--db` stays known to the SUBJECT completion."""
    from click.shell_completion import split_arg_string

    from cli.app import GLOBAL_OPTIONS

    words_env: MutableMapping[str, str] = os.environ if environ is None else environ
    words, cword = words_env.get("COMP_WORDS"), words_env.get("COMP_CWORD")
    if words is None or cword is None or not cword.isdigit():
        return
    tokens, position = split_arg_string(words), int(cword)
    _given_words[:] = tokens
    kept: list[str] = tokens[:1]
    removed, i = 0, 1
    while i < len(tokens):
        name = tokens[i].partition("=")[0]
        if i < position and name in GLOBAL_OPTIONS:  # only before the word being completed
            skip = 2 if GLOBAL_OPTIONS[name] and "=" not in tokens[i] and i + 1 < position else 1
            removed += skip
            i += skip
            continue
        kept.append(tokens[i])
        i += 1
    words_env["COMP_WORDS"] = shlex.join(kept)
    words_env["COMP_CWORD"] = str(position - removed)


def _database_url(ctx: click.Context) -> str:
    """The database the command line names: `--db` among the words being completed, else the
    one `run` resolved (TRIALFLOW_DB or the default)."""
    words = list(_given_words)
    for i, word in enumerate(words):
        if word == "--db" and i + 1 < len(words):
            return words[i + 1]
        if word.startswith("--db="):
            return word.partition("=")[2]
    env = ctx.find_root().obj
    url = getattr(env, "db_url", None)
    if isinstance(url, str):
        return url
    from cli.app import DEFAULT_DB

    return os.environ.get("TRIALFLOW_DB") or DEFAULT_DB


def subject_ids(url: str) -> list[str]:
    """The subject ids in the database at `url`, sorted; [] when it cannot be read (missing,
    locked, no schema, no server): completion never fails, never writes, never creates."""
    try:
        import logging

        from events.streams import is_subject_id
        from workflow.bootstrap import build_app

        logging.disable(logging.CRITICAL)
        try:
            app = build_app(url, create=False)
            try:
                heads = app.store.stream_heads()
            finally:
                app.engine.dispose()
        finally:
            logging.disable(logging.NOTSET)
        return sorted(stream for stream in heads if is_subject_id(stream))[:MAX_SUBJECTS]
    except Exception:  # quietly: a completion shows nothing rather than an error
        return []


def complete_subject(ctx: click.Context, param: click.Parameter,
                     incomplete: str) -> list[CompletionItem]:
    """SUBJECT: the subject ids of the database that start with what is typed."""
    typed = incomplete.upper()
    return [CompletionItem(subject) for subject in subject_ids(_database_url(ctx))
            if subject.upper().startswith(typed)]


def complete_form(ctx: click.Context, param: click.Parameter,
                  incomplete: str) -> list[CompletionItem]:
    """FORM: the forms `record` takes (a phase form is recorded by its own command)."""
    from workflow.forms import FORMS

    recordable = ctx.command.name == "record"
    return [CompletionItem(code, help=spec.title) for code, spec in FORMS.items()
            if code.startswith(incomplete.lower()) and not (recordable and spec.command)]


def complete_fields(ctx: click.Context, param: click.Parameter,
                    incomplete: str) -> list[CompletionItem]:
    """`field=value` tokens of the FORM given before: `field=` for each field not given yet (a
    flag bare), then after `field=` the field's codes (or yes/no)."""
    from workflow.forms import FORMS, Kind

    spec = FORMS.get(str(ctx.params.get("form") or ""))
    if spec is None:
        return []
    given_tokens = [str(token) for token in ctx.params.get("fields") or ()]
    if "=" not in incomplete and len(given_tokens) >= 2 and given_tokens[-1] == "=":
        # bash splits `field=code` at "=" into three words: complete the code alone
        field = spec.find(given_tokens[-2])
        if field is None:
            return []
        return [CompletionItem(item.value.partition("=")[2]) for item in complete_fields(
            ctx, param, f"{field.code}={incomplete}")]
    name, equals, value = incomplete.partition("=")
    if equals:
        field = spec.find(name)
        if field is None:
            return []
        choices: Sequence[str] = (field.allowed if field.kind in (Kind.ENUM, Kind.ENUM_LIST)
                                  else ("yes", "no") if field.kind in (Kind.YES_NO, Kind.FLAG)
                                  else ())
        if field.kind is Kind.ENUM_LIST and "," in value:
            done, _, value = value.rpartition(",")
            return [CompletionItem(f"{field.code}={done},{code}") for code in choices
                    if code.startswith(value.lower())]
        return [CompletionItem(f"{field.code}={code}") for code in choices
                if code.startswith(value.lower())]
    given = {str(token).partition("=")[0] for token in ctx.params.get("fields") or ()}
    return [CompletionItem(field.code if field.kind is Kind.FLAG else f"{field.code}=",
                           help=_field_help(field.kind, field.unit))
            for field in spec.fields
            if field.code.startswith(name) and field.code not in given]


def _field_help(kind: object, unit: str) -> str:
    return f"{kind}{', ' + unit if unit else ''}"


def complete_reason(ctx: click.Context, param: click.Parameter,
                    incomplete: str) -> list[CompletionItem]:
    """`screen-fail --reason`: the screen-failure codes."""
    from workflow.instruments.codes import SCREEN_FAILURE_REASONS

    return [CompletionItem(code) for code in SCREEN_FAILURE_REASONS
            if code.startswith(incomplete.lower())]


_CALLBACKS = {"subject": complete_subject, "form": complete_form, "fields": complete_fields}


def attach_completions(command: click.Command) -> click.Command:
    """`command` (and its subcommands) with the callbacks above on every `subject`, `form` and
    `fields` argument and on `screen-fail --reason` that has none yet."""
    for param in command.params:
        callback = _CALLBACKS.get(param.name or "") if isinstance(param, click.Argument) else (
            complete_reason if command.name == "screen-fail" and param.name == "reason"
            else None)
        if callback is not None and param._custom_shell_complete is None:
            if param.name == "fields" and not any(p.name == "form" for p in command.params):
                continue  # `correct`: the form is the record's, not on the line
            param._custom_shell_complete = callback
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            attach_completions(sub)
    return command
