"""A 200 MB download cut twice, resumed by the next run each time: the bytes sent prove it never started over.

    python benchmarks/resume_download.py [--size-mb 200] [--cuts 0.35,0.7]

Fabricates a plain tar of incompressible random members (``--size-mb`` MB in all), publishes
its md5 as a registry source would, and serves it on 127.0.0.1 (tests/fileserver.py) by a route
that closes the connection once the first request has sent ``cuts[0]`` of the file and the
second ``cuts[1]``. Each "run" is one ``registry.fetch`` with one try (as when a snakemake run
dies): runs 1 and 2 fail and keep the ``.part``, run 3 finishes and verifies the md5. Printed:
per run, the ``Range`` asked for, the bytes the server sent, the ``.part`` size after and the
seconds; then the total sent against the file size, and an uninterrupted download of the same
file for comparison. Nothing outside a temporary folder is written.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import platform
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from fileserver import serve  # noqa: E402

from fsood.datasets import registry, transfer  # noqa: E402

MEMBERS = 4


def fabricate(path: Path, size_mb: int) -> str:
    """A tar of MEMBERS random members, ``size_mb`` MB of data in all; its md5."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for i in range(MEMBERS):
            data = rng.bytes(size_mb * 1_000_000 // MEMBERS)
            info = tarfile.TarInfo(f"fabricated/data/part{i}.bin")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.md5(path.read_bytes()).hexdigest()


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--cuts", default="0.35,0.7", help="where runs 1 and 2 are cut, as fractions of the file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fsood-resume-") as tmp:
        served, dl = Path(tmp) / "served", Path(tmp) / "downloads"
        served.mkdir()
        archive = served / "fabricated.tar"
        md5 = fabricate(archive, args.size_mb)
        size = archive.stat().st_size
        cuts = [int(float(f) * size) for f in args.cuts.split(",")]
        requests: list[dict] = []
        with serve(served, requests) as base:
            url = f"{base}/cuts/{','.join(map(str, cuts))}/fabricated.tar"
            source = registry.Source("fabricated", "fabricated.tar", (url,), "tar", "fabricated", ("data",),
                                     checksum=registry.Checksum("md5", md5, "benchmarks/resume_download.py"))
            transfer.RETRY = transfer.Retry(attempts=1)  # one try per run: a run that fails stops there
            print(f"file: {size} bytes, md5 {md5}; cut at bytes {cuts}; CPU: {cpu_model()}")
            print(f"{'run':>3}  {'Range asked':>18}  {'bytes sent':>12}  {'.part after':>12}  {'seconds':>7}  result")
            total_start = time.perf_counter()
            for run in range(1, len(cuts) + 2):
                start, before = time.perf_counter(), len(requests)
                try:
                    registry.fetch(source, [], dl)  # raises unless the md5 matches
                    result = "complete, md5 verified"
                except registry.DatasetError:
                    result = "cut, .part kept"
                took = time.perf_counter() - start
                part = dl / "fabricated.tar.part"
                for r in requests[before:]:
                    kept = part.stat().st_size if part.exists() else (dl / "fabricated.tar").stat().st_size
                    print(f"{run:>3}  {r['range'] or '-':>18}  {r['sent']:>12}  {kept:>12}  {took:>7.2f}  {result}")
            total = time.perf_counter() - total_start
            sent = sum(r["sent"] for r in requests)
            copy_md5 = hashlib.md5((dl / "fabricated.tar").read_bytes()).hexdigest()
            print(f"total: {sent} bytes sent for a {size}-byte file ({sent / size:.4f} of it) in {len(requests)} "
                  f"requests, {total:.2f} s; md5 of the copy {copy_md5} ({'=' if copy_md5 == md5 else '!='} published)")
            plain = registry.Source("plain", "fabricated.tar", (f"{base}/fabricated.tar",), "tar", "fabricated",
                                    ("data",), checksum=registry.Checksum("md5", md5, "benchmarks/resume_download.py"))
            start = time.perf_counter()
            registry.fetch(plain, [], Path(tmp) / "uninterrupted")
            print(f"uninterrupted download and check of the same file: {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
