"""`parent_death_signal` finds `prctl` without starting a process. It used `ctypes.util.find_library("c")`, which runs
`ldconfig -p` as a child: `tp-backend --workers`' supervisor then had a child that was no worker before it installed
its SIGTERM handler, and a test that signalled it once "a worker started" saw it die of SIGTERM (exit -15) now and
then under load."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from trainingplatform_sdk.server.processes import parent_death_signal


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_it_starts_no_process_and_its_child_gets_sigterm_when_the_parent_dies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[object] = []
    real_popen = subprocess.Popen

    def recording_popen(*args: object, **kwargs: object) -> subprocess.Popen[bytes]:
        started.append(args[0] if args else kwargs.get("args"))
        return real_popen(*args, **kwargs)  # type: ignore[call-overload,no-any-return]

    monkeypatch.setattr(subprocess, "Popen", recording_popen)
    preexec = parent_death_signal()
    assert started == [], f"looking up prctl started {started}"
    assert preexec is not None
    monkeypatch.setattr(subprocess, "Popen", real_popen)

    # It still works: a grandchild whose parent (a shell) is killed gets SIGTERM and dies.
    script = (
        "import os, signal, subprocess, sys, time\n"
        "from trainingplatform_sdk.server.processes import parent_death_signal\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
        "preexec_fn=parent_death_signal())\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    for _ in range(200):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        try:
            with open(f"/proc/{child}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break  # ended, waiting for init to reap it
        except OSError:
            break
        time.sleep(0.05)
    else:
        os.kill(child, signal.SIGKILL)
        raise AssertionError("the child outlived its parent")
