"""The "What we test against" table of docs/testing.md, made from the ``trust`` markers of the tests.

Each class of bad input or fault is a ``kind``; its tests carry ``@pytest.mark.trust(kind=...)``.
:data:`KINDS` holds each row's prose (class, what the user sees, what is left on disk); the count
column is what pytest collects. ``python scripts/trust_table.py`` writes the table into docs/testing.md;
tests/test_bad_inputs.py fails when docs/testing.md holds another table than :func:`render` writes.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADER = "| Class (`kind`) | Cases | What the user sees | Left on disk |\n|---|---|---|---|\n"

# kind: (the row's class, what the user sees, what is left on disk)
KINDS: dict[str, tuple[str, str, str]] = {
    'archives': (
        'Corrupt, truncated or mis-hashed archive or file',
        'the file, the URL and byte counts of a cut transfer, or the expected and actual sha256 / md5; "not a readable tar.gz archive", a failed CRC',
        'no file under its own name, no extracted folder (a cut transfer keeps only `<file>.part` for the next run to resume); a bad mirror copy is an error, never a silent fallback',
    ),
    'unreliable_origins': (
        'An origin that drops the connection, answers 429 / 5xx, or sends a web page (Dropbox, Google Drive)',
        'a cut transfer resumes by a range request (`transfer ended after N of M bytes; retrying in S s (attempt k of n)`), within a run and in the next one; 429 / 5xx retried with doubling waits, `Retry-After` honoured; then `<url>: refused: <host> answered HTTP <status> with a web page ...` or `... gave up after n attempts`, and what to do; Drive\'s confirmation page followed, its quota page quoted; the next origin tried, each verified against the same checksum',
        'no file under its own name until it is verified; after a cut, `<file>.part` and `<file>.part.json`, which the next run resumes',
    ),
    'dataset_folders': (
        'An ImageNet-21K-P folder in the release layout, one level too high, or without ImageNet-1k classes',
        '`imagenet21k_resized` is read from its `imagenet21k_train/` (logged); a folder above it: `... but <root>/imagenet21k_resized/imagenet21k_train is the release\'s training folder: set ... to it`; no ImageNet-1k class: `none of its N class folders (...) is an ImageNet-1k class ...`',
        'no `data/imagenet`, no temp folder',
    ),
    'unsafe_members': (
        'Archive member with `..`, an absolute path or a link',
        'the archive and the member, and why it would escape its folder',
        'nothing extracted from the whole archive',
    ),
    'undecodable_images': (
        'Image that fails to decode',
        '`<member>: image failed to decode (...)`',
        'no `data/<benchmark>` (a previous one untouched), no temp folder',
    ),
    'bad_params': (
        'Bad params: wrong type, unknown key, empty grid, duplicate seeds, ...',
        'the dotted key and the problem (`grid.seeds: ... non-unique`), before any job, from the CLI, Snakemake or DVC (exit 2)',
        'nothing; previous outputs untouched',
    ),
    'bad_declaration': (
        'A declared benchmark whose sets cannot be built',
        '`benchmarks.<b>.data.<set>: ...` naming the problem: an unknown source (with the known ones), a class the source lacks (with the close names), a set left empty by its class filters, outlier classes that are ID classes (named), a folder that does not exist or is not in ImageFolder layout, a split the source lacks, a missing class list file; `<file>: image failed to decode`',
        'no `data/<benchmark>`, no temp folder, no download',
    ),
    'bad_checkpoints': (
        'Checkpoint of another architecture / class count, or not a plain state dict',
        '`<file>: checkpoint does not fit the model (small_cnn, 5 classes): size mismatch ...` or `not a plain state dict checkpoint` (loaded with `weights_only=True`)',
        'no `model.pt`, no history; the previous one untouched',
    ),
    'nonfinite_loss': (
        'Loss that turns NaN or inf',
        '`finetune digits-0-oe-0: loss became nan at epoch E, step S`; the job stops',
        'no `model.pt`, no history; the previous one untouched',
    ),
    'missing_mirror': (
        'Mirror folder that does not exist',
        "`FSOOD_MIRROR names '<folder>', which is not an existing folder` (a missing mirror of params.yaml is skipped, logged)",
        'no data folder, no download',
    ),
    'disk_full': (
        'Disk that fills while writing',
        "`[Errno 28] No space left on device while writing N bytes: '<file>'` (in `write` or `fsync`; every writer, and a folder output)",
        'no temp file or folder; the previous output untouched',
    ),
    'sigkill_resume': (
        'Job killed (SIGKILL) mid-training, then rerun',
        "the rerun logs `resuming from .fsood/resume/<stage>-<cell>.pt after epoch E` and ends with the bytes of an uninterrupted run (pretrain and finetune, DAL's state included); a truncated, foreign or other-params resume file: a warning, then a restart from epoch 0",
        'no `model.pt` or history until the job ends; `.fsood/resume/` holds the last finished epoch (never one with non-finite weights) and is deleted on success',
    ),
    'concurrent_lock': (
        '`snakemake` and `dvc repro` started together',
        "the second refuses: DVC with `'...' is busy, it is being blocked by: (PID n): snakemake (fsood workspace lock ...)`, Snakemake or a job with `workspace ... is in use by dvc (pid n, since ...: dvc repro ...); ... refused`, and how to clear a stale lock",
        "the refused run deletes and runs nothing; the first finishes normally; a dead holder's lock is taken over with a warning",
    ),
    'rerun_after_dvc': (
        '`snakemake -n` after `dvc repro`',
        'wants to rerun DVC-made results; `snakemake --touch --cores 1 all` records them without recomputing, then "Nothing to be done"',
        'outputs byte-identical',
    ),
    'input_changed_outside': (
        'An input rewritten outside Snakemake, e.g. by `dvc checkout` or by hand',
        'same bytes with a new mtime: "Nothing to be done" and `dvc status` clean; other bytes: both tools rerun the jobs that read it (Snakemake compares the sha256 it recorded)',
        'nothing rerun for the same bytes',
    ),
    'exact_rebuild': (
        'Exact rebuild (`dvc repro -f`, other core counts)',
        '`dvc repro -f score@<cell>` (and its 5 upstream stages) rewrites the same bytes: `git status --porcelain` empty, `dvc status` clean; `snakemake --cores 1` and `--cores 2` give the same bytes; a cell run twice gives the same bytes',
        'every file under `data/` and `results/` byte-identical',
    ),
    'rebuild_cell': (
        'Rebuild one named cell and compare',
        '`fsood rebuild --benchmark B --pretrain-seed K --method M [--seed S]` prints `file  recorded  rebuilt  match` per output; exit 0 if all match, 1 naming a tampered or differing file (or a missing `provenance.json`), 2 naming the params keys changed since the record',
        'the recorded outputs are never written; the rebuild runs in a temporary copy',
    ),
}

_COUNT = """
import collections, json, sys
import pytest

