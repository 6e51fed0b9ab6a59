"""Env steps/s by env pool kind and worker count: local threads, subprocess workers, Ray
actors, on TextWorld and ALFWorld.

The agent is the random baseline (it costs microseconds), so the numbers are the envs'
own throughput through each pool: ``num_envs`` envs in lockstep, each tick stepping every
env that waits. Workers: for ``local``, the threads stepping envs (``step_workers``); for
``subprocess`` and ``ray``, worker processes / actors holding ``num_envs / workers`` envs
each. Each configuration starts its pool (start-up time reported), plays a warm-up
collect, then the timed one on the same pool.

Usage::

    python benchmarks/env_pools.py [--workers 1 2 4] [--episodes 32] [--num-envs 8]

Writes ``benchmarks/results/env_pools.json`` and prints a Markdown table. On a machine with
C cores expect the subprocess and Ray pools to scale up to about C workers (minus what the
driver process itself uses), and local threads not at all for CPU-bound Python engines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

WORKLOADS = {
    "textworld": ("turnrl/TextWorld-v0",
                  {"challenge": "tw-coin_collector", "settings": {"level": 2}, "max_turns": 10}),
    "alfworld": ("turnrl/ALFWorld-v0", {"max_turns": 10}),
}
KINDS = ("local", "subprocess", "ray")
RESULTS = Path(__file__).resolve().parent / "results"


def run(kind: str, workload: str, workers: int, args: argparse.Namespace) -> dict:
    from turnrl.agents import RandomAgent
    from turnrl.envs.pool import make_pool
    from turnrl.envs.registry import factory
    from turnrl.rollout import collect

    env_id, kwargs = WORKLOADS[workload]
    make = factory(env_id, **kwargs)
    start = time.perf_counter()
    pool = make_pool(kind, make, args.num_envs, envs_per_worker=max(1, args.num_envs // workers),
                     threads=workers)
    startup = time.perf_counter() - start
    try:
        seeds = list(range(args.episodes))
        collect(pool, RandomAgent(seed=1), seeds[:args.num_envs], num_envs=args.num_envs)  # warm-up
        start = time.perf_counter()
        trajs = collect(pool, RandomAgent(seed=0), seeds, num_envs=args.num_envs)
        wall = time.perf_counter() - start
    finally:
        pool.close()
    steps = sum(t.num_turns for t in trajs)
    return {"workload": workload, "pool": kind, "workers": workers, "steps": steps,
            "wall_s": round(wall, 3), "steps_per_s": round(steps / wall, 1),
            "startup_s": round(startup, 2), "failed": sum(bool(t.failed) for t in trajs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--pools", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--out", default=str(RESULTS / "env_pools.json"))
    args = parser.parse_args()

    from turnrl.envs import registry

    for env_id, kwargs in WORKLOADS.values():
        registry.prepare(env_id, range(args.episodes), kwargs)  # TextWorld: generate the games
    kinds = list(args.pools)
    if "ray" in kinds:
        try:
            import ray
        except ImportError:
            kinds.remove("ray")
            print("Ray is not installed (pip install 'turnrl[ray]'): skipping the ray pool",
                  file=sys.stderr)
        else:
            ray.init(num_cpus=max(args.workers), include_dashboard=False, log_to_driver=False)
    rows = []
    for workload in args.workloads:
        for kind in kinds:
            for workers in args.workers:
                row = run(kind, workload, workers, args)
                rows.append(row)
                print(f"{workload:9s} {kind:10s} {workers} workers {row['steps_per_s']:8.1f} steps/s "
                      f"(start-up {row['startup_s']:.2f} s)", file=sys.stderr)
    for row in rows:
        one = next(r for r in rows if (r["workload"], r["pool"], r["workers"]) ==
                   (row["workload"], row["pool"], min(args.workers)))
        row["speedup"] = round(row["steps_per_s"] / one["steps_per_s"], 2)
    report = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "python": platform.python_version(),
              "command": "python benchmarks/env_pools.py " + " ".join(sys.argv[1:]),
              "settings": {"episodes": args.episodes, "num_envs": args.num_envs,
                           "max_turns": 10, "agent": "random"},
              "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(markdown(report))


def markdown(report: dict) -> str:
    """The results as a Markdown table (also used by ``benchmarks/report.py``)."""
    lines = ["| workload | pool | workers | env steps/s | vs 1 worker | pool start-up |",
             "|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['workload']} | {r['pool']} | {r['workers']} | {r['steps_per_s']:.0f} | "
                     f"{r['speedup']:.2f}x | {r['startup_s']:.1f} s |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
