"""Ride dispatch learns: a tiny model trained from scratch on CPU against the random,
greedy and matching dispatchers, on the same held-out days of ``mdpod`` and ``city``.

Three runs, each a subprocess (one after another, so their times are comparable):

- ``driver_ospo``: ``configs/ride-dispatch-driver-ospo.yaml`` -- one shared driver
  policy on ``turnrl/RideDispatchDriver-v0`` (mdpod), SFT on the greedy expert's
  decisions in a few days, then OSPO;
- ``driver_ospo_fair``: the same with the driver view's fairness term
  (``env.kwargs.fairness_coef``): a taker earns ``r - beta * (own income - fleet mean)``;
- ``dispatcher_grpo``: ``configs/ride-dispatch-grpo.yaml`` -- one dispatcher on
  ``turnrl/RideDispatch-v0`` (mdpod), SFT on the matching dispatcher's replies, then GRPO.

Every policy is trained on mdpod train seeds and played (greedy decoding) on the eval seeds
of mdpod and of city (a 20x20 city with 120 drivers it has never seen); the baselines
(``dispatch_random``, ``dispatch_greedy``, ``dispatch_matching``) play the same env view
on the same seeds. Reported per (view, config, policy): GMV (mean, 95% bootstrap CI over
days), answer rate (served / arrived, pooled; 95% CI resampling days), the drivers' income
spread (``income_sd``, ``income_gini``), and the paired GMV difference against greedy
(per-day differences, 95% bootstrap CI, days won / lost). The learning curve is each
update's training-rollout GMV (train seeds), with the held-out GMV after SFT and after RL.

Usage::

    python benchmarks/learning_ride_dispatch.py [--eval-seeds 20] [--runs driver_ospo ...]
    python benchmarks/learning_ride_dispatch.py --quick --out /tmp/x.json   # a smoke run

Writes ``benchmarks/results/learning_ride_dispatch.json`` and ``.png`` and prints the
Markdown that ``benchmarks/report.py`` puts into BENCHMARKS.md (:func:`markdown`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from turnrl.evaluate import bootstrap_ci

DRIVER_CONFIG = "configs/ride-dispatch-driver-ospo.yaml"
DISPATCHER_CONFIG = "configs/ride-dispatch-grpo.yaml"
VIEWS = {"driver": "turnrl/RideDispatchDriver-v0", "dispatcher": "turnrl/RideDispatch-v0"}
CITIES = ("mdpod", "city")
BASELINES = ("random", "greedy", "matching")
#: The fairness run's beta, set before any run: in mdpod (1 per order) a driver one order
#: ahead of the fleet's mean gains nothing by taking another, so it can leave it to one
#: behind.
FAIRNESS_COEF = 1.0
#: run name -> (view, config, env kwargs added to the config's)
RUNS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "driver_ospo": ("driver", DRIVER_CONFIG, {}),
    "driver_ospo_fair": ("driver", DRIVER_CONFIG, {"fairness_coef": FAIRNESS_COEF}),
    "dispatcher_grpo": ("dispatcher", DISPATCHER_CONFIG, {}),
}
#: --quick: a handful of updates on a shrunken budget (the slow test runs this).
QUICK = ["total_updates=1", "sft.episodes=1", "sft.epochs=1", "rollout.episodes_per_update=2",
         "rollout.num_envs=2", "model.tiny={hidden_size: 64, num_layers: 1, vocab_size: 300, "
         "corpus_seeds: 1}"]
#: --quick: days cut to a few turns (an untrained driver policy waits, and every driver in
#: reach is asked again each round: a whole day would take hundreds of turns).
QUICK_ENV = {"max_turns": 6}
QUICK_DISPATCHER = ["rollout.group_size=2", "rollout.max_new_tokens=24", "optim.micro_batch_size=8",
                    "optim.minibatch_size=40"]
#: Context budget when playing held-out days: the larger city's observations are longer
#: than mdpod's (the tiny models have 4096 positions).
EVAL_CONTEXT_TOKENS = 4000
METRICS = ("gmv", "answer_rate", "served", "orders", "income_sd", "income_gini")


# ------------------------------------------------------------------------- playing
def play(env_id: str, agent: Any, seeds: list[int], env_kwargs: dict[str, Any],
         **decoding: Any) -> list[dict[str, float]]:
    """End-of-day metrics of ``agent`` on each seed, in seed order."""
    from turnrl.evaluate import evaluate

    by_seed: dict[int, dict[str, float]] = {}

    def keep(traj):
        metrics = traj.turns[-1].info["metrics"] if traj.turns else {}
        by_seed[traj.seed] = {k: float(metrics.get(k, 0.0)) for k in METRICS} | {
            "turns": traj.num_turns,
            "invalid": sum(bool(t.info.get("invalid_action")) for t in traj.turns)}

    evaluate(env_id, agent, episodes=len(seeds), seed=seeds[0], env_kwargs=env_kwargs,
             num_envs=min(len(seeds), 20), on_episode_end=keep, **decoding)
    return [by_seed[s] for s in seeds]


def baselines(seeds: dict[str, list[int]], views: list[str], env_kwargs: dict[str, Any]
              ) -> dict[str, dict[str, dict[str, list]]]:
    """view -> city -> policy -> per-seed metrics."""
    from turnrl.agent_registry import make_agent

    out: dict[str, dict[str, dict[str, list]]] = {}
    for view in views:
        for city in CITIES:
            for policy in BASELINES:
                agent = make_agent(f"dispatch_{policy}", seed=0)
                out.setdefault(view, {}).setdefault(city, {})[policy] = play(
                    VIEWS[view], agent, seeds[city], env_kwargs | {"config": city})
    return out


# ------------------------------------------------------------------------- one run
def child(name: str, quick: bool, seeds: dict[str, list[int]], out: Path) -> None:
    """Train one run in this process; write its curve and per-seed held-out metrics."""
    from transformers.utils import logging as hf_logging

    from turnrl.trainer import Trainer, load_config

    hf_logging.disable_progress_bar()
    view, config, env_extra = RUNS[name]
    extra = (QUICK + (QUICK_DISPATCHER if view == "dispatcher" else [])) if quick else []
    run_dir = Path(tempfile.mkdtemp(prefix=f"turnrl-ride-{name}-")) / "run"
    cfg = load_config(config, extra + [f"run_dir={run_dir}", "progress=false"])
    cfg.env.kwargs = {**cfg.env.kwargs, **env_extra, **(QUICK_ENV if quick else {})}
    kwargs = dict(cfg.env.kwargs)
    r = cfg.rollout
    # --quick keeps the config's budget: a smoke run need not read the larger city's rounds
    decoding = {"greedy": True, "context": r.context,
                "max_context_tokens": r.max_context_tokens if quick else EVAL_CONTEXT_TOKENS}
    start = time.time()
    trainer = Trainer(cfg)
    sft = trainer.train_sft()
    t_sft = time.time() - start

    def held_out(cities: tuple[str, ...]) -> dict[str, list[dict[str, float]]]:
        return {city: play(cfg.env.id, trainer.sampler, seeds[city], kwargs | {"config": city}, **decoding)
                for city in cities}

    after_sft = held_out(("mdpod",))  # where it trained; city only at the end (time)
    t_eval = time.time() - start - t_sft
    curve = []
    for update in range(1, cfg.total_updates + 1):
        days = trainer.rollout()
        metrics = trainer.rl_update(days)
        trainer.update = update
        curve.append({"update": update, "episodes": update * r.episodes_per_update,
                      "train_gmv": _gmv(days), "return": metrics["rollout/return"]})
    t_rl = time.time() - start - t_sft - t_eval
    after_rl = held_out(CITIES)
    trainer.close()
    out.write_text(json.dumps({
        "name": name, "view": view, "config": config, "env_extra": env_extra,
        "algorithm": cfg.algorithm.name, "env_kwargs": kwargs,
        "sft_episodes": cfg.sft.episodes, "sft_samples": sft["sft_samples"],
        "rl_updates": cfg.total_updates, "rl_episodes": cfg.total_updates * r.episodes_per_update,
        "curve": curve, "after_sft": after_sft, "after_rl": after_rl,
        "wall_s": time.time() - start, "cpu_s": time.process_time(),
        "phases_s": {"build_and_sft": t_sft, "eval_after_sft": t_eval, "rl": t_rl},
    }, indent=1))


def _gmv(days: list[Any]) -> float:
    """Mean GMV of a rollout's days."""
    gmv = [t.turns[-1].info["metrics"]["gmv"] for t in days if t.turns and "metrics" in t.turns[-1].info]
    return statistics.mean(gmv) if gmv else float("nan")


