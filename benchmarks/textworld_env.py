"""TextWorld env overhead and game-generation cost.

Measures, for each TextWorld challenge:

* per-step latency of ``TextWorldEnv.step`` against the raw ``textworld.start(...)``
  environment on the same games and the same commands (the raw env requests the same
  information ours needs: admissible commands and the expert's policy commands);
* game generation time cold (TextWorld generator + Inform 7 compiler in the warm worker)
  against a cache hit, and the cost of a fresh env's first reset from the cache;
* the win rate of a random agent over admissible actions (50 turns), for reference.

Usage::

    python benchmarks/textworld_env.py [OUT_JSON] [--seeds 10] [--repeats 3]

Prints a table and writes JSON (default ``benchmarks/results/textworld_env.json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import textworld

from turnrl.envs.textworld import CHALLENGES, GameCache, normalize_settings, pregenerate
from turnrl.envs.textworld.env import TextWorldEnv
from turnrl.envs.textworld.generation import GenerationWorker


def record_actions(env: TextWorldEnv, seed: int, rng: random.Random, n_random: int) -> list[str]:
    """A command sequence for one game: ``n_random`` random admissible commands, then the
    expert to the end (so every step kind -- moves, failures, scoring, winning -- occurs)."""
    _, info = env.reset(seed=seed)
    actions = []
    for turn in range(200):
        if turn < n_random:
            action = rng.choice(info["admissible_actions"])
        else:
            action = info["expert_action"]
        actions.append(action)
        _, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            break
    return actions


def time_raw(path: str, actions: list[str]) -> tuple[float, list[float]]:
    infos = textworld.EnvInfos(admissible_commands=True, policy_commands=True)
    raw = textworld.start(path, request_infos=infos)
    raw.seed(1)
    t0 = time.perf_counter()
    raw.reset()
    reset_s = time.perf_counter() - t0
    steps = []
    for action in actions:
        t0 = time.perf_counter()
        raw.step(action)
        steps.append(time.perf_counter() - t0)
    raw.close()
    return reset_s, steps


def time_ours(
    env: TextWorldEnv, seed: int, actions: list[str]
) -> tuple[float, list[float], list[float]]:
    """Reset and step times of our env, plus the time spent inside the TextWorld env's
    own ``step`` on each step (so ``step - inner`` is exactly our wrapper's overhead)."""
    t0 = time.perf_counter()
    env.reset(seed=seed)
    reset_s = time.perf_counter() - t0
    inner: list[float] = []
    tw_step = env._tw.step

    def timed_step(command: str):  # a stopwatch around the real call, nothing replaced
        t = time.perf_counter()
        out = tw_step(command)
        inner.append(time.perf_counter() - t)
        return out

    env._tw.step = timed_step
    steps = []
    try:
        for action in actions:
            t0 = time.perf_counter()
            env.step(action)
            steps.append(time.perf_counter() - t0)
    finally:
        del env._tw.step  # back to the class's method
    return reset_s, steps, inner


def bench_generation(cache_dir: Path, challenge: str, seeds: list[int]) -> dict:
    settings = normalize_settings(challenge, None)
    cache = GameCache(cache_dir)
    cold, cached, first_reset = [], [], []
    for seed in seeds:
        t0 = time.perf_counter()
        game = cache.get(challenge, settings, seed)
        cold.append(time.perf_counter() - t0)
        assert not game.cached
        t0 = time.perf_counter()
        game = cache.get(challenge, settings, seed)
        cached.append(time.perf_counter() - t0)
        assert game.cached
        env = TextWorldEnv(challenge=challenge, cache_dir=cache_dir)
        t0 = time.perf_counter()
        env.reset(seed=seed)
        first_reset.append(time.perf_counter() - t0)
        env.close()
    return {
        "cold_s_median": statistics.median(cold),
        "cached_get_ms_median": statistics.median(cached) * 1e3,
        "fresh_env_reset_from_cache_s_median": statistics.median(first_reset),
        "speedup_cold_vs_cached_get": statistics.median(cold) / statistics.median(cached),
    }


def bench_steps(cache_dir: Path, challenge: str, seeds: list[int], repeats: int) -> dict:
    rng = random.Random(0)
    env = TextWorldEnv(challenge=challenge, cache_dir=cache_dir, max_turns=200)
    plans = {seed: record_actions(env, seed, rng, n_random=15) for seed in seeds}
    ours_steps, raw_steps, ours_resets, raw_resets, inner_steps = [], [], [], [], []
    for repeat in range(repeats):
        for seed, actions in plans.items():
            path = env.cache.lookup(challenge, env.settings, seed).path
            # Alternate which runs first, so warm-up and drift hit both the same.
            if repeat % 2 == 0:
                r_reset, r_steps = time_raw(path, actions)
                o_reset, o_steps, o_inner = time_ours(env, seed, actions)
            else:
                o_reset, o_steps, o_inner = time_ours(env, seed, actions)
                r_reset, r_steps = time_raw(path, actions)
            inner_steps += o_inner
            raw_steps += r_steps
            ours_steps += o_steps
            raw_resets.append(r_reset)
            ours_resets.append(o_reset)
    env.close()
    raw_mean, ours_mean = statistics.fmean(raw_steps), statistics.fmean(ours_steps)
    paired = [o / r for o, r in zip(ours_steps, raw_steps, strict=True)]
    wrapper = [o - i for o, i in zip(ours_steps, inner_steps, strict=True)]
    return {
        "steps_timed": len(ours_steps),
        "wrapper_overhead_us_median": statistics.median(wrapper) * 1e6,
        "wrapper_overhead_fraction": statistics.median(wrapper) / statistics.median(raw_steps),
        "step_ratio_paired_median": statistics.median(paired),
        "raw_step_ms_mean": raw_mean * 1e3,
        "ours_step_ms_mean": ours_mean * 1e3,
        "raw_step_ms_median": statistics.median(raw_steps) * 1e3,
        "ours_step_ms_median": statistics.median(ours_steps) * 1e3,
        "step_ratio_mean": ours_mean / raw_mean,
        "step_ratio_median": statistics.median(ours_steps) / statistics.median(raw_steps),
        "raw_reset_ms_median": statistics.median(raw_resets) * 1e3,
        "ours_warm_reset_ms_median": statistics.median(ours_resets) * 1e3,
    }


def random_win_rate(cache_dir: Path, challenge: str, seeds: list[int]) -> float:
    env = TextWorldEnv(challenge=challenge, cache_dir=cache_dir, max_turns=50)
    rng = random.Random(1)
    wins = 0
    for seed in seeds:
        _, info = env.reset(seed=seed)
        while True:
            _, _, terminated, truncated, info = env.step(rng.choice(info["admissible_actions"]))
            if terminated or truncated:
                break
        wins += bool(info["won"])
    env.close()
    return wins / len(seeds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="benchmarks/results/textworld_env.json")
    parser.add_argument("--seeds", type=int, default=10, help="games per challenge")
    parser.add_argument("--cold-seeds", type=int, default=3, help="cold generations timed")
    parser.add_argument("--repeats", type=int, default=6, help="replays of each game")
    args = parser.parse_args()

    results: dict = {
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "textworld": textworld.__version__},
        "challenges": {},
    }
    with tempfile.TemporaryDirectory(prefix="tw-bench-") as tmp:
        cache_dir = Path(tmp)
        worker = GenerationWorker()
        t0 = time.perf_counter()
        worker._ensure_started()  # what the first generation of a process pays once
        results["worker_start_s"] = time.perf_counter() - t0
        worker.close()
        seeds = list(range(args.seeds))
        for challenge in CHALLENGES:
            row: dict = {}
            cold_seeds = [1000 + s for s in range(args.cold_seeds)]
            row["generation"] = bench_generation(cache_dir, challenge, cold_seeds)
            t0 = time.perf_counter()
            pregenerate(challenge, None, seeds, workers=2, cache_dir=cache_dir)
            row["pregenerate_s"] = time.perf_counter() - t0
            row["steps"] = bench_steps(cache_dir, challenge, seeds, args.repeats)
            row["random_agent_win_rate"] = random_win_rate(cache_dir, challenge, seeds)
            results["challenges"][challenge] = row
            print(f"{challenge}: done", flush=True)

    all_ours = [r["steps"]["ours_step_ms_mean"] * r["steps"]["steps_timed"]
                for r in results["challenges"].values()]
    all_raw = [r["steps"]["raw_step_ms_mean"] * r["steps"]["steps_timed"]
               for r in results["challenges"].values()]
    results["step_ratio_overall_mean"] = sum(all_ours) / sum(all_raw)
    results["step_ratio_overall_paired_median"] = statistics.median(
        r["steps"]["step_ratio_paired_median"] for r in results["challenges"].values())

    header = (f"{'challenge':<20}{'raw ms':>9}{'ours ms':>9}{'ratio':>7}{'paired':>8}"
              f"{'wrap us':>9}{'cold s':>8}"
              f"{'cached ms':>11}{'reset* s':>10}{'random win':>12}")
    print("\n" + header + "\n" + "-" * len(header))
    for challenge, r in results["challenges"].items():
        s, g = r["steps"], r["generation"]
        print(f"{challenge:<20}{s['raw_step_ms_mean']:>9.2f}{s['ours_step_ms_mean']:>9.2f}"
              f"{s['step_ratio_mean']:>7.3f}{s['step_ratio_paired_median']:>8.3f}"
              f"{s['wrapper_overhead_us_median']:>9.1f}"
              f"{g['cold_s_median']:>8.2f}"
              f"{g['cached_get_ms_median']:>11.3f}{g['fresh_env_reset_from_cache_s_median']:>10.3f}"
              f"{r['random_agent_win_rate']:>12.0%}")
    print(f"\nstep time ours / raw: {results['step_ratio_overall_mean']:.3f} (ratio of means, "
          f"all steps), {results['step_ratio_overall_paired_median']:.3f} (median of per-step "
          f"ratios); wrap us = our code's own time per step (step minus the TextWorld env's step), worker start "
          f"{results['worker_start_s']:.2f} s; reset* = a fresh env's first reset from the "
          f"cache (loads the game)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
