"""The paper benchmarks' dataset builders, piece by piece (the whole path: tests/test_paper_e2e.py)."""
from __future__ import annotations

import io
import logging
import random
import tarfile

import numpy as np
import pytest

import paper_fakes
from fsood.datasets import cifar_paper, imagenet
from fsood.datasets.image_files import ImageFiles, list_images
from fsood.datasets.registry import DatasetError


def test_smallest_by_name_ignores_archive_order_and_keeps_k():
    items = [(f"img_{i:03d}.jpg", bytes([i])) for i in range(50)]
    shuffled = items[:]
    random.Random(1).shuffle(shuffled)
    first = cifar_paper.smallest_by_name(iter(items), 7, seed=0, purpose="svhn")
    assert first == cifar_paper.smallest_by_name(iter(shuffled), 7, seed=0, purpose="svhn")
    assert len(first) == 7 and first == sorted(first)
    # another seed or set name draws another subset; asking for more than there is gives all
    assert first != cifar_paper.smallest_by_name(iter(items), 7, seed=1, purpose="svhn")
    assert first != cifar_paper.smallest_by_name(iter(items), 7, seed=0, purpose="isun")
    assert cifar_paper.smallest_by_name(iter(items), 99, seed=0, purpose="svhn") == items


def test_cifar_binary_records_decode_to_images_and_labels(tmp_path):
    path = paper_fakes.cifar_binary(tmp_path, "cifar100", per_class_train=1, per_class_test=1, seed=0)
    sets = cifar_paper.read_cifar(lambda name: path, "cifar100")
    x, y = sets["train"]
    assert x.shape == (100, 3, 32, 32) and x.dtype == np.uint8
    assert sorted(y.tolist()) == list(range(100))  # the fine label (second byte), not the coarse one
    # the first record's pixel bytes are R, G, B planes of 32x32, in that order
    with tarfile.open(path) as tar:
        raw = tar.extractfile("cifar-100-binary/train.bin").read()
    np.testing.assert_array_equal(x[0].reshape(-1), np.frombuffer(raw[2:2 + 3072], dtype=np.uint8))


@pytest.mark.trust(kind="archives")
def test_cifar_binary_of_the_wrong_record_size_is_refused(tmp_path):
    path = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name in [*cifar_paper.CIFAR["cifar10"]["train"], *cifar_paper.CIFAR["cifar10"]["test"]]:
            data = bytes(3073 * 2 + 5)  # two records and a stray 5 bytes
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(DatasetError, match="not a multiple of 3073"):
        cifar_paper.read_cifar(lambda name: path, "cifar10")


def test_imagenet_root_that_is_not_given_says_what_to_set(monkeypatch):
    monkeypatch.delenv("FSOOD_IMAGENET_ROOT", raising=False)
    with pytest.raises(DatasetError, match=r"roots.imagenet in params.yaml or the environment variable "
                                           r"FSOOD_IMAGENET_ROOT"):
        imagenet.resolve_root({"roots": {"imagenet": None, "imagenet21k": None}}, "imagenet")
    monkeypatch.setenv("FSOOD_IMAGENET_ROOT", "/no/such/folder")
    with pytest.raises(DatasetError, match="/no/such/folder .* is not a folder"):
        imagenet.resolve_root({"roots": {"imagenet": None, "imagenet21k": None}}, "imagenet")


def test_imagenet_lists_and_lazy_decoding(tmp_path):
    root1k, root21k = paper_fakes.imagenet_folders(tmp_path, classes=2, train=3, val=1, extra_21k=2, seed=0)
    split = imagenet._id_split(root1k, "train", ["n10000000", "n10000001"], cap=None, seed=0)
    assert split["y"].tolist() == [0, 0, 0, 1, 1, 1]
    lazy = ImageFiles(split["root"], split["files"], size=32, resize=36)
    batch = lazy[np.array([4, 0])]
    assert batch.shape == (2, 3, 32, 32) and batch.dtype == np.uint8
    np.testing.assert_array_equal(batch[1], lazy[np.array([0])][0])  # the same file, the same pixels
    outliers, info = imagenet._outliers(root21k, {"n10000000"}, cap=None, seed=0)
    assert info["removed_imagenet1k_classes"] == 1
    assert not any(f.startswith("n10000000/") for f in outliers["files"]) and len(outliers["files"]) == 8
    assert len(list_images(root21k)) == 12