# ------------------------------------------------------------------------- statistics
def summary(per_seed: list[dict[str, float]]) -> dict[str, Any]:
    """Mean and 95% bootstrap CIs over days (answer rate: served / arrived, pooled)."""
    gmv = [m["gmv"] for m in per_seed]
    served = [m["served"] for m in per_seed]
    orders = [max(m["orders"], 1.0) for m in per_seed]  # a day cut before any order: 0 / 1
    out = {"days": len(per_seed), "gmv": statistics.mean(gmv), "gmv_ci95": list(bootstrap_ci(gmv)),
           "answer_rate": sum(served) / sum(orders),
           "answer_rate_ci95": list(bootstrap_ci(served, orders))}
    for key in ("income_sd", "income_gini"):
        values = [m[key] for m in per_seed]
        out[key] = statistics.mean(values)
        out[f"{key}_ci95"] = list(bootstrap_ci(values))
    if "invalid" in per_seed[0]:
        out["invalid_per_turn"] = sum(m["invalid"] for m in per_seed) / max(1, sum(m["turns"] for m in per_seed))
    return out


def paired(a: list[dict[str, float]], b: list[dict[str, float]], key: str = "gmv") -> dict[str, Any]:
    """B - A per day (same seeds), its mean and 95% bootstrap CI, days B won / lost."""
    diff = [y[key] - x[key] for x, y in zip(a, b, strict=True)]
    return {"difference": statistics.mean(diff), "ci95": list(bootstrap_ci(diff)),
            "b_won": sum(d > 0 for d in diff), "a_won": sum(d < 0 for d in diff),
            "ties": sum(d == 0 for d in diff)}


