"""params.yaml validation: every mistake is refused before any job runs, naming the problem."""
from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml

from conftest import DELETE, ROOT, apply_changes, edit_params, make_workspace
from fsood.cli import main
from fsood.config import ParamsError, grid_cells, load_params, validate_params

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def changed(**changes) -> dict:
    return apply_changes(copy.deepcopy(PARAMS), **changes)


def test_shipped_params_are_valid():
    params = load_params(ROOT / "params.yaml")
    assert len(grid_cells(params)) == len(params["grid"]["benchmarks"]) * len(params["grid"]["methods"]) * len(
        params["grid"]["seeds"])


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"grid.methods": ["oe", "sepp"]}, ["grid.methods[1]", "'sepp' is not one of", "'sep'"]),
        ({"grid.benchmarks": ["cifar"]}, ["grid.benchmarks[0]", "'cifar'", "'digits'", "'cifar10-mini'"]),
        ({"score.scores": ["fs", "odinn"]}, ["score.scores[1]", "'odinn'", "'maxlogit'"]),
        ({"benchmarks.digits.finetune.lr": "fast"}, ["benchmarks.digits.finetune.lr", "not of type 'number'"]),
        ({"benchmarks.digits.pretrain.epochs": 2.5}, ["benchmarks.digits.pretrain.epochs", "integer"]),
        ({"methods.sep.alpha": DELETE}, ["methods.sep", "'alpha' is a required property"]),
        ({"methods.sep.gamma": 1.0}, ["methods.sep", "'gamma' was unexpected"]),
        ({"grid.seeds": [0, 1, 1]}, ["grid.seeds", "non-unique"]),
        ({"grid.seeds": []}, ["grid.seeds", "should be non-empty"]),
        ({"benchmarks.digits.model.arch": "vit"}, ["benchmarks.digits.model.arch", "'vit'", "'wrn'"]),
        ({"benchmarks.digits.model.depth": 40}, ["benchmarks.digits.model", "'depth' was unexpected"]),
        ({"score.convention": "ood"}, ["score.convention", "'id_positive'"]),
        ({"runtime.device": "tpu"}, ["runtime.device", "'cuda'"]),
        ({"benchmarks.digits.finetune.stage2_epoch": 99}, ["stage2_epoch=99 exceeds epochs=12"]),
        ({"benchmarks.digits.pretrain.schedule_epochs": 10}, ["pretrain.schedule_epochs=10 is shorter than epochs=25"]),
        ({"benchmarks.digits.pretrain.schedule_epochs": DELETE}, ["'schedule_epochs' is a required property"]),
        ({"score.main": "energy", "score.scores": ["fs"]}, ["score.main='energy' is not in score.scores"]),
        ({"report.projection_ood.digits": "svhn"}, ["report.projection_ood.digits='svhn'", "photo_china"]),
        ({"report.projection_ood.cifar10-mini": DELETE}, ["report.projection_ood.cifar10-mini=None", "textures"]),
        ({"benchmarks.cifar10-mini.data.subset.id_train": 0}, ["benchmarks.cifar10-mini.data.subset.id_train"]),
        ({"benchmarks.cifar10-mini.data.ood_sets": ["textures", "svhn"]},
         ["benchmarks.cifar10-mini.data.ood_sets[1]", "'svhn'", "'tin_holdout'"]),
        ({"benchmarks.cifar10-mini.data.id_classes": [0, 1]}, ["'id_classes' was unexpected"]),
        ({"datasets.mirrors": "../shared/data/mirror"}, ["datasets.mirrors", "not of type 'array'"]),
        ({"datasets": DELETE}, ["'datasets' is a required property"]),
        ({"report.projection_seed": 5}, ["report.projection_seed=5 is not in grid.seeds"]),
        # per-benchmark overrides: only existing keys, of the same type, and the merged section must be valid
        ({"benchmarks.cifar100.methods.dal": {"betta": 0.1}}, ["benchmarks.cifar100.methods.dal.betta overrides "
                                                              "nothing", "'beta'"]),
        ({"benchmarks.cifar10.methods.sep": {"detach_weight": "yes"}},
         ["benchmarks.cifar10.methods.sep.detach_weight='yes' has type str", "bool"]),
        ({"benchmarks.imagenet.score": {"options": {"knn": {"k": 0}}}},
         ["benchmarks.imagenet.score overrides give an invalid score section", "options.knn.k"]),
        ({"benchmarks.cifar10.pretrain.checkpoint": 5}, ["benchmarks.cifar10.pretrain.checkpoint"]),
        ({"benchmarks.cifar10.data.hard_ood_sets": ["svhn"]}, ["['svhn'] listed in both ood_sets and hard_ood_sets"]),
        ({"benchmarks.cifar10.data.hard_ood_sets": ["cifar10"]}, ["'cifar10', its own in-distribution set"]),
        ({"benchmarks.cifar10.data.ood_sets": ["mnist"]}, ["benchmarks.cifar10.data.ood_sets[0]", "'lsun_fix'"]),
        ({"benchmarks.imagenet.data.roots": {"imagenet": None}}, ["'imagenet21k' is a required property"]),
    ],
)
@pytest.mark.trust(kind="bad_params")
def test_bad_params_are_refused_with_a_message_naming_them(changes, expected):
    with pytest.raises(ParamsError) as err:
        validate_params(changed(**changes))
    for fragment in expected:
        assert fragment in str(err.value), str(err.value)


@pytest.mark.trust(kind="bad_params")
def test_not_yaml_and_missing_file(tmp_path):
    (tmp_path / "p.yaml").write_text("grid: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(tmp_path / "p.yaml")
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "absent.yaml")


@pytest.mark.trust(kind="bad_params")
def test_cli_refuses_bad_params_before_any_work(tmp_path, monkeypatch, capsys):
    ws = make_workspace(tmp_path / "ws")
    edit_params(ws, **{"grid.methods": ["oe", "bogus"]})
    monkeypatch.chdir(ws)
    assert main(["data", "--benchmark", "digits"]) == 2
    err = capsys.readouterr().err
    assert "grid.methods[1]" in err and "'bogus'" in err
    assert not (ws / "data").exists()


@pytest.mark.trust(kind="bad_params")
def test_cli_refuses_a_cell_outside_the_grid(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    assert main(["finetune", "--benchmark", "digits", "--method", "sep", "--seed", "99"]) == 2
    assert "seed 99 is not in grid.seeds" in capsys.readouterr().err


@pytest.mark.trust(kind="bad_params")
def test_snakemake_refuses_bad_params_before_any_job(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    edit_params(ws, **{"methods.sep.beta": "one"})
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "all"], cwd=ws,
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "methods.sep.beta" in proc.stdout + proc.stderr
    assert "not of type 'number'" in proc.stdout + proc.stderr


@pytest.mark.trust(kind="bad_params")
def test_dvc_repro_gets_the_same_refusal(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    edit_params(ws, **{"grid.seeds": [0], "report.projection_seed": 0, "runtime.eval_batch_size": 0})
    proc = subprocess.run(["dvc", "repro", "data@digits"], cwd=ws, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "runtime.eval_batch_size" in proc.stdout + proc.stderr
    assert not (ws / "data" / "digits").exists()
