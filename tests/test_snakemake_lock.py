"""What the README says a user meets after a killed `snakemake`: its lock blocks the rerun until
`snakemake --unlock`."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow

SNAKEFILE = """
rule slow:
    output: "a", "b"
    shell: "sleep 2; touch a b"
"""


def _snakemake(ws, *args):
    return subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", *args], cwd=ws,
                          capture_output=True, text=True, timeout=120)


def test_a_killed_run_leaves_a_lock_that_unlock_removes(tmp_path):
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    run = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "1"], cwd=tmp_path,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while not list((tmp_path / ".snakemake" / "locks").glob("*.lock")) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1)
    os.killpg(run.pid, signal.SIGKILL)  # the run and its job, as a closed terminal or an OOM kill: no clean-up
    run.wait()
    locked = _snakemake(tmp_path)
    assert locked.returncode != 0 and "Directory cannot be locked" in locked.stderr, locked.stderr[-1500:]
    assert _snakemake(tmp_path, "--unlock").returncode == 0
    rerun = _snakemake(tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-1500:]
    assert (tmp_path / "b").is_file()