class Count:
    def __init__(self):
        self.kinds = collections.Counter()

    def pytest_collection_finish(self, session):
        for item in session.items:
            self.kinds[item.get_closest_marker("trust").kwargs.get("kind")] += 1

count = Count()
rc = pytest.main(["--collect-only", "-q", "-m", "trust", "-p", "no:cacheprovider", *sys.argv[1:]], plugins=[count])
print("TRUST_COUNTS " + json.dumps(count.kinds, sort_keys=True))
sys.exit(0 if rc in (0, 5) else rc)
"""


def trust_counts() -> dict[str, int]:
    """Tests per ``trust`` kind, as pytest collects them (one parametrized case = one test)."""
    marked = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "tests").glob("test_*.py"))
              if "trust(kind=" in p.read_text()]  # collecting only these keeps it quick
    proc = subprocess.run([sys.executable, "-c", _COUNT, *marked], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    if proc.returncode != 0:
        raise RuntimeError("collecting the trust-marked tests failed:\n" + proc.stdout[-3000:] + proc.stderr[-3000:])
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("TRUST_COUNTS "))
    return json.loads(line.removeprefix("TRUST_COUNTS "))


def render(counts: dict[str, int]) -> str:
    """The table (header and one row per kind, in :data:`KINDS` order); refuses an unknown or untested kind."""
    unknown = sorted(set(counts) - set(KINDS))
    untested = sorted(k for k in KINDS if not counts.get(k))
    if unknown or untested:
        raise ValueError(f"trust kinds marked but not in KINDS: {unknown}; in KINDS but no test marked: {untested}")
    rows = [f"| {cls} (`{kind}`) | {counts[kind]} | {sees} | {left} |\n" for kind, (cls, sees, left) in KINDS.items()]
    return HEADER + "".join(rows)


def readme_table(text: str) -> str:
    """The table as the README holds it (from its header row to the first line not starting with '|')."""
    start = text.index(HEADER)
    end = start
    for line in text[start:].splitlines(keepends=True):
        if not line.startswith("|"):
            break
        end += len(line)
    return text[start:end]
