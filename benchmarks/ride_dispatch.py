"""Ride dispatch: the random / greedy / matching baselines on 20 eval seeds of each
configuration, simulator rounds per second, and the text envs' step time.

Usage::

    python benchmarks/ride_dispatch.py [--seeds 20] [--out benchmarks/results/ride_dispatch.json]

Baselines play straight on the simulator (same seeds for every policy). Env step time is
the wall time of ``env.step`` alone (the agent's reply is computed before the clock
starts), over whole episodes played by the matching dispatcher.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

import turnrl
from turnrl.envs.ride_dispatch.policies import POLICIES, DispatchAgent, run_policy
from turnrl.envs.ride_dispatch.sim import Simulator, get_config

KEYS = ("gmv", "answer_rate", "mean_pickup_distance", "mean_confirmation_min", "cancelled")
CONFIGS = {"mdpod": ("mdpod", {}), "city": ("city", {}), "city, 3 seats": ("city", {"seats": 3})}


def baselines(seeds: list[int]) -> dict:
    out = {}
    for label, (name, settings) in CONFIGS.items():
        cfg = get_config(name, **settings)
        out[label] = {}
        for policy in POLICIES:
            runs = run_policy(cfg, policy, seeds)
            out[label][policy] = {k: (statistics.mean(m[k] for m in runs),
                                      statistics.stdev(m[k] for m in runs)) for k in KEYS}
    return out


def simulator_speed(seconds: float = 3.0) -> dict:
    out = {}
    for name in ("mdpod", "city"):
        sim = Simulator(get_config(name))
        rng = np.random.default_rng(0)
        rounds, seed, start = 0, 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            sim.reset(seed)
            while not sim.done:
                sim.dispatch(POLICIES["greedy"](sim.candidates(), rng))
                sim.advance()
                rounds += 1
            seed += 1
        out[name] = rounds / (time.perf_counter() - start)
    return out


def env_step_time(env_id: str, episodes: int = 5, **kwargs) -> dict:
    env = turnrl.make(env_id, **kwargs)
    agent = DispatchAgent("matching")
    times, obs_chars = [], []
    for seed in range(episodes):
        obs, info = env.reset(seed=seed)
        obs_chars.append(len(obs))
        done = False
        while not done:
            reply = agent.act([[]], [info])[0].text
            t0 = time.perf_counter()
            obs, _, terminated, truncated, info = env.step(reply)
            times.append(time.perf_counter() - t0)
            obs_chars.append(len(obs))
            done = terminated or truncated
    env.close()
    return {"step_ms_median": 1e3 * statistics.median(times),
            "step_ms_p95": 1e3 * float(np.percentile(times, 95)),
            "turns_per_episode": len(times) / episodes,
            "obs_chars_mean": statistics.mean(obs_chars)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/results/ride_dispatch.json")
    args = parser.parse_args()
    seeds = list(range(100_000, 100_000 + args.seeds))  # eval seeds
    result = {
        "seeds": [seeds[0], seeds[-1]],
        "baselines": baselines(seeds),
        "simulator_rounds_per_s": simulator_speed(),
        "env_step": {
            "RideDispatch-v0 mdpod": env_step_time("turnrl/RideDispatch-v0"),
            "RideDispatch-v0 city": env_step_time("turnrl/RideDispatch-v0", config="city"),
            "RideDispatchDriver-v0 mdpod": env_step_time("turnrl/RideDispatchDriver-v0"),
        },
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
    }
    print(f"Baselines, mean ± sd over {len(seeds)} eval seeds:")
    print("| config | policy | GMV | answer rate | pickup distance (cells) | confirmation (min) | cancelled |")
    print("|---|---|---|---|---|---|---|")
    for label, rows in result["baselines"].items():
        for policy, m in rows.items():
            g, a, p, c, x = (m[k] for k in KEYS)
            print(f"| {label} | {policy} | {g[0]:.1f} ± {g[1]:.1f} | {a[0]:.3f} ± {a[1]:.3f} | "
                  f"{p[0]:.2f} | {c[0]:.2f} | {x[0]:.1f} |")
    for name, rate in result["simulator_rounds_per_s"].items():
        print(f"simulator {name}: {rate:,.0f} rounds/s (greedy dispatch included)")
    for name, r in result["env_step"].items():
        print(f"{name}: step {r['step_ms_median']:.2f} ms median, {r['step_ms_p95']:.2f} ms p95; "
              f"{r['turns_per_episode']:.0f} turns/episode; observation {r['obs_chars_mean']:.0f} chars")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
