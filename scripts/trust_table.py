"""Write the "What we test against" table of docs/testing.md from the tests' trust markers.

    python scripts/trust_table.py [--check]

``--check``: write nothing; exit 1 when docs/testing.md holds another table (tests/test_bad_inputs.py checks the same).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from trust_table import ROOT, readme_table, render, trust_counts  # noqa: E402


def main(argv: list[str]) -> int:
    readme = ROOT / "docs/testing.md"
    text = readme.read_text()
    old, new = readme_table(text), render(trust_counts())
    if "--check" in argv:
        return 0 if old == new else 1
    if old != new:
        readme.write_text(text.replace(old, new, 1))
        print(f"updated the table in {readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
