"""Refresh BENCHMARKS.md from ``benchmarks/results/*.json``.

Each benchmark run by ``make bench`` writes its JSON and has a ``markdown(report)``
function. In BENCHMARKS.md, the text between ``<!-- bench:NAME -->`` and
``<!-- /bench:NAME -->`` is replaced by a line naming the command, date and machine and
the table built from ``results/NAME.json``. Text outside the markers (what the numbers
mean) is left alone.

Usage::

    python benchmarks/report.py [--check]

``--check`` exits 1 if a marked section is missing from BENCHMARKS.md or has no results.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS_MD = HERE.parent / "BENCHMARKS.md"
#: The benchmarks' sections, in page order (module name = results file name): those
#: ``make bench`` runs, then ``memory`` and ``fsdp_memory`` (run on their own: about 12
#: and 9 minutes on 2 cores), then the learning benchmarks ``make learn`` runs (hours).
SECTIONS = ("env_overhead", "rollout_throughput", "turn_scaling", "trainer_vs_trl",
            "sandbox_latency", "rollout_backends", "env_pools", "memory", "fsdp_memory",
            "learning_alfworld", "learning_code", "learning_stock", "learning_ride_dispatch")


def section(name: str) -> str | None:
    """The refreshed body of section ``name``, or None without results."""
    path = HERE / "results" / f"{name}.json"
    if not path.exists():
        return None
    report = json.loads(path.read_text())
    module = importlib.import_module(name)
    table = (module.markdown(report["rows"], report["advantage_checks"]) if name == "trainer_vs_trl"
             else module.markdown(report))
    header = (f"`{report.get('command', 'python benchmarks/' + name + '.py').strip()}` — "
              f"{report.get('date', '?')}, {report.get('machine', '?')}.")
    return f"{header}\n\n{table}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    text = BENCHMARKS_MD.read_text()
    problems = []
    for name in SECTIONS:
        pattern = re.compile(rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.S)
        if not pattern.search(text):
            problems.append(f"BENCHMARKS.md has no <!-- bench:{name} --> section")
            continue
        body = section(name)
        if body is None:
            problems.append(f"no results for {name}: run python benchmarks/{name}.py")
            continue
        text = pattern.sub(lambda m, body=body: m.group(1) + body + "\n" + m.group(2), text)
    if not args.check:
        BENCHMARKS_MD.write_text(text)
        print(f"refreshed {BENCHMARKS_MD}")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems and args.check else 0


if __name__ == "__main__":
    raise SystemExit(main())
