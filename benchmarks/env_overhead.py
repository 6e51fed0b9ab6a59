"""Step latency of turnrl's envs against the raw engines beneath them, one table.

- TextWorld: ``turnrl/TextWorld-v0`` against ``textworld.start(...)`` asking for the same
  information, on the same games and the same command sequences (random admissible
  commands, then the expert to the end), run order alternated
  (:func:`textworld_env.bench_steps`).
- ALFWorld: ``turnrl/ALFWorld-v0`` against TextWorld's ``PddlEnv`` with ALFWorld's
  demangler replaying the same commands, on generated households of every task type and,
  when present, the official json_2.1.1 sample in ``../shared/data``
  (:func:`alfworld_env.run`).

Goal: turnrl step / raw step <= 1.05 (medians). ``textworld_env.py`` and
``alfworld_env.py`` have more detail (game generation, resets, the expert's cost).

Usage::

    python benchmarks/env_overhead.py [--tw-seeds 4] [--alfworld-seeds 2]

Writes ``benchmarks/results/env_overhead.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OFFICIAL = HERE.parent.parent / "shared" / "data" / "alfworld-json_2.1.1-sample"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tw-seeds", type=int, default=4, help="TextWorld games per challenge")
    parser.add_argument("--repeats", type=int, default=2, help="replays of each TextWorld game")
    parser.add_argument("--alfworld-seeds", type=int, default=2, help="generated games per task type")
    parser.add_argument("--official", default=str(OFFICIAL) if OFFICIAL.exists() else None,
                        help="ALFWorld json_2.1.1 folder to time too")
    parser.add_argument("--out", default=str(HERE / "results" / "env_overhead.json"))
    args = parser.parse_args()
    command = " ".join(["python benchmarks/env_overhead.py", *sys.argv[1:]])  # before engines touch argv
    sys.path.insert(0, str(HERE))
    import alfworld_env
    import textworld_env

    from turnrl.envs.alfworld.tasks import TASK_TYPES
    from turnrl.envs.textworld import CHALLENGES, pregenerate

    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for challenge in CHALLENGES:
            seeds = list(range(args.tw_seeds))
            pregenerate(challenge, None, seeds, cache_dir=cache)
            r = textworld_env.bench_steps(Path(cache), challenge, seeds, args.repeats)
            rows.append({"env": "TextWorld", "games": challenge, "steps": r["steps_timed"],
                         "raw_ms": r["raw_step_ms_median"], "turnrl_ms": r["ours_step_ms_median"],
                         "ratio": r["step_ratio_median"], "paired_ratio": r["step_ratio_paired_median"],
                         "turnrl_own_us": r["wrapper_overhead_us_median"]})
            print(f"TextWorld {challenge}: {rows[-1]['ratio']:.3f}", file=sys.stderr)
    groups = [({"task_types": [t]}, list(range(args.alfworld_seeds)), t) for t in TASK_TYPES]
    if args.official:
        from turnrl.envs.alfworld.env import ALFWorldEnv

        n = ALFWorldEnv(data_dir=args.official, split="valid_unseen").num_games
        groups.append(({"data_dir": args.official, "split": "valid_unseen"}, list(range(n)),
                       f"official valid_unseen sample ({n})"))
    for kwargs, seeds, label in groups:
        r = alfworld_env.run(kwargs, seeds, label)
        rows.append({"env": "ALFWorld", "games": label, "steps": r["steps_timed"],
                     "raw_ms": r["step_ms_raw_pddlenv"], "turnrl_ms": r["step_ms_ours"],
                     "ratio": r["ratio_ours_vs_raw"], "paired_ratio": None, "turnrl_own_us": None})
        print(f"ALFWorld {label}: {rows[-1]['ratio']:.3f}", file=sys.stderr)
    summary = {env: statistics.median(r["ratio"] for r in rows if r["env"] == env)
               for env in ("TextWorld", "ALFWorld")}
    report = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "python": platform.python_version(),
              "command": command,
              "goal": "turnrl / raw step time <= 1.05", "median_ratio": summary, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(markdown(report))


def markdown(report: dict) -> str:
    """The results as a Markdown table (also used by ``benchmarks/report.py``)."""
    lines = ["| env | games | steps timed | raw step (median) | turnrl step (median) | ratio (goal <= 1.05) |",
             "|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['env']} | {r['games']} | {r['steps']} | {r['raw_ms']:.2f} ms | "
                     f"{r['turnrl_ms']:.2f} ms | {r['ratio']:.3f} |")
    for env, ratio in report["median_ratio"].items():
        lines.append(f"| **{env}** | all | | | | **{ratio:.3f}** (median of rows) |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
