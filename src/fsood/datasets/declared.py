"""A benchmark declared in params.yaml from parts: no builder of its own.

``benchmarks.<name>.data`` (schema: ``declared_data`` in params.schema.yaml) names

* ``id``: a ``source`` (see ``image_sources``) or a user ``folder``, its ``splits`` (train, test),
  optional ``classes`` to keep (relabelled 0..C-1 in the order given; all, sorted, when null)
  and class-balanced ``count`` caps per split;
* ``outliers``: ``sources`` (each a source or folder with its ``split``, ``classes`` to keep
  and ``drop_classes``) pooled, and at most ``count`` of them;
* ``ood_sets``: name -> such an image set with its ``count``, or ``{synthetic: gaussian |
  rademacher | blobs, count}`` (the OE paper's sets);
* ``image_size``, the ``resize`` rule (``crop``: torchvision's Resize(image_size) on the shorter
  side + CenterCrop(image_size); ``none``: images must already have that size; an integer r:
  Resize(r) + CenterCrop(image_size)), ``split_seed``, and optionally ``normalize`` (else the
  per-channel mean and std of the ID train images, recorded in the manifest).

A class list holds names and ``{file: path}`` entries: a text file, one name per line (its
first tab-separated field; blank lines and ``#`` comments skipped), relative to the project root.

Every random choice draws from its own stream, seeded by ``split_seed`` and the set's name
(``<set>/<class>`` for the class-balanced ID sets), so changing one cap never reshuffles
another set. The chosen member names are saved in the manifest.
"""
from __future__ import annotations

import difflib
import zlib
from pathlib import Path

import numpy as np

from fsood.io import file_sha256

from .errors import DatasetError
from .image_sources import Fetch, FolderImages, open_source
from .synthetic import synthetic

ID_SETS = {"train": "id_train", "test": "id_test"}


def is_declared(cfg: dict) -> bool:
    """Whether a benchmark's data section is a declaration (else a builder's own keys)."""
    return "id" in cfg


def rng(seed: int, purpose: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(purpose.encode())])


def pick(n: int, cap: int | None, generator: np.random.Generator) -> np.ndarray:
    """Sorted indices of at most ``cap`` of ``n`` items, chosen uniformly; all when cap is None."""
    if cap is None or cap >= n:
        return np.arange(n)
    return np.sort(generator.choice(n, cap, replace=False))


def class_names(entries, where: str, base: Path = Path(".")) -> list[str]:
    """Names of a class list: strings and ``{file: path}`` entries, in order, duplicates dropped."""
    names: list[str] = []
    for entry in entries or []:
        if isinstance(entry, str):
            names.append(entry)
            continue
        path = base / entry["file"]
        if not path.is_file():
            raise DatasetError(f"{where}: class list file {str(path)!r} does not exist")
        lines = (line.split("\t")[0].strip() for line in path.read_text().splitlines())
        names += [n for n in lines if n and not n.startswith("#")]
    return list(dict.fromkeys(names))


def _check_known(names: list[str], available: list[str], where: str, what: str) -> None:
    for name in names:
        if name not in available:
            close = difflib.get_close_matches(name, available, n=5, cutoff=0.6)
            hint = f"; close: {close}" if close else f"; it has {len(available)}: {available[:10]}" + (
                " ..." if len(available) > 10 else "")
            raise DatasetError(f"{where}: {what} class {name!r} is not a class of the source{hint}")


