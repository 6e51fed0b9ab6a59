"""BENCHMARKS.md's marked tables are exactly what benchmarks/report.py builds from the
committed results (so every number there comes from a script's JSON)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import report  # noqa: E402


def test_every_marked_table_matches_its_results():
    text = (ROOT / "BENCHMARKS.md").read_text()
    for name in report.SECTIONS:
        match = re.search(rf"<!-- bench:{name} -->\n(.*?)<!-- /bench:{name} -->", text, re.S)
        assert match, f"BENCHMARKS.md has no section for {name}"
        body = report.section(name)
        assert body is not None, f"benchmarks/results/{name}.json is missing"
        assert match.group(1) == body + "\n", f"{name}: run python benchmarks/report.py"
