"""One orchestrator per workspace: Snakemake and `dvc repro` refuse to run beside each other."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zc.lockfile
from conftest import ROOT, TINY, edit_params, make_workspace

from fsood import lock

CHECK = "from fsood.lock import check_orchestrator as c; c(); print('passed')"


def fake_tool(bin_dir: Path, name: str) -> Path:
    """A shell script named like the tool: a process whose parent looks like `snakemake` / `dvc`."""
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / name
    script.write_text('#!/bin/sh\n"$@"\n')  # not exec: the script stays the parent
    script.chmod(0o755)
    return script


def as_child_of(tool: Path, ws: Path, *cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(tool), *cmd], cwd=ws, capture_output=True, text=True, timeout=60)


def holder_process(ws: Path) -> subprocess.Popen:
    """Another process that holds the workspace as Snakemake's onstart does, until killed."""
    code = "import sys; from fsood import lock; lock.hold('snakemake'); print('held', flush=True); sys.stdin.read()"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ws, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.fixture
def ws(tmp_path):
    (tmp_path / "ws" / ".dvc" / "tmp").mkdir(parents=True)
    return tmp_path / "ws"


def test_tool_is_read_from_argv():
    assert lock._tool_of(["/usr/bin/python3", "/usr/local/bin/snakemake", "--cores", "2"]) == "snakemake"
    assert lock._tool_of(["python", "-m", "snakemake", "all"]) == "snakemake"
    assert lock._tool_of(["/root/.pyenv/versions/3.11.7/bin/dvc", "repro"]) == "dvc"
    assert lock._tool_of(["python", "-m", "dvc", "repro"]) == "dvc"
    assert lock._tool_of(["/bin/sh", "-c", "python -m fsood score --benchmark dvc"]) is None
    assert lock._tool_of(["python", "-m", "pytest", "tests/test_snakemake.py"]) is None


def test_hold_only_for_snakemake(ws):
    with pytest.raises(ValueError, match="'dvc'.*valid: snakemake"):
        lock.hold("dvc", ws)


