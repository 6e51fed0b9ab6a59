"""The code interpreter learns: a tiny model trained from scratch on CPU learns to use the
Python tool of ``turnrl/CodeInterpreter-v0`` on exact products of many-digit numbers.

The task (reasoning-gym ``products``, two 3-digit factors) is out of reach without
the tool for a small model -- it cannot multiply in its head -- but one code call away: copy
the two numbers into ``print(a * b)``, then copy the printed number into the answer. Two
arms, each a subprocess (one after the other, so their times are comparable), same model
size, demonstrations and RL budget:

- ``tool``: ``configs/code_interpreter.yaml`` as is -- one code call allowed, SFT on
  demonstrations of the tool (``expert_code``: a ```python block printing the product,
  then the printed number as the answer), then GRPO (the R1-Code-Interpreter setting);
- ``no_tool``: the same with the tool taken away (``max_code_calls: 0``): SFT on the
  bare answers, then GRPO.

Each arm is played on the held-out eval seeds (sampled replies, the policy RL trains)
before training, after SFT and after RL: success with its 95% Wilson interval, the tool
use (code calls per episode, share of episodes whose answer is a line a code call printed,
``answer_from_tool``) and the format-error rate. RL against SFT is paired over the same
problems (:func:`turnrl.compare.compare_records`: bootstrap CI over seeds, exact
McNemar). The curve is held-out success every few updates. ``turnrl/CodeRepair-v0`` is
not trained (writing HumanEval functions is beyond a model built from scratch); its
``scripted_code`` baseline (a stub that fails the tests: the floor) and ``expert``
(canonical solutions: the ceiling) are played on a few problems instead.

Usage::

    python benchmarks/learning_code.py [--updates 40] [--eval-episodes 100] [--arms tool no_tool]
    python benchmarks/learning_code.py --quick --out /tmp/x.json   # a smoke run

Writes ``benchmarks/results/learning_code.json`` and ``.png`` and prints the Markdown that
``benchmarks/report.py`` puts into BENCHMARKS.md (:func:`markdown`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CONFIG = "configs/code_interpreter.yaml"
#: arm -> overrides of CONFIG.
ARMS: dict[str, list[str]] = {
    "tool": [],
    "no_tool": ["env.kwargs.max_code_calls=0", "env.kwargs.expert_code=false",
                "env.kwargs.max_turns=2"],
}
PHASES = ("before", "after_sft", "after_rl")
#: --quick: a smoke run on a shrunken budget (the slow test runs this).
QUICK = ["sft.episodes=2", "sft.epochs=1", "rollout.episodes_per_update=4", "rollout.num_envs=4",
         "rollout.group_size=2", "optim.minibatch_size=8", "optim.micro_batch_size=8",
         "model.tiny={hidden_size: 64, num_layers: 1, vocab_size: 300, corpus_seeds: 2}"]
#: CodeRepair-v0 problems played by its baselines (HumanEval/0 ...).
REPAIR_PROBLEMS = 20


# ------------------------------------------------------------------------- one arm
def tool_use(trajectories: list[Any]) -> dict[str, float]:
    """Per-episode means of the tool use: code calls, answers that are a printed line of a
    code call, episodes ended by an answer (the rest ran out of turns)."""
    n = max(1, len(trajectories))
    finals = [t.turns[-1].info.get("metrics", {}) if t.turns else {} for t in trajectories]
    # a format-error turn carries no metrics: the count is the most any turn reported
    calls = [max((turn.info.get("metrics", {}).get("code_calls", 0.0) for turn in t.turns), default=0.0)
             for t in trajectories]
    return {
        "code_calls_per_episode": sum(calls) / n,
        "answer_from_tool": sum(m.get("answer_from_tool", 0.0) for m in finals) / n,
        "answered": sum("score" in m for m in finals) / n,
    }


def held_out(trainer: Any) -> dict[str, Any]:
    """Play the eval seeds as ``Trainer.evaluate`` does; success, tool use, records."""
    from turnrl.evaluate import EnvResult

    e, r = trainer.cfg.eval, trainer.cfg.rollout
    trajs = trainer.envs.collect_eval(
        trainer.sampler, episodes=e.episodes, num_envs=r.num_envs, context=r.context,
        max_context_tokens=r.max_context_tokens, step_workers=r.step_workers, mode=r.mode,
        greedy=e.greedy, reasoning_history=r.reasoning_history)
    result = EnvResult.from_trajectories("", trajs)
    return {"success": result.success_rate, "ci95": list(result.success_ci95),
            "episodes": result.episodes, "invalid_rate": result.invalid_rate,
            "turns": result.mean_turns, **tool_use(trajs),
            "records": [rec.to_dict() for rec in result.records],
            "example": trajs[0].messages[1:] if trajs else []}


def child(arm: str, overrides: list[str], model: str, out: Path) -> None:
    from transformers.utils import logging as hf_logging

    from turnrl.trainer import Trainer, load_config
    from turnrl.trainer.logging import read_metrics

    hf_logging.disable_progress_bar()
    run_dir = Path(tempfile.mkdtemp(prefix=f"turnrl-code-{arm}-")) / "run"
    cfg = load_config(CONFIG, ARMS[arm] + overrides + [
        f"model.name_or_path={model}", f"run_dir={run_dir}", "progress=false", "log_tokens=0",
        "checkpoint_every=0"])
    start = time.time()
    trainer = Trainer(cfg)
    times, phases = {}, {}
    try:
        t = time.time()
        phases["before"] = held_out(trainer)
        times["eval_before"] = time.time() - t
        t = time.time()
        sft = trainer.train_sft()
        times["sft"] = time.time() - t
        t = time.time()
        phases["after_sft"] = held_out(trainer)
        times["eval_after_sft"] = time.time() - t
        t = time.time()
        trainer.train_rl()
        times["rl"] = time.time() - t
        t = time.time()
        phases["after_rl"] = held_out(trainer)
        times["eval_after_rl"] = time.time() - t
    finally:
        trainer.close()
    rows = read_metrics(run_dir)
    per_update = cfg.rollout.episodes_per_update
    curve = [{"update": 0, "episodes": 0, "success": phases["after_sft"]["success"],
              "ci95": phases["after_sft"]["ci95"]}]
    for row in rows:
        if row["phase"].startswith("eval:update_"):
            update = int(row["phase"].rsplit("_", 1)[1])
            curve.append({"update": update, "episodes": update * per_update,
                          "success": row["eval/success"],
                          "ci95": [row["eval/success_ci_low"], row["eval/success_ci_high"]]})
    curve.append({"update": cfg.total_updates, "episodes": cfg.total_updates * per_update,
                  "success": phases["after_rl"]["success"], "ci95": phases["after_rl"]["ci95"]})
    train = [{"update": row["step"] + 1, "success": row["rollout/success"]}
             for row in rows if row["phase"] == "train"]
    out.write_text(json.dumps({
        "arm": arm, "wall_s": time.time() - start, "phases_s": times, **phases, "curve": curve,
        "train_curve": train, "sft_samples": sft["sft_samples"], "sft_episodes": cfg.sft.episodes,
        "rl_updates": cfg.total_updates, "rl_episodes": cfg.total_updates * per_update,
        "algorithm": cfg.algorithm.name, "group_size": cfg.rollout.group_size,
        "max_code_calls": cfg.env.kwargs.get("max_code_calls"),
    }, indent=2))


# ------------------------------------------------------------------------- the study
def build_model(path: Path, overrides: list[str]) -> str:
    """One tiny model, built from the tool arm's text (the no-tool arm's is a subset), for
    both arms: same tokenizer, same initial weights."""
    from turnrl.agents import tiny
    from turnrl.trainer import load_config
    from turnrl.trainer.corpus import env_text_corpus

    cfg = load_config(CONFIG, overrides)
    spec = dict(cfg.model.tiny)
    seeds = spec.pop("corpus_seeds", 16)
    start = cfg.env.train_seeds[0]
    texts = env_text_corpus(cfg.env.id, range(start, start + seeds), **cfg.env.kwargs)
    tiny.make_tiny_model(path, texts, seed=cfg.seed, **spec)
    return str(path)


def repair_baselines(problems: int) -> dict[str, Any]:
    """CodeRepair-v0: ``scripted_code`` (the floor) and ``expert`` on the first problems."""
    from turnrl.agents import make_agent
    from turnrl.evaluate import evaluate

    out = {}
    for name in ("scripted_code", "expert"):
        t = time.time()
        result = evaluate("turnrl/CodeRepair-v0", make_agent(name), episodes=problems, seed=0,
                          num_envs=2)[0]
        out[name] = {"success": result.success_rate, "ci95": list(result.success_ci95),
                     "mean_return": result.mean_return, "episodes": result.episodes,
                     "wall_s": time.time() - t}
    return out


def analyse(runs: dict[str, dict]) -> dict[str, Any]:
    """Paired RL - SFT per arm, and the goal."""
    from turnrl.compare import compare_records
    from turnrl.evaluate import EpisodeRecord

    paired = {}
    for arm, run in runs.items():
        a, b = ([EpisodeRecord.from_dict(arm, d) for d in run[p]["records"]]
                for p in ("after_sft", "after_rl"))
        stats = compare_records(a, b, a_label="after_sft", b_label="after_rl").overall
        paired[arm] = {"difference": stats.difference, "ci95": list(stats.ci95),
                       "sft_only": stats.a_only, "rl_only": stats.b_only,
                       "mcnemar_p": stats.mcnemar_p, "pairs": stats.pairs}
    goal = None
    if "tool" in paired:
        d = paired["tool"]
        goal = {"text": "RL raises held-out accuracy over SFT (tool arm, paired 95% CI above 0)",
                "met": d["ci95"][0] > 0, "difference": d["difference"], "ci95": d["ci95"]}
    return {"rl_vs_sft": paired, "goal": goal}


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def markdown(report: dict) -> str:
    """The BENCHMARKS.md section body: success and tool use per arm and phase, RL vs SFT
    paired, the goal, budget and wall time, and CodeRepair's baselines."""
    runs, analysis = report["runs"], report["analysis"]
    first = next(iter(runs.values()))
    n = first["after_rl"]["episodes"]
    digits = report["task_config"]
    span = (f"{digits['min_digits']}" if digits["min_digits"] == digits["max_digits"]
            else f"{digits['min_digits']}- to {digits['max_digits']}")
    lines = [f"`turnrl/CodeInterpreter-v0`, reasoning-gym `products` (two {span}-digit "
             f"factors), {n} held-out problems (eval seeds {report['eval_seeds'][0]}-"
             f"{report['eval_seeds'][1] - 1}), sampled replies.", "",
             "| arm | phase | success [95% CI] | code calls / episode | answer from a tool result "
             "| format errors / turn |", "|---|---|---|---|---|---|"]
    for arm, run in runs.items():
        for phase in PHASES:
            p = run[phase]
            lines.append(f"| {arm} | {phase.replace('_', ' ')} | {_pct(p['success'])} "
                         f"[{_pct(p['ci95'][0])}, {_pct(p['ci95'][1])}] | "
                         f"{p['code_calls_per_episode']:.2f} | {_pct(p['answer_from_tool'])} | "
                         f"{_pct(p['invalid_rate'])} |")
    lines += ["", "| arm | after RL - after SFT, paired [95% CI] | problems only SFT / only RL "
              "solved | McNemar p |", "|---|---|---|---|"]
    for arm, d in analysis["rl_vs_sft"].items():
        lines.append(f"| {arm} | {100 * d['difference']:+.0f} pts [{100 * d['ci95'][0]:+.0f}, "
                     f"{100 * d['ci95'][1]:+.0f}] | {d['sft_only']} / {d['rl_only']} | "
                     f"{d['mcnemar_p']:.2g} |")
    goal = analysis.get("goal")
    if goal:
        verdict = "met" if goal["met"] else "not met"
        lines += ["", f"Goal -- {goal['text']}: **{verdict}** ({100 * goal['difference']:+.0f} pts, "
                  f"95% CI [{100 * goal['ci95'][0]:+.0f}, {100 * goal['ci95'][1]:+.0f}])."]
    lines += ["", "| arm | algorithm | SFT episodes (samples) | RL updates (episodes) | wall time "
              "(SFT / evals / RL) |", "|---|---|---|---|---|"]
    for arm, run in runs.items():
        t = run["phases_s"]
        evals = t["eval_before"] + t["eval_after_sft"] + t["eval_after_rl"]
        lines.append(f"| {arm} | {run['algorithm']} (group {run['group_size']}) | "
                     f"{run['sft_episodes']} ({run['sft_samples']}) | {run['rl_updates']} "
                     f"({run['rl_episodes']}) | {run['wall_s']:.0f} s ({t['sft']:.0f} / "
                     f"{evals:.0f} / {t['rl']:.0f}) |")
    repair = report.get("code_repair")
    if repair:
        s, e = repair["scripted_code"], repair["expert"]
        lines += ["", f"`turnrl/CodeRepair-v0` (HumanEval, first {s['episodes']} problems) is not "
                  "trained: writing a working function from its docstring is out of reach for a "
                  f"model built from scratch. Its `scripted_code` baseline (a stub) scores "
                  f"{_pct(s['success'])} [{_pct(s['ci95'][0])}, {_pct(s['ci95'][1])}] (mean "
                  f"test pass rate {s['mean_return']:.2f}); the `expert` (canonical solutions) "
                  f"{_pct(e['success'])}."]
    lines += ["", f"Total {report['total_wall_s'] / 60:.1f} min."
              + (" A --quick smoke run: not a result." if report.get("quick") else "")]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    colours = {"tool": "tab:blue", "no_tool": "tab:red"}
    for arm, run in report["runs"].items():
        xs = [c["episodes"] for c in run["curve"]]
        ax.plot(xs, [c["success"] for c in run["curve"]], "-o", color=colours.get(arm),
                label=f"{arm}: held out")
        ax.fill_between(xs, [c["ci95"][0] for c in run["curve"]],
                        [c["ci95"][1] for c in run["curve"]], color=colours.get(arm), alpha=0.12)
        per = run["rl_episodes"] / max(1, run["rl_updates"])
        ax.plot([t["update"] * per for t in run["train_curve"]],
                [t["success"] for t in run["train_curve"]], ":", color=colours.get(arm),
                alpha=0.6, label=f"{arm}: training rollouts")
    ax.set_xlabel("RL episodes (after SFT)")
    ax.set_ylabel("success")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("CodeInterpreter-v0 products, tiny model: with and without the tool")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--updates", type=int, default=None, help="RL updates (default: the config's)")
    parser.add_argument("--eval-episodes", type=int, default=None,
                        help="held-out problems (default: the config's eval.episodes)")
    parser.add_argument("--eval-every", type=int, default=10, help="curve point every N updates")
    parser.add_argument("--repair-problems", type=int, default=REPAIR_PROBLEMS)
    parser.add_argument("--quick", action="store_true", help="a smoke run on a tiny budget")
    parser.add_argument("--out", default="benchmarks/results/learning_code.json")
    parser.add_argument("--from-work", metavar="DIR",
                        help="summarise the arms a run left in DIR (its work_dir) instead of training")
    parser.add_argument("--child", nargs=3, metavar=("ARM", "MODEL", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--override", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        arm, model, out = args.child
        child(arm, args.override, model, Path(out))
        return

    overrides = list(QUICK) if args.quick else []
    updates = args.updates if args.updates is not None else (1 if args.quick else None)
    eval_episodes = args.eval_episodes or (4 if args.quick else None)
    if updates is not None:
        overrides.append(f"total_updates={updates}")
    if eval_episodes is not None:
        overrides.append(f"eval.episodes={eval_episodes}")
    overrides.append(f"eval.every={0 if args.quick else args.eval_every}")
    from turnrl.trainer import load_config

    cfg = load_config(CONFIG, overrides)
    start = time.time()
    work = Path(args.from_work or tempfile.mkdtemp(prefix="turnrl-learning-code-"))
    model = str(work / "model") if args.from_work else build_model(work / "model", overrides)
    runs = {}
    for arm in args.arms:
        out = work / f"{arm}.json"
        if args.from_work:
            runs[arm] = json.loads(out.read_text())
            continue
        t0 = time.time()
        subprocess.run([sys.executable, __file__, "--child", arm, model, str(out),
                        *(f"--override={o}" for o in overrides)], check=True)
        runs[arm] = json.loads(out.read_text())
        p = runs[arm]
        print(f"{arm:<8} success before {p['before']['success']:.0%}, after SFT "
              f"{p['after_sft']['success']:.0%}, after RL {p['after_rl']['success']:.0%} "
              f"({time.time() - t0:.0f} s)", flush=True)
    repair = repair_baselines(1 if args.quick else args.repair_problems)
    command = "python benchmarks/learning_code.py" + (" --quick" if args.quick else "")
    report = {
        "command": command, "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "quick": args.quick, "config": CONFIG, "overrides": overrides, "work_dir": str(work),
        "task_config": cfg.env.kwargs["task_configs"]["products"],
        "eval_seeds": [cfg.env.eval_seeds[0], cfg.env.eval_seeds[0] + cfg.eval.episodes],
        "runs": runs, "analysis": analyse(runs), "code_repair": repair,
        "total_wall_s": (time.time() - start if not args.from_work else
                         sum(r["wall_s"] for r in runs.values())),
        "python": platform.python_version(), "platform": platform.platform(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, out.with_suffix(".png"))
    print(markdown(report))
    print(f"total {report['total_wall_s'] / 60:.1f} min; wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
