"""The watcher's log: every line with its date (UTC, ISO 8601) and level, as text or one JSON object per line.

Components get a plain ``log(message)`` callable, so a test or the demo can pass its own. A message that is a
warning or an error says so by its type (``logs.warning(text)``, ``logs.error(text)``: a ``str`` that carries its
level), which a plain callable simply prints.
"""

from __future__ import annotations

import logging
import sys
from typing import IO

from . import module_utils

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class Message(str):
    level = "info"


class _Warning(Message):
    level = "warning"


class _Error(Message):
    level = "error"


def warning(text: str) -> str:
    return _Warning(text)


def error(text: str) -> str:
    return _Error(text)


class _Formatter(logging.Formatter):
    """The agent's line format (module_utils/_common.log_line), so watcher and agent logs read alike."""

    def __init__(self, fmt: str):
        super().__init__()
        self.fmt = fmt
        self.line = module_utils("_common").log_line

    def format(self, record: logging.LogRecord) -> str:
        return self.line(record.created, record.getMessage(), self.fmt, level=record.levelname.lower(),
                         logger=record.name)


class Log:
    """``log(message)``: to ``stream`` (stdout by default) in ``fmt`` ('text' or 'json'), from ``level`` up."""

    def __init__(self, name: str = "spot_migration.watch", fmt: str = "text", level: str = "info",
                 stream: IO[str] | None = None):
        if fmt not in ("text", "json"):
            raise ValueError(f"log format {fmt!r}: text or json")
        if level not in LEVELS:
            raise ValueError(f"log level {level!r}: {', '.join(LEVELS)}")
        # One logger per Log (several watchers in one test process must not share handlers).
        self.logger = logging.getLogger(f"{name}.{id(self):x}")
        self.logger.propagate = False
        self.logger.setLevel(LEVELS[level])
        handler = logging.StreamHandler(stream or sys.stdout)
        handler.setFormatter(_Formatter(fmt))
        self.logger.handlers[:] = [handler]
        self.logger.name = name

    def __call__(self, message: str) -> None:
        self.logger.log(LEVELS[getattr(message, "level", "info")], "%s", str(message))
