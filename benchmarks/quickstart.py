"""The quickstart, timed: wall time of each phase, held-out success before training,
after SFT and after PPO, rollout and training throughput.

Usage::

    python benchmarks/quickstart.py [--config configs/quickstart.yaml] [--out JSON]
    python benchmarks/quickstart.py --from-run runs/quickstart-...   # summarise a finished run

Prints a table and writes JSON (default ``benchmarks/results/quickstart.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from turnrl.trainer.logging import read_metrics


def summarise(run_dir: Path, wall_s: float | None) -> dict:
    rows = read_metrics(run_dir)
    evals = {r["phase"].split(":", 1)[1]: r for r in rows if r["phase"].startswith("eval:")}
    train = [r for r in rows if r["phase"] == "train"]
    sft = [r for r in rows if r["phase"] == "sft"]
    t_sft_end = max((r["time_s"] for r in sft), default=0.0)

    def med(key):
        vals = [r[key] for r in train if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    return {
        "run_dir": str(run_dir),
        "wall_s": wall_s if wall_s is not None else max(r["time_s"] for r in rows),
        "sft_done_s": t_sft_end,
        "updates": len(train),
        "held_out": {
            phase: {
                "success": r["eval/success"],
                "ci95": [r["eval/success_ci_low"], r["eval/success_ci_high"]],
                "invalid_rate": r["eval/invalid_rate"],
                "episodes": r["eval/episodes"],
            }
            for phase, r in evals.items()
        },
        "median_per_update": {
            "rollout_s": med("perf/rollout_s"),
            "update_s": med("perf/update_s"),
            "rollout_action_tokens_per_s": med("perf/rollout_tokens_per_s"),
            "train_tokens_per_s": med("perf/train_tokens_per_s"),
            "logprob_rollout_vs_train_max_abs": med("logprob/rollout_vs_train_max_abs"),
        },
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--from-run", help="summarise this finished run instead of training")
    parser.add_argument("--out", default="benchmarks/results/quickstart.json")
    args = parser.parse_args()
    if args.from_run:
        result = summarise(Path(args.from_run), None)
    else:
        from turnrl.trainer import Trainer, load_config

        run_dir = Path(tempfile.mkdtemp(prefix="turnrl-quickstart-")) / "run"
        start = time.time()
        Trainer(load_config(args.config, [f"run_dir={run_dir}", "progress=false"])).fit()
        result = summarise(run_dir, time.time() - start)
    print(f"wall time {result['wall_s']:.0f} s, {result['updates']} PPO updates")
    print(f"{'phase':<10} {'success':>8} {'95% CI':>14} {'invalid':>8}")
    for phase, r in result["held_out"].items():
        lo, hi = r["ci95"]
        print(f"{phase:<10} {r['success']:>8.0%} {f'[{lo:.0%}, {hi:.0%}]':>14} {r['invalid_rate']:>8.0%}")
    for key, value in result["median_per_update"].items():
        print(f"{key:<36} {value:.4g}" if value is not None else f"{key:<36} -")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
