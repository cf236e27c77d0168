"""`usable_cpus` sizes thread and worker counts to a container's CPU limit (a cgroup quota), not to the node's
cores that the process may run on: a trainer limited to 2 CPUs on a 96-core node must not start 96 threads.

The cgroup trees here are files under tmp_path laid out as the kernel lays them out (cgroup v2's `cpu.max`, v1's
`cpu.cfs_quota_us` and `cpu.cfs_period_us`), read through the same `/proc/self/cgroup` lines a process sees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from trainingplatform_sdk.host import cpu_quota, usable_cpus

AFFINITY = len(os.sched_getaffinity(0))


def v2_tree(root: Path, limits: dict[str, str]) -> Path:
    """A cgroup v2 mount with `cpu.max` written in each directory of `limits`; returns the process's cgroup file."""
    for directory, text in limits.items():
        (root / directory).mkdir(parents=True, exist_ok=True)
        (root / directory / "cpu.max").write_text(text + "\n")
    proc = root.parent / "proc_cgroup"
    proc.write_text("0::/kubepods/pod1/ctr\n")
    return proc


def test_a_v2_quota_below_the_affinity_is_the_limit(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    proc = v2_tree(root, {"kubepods/pod1/ctr": "50000 100000"})  # half a CPU
    assert cpu_quota(cgroup_root=root, proc_cgroup=proc) == 0.5
    assert usable_cpus(cgroup_root=root, proc_cgroup=proc) == 1


def test_a_parents_quota_counts_and_the_smallest_wins(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    proc = v2_tree(root, {"kubepods/pod1": "150000 100000", "kubepods/pod1/ctr": "max 100000", "kubepods": "max"})
    assert cpu_quota(cgroup_root=root, proc_cgroup=proc) == 1.5
    assert usable_cpus(cgroup_root=root, proc_cgroup=proc) == min(AFFINITY, 2)  # 1.5 CPUs: 2 threads


def test_no_quota_leaves_the_affinity(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    proc = v2_tree(root, {"kubepods/pod1/ctr": "max 100000"})
    assert cpu_quota(cgroup_root=root, proc_cgroup=proc) is None
    assert usable_cpus(cgroup_root=root, proc_cgroup=proc) == AFFINITY


def test_inside_a_cgroup_namespace_the_mount_is_the_processs_cgroup(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    proc = v2_tree(root, {".": "100000 100000"})
    proc.write_text("0::/\n")
    assert cpu_quota(cgroup_root=root, proc_cgroup=proc) == 1.0
    assert usable_cpus(cgroup_root=root, proc_cgroup=proc) == 1


@pytest.mark.parametrize(("quota", "expected"), [("-1", None), ("25000", 0.25)])
def test_cgroup_v1_quota(tmp_path: Path, quota: str, expected: float | None) -> None:
    root = tmp_path / "cgroup"
    directory = root / "cpu" / "docker" / "abc"
    directory.mkdir(parents=True)
    (directory / "cpu.cfs_quota_us").write_text(quota + "\n")
    (directory / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "proc_cgroup"
    proc.write_text("12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n")
    assert cpu_quota(cgroup_root=root, proc_cgroup=proc) == expected
    assert usable_cpus(cgroup_root=root, proc_cgroup=proc) == (1 if expected else AFFINITY)


def test_unreadable_or_malformed_files_mean_no_quota(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    proc = v2_tree(root, {"kubepods/pod1/ctr": "lots 0"})
    assert cpu_quota(cgroup_root=root, proc_cgroup=proc) is None
    assert cpu_quota(cgroup_root=root, proc_cgroup=tmp_path / "missing") is None
    assert usable_cpus(cgroup_root=root, proc_cgroup=tmp_path / "missing") == AFFINITY
