"""CPU time of processes, read from /proc (Linux): what the benchmarks charge to the backend, the loggers and
PostgreSQL."""

from __future__ import annotations

import os
from pathlib import Path

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name; None when the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_cpu_s(pid: int) -> float:
    """User plus system CPU of every thread of a process, in seconds."""
    fields = _fields(pid)
    if fields is None:
        raise ProcessLookupError(pid)
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S


def postgres_cpu_s() -> float:
    """User plus system CPU of this machine's PostgreSQL: every live `postgres` process, plus the connections that
    exited (counted in their parent's reaped-children time). A difference of two readings is what PostgreSQL used
    in between."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if Path(f"/proc/{entry}/comm").read_text().strip() != "postgres":
                continue
        except OSError:
            continue
        fields = _fields(int(entry))
        if fields is not None:
            total += sum(int(fields[index]) for index in (11, 12, 13, 14))  # utime stime cutime cstime
    return total / _TICKS_PER_S


def threads_cpu_s(pid: int | str = "self") -> dict[int, tuple[str, float]]:
    """Name and user plus system CPU seconds of each live thread of a process (this one by default), by thread id."""
    result = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            text = Path(f"/proc/{pid}/task/{task}/stat").read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        result[int(task)] = (name, (int(fields[11]) + int(fields[12])) / _TICKS_PER_S)
    return result
