"""Small fabricated copies of the paper's datasets and checkpoints, in their real formats.

Each file has the name, format and internal layout the registry gives the real source (top
folder, data members), so the builders read it exactly as they would read the original:
CIFAR binary tarballs, SVHN's ``.mat``, the 300K ``.npy``, image archives (tar.gz, tar, zip),
energy_ood's WRN checkpoint (the OE code's key names) and torchvision's ResNet-50 weights.
``sources_override`` writes the ``$FSOOD_SOURCES`` file that points the registry at them,
served on 127.0.0.1 with their own sha256.
"""
from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from fsood.datasets import cifar_paper, imagenet, registry


def _jpeg(rng: np.random.Generator, size: tuple[int, int]) -> bytes:
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _archive(path: Path, fmt: str, files: dict[str, bytes]) -> None:
    """Write ``files`` ({member path: bytes}) as a tar.gz, tar or zip archive, in sorted order."""
    if fmt == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            for name in sorted(files):
                zf.writestr(name, files[name])
        return
    with tarfile.open(path, "w:gz" if fmt == "tar.gz" else "w") as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(files[name]), 0
            tar.addfile(info, io.BytesIO(files[name]))


def _under(source: registry.Source, rel: str) -> str:
    return f"{source.top.rstrip('/')}/{rel}" if source.top else rel


def _image_folder(source: registry.Source, prefix: str) -> str:
    """Where a builder looks for images of ``source``: its prefix, else the first data member."""
    if prefix:
        return prefix
    members = [m for m in source.members if m not in (".", "")]
    return members[0].rstrip("/") + "/" if members else ""


