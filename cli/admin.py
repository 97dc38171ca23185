"""`trialflow sites|users|protocol …`: study administration (events in the `study` stream)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import click

from cli.completion import complete_form
from cli.context import Env
from cli.options import command_id_option
from cli.render import emit, prose, table
from cli.writes import DATETIME, send, show
from workflow.commands import messages as M
from workflow.identity import Secret
from workflow.study import load_study


@click.group("sites", help="Sites and their time zones.")
def sites() -> None:
    pass


@sites.command("add", help="Add a site: trialflow sites add SITE --tz Asia/Shanghai.")
@click.argument("site")
@click.option("--tz", required=True, help="IANA time zone of the site's calendar.")
@command_id_option
@click.pass_obj
def sites_add(env: Env, site: str, tz: str, command_id: str | None) -> None:
    show(env, f"Site {site} added ({tz})", send(env, M.AddSite(site, tz), command_id))


@sites.command("list", help="List sites.")
@click.pass_obj
def sites_list(env: Env) -> None:
    study = load_study(env.app.store)
    rows = [{"site": s, "tz": tz} for s, tz in sorted(study.sites.items())]
    emit(env, rows, lambda: table(["site", "tz"], [[r["site"], r["tz"]] for r in rows]))


@click.group("users", help="Users, roles, passwords and account lockout.")
def users() -> None:
    pass


@users.command("add", help="Add a user with a role (coordinators and investigators need --site). "
               "Asks for your password, then the new user's first password, which is "
               "temporary: its user changes it with `users passwd` before anything else. A "
               "service account (role scheduler) gets a generated secret in --secret-out.")
@click.argument("name")
@click.option("--role", required=True, help="coordinator, investigator, monitor, data_manager, "
              "auditor, scheduler or admin.")
@click.option("--site", default=None)
@click.option("--secret-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="For a service account: the file to create (mode 0600) with its secret.")
@command_id_option
@click.pass_obj
def users_add(env: Env, name: str, role: str, site: str | None, secret_out: Path | None,
              command_id: str | None) -> None:
    from cli.auth import credential

    proof = credential(env)  # the acting admin first (first line of stdin)
    secret, written = _new_secret(env, name, role, secret_out, "new user")
    try:
        outcome = send(env, M.AddUser(name, role, site, Secret(secret)), command_id,
                       credential=proof)
    except BaseException:
        if written is not None:
            written.unlink(missing_ok=True)
        raise
    show(env, f"User {name} added as {role}" + (
        f"; its secret is in {written}" if written else "; the password is temporary"), outcome)


@users.command("passwd", help="Set a password: yours (asks the current one, then the new one), "
               "or, as an admin, another user's (then temporary: that user must change it "
               "before any other write). Ends the user's sessions. A service account gets a "
               "new generated secret in --secret-out.")
@click.argument("name")
@click.option("--secret-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="For a service account: the file to create (mode 0600) with its new secret.")
@command_id_option
@click.pass_obj
def users_passwd(env: Env, name: str, secret_out: Path | None, command_id: str | None) -> None:
    from cli.auth import credential

    proof = credential(env, password=True)  # your own password, never a session
    target = load_study(env.app.store).users.get(name)
    role = target.role if target is not None else "coordinator"
    secret, written = _new_secret(env, name, role, secret_out, "new")
    try:
        outcome = send(env, M.ChangePassword(name, Secret(secret)), command_id, credential=proof)
    except BaseException:
        if written is not None:
            written.unlink(missing_ok=True)
        raise
    show(env, f"Password of {name} changed" + (
        f"; the new secret is in {written}" if written else
        "; it is temporary" if outcome.summary.get("temporary") else ""), outcome)


@users.command("deactivate", help="Deactivate a user; their history stays. The last active "
               "admin cannot be deactivated.")
@click.argument("name")
@command_id_option
@click.pass_obj
def users_deactivate(env: Env, name: str, command_id: str | None) -> None:
    show(env, f"User {name} deactivated", send(env, M.DeactivateUser(name), command_id))


@users.command("unlock", help="Unlock an account locked after failed attempts (admin).")
@click.argument("name")
@click.option("--reason", required=True, help="Why (e.g. the user called from the site).")
@command_id_option
@click.pass_obj
def users_unlock(env: Env, name: str, reason: str, command_id: str | None) -> None:
    show(env, f"Account of {name} unlocked", send(env, M.UnlockAccount(name, reason),
                                                  command_id))


@users.command("policy", help="Set how many consecutive failed attempts lock an account "
               "(admin; default 5).")
@click.option("--max-failed-attempts", type=click.IntRange(1, 100), required=True)
@command_id_option
@click.pass_obj
def users_policy(env: Env, max_failed_attempts: int, command_id: str | None) -> None:
    show(env, f"Accounts lock after {max_failed_attempts} failed attempts",
         send(env, M.SetLockoutPolicy(max_failed_attempts), command_id))


@users.command("list", help="List users, roles, sites, whether they are active, and account "
               "state (temporary password, failed attempts, locked).")
@click.pass_obj
def users_list(env: Env) -> None:
    study = load_study(env.app.store)
    rows = [{"name": u.name, "role": u.role, "site": u.site, "active": u.active,
             "temporary_password": u.name in study.temporary_passwords,
             "failed_attempts": study.failed_attempts.get(u.name, 0),
             "locked": study.account_locked(u.name)}
            for u in sorted(study.users.values(), key=lambda u: u.name)]
    emit(env, rows, lambda: table(
        ["name", "role", "site", "active", "temporary", "failed", "locked"],
        [[r["name"], r["role"], r["site"], r["active"], r["temporary_password"],
          r["failed_attempts"], r["locked"]] for r in rows]))


def _new_secret(env: Env, name: str, role: str, secret_out: Path | None, whose: str
                ) -> tuple[str, Path | None]:
    """A person's new password (read), or a service account's generated secret written to
    --secret-out (0600) before the write; (secret, file written)."""
    from cli.auth import read_secret, write_secret_file
    from workflow.errors import InvalidInput
    from workflow.identity import new_service_secret
    from workflow.study import SERVICE_ROLES

    if role in SERVICE_ROLES:
        if secret_out is None:
            raise InvalidInput(f"A service account's secret is generated: pass --secret-out FILE "
                               f"for {name}'s.", field="secret_out")
        secret = new_service_secret()
        write_secret_file(secret_out, secret)
        return secret, secret_out
    if secret_out is not None:
        raise InvalidInput("--secret-out is for service accounts; a person's password is "
                           "asked.", field="secret_out")
    return read_secret(env, f"Password for the {whose} {name}" if whose == "new user"
                       else f"New password for {name}"), None


@click.group("protocol", help="Protocol versions: load, amend, show, diagram.")
def protocol() -> None:
    pass


@protocol.command("load", help="Record a protocol version (content and hash) from a TOML file.")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@command_id_option
@click.pass_obj
def protocol_load(env: Env, file: Path, command_id: str | None) -> None:
    from workflow.protocol import read_protocol_file

    text = read_protocol_file(file)
    outcome = send(env, M.LoadProtocol(text, str(file)), command_id)
    version = outcome.summary.get("version")
    if version is None:  # a repeat: the version of the file itself
        from workflow.protocol import load_protocol_text

        version = load_protocol_text(text, str(file)).version
    show(env, f"Protocol version {version} loaded", outcome)


@protocol.command("preview", help="What putting a protocol version (a loaded or builtin "
                  "VERSION, or a FILE not loaded yet) in force would change, subject by "
                  "subject: eligibility, cohort and dose, visit targets and windows, "
                  "deviations, safety windows and SAE clocks, planned reminders, tasks, "
                  "endpoints. Subjects still on study are judged under it as if re-consented. "
                  "Writes nothing; prints the digest `protocol amend --reviewed` takes.")
@click.argument("target", metavar="FILE|VERSION")
@click.option("--now", "now", type=DATETIME, default=None,
              help="Also compare the tasks due at this time (default now; UTC if no "
              "offset); not part of the digest.")
@click.option("--as-of", "as_of", default=None, metavar="TIME|@N",
              help="The log as it stood then (ISO 8601 recorded time, UTC if no offset, or "
              "@POSITION): an amendment's recorded `preview.position` gives its digest again.")
@click.pass_obj
def protocol_preview(env: Env, target: str, now: datetime | None, as_of: str | None) -> None:
    from cli.progress import progress_bar
    from cli.queries import _utc
    from projections.amendment import preview_of
    from projections.as_of import as_of_position

    up_to = as_of_position(as_of, env.app.store)
    with progress_bar(env, "previewing (subjects)") as advance:
        found = preview_of(env.app.store, target, now=_utc(now) or env.app.clock(),
                           up_to=up_to, progress=advance)
    data = found.to_json()
    emit(env, data, lambda: preview_text(data))


def preview_text(data: dict[str, Any]) -> str:
    """The preview for a reviewer: the protocol's changes, then each subject's, then the
    digest and the command that puts the version in force."""
    from workflow.amendment import shown

    version = data["candidate"]["version"]
    lines = [f"Preview of protocol version {version} (sha256 {data['candidate']['hash'][:12]}…) "
             f"in place of version {data['in_force']}, at log position {data['position']}; "
             "nothing was written."]
    if data["protocol_changes"]:
        lines += ["", "Protocol changes:"]
        lines += [f"  {c['item']}: {shown(c['before'])} -> {shown(c['after'])}"
                  for c in data["protocol_changes"]]
    reconsent = [s["subject"] for s in data["subjects"] if s["reconsent"]]
    lines += ["", f"Subjects: {data['subjects_compared']} compared, {data['subjects_changed']} "
              f"with changes, {len(reconsent)} to re-consent"
              + (f" ({', '.join(reconsent)})." if reconsent else ".")]
    for subject in data["subjects"]:
        if not subject["changes"] and not subject.get("at_now"):
            continue
        lines += ["", f"{subject['subject']} ({subject['site']}, {subject['phase']}, version "
                  f"{subject['protocol_version']} -> {subject['follows']})"]
        rows = [[c["model"], c["item"], shown(c["before"]), shown(c["after"])]
                for c in subject["changes"]]
        rows += [["at --now", c["item"], shown(c["before"]), shown(c["after"])]
                 for c in subject.get("at_now") or ()]
        lines.append(table(["model", "item", "before", "after"], rows))
    lines += ["", f"Changes: {data['changes']}. Digest: {data['digest']}"]
    if data["changes"]:
        lines.append(f"To put it in force after review: trialflow protocol amend {version} "
                     f"--reviewed {data['digest']}")
    return "\n".join(lines)


@protocol.command("amend", help="Put a protocol version in force; subjects must re-consent. "
                  "When its preview shows changes, --reviewed must name the digest "
                  "`protocol preview VERSION` printed (unless `protocol review-policy "
                  "optional`); the digest, the log position and the count of changes are "
                  "recorded with the amendment.")
@click.argument("version", type=int)
@click.option("--reviewed", default=None, metavar="DIGEST",
              help="The digest of the preview you reviewed (`protocol preview VERSION`).")
@command_id_option
@click.pass_obj
def protocol_amend(env: Env, version: int, reviewed: str | None,
                   command_id: str | None) -> None:
    show(env, f"Protocol version {version} is in force",
         send(env, M.AmendProtocol(version, reviewed), command_id))


@protocol.command("review-policy", help="Whether `protocol amend` needs --reviewed DIGEST when "
                  "the preview shows changes: required (the default) or optional (admin).")
@click.argument("policy", type=click.Choice(["required", "optional"]))
@command_id_option
@click.pass_obj
def protocol_review_policy(env: Env, policy: str, command_id: str | None) -> None:
    show(env, f"Amendment review is {policy}",
         send(env, M.SetAmendmentReview(policy == "required"), command_id))


@protocol.command("show", help="Show the protocol version in force.")
@click.pass_obj
def protocol_show(env: Env) -> None:
    study = load_study(env.app.store)
    p = study.protocol
    data = {
        "version": p.version, "title": p.title, "registry_id": p.registry_id,
        "enrolment_cap": p.enrolment_cap, "loaded_versions": sorted(study.protocol_texts),
        "cohorts": [{"code": c.code, "first": c.first, "last": c.last,
                     "dose_per_kg": c.dose_per_kg, "flat_dose": c.flat_dose}
                    for c in p.cohorts],
        "screening_window_days": p.screening_window_days,
        "visits": [{"visit": v.code, "target_day": v.target_day, "window_days": v.window_days}
                   for v in p.visits],
    }
    emit(env, data, lambda: "\n".join(prose(line, "  ") for line in (
        f"Protocol version {p.version} in force: {p.title} ({p.registry_id})\n"
        f"Enrolment cap {p.enrolment_cap}; cohorts: "
        + "; ".join(f"{c.code} places {c.first}-{c.last}" for c in p.cohorts)
        + f"\nScreening window {p.screening_window_days} days; visits: "
        + ", ".join(f"{v.code}±{v.window_days}" for v in p.visits)
    ).split("\n")))


@protocol.command("diagram", help="Print the subject state diagram (Mermaid), from the machine.")
@click.pass_obj
def protocol_diagram(env: Env) -> None:
    from workflow.machine import mermaid

    diagram = mermaid()
    emit(env, {"mermaid": diagram}, diagram)


@click.command("forms", help="List the forms (CRFs) and their fields: type, unit, range and "
               "allowed codes; with --codes, the code lists the rules use (drugs and their "
               "aliases, screen-failure reasons, British/American spellings).")
@click.argument("form_names", metavar="[FORM]...", nargs=-1, shell_complete=complete_form)
@click.option("--codes", is_flag=True, help="Show the code lists the rules depend on instead.")
@click.pass_obj
def forms(env: Env, form_names: tuple[str, ...], codes: bool) -> None:
    if codes:
        from workflow.code_lists import describe_codes

        described_codes = describe_codes()
        emit(env, described_codes, lambda: _codes_text(described_codes))
        return
    from workflow.forms import describe_forms, form_spec

    wanted = {form_spec(name).code for name in form_names}  # an unknown form: exit 2
    described = [f for f in describe_forms() if not wanted or f["form"] in wanted]
    emit(env, described, lambda: "\n\n".join(_form_text(f) for f in described))


def _form_text(form: dict[str, Any]) -> str:
    """A form's heading and a table of its fields."""
    via = f"; recorded by {form['command']}" if form["command"] else ""
    head = prose(f"{form['form']}: {form['title']}{via}")
    if form["one_of"]:
        head += "\n" + prose(f"(at least one of: {', '.join(form['one_of'])})", " ")
    rows = [(f["field"], f["kind"], f["unit"], _range(f), f["required"],
             ", ".join(f["allowed"]) if f["allowed"] else None) for f in form["fields"]]
    return head + "\n" + table(("field", "type", "unit", "range", "required", "codes"), rows)