class Declaration:
    """Resolves a declared data section against its sources; ``build()`` makes every set."""

    def __init__(self, benchmark: str, cfg: dict, fetch: Fetch, base: Path = Path(".")):
        self.benchmark, self.cfg, self.base = benchmark, cfg, base
        self.seed, self.size = cfg["split_seed"], cfg["image_size"]
        self.resize = {"crop": True, "none": False}.get(cfg["resize"], cfg["resize"])
        self.files: dict[str, str] = {}  # class list file -> sha256 (provenance)
        self._open_all(fetch)

    # --- sources -------------------------------------------------------------------------

    def _specs(self) -> list[tuple[str, dict, str]]:
        """(where, image set spec, split) of every set that reads images."""
        data, name = self.cfg, self.benchmark
        specs = [(f"benchmarks.{name}.data.id", data["id"], s) for s in data["id"]["splits"].values()]
        specs += [(f"benchmarks.{name}.data.outliers.sources[{i}]", s, s["split"])
                  for i, s in enumerate(data["outliers"]["sources"])]
        specs += [(f"benchmarks.{name}.data.ood_sets.{k}", s, s["split"])
                  for k, s in data["ood_sets"].items() if "synthetic" not in s]
        return specs

    def _key(self, spec: dict) -> str:
        return spec["source"] if "source" in spec else f"folder:{spec['folder']}"

    def _open_all(self, fetch: Fetch) -> None:
        """Open every source once (each archive read in one pass, only the splits used)."""
        specs = self._specs()
        for where, spec, _ in specs:  # cheap checks first: nothing is read before they pass
            if "folder" in spec and not (self.base / spec["folder"]).is_dir():
                raise DatasetError(f"{where}: folder {str(self.base / spec['folder'])!r} does not exist")
            for key in ("classes", "drop_classes"):
                self._names(spec, key, where)
        self.sources = {}
        for where, spec, _ in specs:
            key = self._key(spec)
            if key not in self.sources:
                splits = {s for _, sp, s in specs if self._key(sp) == key}
                self.sources[key] = (FolderImages(self.base / spec["folder"], where) if "folder" in spec
                                     else open_source(spec["source"], fetch, splits))

    def _names(self, spec: dict, key: str, where: str) -> list[str]:
        for entry in spec.get(key) or []:
            if isinstance(entry, dict):
                path = self.base / entry["file"]
                if path.is_file():
                    self.files[entry["file"]] = file_sha256(path)
        return class_names(spec.get(key), f"{where}.{key}", self.base)

    # --- selection -----------------------------------------------------------------------

    def select(self, spec: dict, split: str, where: str) -> tuple[list[tuple[str, str]], list[str]]:
        """Members (name, class) of ``split`` after keep / drop, and the classes kept (in order)."""
        members = self.sources[self._key(spec)].members(split)
        available = sorted({c for _, c in members})
        keep, drop = self._names(spec, "classes", where), self._names(spec, "drop_classes", where)
        _check_known(keep, available, f"{where}.classes", "kept")
        _check_known(drop, available, f"{where}.drop_classes", "dropped")
        classes = [c for c in (keep or available) if c not in set(drop)]
        chosen = [(n, c) for n, c in members if c in set(classes)]
        if not chosen:
            raise DatasetError(f"{where}: no image left in split {split!r} after the class filters "
                               f"(classes: {keep or 'all'}, drop_classes: {drop or 'none'})")
        return chosen, classes

    def load(self, spec: dict, names: list[str], desc: str) -> np.ndarray:
        return self.sources[self._key(spec)].load(names, self.size, self.resize, desc)


def _check_overlap(classes: list[str], id_classes: list[str], where: str) -> None:
    overlap = [c for c in classes if c in set(id_classes)]
    if overlap:
        raise DatasetError(f"{where}: classes {overlap} are ID classes too; drop them (drop_classes) "
                           f"or keep only others (classes)")


def _id_sets(d: Declaration) -> tuple[dict, dict, list[str]]:
    """id_train and id_test, class-balanced: ``count // C`` per class (all when null)."""
    spec, where = d.cfg["id"], f"benchmarks.{d.benchmark}.data.id"
    sets, prov, classes = {}, {}, None
    for split_key, set_name in ID_SETS.items():
        split = spec["splits"][split_key]
        members, kept = d.select(spec, split, where)
        if classes is not None and kept != classes:
            raise DatasetError(f"{where}: split {split!r} holds classes {kept}, the train split {classes}; "
                               f"list the classes to keep (classes)")
        classes, cap = kept, spec["count"][split_key]
        per_class = None if cap is None else cap // len(classes)
        if per_class == 0:
            raise DatasetError(f"{where}.count.{split_key}={cap} is below one image per class ({len(classes)} classes)")
        chosen, labels = [], []
        for label, cls in enumerate(classes):
            names = [n for n, c in members if c == cls]
            picked = [names[i] for i in pick(len(names), per_class, rng(d.seed, f"{set_name}/{cls}"))]
            chosen += picked
            labels += [label] * len(picked)
        sets[set_name] = {"x": d.load(spec, chosen, f"decode {set_name}"), "y": np.asarray(labels, dtype=np.int64)}
        prov[set_name] = {"source": d._key(spec), "split": split, "members": chosen}
    return sets, prov, classes


