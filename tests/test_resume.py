"""Surviving a kill in the middle of training (fsood.train.Resume).

In process: a run interrupted after epoch 1 and resumed (the global RNGs deliberately scrambled first,
as a fresh process would have them) ends with the same weights and history as an uninterrupted one, for
a plain objective and for DAL (whose gamma and search generator live across steps); a foreign, truncated
or non-torch resume file is ignored with a warning and deleted; a NaN loss names its epoch and step and
keeps the last good resume file. Through the CLI: ``python -m fsood finetune`` / ``pretrain`` SIGKILLed
once the resume file holds epoch >= 1, then rerun, writes the same bytes as an uninterrupted run.
"""
from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import edit_params
from upstream import clone_upstream
from fsood import distributed as dist
from fsood.io import save_state_dict
from fsood.methods import make_objective
from fsood.models import SmallCNN
from fsood.resume import RESUME_FORMAT
from fsood.train import NonFiniteLoss, Resume, train

CPU = torch.device("cpu")
NORM = {"mean": [0.5], "std": [0.25]}
RUNTIME = {"channels_last": False, "precision": "fp32"}
CFG = {"epochs": 4, "stage2_epoch": 2, "id_batch_size": 8, "outlier_batch_size": 12, "lr": 0.05, "lr_min": 0.0,
       "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "augment": {"crop_padding": 1, "hflip": True}}
OBJECTIVES = {
    "sep": {"oe_weight": 0.5, "alpha": 1.0, "beta": 1.0, "detach_weight": True, "mean_over_classes": False},
    "dal": {"oe_weight": 0.5, "gamma": 10.0, "gamma_init": 5.0, "beta": 0.5, "rho": 1.0, "iterations": 2,
            "strength": 0.5},
}


class Interrupted(Exception):
    """Stands in for a SIGKILL: training stops in the middle of an epoch."""


def _data():
    rng = np.random.default_rng(5)
    return (rng.integers(0, 256, (36, 1, 8, 8), dtype=np.uint8), rng.integers(0, 3, 36),
            rng.integers(0, 256, (30, 1, 8, 8), dtype=np.uint8))


def _fit(method: str, resume: Resume | None, fail_at: tuple[int, int] | None = None, fail_with=Interrupted,
         scramble: bool = False):
    """Train a SmallCNN with dropout (so the global RNG matters); ``fail_at=(epoch, step)`` raises there."""
    torch.set_num_threads(1)  # a fixed thread count: CPU kernels are deterministic for one
    torch.manual_seed(0)
    model = SmallCNN(1, 3, 8, 16, dropout=0.3)
    objective = make_objective(method, OBJECTIVES[method], CFG["stage2_epoch"], lambda: model.fc.weight,
                               head_fn=lambda: model.fc, seed=4)
    calls = {"epoch": -1, "step": 0}

    def wrapped(logits, z, labels, epoch):
        calls["step"] = calls["step"] + 1 if epoch == calls["epoch"] else 0
        calls["epoch"] = epoch
        loss, terms = objective(logits, z, labels, epoch)
        if fail_at == (epoch, calls["step"]):
            if fail_with is NonFiniteLoss:
                return loss * float("nan"), terms
            raise fail_with(f"stopped at epoch {epoch}, step {calls['step']}")
        return loss, terms

    if hasattr(objective, "state_dict"):
        wrapped.state_dict, wrapped.load_state_dict = objective.state_dict, objective.load_state_dict
    if scramble:  # a fresh process: the global RNGs are anywhere but where the killed run left them
        torch.manual_seed(12345), np.random.seed(12345), random.seed(12345)
    else:
        torch.manual_seed(1), np.random.seed(1), random.seed(1)
    x, y, xo = _data()
    history = train(model, x, y, CFG, RUNTIME, CPU, NORM, wrapped, seed=3, outlier_x=xo, desc=method,
                    ctx=dist.SINGLE, resume=resume)
    return model.state_dict(), history


def _assert_same(a, b):
    (state_a, hist_a), (state_b, hist_b) = a, b
    assert hist_a == hist_b
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), f"{key} differs"


@pytest.mark.trust(kind="sigkill_resume")
@pytest.mark.parametrize("method", ["sep", "dal"])
def test_interrupted_run_resumes_to_the_same_weights_and_history(method, tmp_path):
    reference = _fit(method, None)
    resume = Resume(tmp_path / "r.pt", key="cell")
    with pytest.raises(Interrupted):
        _fit(method, resume, fail_at=(2, 1))
    saved = torch.load(resume.path, weights_only=True)
    assert saved["epoch"] == 1 and len(saved["history"]) == 2
    if method == "dal":
        assert saved["objective"]["gamma"] != OBJECTIVES["dal"]["gamma_init"], "DAL's gamma was not saved"
    resumed = _fit(method, resume, scramble=True)
    _assert_same(resumed, reference)
    # without restoring the RNGs and the objective's state the resumed run would differ: the check can fail
    restart = _fit(method, Resume(tmp_path / "none.pt", key="cell"), scramble=True)
    assert restart[1] != reference[1]