def test_imagenet_val_with_other_classes_than_train_is_refused(tmp_path):
    root1k, root21k = paper_fakes.imagenet_folders(tmp_path, classes=2, train=1, val=1, extra_21k=1, seed=0)
    (root1k / "val" / "n10000001").rename(root1k / "val" / "n99999999")
    cfg = {"roots": {"imagenet": str(root1k), "imagenet21k": str(root21k)}, "split_seed": 0,
           "subset": {"id_train": None, "id_test": None, "outliers": None}}
    with pytest.raises(DatasetError, match="train/ and val/ hold different class folders"):
        imagenet.build(cfg, fetch=None)


def _release(tmp_path):
    """ImageNet-1k, and ImageNet-21K-P laid out as its release unpacks: imagenet21k_resized/imagenet21k_{train,val}/."""
    root1k, root21k = paper_fakes.imagenet_folders(tmp_path, classes=2, train=1, val=1, extra_21k=2, seed=0)
    release = tmp_path / "datasets" / "imagenet21k_resized"
    release.mkdir(parents=True)
    root21k.rename(release / "imagenet21k_train")
    (release / "imagenet21k_val" / "n10000000").mkdir(parents=True)
    return root1k, release


def _imagenet_cfg(root1k, root21k) -> dict:
    return {"roots": {"imagenet": str(root1k), "imagenet21k": str(root21k)}, "split_seed": 0, "resize": 36,
            "crop": 32, "subset": {"id_train": None, "id_test": None, "outliers": None}, "ood_sets": [],
            "hard_ood_sets": []}


@pytest.mark.trust(kind="dataset_folders")
def test_imagenet21k_release_folder_is_read_from_its_train_folder(tmp_path, caplog):
    """The trap: pointed at imagenet21k_resized, its two folders were taken for classes and none was removed."""
    root1k, release = _release(tmp_path)
    caplog.set_level(logging.INFO, logger="fsood")
    sets, manifest = imagenet.build(_imagenet_cfg(root1k, release), fetch=None)
    assert manifest["sets"]["outliers"]["removed_imagenet1k_classes"] == 1
    assert manifest["sets"]["outliers"]["classes"] == 2
    assert sets["outliers"]["root"] == str(release / "imagenet21k_train") and len(sets["outliers"]["files"]) == 8
    assert (f"{release} holds the imagenet21k_resized release: reading its imagenet21k_train/, as the authors do"
            in caplog.messages)


@pytest.mark.trust(kind="dataset_folders")
def test_imagenet21k_root_above_the_release_is_refused_naming_the_folder(tmp_path):
    root1k, release = _release(tmp_path)
    above = release.parent
    with pytest.raises(DatasetError) as err:
        imagenet.build(_imagenet_cfg(root1k, above), fetch=None)
    assert str(err.value) == (
        f"{above}: no ImageNet-21K-P class folders here, but {release / 'imagenet21k_train'} is the release's "
        f"training folder: set benchmarks.imagenet.data.roots.imagenet21k in params.yaml (or FSOOD_IMAGENET21K_ROOT) "
        f"to it")


@pytest.mark.trust(kind="dataset_folders")
def test_imagenet21k_root_without_any_imagenet1k_class_is_refused(tmp_path):
    root1k, release = _release(tmp_path)
    other = tmp_path / "other"
    for wnid in ("n30000000", "n30000001", "n30000002", "n30000003"):
        (other / wnid).mkdir(parents=True)
    with pytest.raises(DatasetError) as err:
        imagenet.build(_imagenet_cfg(root1k, other), fetch=None)
    assert str(err.value) == (
        f"{other}: none of its 4 class folders (n30000000, n30000001, n30000002, ...) is an ImageNet-1k class, so no "
        f"ImageNet-1k class would be removed from the outliers. Set benchmarks.imagenet.data.roots.imagenet21k in "
        f"params.yaml (or FSOOD_IMAGENET21K_ROOT) to the folder of ImageNet-21K-P's <wnid>/ class folders: "
        f"imagenet21k_resized/imagenet21k_train in the release")


@pytest.mark.trust(kind="undecodable_images")
def test_image_that_fails_to_decode_is_named(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="bad.jpg: image failed to decode"):
        ImageFiles(tmp_path, ["bad.jpg"], size=32)[np.array([0])]
