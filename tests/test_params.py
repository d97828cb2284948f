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
MINI = "benchmarks.cifar10-mini"


def changed(**changes) -> dict:
    return apply_changes(copy.deepcopy(PARAMS), **changes)


def test_shipped_params_are_valid():
    params = load_params(ROOT / "params.yaml")
    grid = params["grid"]
    assert len(grid_cells(params)) == len(grid["benchmarks"]) * len(grid["pretrain_seeds"]) * len(grid["methods"]) * len(
        grid["seeds"])


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"grid.methods": ["oe", "sepp"]}, ["grid.methods[1]", "'sepp' is not one of", "'sep'"]),
        ({"grid.benchmarks": ["cifar"]}, ["grid.benchmarks names 'cifar'", "'digits'", "'cifar10-mini'"]),
        ({"grid.benchmarks": ["My Bench"]}, ["grid.benchmarks[0]", "'My Bench' does not match"]),
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
        # a declared benchmark (cifar10-mini): its parts
        ({f"{MINI}.data.id.count": {"train": 0, "test": 5}}, [f"{MINI}.data.id.count.train", "minimum of 1"]),
        ({f"{MINI}.data.ood_sets.noise": {"synthetic": "pink", "count": 5}},
         [f"{MINI}.data.ood_sets.noise.synthetic", "'pink'", "'rademacher'"]),
        ({f"{MINI}.data.ood_sets.outliers": {"synthetic": "blobs", "count": 5}},
         [f"{MINI}.data.ood_sets", "'outliers' should not be valid"]),
        ({f"{MINI}.data.ood_sets.svhn": {"source": "svhn-test", "count": 5}},
         [f"{MINI}.data.ood_sets.svhn", "'split' is a required property"]),
        ({f"{MINI}.data.ood_sets": {}}, [f"{MINI}.data.ood_sets", "should be non-empty"]),
        ({f"{MINI}.data.id.folder": "pets"}, [f"{MINI}.data.id names both a source and a folder"]),
        ({f"{MINI}.data.outliers.sources": [{"source": "tinyimagenet32", "split": "train", "count": 5}]},
         [f"{MINI}.data.outliers.sources[0].count: outlier sources are pooled", f"{MINI}.data.outliers.count"]),
        ({f"{MINI}.data.id.classes": [{"path": "x.txt"}]}, [f"{MINI}.data.id.classes[0]", "'file' is a required"]),
        ({f"{MINI}.data.resize": "stretch"}, [f"{MINI}.data.resize", "'stretch' is not one of ['crop', 'none']"]),
        ({f"{MINI}.notes": 5}, [f"{MINI}.notes", "not of type 'string'"]),
        ({f"{MINI}.data.id_classes": [0, 1]}, ["'id_classes' was unexpected"]),
        ({f"{MINI}.data.id.classes": ["cat", "dog"], "report.projection_classes": [0, 2]},
         ["report.projection_classes [2] out of range for 2 ID classes of 'cifar10-mini'"]),
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
        # the merged score section is what the score stage computes and the report reads
        ({"benchmarks.digits.score": {"scores": ["msp", "energy"]}},
         ["benchmarks.digits.score overrides: score.main='fs' is not in score.scores ['msp', 'energy']"]),
        ({"benchmarks.digits.score": {"pairing": {"default": "knn"}}},
         ["benchmarks.digits.score overrides: score.pairing pairs method 'oe' with score 'knn'"]),
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


def test_declared_benchmark_counts_its_classes_from_the_declaration():
    from fsood.config import num_classes

    bench = PARAMS["benchmarks"]["cifar10-mini"]
    assert num_classes("cifar10-mini", bench) == 10  # its class list, not a table keyed by name
    kept = changed(**{f"{MINI}.data.id.classes": ["cat", "dog", "frog"]})["benchmarks"]["cifar10-mini"]
    assert num_classes("anything", kept) == 3
    every = changed(**{f"{MINI}.data.id.classes": None})["benchmarks"]["cifar10-mini"]
    assert num_classes("cifar10-mini", every) is None  # all of the source's: only the data stage knows
    assert validate_params(changed(**{f"{MINI}.data.id.classes": None, f"{MINI}.data.normalize": DELETE}))


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
    assert main(["finetune", "--benchmark", "digits", "--pretrain-seed", "0", "--method", "sep", "--seed", "99"]) == 2
    assert "seed 99 is not in grid.seeds" in capsys.readouterr().err
    assert main(["pretrain", "--benchmark", "digits", "--pretrain-seed", "7"]) == 2
    assert "pretrain seed 7 is not in grid.pretrain_seeds" in capsys.readouterr().err


@pytest.mark.trust(kind="bad_params")
def test_none_in_grid_methods_is_refused_saying_why():
    """An older params.yaml listed `none` among the methods: it is now one cell a pretrained model, always."""
    params = changed(**{"grid.methods": ["none", "oe"]})
    with pytest.raises(ParamsError, match="grid.methods lists 'none', but the pretrained model is scored as it is "
                                          r"once per pretrained model \(results/<benchmark>/model<k>/none\), always"):
        validate_params(params)


@pytest.mark.trust(kind="bad_params")
def test_several_pretrain_seeds_of_a_published_checkpoint_are_refused():
    params = changed(**{"grid.benchmarks": ["cifar10"], "grid.pretrain_seeds": [0, 1]})
    with pytest.raises(ParamsError, match=r"benchmark\(s\) \['cifar10'\] start from one published checkpoint"):
        validate_params(params)


@pytest.mark.trust(kind="bad_params")
def test_a_generated_ood_set_must_be_declared_synthetic():
    params = changed(**{"score.synthetic_sets": ["gaussian", "blobs"]})  # cifar10-mini's rademacher left out
    with pytest.raises(ParamsError, match=r"benchmarks.cifar10-mini.data.ood_sets.rademacher is generated noise: list "
                                          "it in score.synthetic_sets"):
        validate_params(params)


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


def test_readme_shows_the_real_error_for_a_misspelt_method(tmp_path):
    """The example error in docs/method.md is what `fsood validate` prints, word for word."""
    import re
    import subprocess
    import sys

    from conftest import ROOT, edit_params, make_workspace

    block = re.search(r"```\n(fsood: error: params.yaml is invalid.*?)\n```", (ROOT / "docs/method.md").read_text(), re.S)
    ws = make_workspace(tmp_path / "ws", git=False)
    edit_params(ws, **{"grid.methods": ["oe", "sepp", "energy_oe", "sep"]})
    proc = subprocess.run([sys.executable, "-m", "fsood", "validate"], cwd=ws, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == block.group(1).strip()
