"""Stock-movement explanation: majority, lexicon and oracle baselines on the synthetic
market's test split (every test day of every ticker), at the default difficulty and with
the difficulty knobs turned up.

Usage::

    python benchmarks/stock_baselines.py [--days N] [--out benchmarks/results/stock_baselines.json]

The first answer of each episode is scored (SEP's accuracy and Matthews correlation).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import turnrl
from turnrl.agents import make_agent
from turnrl.envs.stock.env import matthews_corrcoef

AGENTS = {"majority": "stock_majority", "lexicon": "stock_lexicon", "oracle (latent events)": "expert"}
SETTINGS = {
    "default": {},
    "misleading_share 0.5": {"misleading_share": 0.5},
    "noise 0.025": {"noise": 0.025},
    "chatter x3": {"chatter_per_day": 6.0},
}


def run(market: dict, days: int | None) -> dict:
    env = turnrl.make("turnrl/StockExplanation-v0", split="test", market=market)
    n = days or env.unwrapped.num_days
    out = {}
    for label, name in AGENTS.items():
        agent = make_agent(name)
        preds, labels, step_s = [], [], []
        for seed in range(n):
            obs, info = env.reset(seed=seed)
            reply = agent.act([[{"role": "user", "content": obs}]], [info])[0].text
            t0 = time.perf_counter()
            env.step(reply)
            step_s.append(time.perf_counter() - t0)
            preds.append(env.unwrapped.history[0][0])
            labels.append(env.unwrapped.day.label)
        out[label] = {"accuracy": sum(p == y for p, y in zip(preds, labels, strict=True)) / n,
                      "mcc": matthews_corrcoef(preds, labels), "days": n,
                      "step_ms_median": 1e3 * statistics.median(step_s)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=None, help="test days (default: all)")
    parser.add_argument("--out", default="benchmarks/results/stock_baselines.json")
    args = parser.parse_args()
    t0 = time.perf_counter()
    env = turnrl.make("turnrl/StockExplanation-v0", split="test")
    make_s = time.perf_counter() - t0
    reset = []
    for seed in range(200):
        t = time.perf_counter()
        env.reset(seed=seed)
        reset.append(time.perf_counter() - t)
    results = {label: run(market, args.days) for label, market in SETTINGS.items()}
    print("| market | baseline | accuracy | MCC |")
    print("|---|---|---|---|")
    for label, rows in results.items():
        for agent, r in rows.items():
            print(f"| {label} | {agent} | {r['accuracy']:.3f} | {r['mcc']:.3f} |")
    days = next(iter(results["default"].values()))["days"]
    print(f"{days} test days per row; env make {make_s:.2f} s; reset {1e3 * statistics.median(reset):.2f} ms, "
          f"step {results['default']['lexicon']['step_ms_median']:.3f} ms (median)")
    report = {"results": results, "env_make_s": make_s,
              "reset_ms_median": 1e3 * statistics.median(reset),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "platform": platform.platform()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