def analyse(runs: list[dict], base: dict) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for view, cities in base.items():
        for city, policies in cities.items():
            for policy, per_seed in policies.items():
                table.setdefault(view, {}).setdefault(city, {})[f"dispatch_{policy}"] = summary(per_seed)
    for run in runs:
        for phase in ("after_sft", "after_rl"):
            for city, per_seed in run[phase].items():
                row = summary(per_seed)
                greedy = base[run["view"]][city]["greedy"]
                row["vs_greedy"] = paired(greedy, per_seed)
                table[run["view"]][city][f"{run['name']} ({phase.replace('_', ' ')})"] = row
    fair = {r["name"]: r for r in runs}
    fairness = None
    if "driver_ospo" in fair and "driver_ospo_fair" in fair:
        fairness = {city: {key: paired(fair["driver_ospo"]["after_rl"][city],
                                       fair["driver_ospo_fair"]["after_rl"][city], key)
                           for key in ("income_sd", "income_gini", "gmv")}
                    for city in CITIES}
    return {"table": table, "fairness": fairness}


# ------------------------------------------------------------------------- report
def _ci(value: float, ci: list[float], fmt: str) -> str:
    return f"{value:{fmt}} [{ci[0]:{fmt}}, {ci[1]:{fmt}}]"


def markdown(report: dict) -> str:
    """The BENCHMARKS.md section body: one table per env view, the goals, the fairness
    term's effect, budget and wall time."""
    lines = []
    seeds = report["eval_seeds"]
    runs = {r["name"]: r for r in report["runs"]}
    for view, cities in report["analysis"]["table"].items():
        days = "; ".join(f"{city} {s[1] - s[0] + 1} (seeds {s[0]}-{s[1]})" for city, s in seeds.items())
        lines += [f"**{VIEWS[view]}**, trained on mdpod only; held-out days: {days}.", "",
                  "| city | policy | GMV [95% CI] | answer rate [95% CI] | income sd (Gini) "
                  "| GMV - greedy, paired [95% CI] (days won/lost) |",
                  "|---|---|---|---|---|---|"]
        for city, rows in cities.items():
            fmt = ".1f" if city == "mdpod" else ".0f"
            for policy, row in rows.items():
                vs = row.get("vs_greedy")
                paired_text = (f"{vs['difference']:+{fmt}} [{vs['ci95'][0]:+{fmt}}, {vs['ci95'][1]:+{fmt}}] "
                               f"({vs['b_won']}/{vs['a_won']})" if vs else "")
                lines.append(f"| {city} | {policy} | {_ci(row['gmv'], row['gmv_ci95'], fmt)} | "
                             f"{_ci(row['answer_rate'], row['answer_rate_ci95'], '.3f')} | "
                             f"{row['income_sd']:.2f} ({row['income_gini']:.2f}) | {paired_text} |")
        lines.append("")
    lines.append("| run | algorithm | SFT episodes (samples) | RL updates (episodes) | wall time "
                 "(build + SFT / eval after SFT / RL) | CPU time |")
    lines.append("|---|---|---|---|---|---|")
    for name, r in runs.items():
        p = r["phases_s"]
        lines.append(f"| {name} | {r['algorithm']} | {r['sft_episodes']} ({r['sft_samples']}) | "
                     f"{r['rl_updates']} ({r['rl_episodes']}) | {r['wall_s']:.0f} s "
                     f"({p['build_and_sft']:.0f} / {p['eval_after_sft']:.0f} / {p['rl']:.0f}) | "
                     + (f"{r['cpu_s']:.0f} s |" if "cpu_s" in r else "- |"))
    lines.append("")
    fair = report["analysis"]["fairness"]
    if fair:
        lines.append(f"Fairness term (beta = {report.get('fairness_coef', FAIRNESS_COEF)}), "
                     "`driver_ospo_fair` - `driver_ospo` "
                     "after RL, paired over days:")
        lines.append("")
        lines.append("| city | income sd | income Gini | GMV |")
        lines.append("|---|---|---|---|")
        for city, d in fair.items():
            cells = [f"{d[k]['difference']:+.3f} [{d[k]['ci95'][0]:+.3f}, {d[k]['ci95'][1]:+.3f}]"
                     for k in ("income_sd", "income_gini", "gmv")]
            lines.append(f"| {city} | " + " | ".join(cells) + " |")
        lines.append("")
    for goal in report["goals"]:
        lines.append(f"- {goal}")
    lines.append("")
    lines.append(f"Total {report['total_wall_s'] / 60:.1f} min ({report['machine']})"
                 + (", --quick" if report.get("quick") else "") + ".")
    return "\n".join(lines)