def _outliers(d: Declaration, id_classes: list[str]) -> tuple[dict, dict]:
    """The pooled auxiliary outliers: at most ``count``, drawn uniformly from every source's images."""
    specs, pool, parts = d.cfg["outliers"]["sources"], [], []
    for i, spec in enumerate(specs):
        where = f"benchmarks.{d.benchmark}.data.outliers.sources[{i}]"
        members, classes = d.select(spec, spec["split"], where)
        _check_overlap(classes, id_classes, where)
        pool += [(i, name) for name, _ in members]
        parts.append({"source": d._key(spec), "split": spec["split"], "classes": classes})
    pool.sort()
    chosen = [pool[j] for j in pick(len(pool), d.cfg["outliers"]["count"], rng(d.seed, "outliers"))]
    xs = []
    for i, spec in enumerate(specs):
        parts[i]["members"] = [name for j, name in chosen if j == i]
        xs.append(d.load(spec, parts[i]["members"], "decode outliers"))
    return {"x": np.concatenate(xs)}, {"sources": parts}


def _ood_set(d: Declaration, name: str, spec: dict, id_classes: list[str]) -> tuple[dict, dict]:
    where = f"benchmarks.{d.benchmark}.data.ood_sets.{name}"
    if "synthetic" in spec:
        x = synthetic(spec["synthetic"], spec["count"], (3, d.size, d.size), rng(d.seed, name))
        return {"x": x}, {"source": f"synthetic {spec['synthetic']} (OE paper), numpy seed "
                                    f"[{d.seed}, crc32({name!r})]"}
    members, classes = d.select(spec, spec["split"], where)
    _check_overlap(classes, id_classes, where)
    names = [members[i][0] for i in pick(len(members), spec["count"], rng(d.seed, name))]
    return {"x": d.load(spec, names, f"decode {name}")}, {
        "source": d._key(spec), "split": spec["split"], "classes": classes, "members": names}


def channel_stats(x: np.ndarray, chunk: int = 4096) -> dict:
    """Per-channel mean and std of uint8 (N, C, H, W) images in [0, 1] units (torchvision's Normalize)."""
    total, sq = np.zeros(x.shape[1]), np.zeros(x.shape[1])
    for start in range(0, len(x), chunk):
        part = x[start:start + chunk].astype(np.float64) / 255.0
        total += part.sum(axis=(0, 2, 3))
        sq += (part ** 2).sum(axis=(0, 2, 3))
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / n
    std = np.sqrt(np.maximum(sq / n - mean ** 2, 0.0))
    return {"mean": [round(float(v), 6) for v in mean], "std": [round(float(v), 6) for v in std]}


def build(benchmark: str, cfg: dict, fetch: Fetch, base: Path = Path(".")) -> tuple[dict, dict]:
    """Every set of a declared benchmark as ``{"x": uint8 (N, 3, S, S), "y": int64}``, and the manifest."""
    d = Declaration(benchmark, cfg, fetch, base)
    sets, prov, classes = _id_sets(d)
    sets["outliers"], prov["outliers"] = _outliers(d, classes)
    for name, spec in cfg["ood_sets"].items():
        sets[name], prov[name] = _ood_set(d, name, spec, classes)
    for arrays in sets.values():
        arrays.setdefault("y", np.full(len(arrays["x"]), -1, dtype=np.int64))
    normalize = ({**cfg["normalize"], "from": "params"} if cfg.get("normalize")
                 else {**channel_stats(sets["id_train"]["x"]), "from": "id_train (computed by the data stage)"})
    manifest = {
        "benchmark": benchmark,
        "num_classes": len(classes),
        "in_channels": 3,
        "class_names": classes,
        "ood_sets": list(cfg["ood_sets"]),
        "image_size": d.size,
        "resize_rule": cfg["resize"],
        "normalize": normalize,
        "class_lists": d.files,
        "sets": prov,
    }
    return sets, manifest
