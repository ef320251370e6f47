"""The proxy's own log lines as JSON, in the access log's format.

One JSON object per line, so a site's log shipper parses the application log
and the access log (:mod:`cacheproxy.http.accesslog`) the same way: both
have ``ts`` (UTC, milliseconds) and, while a request is being answered,
``request_id``.  An application line adds ``level``, ``logger`` and
``message`` (and ``exc`` for a traceback); a line may carry more fields
given as ``extra={"fields": {...}}`` (the startup line does).

Why a context variable for the request id: a log call deep in the store or
the upstream client knows nothing of the request, but it runs in the
request's task (or one started from it), which carries the variable.  The
request-id step sets it on the way in and clears it when the request is done.

:func:`logging_config` is handed to uvicorn (``log_config``), which applies
it in the parent and again in every ``--workers`` process, so uvicorn's own
lines come out in the same format.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson

request_id: ContextVar[bytes | None] = ContextVar("cacheproxy_request_id", default=None)
"""The id of the request being answered in this context (None: none); bytes
as the request carries it, decoded only when a line is written."""


def timestamp(seconds: float | None = None) -> str:
    """The ``ts`` field of every line, access log included."""
    when = datetime.now(UTC) if seconds is None else datetime.fromtimestamp(seconds, UTC)
    return when.isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    """A log record as one JSON line (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = request_id.get()
        if rid is not None:
            line["request_id"] = rid.decode("ascii", "replace")
        fields = getattr(record, "fields", None)  # the record's own attribute, set by extra=
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def logging_config(level: str) -> dict[str, Any]:
    """``logging.config.dictConfig`` for the server: JSON lines on stderr for
    the proxy's and uvicorn's loggers, the access log's lines on stdout."""
    level = level.upper()
    if level == "TRACE":
        level = "DEBUG"  # uvicorn's extra level; the proxy has none below debug
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}, "line": {"format": "%(message)s"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            },
            "stdout": {
                "class": "logging.StreamHandler",
                "formatter": "line",
                "stream": "ext://sys.stdout",
            },
        },
        "loggers": {
            "cacheproxy": {"handlers": ["stderr"], "level": level, "propagate": False},
            # its lines are JSON already; written only while access_log is on
            "cacheproxy.access": {"handlers": ["stdout"], "level": "INFO", "propagate": False},
            "uvicorn": {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": [], "propagate": False},
        },
        "root": {"handlers": ["stderr"], "level": "WARNING"},
    }


def set_level(level: str) -> None:
    """Change the proxy's and uvicorn's log level at run time (a reload)."""
    level = "DEBUG" if level.upper() == "TRACE" else level.upper()
    for name in ("cacheproxy", "uvicorn", "uvicorn.error"):
        logging.getLogger(name).setLevel(level)
