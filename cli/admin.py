"""`trialflow sites|users|protocol …`: study administration (events in the `study` stream)."""

from __future__ import annotations

from pathlib import Path

import click

from cli.context import Env
from cli.options import command_id_option
from cli.render import emit, table
from cli.writes import show, workflow, writer


@click.group("sites", help="Sites and their time zones.")
def sites() -> None:
    pass


@sites.command("add", help="Add a site: trialflow sites add SITE --tz Asia/Shanghai.")
@click.argument("site")
@click.option("--tz", required=True, help="IANA time zone of the site's calendar.")
@command_id_option
@click.pass_obj
def sites_add(env: Env, site: str, tz: str, command_id: str | None) -> None:
    show(env, f"Site {site} added ({tz})", writer(env).add_site(env.user, site, tz, command_id))


@sites.command("list", help="List sites.")
@click.pass_obj
def sites_list(env: Env) -> None:
    study = workflow(env).study()
    rows = [{"site": s, "tz": tz} for s, tz in sorted(study.sites.items())]
    emit(env, rows, lambda: table(["site", "tz"], [[r["site"], r["tz"]] for r in rows]))


@click.group("users", help="Users and roles.")
def users() -> None:
    pass


@users.command("add", help="Add a user with a role (coordinators and investigators need --site).")
@click.argument("name")
@click.option("--role", required=True, help="coordinator, investigator, monitor, data_manager, "
              "auditor, scheduler or admin.")
@click.option("--site", default=None)
@command_id_option
@click.pass_obj
def users_add(env: Env, name: str, role: str, site: str | None, command_id: str | None) -> None:
    from cli.auth import read_secret
    from workflow import identity
    from workflow.signing import Signing

    flow = writer(env)  # the acting admin authenticates first (first line of stdin)
    password = None
    if role != "scheduler":  # a service user has no password
        password = read_secret(env, f"Password for the new user {name}")
        identity.check_new_password(name, password)
    outcome = flow.add_user(env.user, name, role, site, command_id)
    if password is not None and not outcome.result.duplicate:
        Signing(flow).change_password(env.user, name, password, None, env.app.clock())
    show(env, f"User {name} added as {role}", outcome)


@users.command("passwd", help="Set a password: an admin for anyone, a user for themselves. "
               "Ends the user's sessions.")
@click.argument("name")
@command_id_option
@click.pass_obj
def users_passwd(env: Env, name: str, command_id: str | None) -> None:
    from cli.auth import read_secret
    from workflow.signing import Signing

    flow = writer(env)
    password = read_secret(env, f"New password for {name}")
    show(env, f"Password of {name} changed",
         Signing(flow).change_password(env.user, name, password, command_id, env.app.clock()))


@users.command("deactivate", help="Deactivate a user; their history stays.")
@click.argument("name")
@command_id_option
@click.pass_obj
def users_deactivate(env: Env, name: str, command_id: str | None) -> None:
    show(env, f"User {name} deactivated",
         writer(env).deactivate_user(env.user, name, command_id))


@users.command("list", help="List users, roles, sites and whether they are active.")
@click.pass_obj
def users_list(env: Env) -> None:
    study = workflow(env).study()
    rows = [{"name": u.name, "role": u.role, "site": u.site, "active": u.active}
            for u in sorted(study.users.values(), key=lambda u: u.name)]
    emit(env, rows, lambda: table(["name", "role", "site", "active"],
                                  [[r["name"], r["role"], r["site"], r["active"]] for r in rows]))


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
    outcome = writer(env).load_protocol(env.user, text, str(file), command_id)
    show(env, f"Protocol version {outcome.summary['version']} loaded", outcome)


@protocol.command("amend", help="Put a protocol version in force; subjects must re-consent.")
@click.argument("version", type=int)
@command_id_option
@click.pass_obj
def protocol_amend(env: Env, version: int, command_id: str | None) -> None:
    show(env, f"Protocol version {version} is in force",
         writer(env).amend_protocol(env.user, version, command_id))


@protocol.command("show", help="Show the protocol version in force.")
@click.pass_obj
def protocol_show(env: Env) -> None:
    study = workflow(env).study()
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
    emit(env, data, lambda: (
        f"Protocol version {p.version} in force: {p.title} ({p.registry_id})\n"
        f"Enrolment cap {p.enrolment_cap}; cohorts: "
        + "; ".join(f"{c.code} places {c.first}-{c.last}" for c in p.cohorts)
        + f"\nScreening window {p.screening_window_days} days; visits: "
        + ", ".join(f"{v.code}±{v.window_days}" for v in p.visits)
    ))


@protocol.command("diagram", help="Print the subject state diagram (Mermaid), from the machine.")
@click.pass_obj
def protocol_diagram(env: Env) -> None:
    from workflow.machine import mermaid

    diagram = mermaid()
    emit(env, {"mermaid": diagram}, diagram)


@click.command("forms", help="List the forms (CRFs) and their fields.")
@click.pass_obj
def forms(env: Env) -> None:
    from workflow.forms import describe_forms

    described = describe_forms()
    emit(env, described, lambda: "\n".join(_form_line(f) for f in described))


def _form_line(form: dict[str, object]) -> str:
    command = f" (via {form['command']})" if form["command"] else ""
    fields = form["fields"]
    assert isinstance(fields, list)
    return f"{form['form']}{command}: " + ", ".join(str(f["field"]) for f in fields)