def goals(report: dict) -> list[str]:
    """The issue's goals, met or missed, from the numbers."""
    out = []
    table = report["analysis"]["table"]
    for view, name, text in (("dispatcher", "dispatcher_grpo", "trained dispatcher beats greedy on GMV (mdpod, paired)"),
                             ("driver", "driver_ospo", "OSPO's driver view at least matches greedy on GMV (mdpod, paired)")):
        row = table.get(view, {}).get("mdpod", {}).get(f"{name} (after rl)")
        if row is None:
            continue
        vs = row["vs_greedy"]
        lo, hi = vs["ci95"]
        if view == "dispatcher":
            met, rule = lo > 0, "the paired 95% CI above 0"
        else:
            met, rule = hi >= 0, "not below greedy: the paired 95% CI reaches 0 or above"
        out.append(f"{'met' if met else 'MISSED'}: {text} ({rule}): {vs['difference']:+.2f} GMV "
                   f"[{lo:+.2f}, {hi:+.2f}], days won/lost {vs['b_won']}/{vs['a_won']}")
    return out


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, view in zip(axes, ("driver", "dispatcher"), strict=True):
        table = report["analysis"]["table"].get(view, {}).get("mdpod", {})
        for policy, colour in zip(BASELINES, ("tab:gray", "tab:orange", "tab:green"), strict=True):
            row = table.get(f"dispatch_{policy}")
            if row:
                ax.axhline(row["gmv"], color=colour, ls="--", label=f"{policy} (held out)")
        for r, colour in zip((r for r in runs if r["view"] == view), ("tab:blue", "tab:red"),
                             strict=False):
            xs = [c["episodes"] for c in r["curve"]]
            line, = ax.plot(xs, [c["train_gmv"] for c in r["curve"]], "-o", ms=3, color=colour,
                            label=f"{r['name']} (training days)")
            for phase, x, marker in (("after_sft", 0, "s"), ("after_rl", xs[-1] if xs else 0, "*")):
                gmv = statistics.mean(m["gmv"] for m in r[phase]["mdpod"])
                ax.plot([x], [gmv], marker, color=line.get_color(), ms=9,
                        label=f"{r['name']} held out, {phase.replace('_', ' ')}")
        ax.set_title(f"{VIEWS[view]} on mdpod")
        ax.set_xlabel("RL episodes (days) after SFT")
        ax.set_ylabel("GMV per day")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--eval-seeds", type=int, default=20, help="held-out mdpod days")
    parser.add_argument("--city-seeds", type=int, default=10, help="held-out city days")
    parser.add_argument("--quick", action="store_true", help="tiny budget: a smoke run")
    parser.add_argument("--out", default="benchmarks/results/learning_ride_dispatch.json")
    parser.add_argument("--work", help="keep each run's JSON here; a run whose JSON is there "
                        "already is not trained again (resume an interrupted study)")
    parser.add_argument("--from-json", action="store_true",
                        help="recompute the statistics and curves of --out from its runs and baselines")
    parser.add_argument("--child", nargs=2, metavar=("RUN", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    counts = {"mdpod": 2, "city": 2} if args.quick else {"mdpod": args.eval_seeds, "city": args.city_seeds}
    seeds = {city: list(range(100_000, 100_000 + n)) for city, n in counts.items()}  # the eval seeds
    if args.child:
        child(args.child[0], args.quick, seeds, Path(args.child[1]))
        return
    if args.from_json:
        finish(json.loads(Path(args.out).read_text()), Path(args.out))
        return

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="turnrl-ride-learn-"))
    work.mkdir(parents=True, exist_ok=True)
    runs = []
    for name in args.runs:
        out = work / f"{name}.json"
        t0 = time.time()
        if out.exists():
            runs.append(json.loads(out.read_text()))
            print(f"{name}: read from {out}", flush=True)
            continue
        subprocess.run([sys.executable, __file__, "--child", name, str(out), "--eval-seeds",
                        str(args.eval_seeds), "--city-seeds", str(args.city_seeds)]
                       + (["--quick"] if args.quick else []),
                       check=True)
        runs.append(json.loads(out.read_text()))
        print(f"{name}: {time.time() - t0:.0f} s", flush=True)
    t0 = time.time()
    base = baselines(seeds, sorted({r["view"] for r in runs}), QUICK_ENV if args.quick else {})
    command = ["python benchmarks/learning_ride_dispatch.py"] + (["--quick"] if args.quick else []) + [
        f"--{k.replace('_', '-')} {v}" for k, v in (("eval_seeds", args.eval_seeds), ("city_seeds", args.city_seeds))
        if v != parser.get_default(k)] + ([f"--runs {' '.join(args.runs)}"] if args.runs != list(RUNS) else [])
    report: dict[str, Any] = {
        "eval_seeds": {city: [s[0], s[-1]] for city, s in seeds.items()}, "quick": args.quick, "runs": runs,
        "baselines": base, "fairness_coef": FAIRNESS_COEF,
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "command": " ".join(command), "python": platform.python_version(),
        "baselines_s": time.time() - t0,
        # each run's own wall time (a resumed study read some from --work) + the baselines'
        "total_wall_s": sum(r["wall_s"] for r in runs) + time.time() - t0,
    }
    finish(report, Path(args.out))


def finish(report: dict, out: Path) -> None:
    """Statistics, goals, JSON, curves and the Markdown table of a finished study."""
    report["analysis"] = analyse(report["runs"], report["baselines"])
    report["goals"] = goals(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    plot(report, out.with_suffix(".png"))
    print(markdown(report))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