@pytest.mark.trust(kind="sigkill_resume")
def test_resume_file_of_other_params_is_ignored_and_deleted(tmp_path, caplog):
    path = tmp_path / "r.pt"
    with pytest.raises(Interrupted):
        _fit("sep", Resume(path, key="other params"), fail_at=(2, 0))
    foreign = path.read_bytes()
    with caplog.at_level(logging.WARNING, logger="fsood.resume"):
        with pytest.raises(Interrupted):  # stop early: a restart is seen by the epoch-0 file it writes
            _fit("sep", Resume(path, key="these params"), fail_at=(1, 0))
    assert "made for other params" in caplog.text and str(path) in caplog.text
    assert torch.load(path, weights_only=True)["epoch"] == 0, "the foreign file was resumed from"
    path.write_bytes(foreign)
    _assert_same(_fit("sep", Resume(path, key="these params")), _fit("sep", None))


@pytest.mark.trust(kind="sigkill_resume")
@pytest.mark.parametrize("damage", ["truncated", "not_torch", "pickled_code"])
def test_damaged_resume_file_restarts_with_a_warning(damage, tmp_path, caplog):
    path = tmp_path / "r.pt"
    with pytest.raises(Interrupted):
        _fit("sep", Resume(path, key="cell"), fail_at=(2, 0))
    good = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "not_torch":
        path.write_bytes(b"this is not a checkpoint\n")
    else:  # a full pickle that weights_only refuses to unpickle
        torch.save({"format": 1, "key": "cell", "epoch": 1, "hook": Interrupted("x")}, path)
    with caplog.at_level(logging.WARNING, logger="fsood.resume"):
        result = _fit("sep", Resume(path, key="cell"))  # a restart: seeded as a fresh process seeds it
    assert "ignoring the resume file" in caplog.text
    _assert_same(result, _fit("sep", None))


