"""Workload errors, phrased for the user as ``file:line: field: problem``.

Trace files come from users; a bad row must be reported where it is, in one line,
so the user can open the file at that line and fix it.
"""
from __future__ import annotations

from typing import Callable


class WorkloadError(ValueError):
    """A workload problem, already phrased as one line naming the file, line and field."""


Warn = Callable[[str], None]


def where(path: object, line: int | None = None, field: str | None = None) -> str:
    """The ``file:line: field`` prefix of a message (parts left out when unknown)."""
    s = str(path)
    if line is not None:
        s += f":{line}"
    if field:
        s += f": {field}"
    return s


def fail(path: object, line: int | None, field: str | None, problem: str) -> WorkloadError:
    return WorkloadError(f"{where(path, line, field)}: {problem}")
