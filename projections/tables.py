"""The read models' tables (prefix `rm_`) and the projections' checkpoints.

Plain tables with plain column names, so a monitor or an auditor can query them with SQL;
lists and nested objects are JSON. They live in the same database as `events`, which lets a
projection move its rows and its checkpoint in one transaction. Nothing here is a source of
truth: `trialflow projections rebuild` recreates every row from the log.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()


def _subject() -> Column[str]:
    return Column("subject", String(20), nullable=False)


def _date(name: str) -> Column[str]:
    return Column(name, String(10))  # ISO yyyy-mm-dd, the site's calendar date


def _time(name: str) -> Column[str]:
    return Column(name, String(40))  # ISO 8601 with offset


checkpoints = Table(
    "projection_checkpoints", metadata,
    Column("name", String(40), primary_key=True),
    Column("version", Integer, nullable=False),  # the projection code's version
    Column("position", BigInteger, nullable=False),  # last global position applied
    Column("updated_at", String(32)),
)

study_facts = Table(
    "rm_study_facts", metadata,
    Column("kind", String(20), primary_key=True),  # site | protocol | in_force | place
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

subjects = Table(
    "rm_subjects", metadata,
    Column("subject", String(20), primary_key=True),
    Column("site", String(40)),
    Column("phase", String(20), nullable=False),
    _date("phase_since"),
    Column("protocol_version", Integer),
    _date("consent_date"),
    Column("consent_form_version", String(40)),
    Column("enrolment_order", Integer),
    Column("cohort", String(40)),
    _date("eligibility_confirmed_on"),
    _date("collected_on"),
    _date("infused_on"),
    Column("exit_reason", String(60)),
    _date("exited_on"),
    Column("stream_version", Integer, nullable=False),
    Column("last_position", BigInteger, nullable=False),
    Column("last_recorded_at", String(32), nullable=False),
)

eligibility = Table(
    "rm_eligibility", metadata,
    Column("subject", String(20), primary_key=True),
    Column("overall", String(12), nullable=False),
    _date("screening_window_ends"),
    _date("evaluated_on"),
    Column("result", JSON, nullable=False),
)

eligibility_criteria = Table(
    "rm_eligibility_criteria", metadata,
    Column("subject", String(20), primary_key=True),
    Column("code", String(60), primary_key=True),
    Column("kind", String(10), nullable=False),  # inclusion | exclusion
    Column("status", String(16), nullable=False),
    Column("reason", Text),
)

adverse_events = Table(
    "rm_adverse_events", metadata,
    _subject(),
    Column("position", BigInteger, primary_key=True),
    Column("term", Text, nullable=False),
    Column("category", String(20)),
    _date("onset_date"),
    Column("study_day", Integer),
    Column("grade", Integer),
    Column("serious", Boolean, nullable=False),
    Column("serious_criteria", JSON),
    Column("expected", Boolean),
    Column("relatedness", String(20), nullable=False),
    Column("relatedness_position", BigInteger),
    Column("related", Boolean, nullable=False),
    Column("in_safety_window", Boolean, nullable=False),
    Column("period", String(16), nullable=False),  # pre_treatment | safety_window | after_window
    Column("counts_for_primary", Boolean, nullable=False),
    Column("crs_grade", Integer),
    Column("icans_grade", Integer),
    Column("outcome", String(30)),
    _date("resolved_on"),
    _time("awareness_at"),
    _time("sponsor_aware_at"),
    Column("corrected", Boolean, nullable=False),
    Index("ix_rm_adverse_events_subject", "subject"),
)

safety_windows = Table(
    "rm_safety_windows", metadata,
    Column("subject", String(20), primary_key=True),
    _date("d0"),
    _date("window_start"),
    _date("window_end"),
)

sae_clocks = Table(
    "rm_sae_clocks", metadata,
    _subject(),
    Column("ae_position", BigInteger, primary_key=True),
    Column("clock", String(24), primary_key=True),
    _time("due_at"),
    _time("starts_at"),
    _time("stopped_at"),
    Column("stopped_by", BigInteger),
    Column("basis", Text),
    Index("ix_rm_sae_clocks_subject", "subject"),
)

visits = Table(
    "rm_visits", metadata,
    Column("subject", String(20), primary_key=True),
    Column("visit", String(20), primary_key=True),
    Column("anchor", String(20), nullable=False),
    Column("target_day", Integer),
    _date("target_date"),
    _date("window_start"),
    _date("window_end"),
    Column("recorded_status", String(10)),
    _date("done_on"),
    Column("missed_reason", String(20)),
    Column("missed_note", Text),  # the reason given with `visit --missed --reason`
    Column("protocol_version", Integer),
)

deviations = Table(
    "rm_deviations", metadata,
    _subject(),
    Column("kind", String(30), nullable=False),
    Column("position", BigInteger),
    Column("visit", String(20)),
    _date("on"),
    Column("detail", Text, nullable=False),
    Column("protocol_version", Integer),
    Index("ix_rm_deviations_subject", "subject"),
)

endpoints = Table(
    "rm_endpoints", metadata,
    Column("subject", String(20), primary_key=True),
    Column("result", JSON, nullable=False),
)

task_inputs = Table(
    "rm_task_inputs", metadata,  # workflow/tasks.py TaskInputs: `todo` applies the clock
    Column("subject", String(20), primary_key=True),
    Column("site", String(40)),
    Column("phase", String(20), nullable=False),
    Column("screening", Boolean, nullable=False),  # tasks judged on the day: folded at query
    Column("inputs", JSON, nullable=False),
)