@pytest.mark.trust(kind="nonfinite_loss")
def test_nan_loss_names_epoch_and_step_and_keeps_the_last_good_resume_file(tmp_path):
    resume = Resume(tmp_path / "r.pt", key="cell")
    with pytest.raises(NonFiniteLoss, match=r"epoch 2, step 1\b"):
        _fit("sep", resume, fail_at=(2, 1), fail_with=NonFiniteLoss)
    saved = torch.load(resume.path, weights_only=True)
    assert saved["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())
    # the kept file is the good one: resuming from it ends where an uninterrupted run ends
    _assert_same(_fit("sep", resume, scramble=True), _fit("sep", None))


# --- through the CLI, with a real SIGKILL -----------------------------------------------------------------

EPOCHS = {"benchmarks.digits.finetune.epochs": 6, "benchmarks.digits.finetune.stage2_epoch": 3,
          "benchmarks.digits.pretrain.epochs": 6}
CELL = "results/digits/model0/sep/seed0"
PRE = "results/digits/model0/pretrain"


def _cmd(*args):
    cell = ["--seed", "0"] if args[0] in ("finetune", "score") else []  # pretrain: one model a pretraining seed
    return [sys.executable, "-m", "fsood", *args, "--benchmark", "digits", "--pretrain-seed", "0", *cell]


def _run(ws, *args, log="job.log"):
    return subprocess.run(_cmd(*args, "--log", str(ws / log)), cwd=ws, capture_output=True, text=True)


def _outputs(ws, folder):
    return {name: (ws / folder / name).read_bytes() for name in ("model.pt", "history.csv")}


@pytest.fixture(scope="module")
def base(tmp_path_factory, recorded_digits):
    """A tiny digits workspace (the session's data, tests/upstream.py) with an uninterrupted pretrain of
    EPOCHS and its subspace; the uninterrupted sep cell's bytes; the pretrain outputs' bytes."""
    ws = clone_upstream(recorded_digits, tmp_path_factory.mktemp("resume") / "ws", **EPOCHS)
    for args in (["pretrain"], ["subspace"]):
        subprocess.run([sys.executable, "-m", "fsood", *args, "--benchmark", "digits", "--pretrain-seed", "0"], cwd=ws,
                       check=True,
                       capture_output=True)
    assert _run(ws, "finetune", "--method", "sep").returncode == 0
    finetuned = _outputs(ws, CELL)
    shutil.rmtree(ws / CELL)
    return ws, finetuned, _outputs(ws, PRE)


def _copy(base_ws: Path, dest: Path) -> Path:
    shutil.copytree(base_ws, dest, symlinks=True)
    return dest


def _kill_after_epoch(ws, args, resume: Path, timeout: float = 120.0) -> None:
    """Start the job, SIGKILL it as soon as its resume file holds epoch >= 1."""
    proc = subprocess.Popen(_cmd(*args), cwd=ws, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if resume.is_file() and torch.load(resume, weights_only=True)["epoch"] >= 1:
                os.kill(proc.pid, signal.SIGKILL)
                break
            assert proc.poll() is None, f"{args} ended (rc {proc.returncode}) before it could be killed"
            time.sleep(0.02)
        else:
            pytest.fail(f"{args}: no resume file with epoch >= 1 after {timeout} s")
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _killed_then_rerun(ws: Path, args: list[str], resume_name: str, folder: str) -> dict[str, bytes]:
    """SIGKILL ``args`` after an epoch (nothing of ``folder`` written yet), rerun it to the end: it must
    resume and delete its resume file; returns ``folder``'s outputs."""
    resume = ws / ".fsood/resume" / resume_name
    _kill_after_epoch(ws, args, resume)
    assert not (ws / folder / "model.pt").exists() and not (ws / folder / "history.csv").exists()
    done = _run(ws, *args)
    assert done.returncode == 0, done.stderr
    assert "resuming from" in (ws / "job.log").read_text()
    assert not resume.exists(), "the resume file outlived a finished job"
    return _outputs(ws, folder)


@pytest.mark.trust(kind="sigkill_resume")
@pytest.mark.slow
def test_sigkilled_finetune_reruns_to_the_same_bytes(base, tmp_path):
    base_ws, finetuned, _ = base
    ws = _copy(base_ws, tmp_path / "ws")
    assert _killed_then_rerun(ws, ["finetune", "--method", "sep"], "finetune-digits-0-sep-0.pt", CELL) == finetuned


@pytest.mark.trust(kind="sigkill_resume")
@pytest.mark.slow
def test_sigkilled_pretrain_reruns_to_the_same_bytes(base, tmp_path):
    base_ws, _, pretrained = base
    ws = _copy(base_ws, tmp_path / "ws")
    shutil.rmtree(ws / PRE)
    assert _killed_then_rerun(ws, ["pretrain"], "pretrain-digits-0.pt", PRE) == pretrained


@pytest.mark.trust(kind="sigkill_resume")
@pytest.mark.slow
def test_cli_ignores_a_corrupt_or_foreign_resume_file(base, tmp_path):
    base_ws, finetuned, _ = base
    ws = _copy(base_ws, tmp_path / "ws")
    resume = ws / ".fsood/resume/finetune-digits-0-sep-0.pt"
    resume.parent.mkdir(parents=True, exist_ok=True)
    resume.write_bytes(b"\x80\x02garbage")
    done = _run(ws, "finetune", "--method", "sep")
    assert done.returncode == 0, done.stderr
    assert "ignoring the resume file" in (ws / "job.log").read_text()
    assert _outputs(ws, CELL) == finetuned
    # a well-formed file of the same cell under other params (another lr) is not resumed from either
    save_state_dict(resume, {"format": RESUME_FORMAT, "key": "0" * 64, "epoch": 4, "step": 0})
    edit_params(ws, **{"benchmarks.digits.finetune.lr": 0.02})
    assert _run(ws, "finetune", "--method", "sep").returncode == 0
    assert "made for other params" in (ws / "job.log").read_text()
    assert not resume.exists()


@pytest.mark.trust(kind="nonfinite_loss")
@pytest.mark.slow
def test_cli_nan_loss_exits_nonzero_names_epoch_and_step_and_writes_nothing(base, tmp_path):
    ws = _copy(base[0], tmp_path / "ws")
    edit_params(ws, **{"benchmarks.digits.finetune.lr": 1.0e30})
    done = _run(ws, "finetune", "--method", "sep")
    assert done.returncode == 1
    assert "fsood: error:" in done.stderr and "became" in done.stderr
    assert "epoch 0, step " in done.stderr
    assert not (ws / CELL / "model.pt").exists() and not (ws / CELL / "history.csv").exists()
    assert not (ws / ".fsood/resume/finetune-digits-0-sep-0.pt").exists(), "a resume file holds NaN weights"