@pytest.mark.trust(kind="concurrent_lock")
def test_job_under_dvc_refused_while_snakemake_holds(ws, tmp_path):
    holder = holder_process(ws)
    try:
        who = lock.holder(ws)
        assert who["tool"] == "snakemake" and who["pid"] == holder.pid
        under_dvc = as_child_of(fake_tool(tmp_path / "bin", "dvc"), ws, sys.executable, "-c", CHECK)
        assert under_dvc.returncode != 0
        assert "in use by snakemake" in under_dvc.stderr and f"pid {holder.pid}" in under_dvc.stderr
        assert "since 20" in under_dvc.stderr  # the holder's start time
        # Snakemake's own jobs, and a call by hand, go on
        assert "passed" in as_child_of(fake_tool(tmp_path / "bin", "snakemake"), ws, sys.executable, "-c", CHECK).stdout
        assert "passed" in subprocess.run([sys.executable, "-c", CHECK], cwd=ws, capture_output=True, text=True).stdout
        # DVC itself refuses before touching outputs: the workspace is write-locked in its rwlock
        rw = json.loads((ws / lock.DVC_RWLOCK).read_text())
        assert rw["write"][str(ws.resolve())]["pid"] == holder.pid
        # a second Snakemake is refused too
        with pytest.raises(lock.WorkspaceBusy, match=f"pid {holder.pid}"):
            lock.hold("snakemake", ws)
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.trust(kind="concurrent_lock")
def test_full_cli_call_under_dvc_refused(ws, tmp_path):
    """The real `python -m fsood` stage command, as dvc.yaml runs it: exit 3 before any work."""
    (ws / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    holder = holder_process(ws)
    try:
        proc = as_child_of(fake_tool(tmp_path / "bin", "dvc"), ws, sys.executable, "-m", "fsood", "data",
                           "--benchmark", "digits", "--log", "logs/data/digits.log")
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 3, proc.stderr
    assert "fsood: error: workspace" in proc.stderr and "in use by snakemake" in proc.stderr
    assert not (ws / "data").exists() and not (ws / "logs").exists()  # nothing partial


@pytest.mark.trust(kind="concurrent_lock")
def test_snakemake_refused_while_dvc_holds_its_repo_lock(ws, tmp_path):
    dvc_lock = zc.lockfile.LockFile(str(ws / lock.DVC_REPO_LOCK))  # as `dvc repro` holds it between stages
    try:
        with pytest.raises(lock.WorkspaceBusy, match=rf"in use by dvc \(pid {os.getpid()}.*delete .dvc/tmp/lock"):
            lock.hold("snakemake", ws)
        under_sm = as_child_of(fake_tool(tmp_path / "bin", "snakemake"), ws, sys.executable, "-c", CHECK)
        assert under_sm.returncode != 0 and "in use by dvc" in under_sm.stderr
    finally:
        dvc_lock.close()
    assert not (ws / lock.LOCK_FILE).exists() or lock.holder(ws) is None  # the refused run kept nothing


@pytest.mark.trust(kind="concurrent_lock")
def test_snakemake_refused_while_dvc_runs_a_stage(ws, tmp_path):
    """While a stage's command runs, DVC drops its repo lock; its path-lock entries remain."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        entry = {"pid": sleeper.pid, "cmd": "dvc repro score@digits-0-sep-0"}
        (ws / lock.DVC_RWLOCK).write_text(json.dumps({"write": {str(ws / "results/x"): entry}}))
        with pytest.raises(lock.WorkspaceBusy, match=f"pid {sleeper.pid}: dvc repro score@digits-0-sep-0"):
            lock.hold("snakemake", ws)
    finally:
        sleeper.kill()
        sleeper.wait()
    lock.hold("snakemake", ws)  # that dvc is gone: its entry no longer blocks
    lock.release(ws)


@pytest.mark.trust(kind="concurrent_lock")
def test_stale_lock_taken_over_with_a_warning(ws, caplog):
    holder = holder_process(ws)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert json.loads((ws / lock.LOCK_FILE).read_text())["pid"] == holder.pid  # the dead holder's note
    assert lock.holder(ws) is None
    with caplog.at_level(logging.WARNING, logger="fsood.lock"):
        note = lock.hold("snakemake", ws)
    try:
        assert note["pid"] == os.getpid()
        assert f"stale workspace lock of snakemake (pid {holder.pid}" in caplog.text
        rw = json.loads((ws / lock.DVC_RWLOCK).read_text())
        assert [i["pid"] for i in rw["write"].values()] == [os.getpid()]  # the dead holder's entry replaced
    finally:
        lock.release(ws)
    assert lock.holder(ws) is None
    assert "write" not in json.loads((ws / lock.DVC_RWLOCK).read_text())


# --- with the real tools on the tiny grid ---------------------------------------------------

SMALL = {**TINY, "grid.methods": ["sep"], "benchmarks.digits.pretrain.epochs": 1}


def tiny_workspace(tmp_path: Path, **changes) -> Path:
    ws = make_workspace(tmp_path / "ws")
    edit_params(ws, **{**SMALL, **changes})
    subprocess.run(["git", "commit", "-qam", "tiny"], cwd=ws, check=True)
    return ws


def wait_for(condition, what: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def snakemake(*args) -> list[str]:
    return [sys.executable, "-m", "snakemake", *args]


@pytest.mark.trust(kind="concurrent_lock")
@pytest.mark.slow
def test_dvc_repro_refused_while_snakemake_runs(tmp_path):
    ws = tiny_workspace(tmp_path)
    assert subprocess.run(snakemake("-n", "--cores", "1", "all"), cwd=ws, capture_output=True).returncode == 0
    assert lock.holder(ws) is None and not (ws / lock.LOCK_FILE).exists()  # a dry run takes nothing
    run = subprocess.Popen(snakemake("--cores", "1", "all"), cwd=ws, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: (ws / "logs/pretrain/digits-0.log").exists(), "snakemake to run a job")
        assert lock.holder(ws)["pid"] == run.pid
        repro = subprocess.run(["dvc", "repro"], cwd=ws, capture_output=True, text=True)
        assert repro.returncode != 0
        assert "is busy" in repro.stderr and f"(PID {run.pid}): snakemake (fsood workspace lock" in repro.stderr
        status = subprocess.run(["dvc", "status"], cwd=ws, capture_output=True, text=True)
        assert status.returncode != 0 and "is busy" in status.stderr
        out, _ = run.communicate(timeout=120)
    finally:
        run.kill()
    assert run.returncode == 0, out[-3000:]
    assert (ws / "reports/digits/summary.json").is_file()
    assert lock.holder(ws) is None  # released on success
    assert subprocess.run(["dvc", "status"], cwd=ws, capture_output=True).returncode == 0  # no leftover entry


@pytest.mark.trust(kind="concurrent_lock")
@pytest.mark.slow
def test_snakemake_refused_while_dvc_repro_runs(tmp_path):
    # pretraining long enough that the repro still holds the lock when snakemake (several seconds to start) asks
    ws = tiny_workspace(tmp_path, **{"benchmarks.digits.pretrain.epochs": 6})
    repro = subprocess.Popen(["dvc", "repro", "pretrain@digits-0"], cwd=ws, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: lock.holder(ws, tool="dvc") is not None, "dvc repro to start")
        run = subprocess.run(snakemake("--cores", "1", "all"), cwd=ws, capture_output=True, text=True)
        assert run.returncode != 0
        assert "WorkspaceBusy" in run.stderr and "is in use by dvc" in run.stderr
        out, _ = repro.communicate(timeout=120)
    finally:
        repro.kill()
    assert repro.returncode == 0, out[-3000:]
    assert (ws / "results/digits/model0/pretrain/model.pt").is_file()
    assert not (ws / "results/digits/model0/sep").exists()  # the refused snakemake ran no job
