"""The benchmark scripts run with the runtime install alone (`bash scripts/install.sh`: no pytest)."""
from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def test_benchmarks_import_without_pytest():
    scripts = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if not p.stem.startswith("_"))
    assert {"dag_time", "pipeline_time"} <= set(scripts)
    code = ("import sys; sys.modules['pytest'] = None  # as if not installed: importing it raises\n"
            f"sys.path.insert(0, {str(ROOT / 'benchmarks')!r})\n"
            + "".join(f"import {name}\n" for name in scripts))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
