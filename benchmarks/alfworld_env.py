"""ALFWorld-v0 costs: generation time per game, step latency of ours vs a raw PddlEnv.

    python benchmarks/alfworld_env.py                       # generated games
    python benchmarks/alfworld_env.py --official /work/shared/data/alfworld-json_2.1.1-sample

For each game the expert plays an episode in ALFWorldEnv (expert on); its commands are
then replayed (a) in ALFWorldEnv with expert=False, the RL setting, and (b) on a raw
``PddlEnv`` + ALFWorld's demangler asked only for admissible commands and ``won`` -- the
least any ALFWorld player computes. Latency is the median wall time of one step.
Generation time is measured with an empty cache (generation + the expert's solvability
check).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import textworld
from alfworld.agents.environment.alfred_tw_env import AlfredDemangler
from textworld.envs.pddl import PddlEnv

from turnrl.envs.alfworld.env import ALFWorldEnv
from turnrl.envs.alfworld.tasks import TASK_TYPES


def _median_ms(xs: list[float]) -> float:
    return 1000 * statistics.median(xs) if xs else float("nan")


def _p95_ms(xs: list[float]) -> float:
    return 1000 * sorted(xs)[int(0.95 * (len(xs) - 1))] if xs else float("nan")


def run(kwargs: dict, seeds: list[int], label: str) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        expert_env = ALFWorldEnv(expert=True, cache_dir=cache, max_turns=200, **kwargs)
        plain_env = ALFWorldEnv(expert=False, cache_dir=cache, max_turns=200, **kwargs)
        raw = AlfredDemangler(PddlEnv(textworld.EnvInfos(admissible_commands=True, won=True)))
        gen_s, reset_s, ours, ours_expert, raw_steps, wins = [], [], [], [], [], 0
        for seed in seeds:
            t = time.perf_counter()
            _, info = expert_env.reset(seed=seed)
            gen_s.append(time.perf_counter() - t)  # first reset: generate + verify (or load)
            commands, done = [], False
            while not done:
                t = time.perf_counter()
                _, _, term, trunc, info2 = expert_env.step(info["expert_action"])
                ours_expert.append(time.perf_counter() - t)
                commands.append(info["expert_action"])
                info, done = info2, term or trunc
            wins += bool(info["won"])
            t = time.perf_counter()
            plain_env.reset(seed=seed)
            plain_env.reset(seed=seed)  # second reset of the same game: warm
            reset_s.append(time.perf_counter() - t)
            for c in commands:
                t = time.perf_counter()
                plain_env.step(c)
                ours.append(time.perf_counter() - t)
            record = plain_env._record
            raw.load(dict(record.data))
            raw.reset()
            for c in commands:
                t = time.perf_counter()
                raw.step(c)
                raw_steps.append(time.perf_counter() - t)
    return {
        "games": label, "episodes": len(seeds), "expert_wins": wins,
        "first_reset_s_median": statistics.median(gen_s),
        "two_resets_s_median": statistics.median(reset_s),
        "step_ms_raw_pddlenv": _median_ms(raw_steps),
        "step_ms_ours": _median_ms(ours),
        "step_ms_ours_expert": _median_ms(ours_expert),
        "step_ms_ours_p95": _p95_ms(ours),
        "ratio_ours_vs_raw": statistics.median(ours) / statistics.median(raw_steps),
        "ratio_ours_expert_vs_raw": statistics.median(ours_expert) / statistics.median(raw_steps),
        "steps_timed": len(ours),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", help="json_2.1.1 folder (or sample) to time instead")
    p.add_argument("--split", default="valid_unseen")
    p.add_argument("--seeds", type=int, default=5, help="games per task type (generated)")
    args = p.parse_args()
    results = []
    if args.official:
        env = ALFWorldEnv(data_dir=args.official, split=args.split)
        n = env.num_games
        results.append(run({"data_dir": args.official, "split": args.split}, list(range(n)),
                           f"official {args.split} ({n})"))
    else:
        for task_type in TASK_TYPES:
            results.append(run({"task_types": [task_type]}, list(range(args.seeds)), task_type))
    for r in results:
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}))


if __name__ == "__main__":
    main()
