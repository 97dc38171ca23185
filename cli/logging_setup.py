"""structlog, configured once at the edge: JSON lines on a non-terminal stderr, readable text on
a terminal; default level warning."""

from __future__ import annotations

import logging
from typing import TextIO

import structlog

LEVELS = ("debug", "info", "warning", "error", "critical")


def configure(level: str, stream: TextIO) -> None:
    renderer: structlog.types.Processor
    if getattr(stream, "isatty", lambda: False)():
        # plain tracebacks whether or not rich is installed (cli/__init__.py imports
        # structlog without it, for start-up time)
        renderer = structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback)
    else:
        renderer = structlog.processors.JSONRenderer(sort_keys=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