def cifar_binary(out: Path, which: str, per_class_train: int, per_class_test: int, seed: int) -> Path:
    spec = cifar_paper.CIFAR[which]
    source = registry.get_source(spec["source"])
    rng = np.random.default_rng(seed)

    def records(per_class: int, parts: int) -> list[bytes]:
        labels = np.repeat(np.arange(spec["classes"]), per_class)
        rng.shuffle(labels)
        pixels = rng.integers(0, 256, (len(labels), 3 * 32 * 32), dtype=np.uint8)
        prefix = labels[:, None] if spec["label_bytes"] == 1 else np.stack([labels // 5, labels], 1)
        rows = np.concatenate([prefix.astype(np.uint8), pixels], 1)
        return [chunk.tobytes() for chunk in np.array_split(rows, parts)]

    files = dict(zip(spec["train"], records(per_class_train, len(spec["train"]))))
    files.update(zip(spec["test"], records(per_class_test, len(spec["test"]))))
    path = out / source.filename
    _archive(path, source.format, {_under(source, name): data for name, data in files.items()})
    return path


def image_archive(out: Path, source_name: str, count: int, seed: int, prefix: str = "",
                  size: tuple[int, int] = (40, 36)) -> Path:
    source = registry.get_source(source_name)
    rng = np.random.default_rng(seed)
    folder = _image_folder(source, prefix)
    files = {_under(source, f"{folder}img_{i:04d}.jpg"): _jpeg(rng, size) for i in range(count)}
    path = out / source.filename
    _archive(path, source.format, files)
    return path


def svhn_mat(out: Path, count: int, seed: int) -> Path:
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    path = out / registry.get_source("svhn-test").filename
    savemat(path, {"X": rng.integers(0, 256, (32, 32, 3, count), dtype=np.uint8),
                   "y": rng.integers(1, 11, (count, 1)).astype(np.uint8)})
    return path


def tiny_images_npy(out: Path, count: int, seed: int) -> Path:
    path = out / registry.get_source("tiny-images-300k").filename
    np.save(path, np.random.default_rng(seed).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8))
    return path


def energy_ood_checkpoint(out: Path, source_name: str, model) -> Path:
    """An fsood WRN saved under the OE / energy-OOD code's key names (the inverse of import_state)."""
    import torch

    n = (len([m for m in model.backbone if m.__class__.__name__ == "_WideBlock"])) // 3
    state = {}
    for key, value in model.state_dict().items():
        parts = key.split(".")
        if parts[0] == "fc":
            state[key] = value
            continue
        index = int(parts[1])
        if index == 0:
            state[f"conv1.{parts[2]}"] = value
        elif index == 1 + 3 * n:
            state[f"bn1.{parts[2]}"] = value
        else:
            stage, i = divmod(index - 1, n)
            name = {"shortcut": "convShortcut"}.get(parts[2], parts[2])
            state[".".join([f"block{stage + 1}", "layer", str(i), name, *parts[3:]])] = value
    path = out / registry.get_source(source_name).filename
    torch.save({f"module.{k}": v for k, v in state.items()}, path)  # as saved from DataParallel
    return path


def resnet50_checkpoint(out: Path, num_classes: int, seed: int) -> Path:
    import torch
    from torchvision.models import resnet50

    torch.manual_seed(seed)
    path = out / registry.get_source("resnet50-imagenet1k-v1").filename
    torch.save(resnet50(weights=None, num_classes=num_classes).state_dict(), path)
    return path


def imagenet_folders(out: Path, classes: int, train: int, val: int, extra_21k: int, seed: int) -> tuple[Path, Path]:
    """ImageNet-1k in ImageFolder layout and an ImageNet-21k-P folder sharing one class with it."""
    rng = np.random.default_rng(seed)
    wnids = [f"n{10000000 + i:08d}" for i in range(classes)]
    root1k, root21k = out / "imagenet1k", out / "imagenet21k"
    for split, count in (("train", train), ("val", val)):
        for wnid in wnids:
            (root1k / split / wnid).mkdir(parents=True)
            for i in range(count):
                (root1k / split / wnid / f"{wnid}_{i}.JPEG").write_bytes(_jpeg(rng, (44, 40)))
    for wnid in [wnids[0], *(f"n{20000000 + i:08d}" for i in range(extra_21k))]:  # wnids[0] must be removed
        (root21k / wnid).mkdir(parents=True)
        for i in range(4):
            (root21k / wnid / f"{wnid}_{i}.JPEG").write_bytes(_jpeg(rng, (40, 44)))
    return root1k, root21k


def sources_override(path: Path, files: dict[str, Path], base_url: str) -> Path:
    """``$FSOOD_SOURCES``: each fabricated file's registry entry, served at ``base_url``, with its sha256."""
    entries = {}
    for name, file in files.items():
        entry = registry.as_entry(registry.get_source(name))
        entry.update(urls=[f"{base_url}/{file.name}"],
                     checksum={"algorithm": "sha256", "value": hashlib.sha256(file.read_bytes()).hexdigest(),
                               "published_by": "tests/paper_fakes.py (fabricated copy)"})
        entry.pop("note", None)
        entries[name] = entry
    path.write_text(yaml.safe_dump(entries, sort_keys=True))
    return path


def cifar_sources(out: Path, benchmark: str, model, sets: list[str]) -> dict[str, Path]:
    """Every source the ``cifar10`` / ``cifar100`` benchmark reads for OOD ``sets``, fabricated small."""
    other = "cifar100" if benchmark == "cifar10" else "cifar10"
    files = {
        cifar_paper.CIFAR[benchmark]["source"]: cifar_binary(out, benchmark, 3, 2, seed=1),
        cifar_paper.CIFAR[other]["source"]: cifar_binary(out, other, 1, 1, seed=2),
        "svhn-test": svhn_mat(out, 30, seed=3),
        "tiny-images-300k": tiny_images_npy(out, 96, seed=4),
        f"energy-ood-wrn-{benchmark}": energy_ood_checkpoint(out, f"energy-ood-wrn-{benchmark}", model),
    }
    for i, (name, (source, prefix)) in enumerate(sorted(cifar_paper.IMAGE_SETS.items())):
        if name in sets:
            files[source] = image_archive(out, source, 14, seed=10 + i, prefix=prefix)
    return files


def imagenet_sources(out: Path, num_classes: int) -> dict[str, Path]:
    files = {"resnet50-imagenet1k-v1": resnet50_checkpoint(out, num_classes, seed=5)}
    for i, (name, source) in enumerate(sorted(imagenet.OOD_SOURCES.items())):
        files[source] = image_archive(out, source, 10, seed=20 + i, size=(48, 40))
    return files
