"""The test harness itself: how pytest-xdist's work is cut (tests/conftest.py)."""
from __future__ import annotations

import re

from conftest import RECORDED_MODULES, ROOT, work_unit

ASKS_FOR_RECORDED = re.compile(r"def \w+\([^)]*\brecorded_digits\b")  # the fixture as a parameter


def test_modules_sharing_the_recorded_run_form_one_unit_and_others_one_each():
    shared = {work_unit(f"tests/{m}.py::test_x[case]") for m in RECORDED_MODULES}
    assert shared == {"recorded_digits"}
    assert work_unit("tests/test_io.py::test_a") == work_unit("tests/test_io.py::test_b") == "tests/test_io.py"
    assert work_unit("tests/test_io.py::test_a") != work_unit("tests/test_plots.py::test_a")


def test_every_module_that_asks_for_the_recorded_run_is_in_the_shared_unit():
    """A module using the session's recorded run outside the unit would build it again on another worker."""
    users = {p.stem for p in (ROOT / "tests").glob("test_*.py") if ASKS_FOR_RECORDED.search(p.read_text())}
    assert users == RECORDED_MODULES, users ^ RECORDED_MODULES


def test_the_suite_runs_on_a_worker_a_physical_core_at_most_four(request):
    """README and docs/testing.md: `pytest` alone spreads the suite (pyproject's addopts), one module a unit."""
    import tomllib

    addopts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["addopts"].split()
    assert addopts[addopts.index("-n") + 1] == "auto" and "--maxprocesses=4" in addopts
    assert addopts[addopts.index("--dist") + 1] == "loadfile"  # tests/conftest.py's scheduler groups further
    assert request.config.pluginmanager.hasplugin("xdist")
