"""What this host lets the process use: `usable_cpus`, the CPUs that thread counts and worker counts are sized to.

In a container, the CPUs a process may run on (its affinity, what `os.cpu_count()` and `sched_getaffinity` see) are
usually all of the node's, while its CPU limit is a cgroup quota: a trainer limited to 8 CPUs on a 96-core node that
starts 96 threads is throttled hard. `usable_cpus` takes the smaller of the two, reading the quota of the process's
own cgroup and of every cgroup above it (cgroup v2's `cpu.max`, cgroup v1's `cpu.cfs_quota_us`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["cpu_quota", "usable_cpus"]

CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cpus(*, cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> int:
    """The CPUs this process may use: those it may run on, at most its cgroup CPU quota rounded up; at least 1."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cpu_quota(cgroup_root=cgroup_root, proc_cgroup=proc_cgroup)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def cpu_quota(*, cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The smallest CPU quota (in CPUs, e.g. 2.5) of the process's cgroup and the cgroups above it; None when none
    is set or none can be read (no cgroups, another OS)."""
    try:
        lines = proc_cgroup.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    found: list[float] = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":  # cgroup v2: <root>/<path>/cpu.max, "max 100000" or "50000 100000"
            found += _quotas(cgroup_root, path, lambda d: _v2_quota(d / "cpu.max"))
        elif "cpu" in controllers.split(","):  # cgroup v1: <root>/cpu/<path>/cpu.cfs_quota_us (-1: none)
            found += _quotas(cgroup_root / "cpu", path, _v1_quota)
    return min(found) if found else None


def _quotas(mount: Path, path: str, read: Callable[[Path], float | None]) -> list[float]:
    """The quotas set on `path` and each directory above it, up to the mount. Inside a container's cgroup
    namespace, the process's path is `/`: the mount itself is its cgroup."""
    quotas: list[float] = []
    directory = mount / path.strip("/")
    while True:
        quota = read(directory)
        if quota is not None:
            quotas.append(quota)
        if directory == mount or mount not in directory.parents:
            return quotas
        directory = directory.parent


def _v2_quota(path: Path) -> float | None:
    try:
        limit, _, period = path.read_text(encoding="ascii").strip().partition(" ")
        return None if limit == "max" else int(limit) / int(period or "100000")
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _v1_quota(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text(encoding="ascii"))
        period = int((directory / "cpu.cfs_period_us").read_text(encoding="ascii"))
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None
