"""``fsood rebuild``: rerun one recorded cell and check that it gives the same bytes.

    python -m fsood rebuild --benchmark B --pretrain-seed K --method M [--seed S] [--params params.yaml]
                           [--use-current-params]

Reads the cell's provenance.json (fsood.provenance), refuses when params.yaml no longer defines the
cell as recorded (naming the differing keys) unless ``--use-current-params``, reruns the finetune and
score stages in a temporary workspace that shares the inputs (hard links, else copies: the stages
write atomically by rename, so a linked original is never modified), and prints one row per output
``file  recorded  rebuilt  match``: the sha256 of the recorded file as it is on disk and of the
rebuilt one; a row matches when both equal the hash in provenance.json (a recorded file edited since
is reported, never repaired). Exit 0 when every output matches, 1 otherwise. The recorded outputs
are only read, never written.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TextIO

from fsood import contract, provenance
from fsood.config import ParamsError
from fsood.io import read_json

_LOG_TAIL = 2000


def record_path(cell: dict) -> Path:
    stage = provenance.cell_stages(cell)[-1]  # the scoring stage writes the record
    return contract.out(stage, "provenance", **{w: cell[w] for w in contract.stage(stage).wildcards})


def changed_params(recorded: dict, params: dict, cell: dict) -> list[str]:
    """Dotted keys (under the record's ``params``) whose current value differs from the recorded one."""
    return provenance.diff_keys(recorded["params"], provenance.cell_params(params, cell))


def _link_or_copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dest)


def share_inputs(workspace: Path, params: dict, cell: dict) -> None:
    """Hard-link (or copy) the cell's recorded inputs (provenance.input_files: the data folder, the pretrain
    and subspace outputs its stages declare) into ``workspace``; a set of image files with a relative
    root gets a symlink to that root."""
    for src in provenance.input_files(params, cell):
        _link_or_copy(src, workspace / src)
    for info in read_json(contract.manifest(cell["benchmark"]))["sets"].values():
        root = info.get("root")
        if info.get("kind") == "files" and root and not Path(root).is_absolute() and not (workspace / root).exists():
            (workspace / root).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(Path(root).resolve(), workspace / root)


def run_stages(workspace: Path, cell: dict, score_threads: int) -> None:
    """The cell's stages (provenance.cell_stages), each with its contract's command, inside ``workspace``.

    Finetune runs with ``runtime.threads`` (OMP_NUM_THREADS unset, as under ``dvc repro``); scoring with
    the thread count the record names: CPU results are bit-stable for a fixed thread count only."""
    for stage in provenance.cell_stages(cell):
        env = dict(os.environ)
        env.pop("OMP_NUM_THREADS", None)
        if stage != "finetune":
            env["OMP_NUM_THREADS"] = str(score_threads)
        cmd = contract.stage(stage).command(**{w: cell[w] for w in contract.stage(stage).wildcards}).split()
        proc = subprocess.run([sys.executable, *cmd[1:]], cwd=workspace, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"rebuild: the {stage} stage failed (exit {proc.returncode}):\n"
                               f"{(proc.stderr or proc.stdout)[-_LOG_TAIL:]}")


def compare(recorded: dict[str, str], rebuilt: dict[str, str | None]) -> list[tuple[str, str, str, bool]]:
    """Rows ``(file, recorded sha256, rebuilt sha256, match)``; a file missing on either side never matches."""
    rows = []
    for name in sorted(set(recorded) | set(rebuilt)):
        want, got = recorded.get(name), rebuilt.get(name)
        rows.append((name, want or "-", got or "-", want is not None and want == got))
    return rows


def format_table(rows: list[tuple[str, str, str, bool]], digits: int = 16) -> str:
    header = ("file", "recorded", "rebuilt", "match")
    lines = [(f, r[:digits], b[:digits], "yes" if ok else "NO") for f, r, b, ok in rows]
    widths = [max(len(str(line[i])) for line in [header, *lines]) for i in range(4)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in [header, *lines])


def rebuild(params: dict, params_file: str, cell: dict, use_current_params: bool = False, keep: bool = False,
            out: TextIO = sys.stdout) -> int:
    """Rebuild one cell from its provenance in a temporary workspace; 0 when every output matches, else 1.

    Raises ParamsError when the current params differ from the recorded ones (unless
    ``use_current_params``) and FileNotFoundError when the cell has no provenance record."""
    cell_id = contract.cell_name(*cell.values())
    path = record_path(cell)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no provenance record for cell {cell_id}; "
                                "run its score stage first (snakemake / dvc repro)")
    recorded = read_json(path)
    changed = changed_params(recorded, params, cell)
    if changed and not use_current_params:
        raise ParamsError(f"{params_file} no longer defines cell {cell_id} as recorded in {path}; "
                          f"differing keys: {', '.join(changed)}. Restore them, or pass --use-current-params "
                          "to rebuild with the current values")
    if changed:
        print(f"rebuilding with the current params; differing from the record: {', '.join(changed)}", file=out)
    current_inputs = {file: provenance.sha256_file(file) if Path(file).is_file() else None
                      for file in recorded["inputs"]}
    for file, row_ok in ((row[0], row[3]) for row in compare(recorded["inputs"], current_inputs)):
        if not row_ok:
            print(f"warning: input {file} is not the recorded one; the outputs cannot be expected to match",
                  file=out)
    workspace = Path(tempfile.mkdtemp(prefix=f"fsood-rebuild-{cell_id}-"))
    try:
        share_inputs(workspace, params, cell)
        shutil.copyfile(params_file, workspace / "params.yaml")
        run_stages(workspace, cell, recorded["runtime"]["threads"])
        expected = [f.as_posix() for f in provenance.output_files(cell)]
        names = dict.fromkeys([*recorded["outputs"], *expected])
        rebuilt = {name: provenance.sha256_file(workspace / name) if (workspace / name).is_file() else None
                   for name in names}
    finally:
        if keep:
            print(f"rebuilt workspace kept at {workspace}", file=out)
        else:
            shutil.rmtree(workspace, ignore_errors=True)
    on_disk = {name: provenance.sha256_file(name) if Path(name).is_file() else None for name in names}
    for name in names:
        if on_disk[name] != recorded["outputs"].get(name):
            print(f"warning: {name} is no longer the file its provenance record hashed", file=out)
    rows = [(name, want, got, ok and on_disk[name] == recorded["outputs"].get(name))
            for name, want, got, ok in compare(on_disk, rebuilt)]
    print(format_table(rows), file=out)
    matched = all(ok for *_, ok in rows)
    print(f"cell {cell_id}: " + ("rebuilt outputs match the record" if matched else
          f"{sum(not ok for *_, ok in rows)} of {len(rows)} outputs differ from the record"), file=out)
    return 0 if matched else 1


def main(params: dict, args) -> int:
    """The CLI's entry (fsood.cli); a params mismatch propagates as ParamsError (exit 2), a missing
    record or a failed stage exits 1 with the message."""
    if args.method != contract.NONE and args.seed is None:
        raise ParamsError(f"rebuild of a fine-tuned cell ({args.method}) needs --seed")
    cell = provenance.cell_of(args.benchmark, args.pretrain_seed, args.method, args.seed)
    try:
        return rebuild(params, args.params, cell, use_current_params=args.use_current_params, keep=args.keep)
    except (FileNotFoundError, RuntimeError, ValueError) as err:
        if isinstance(err, ParamsError):
            raise
        print(f"fsood: error: {err}", file=sys.stderr)
        return 1
