"""The paper benchmarks' dataset builders, piece by piece (the whole path: tests/test_paper_e2e.py)."""
from __future__ import annotations

import io
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


@pytest.mark.trust(kind="undecodable_images")
def test_image_that_fails_to_decode_is_named(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="bad.jpg: image failed to decode"):
        ImageFiles(tmp_path, ["bad.jpg"], size=32)[np.array([0])]