def _range(field: dict[str, Any]) -> str | None:
    low, high = field["minimum"], field["maximum"]
    if low is None and high is None:
        return None
    shown = [f"{value:g}" if isinstance(value, float) else str(value) for value in (low, high)]
    return f"{'>' if field['minimum_exclusive'] else '>='} {shown[0]}, <= {shown[1]}"


def _codes_text(data: dict[str, Any]) -> str:
    parts = []
    for group in data["drug_lists"]:
        rows = [(d["drug"], ", ".join(d["aliases"]) or None) for d in group["drugs"]]
        parts.append(f"{group['list']} ({group['used_by']})\n" + table(("drug", "aliases"),
                                                                      rows))
    parts.append("Drug aliases (any case; \"_\" and \"-\" as spaces)\n" + table(
        ("alias", "drug"), sorted(data["drug_aliases"].items())))
    parts.append("Background therapy classes: " + ", ".join(data["background_classes"])
                 + "\nRefractory outcomes (prior_treatment.outcome): "
                 + ", ".join(data["refractory_outcomes"]))
    reasons = data["screen_failure_reasons"]
    parts.append("Screen-failure reasons (screen-fail --reason CODE; free text in --note)\n"
                 + table(("kind", "codes"), [(kind, ", ".join(codes))
                                             for kind, codes in reasons.items()]))
    parts.append("Accepted in either spelling (stored as the code)\n" + table(
        ("code", "also accepted", "where"),
        [(s["code"], s["also"], s["where"]) for s in data["spellings"]]))
    return "\n\n".join(parts)
