"""CPU time of processes and threads, read from Linux's ``/proc``: what the benchmarks report
besides wall time, because a busy shared 2-core machine stretches wall time but not CPU time."""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def stat_fields(stat: Path) -> list[str] | None:
    """The fields of a ``/proc/<pid>/stat`` (or ``/proc/<pid>/task/<tid>/stat``) after the command
    name, which may hold spaces and parentheses; None when the process or thread is gone.

    Index 1 is the parent pid, 11 and 12 user and system time, 13 and 14 those of reaped children.
    """
    try:
        text = stat.read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def cpu_ticks(fields: list[str], children: bool = False) -> int:
    """User + system clock ticks of ``stat_fields``; with ``children``, plus its reaped children's."""
    own = int(fields[11]) + int(fields[12])
    return own + (int(fields[13]) + int(fields[14]) if children else 0)


def cpu_seconds(stat: Path) -> float:
    """User + system CPU seconds of one process or thread; 0.0 when it is gone."""
    fields = stat_fields(stat)
    return cpu_ticks(fields) / CLOCK_TICKS if fields else 0.0
