"""Stock explanation learns: a tiny model trained from scratch on
``turnrl/StockExplanation-v0`` (synthetic market, SEP's reflection loop) against the
majority, lexicon and oracle baselines, on the market's held-out test days.

Every run starts from ``configs/stock.yaml``: one tiny model built from the env's text
(no download), SFT on the oracle's first answers for a limited set of train days (shared
by both RL runs), then GRPO on train days

- **with** the reflection loop (``max_attempts: 3``: a wrong answer is told the actual move
  and answers again, a right second answer earns 0.5, and those turns are trained on), and
- **without** it (``max_attempts: 1``).

Accuracy is the *first* answer's (SEP's accuracy; Matthews correlation over the same
answers), greedy, on test days that no run trained on (each ticker's last 20% of days;
``split: by_seed`` seeds 100000+k are the test split's day k, the days the baselines
play). Accuracy comes with a 95% Wilson interval; the trained-vs-lexicon and
with-vs-without-reflection differences are paired over the same days (bootstrap interval,
exact McNemar p; :mod:`turnrl.compare`). Curves are measured on the first
``--curve-days`` test days. No setting was chosen on test days (see ``--eval-split``).

Each phase runs in its own subprocess, one after another.

Usage::

    python benchmarks/learning_stock.py [--quick] [--out benchmarks/results/learning_stock.json]

Writes the JSON and a ``.png`` of the curves, and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ENV_ID = "turnrl/StockExplanation-v0"
CONFIG = Path(__file__).resolve().parent.parent / "configs" / "stock.yaml"
TEST_SEED_START = 100_000
#: Train days held out of training (seeds of the train split's last days in its order):
#: where settings are chosen (``--eval-split validation``).
VALIDATION_SEEDS = (7000, 8160)
RUNS = ("no_reflection", "reflection")
BASELINES = {"majority": "stock_majority", "lexicon": "stock_lexicon", "oracle": "expert"}
DEFAULTS = {"sft_episodes": 512, "sft_epochs": 3, "updates": 16, "eval_every": 8,
            "test_days": 2040, "curve_days": 300, "max_new_tokens": 32}
#: A smoke run: the model learns nothing in it (its replies, cut at 8 tokens, are invalid).
QUICK = {"sft_episodes": 8, "sft_epochs": 1, "updates": 1, "eval_every": 1,
         "test_days": 16, "curve_days": 8, "max_new_tokens": 8}


# ------------------------------------------------------------------------- evaluation
def eval_seeds(split: str, days: int) -> list[int]:
    if split == "test":
        return list(range(TEST_SEED_START, TEST_SEED_START + days))
    start, stop = VALIDATION_SEEDS
    return list(range(start, min(stop, start + days)))


def predictions(agent: Any, seeds: list[int], env_kwargs: dict[str, Any], *,
                token_policy: bool, num_envs: int = 64,
                max_context_tokens: int = 1024) -> list[dict[str, Any]]:
    """The first answer on each seed's day: ``{seed, prediction, label}`` (prediction None
    for a reply without a valid ``Price Movement:`` line)."""
    from turnrl.envs import registry
    from turnrl.rollout import collect

    kwargs = {**env_kwargs, "max_attempts": 1}  # the first answer is all that is scored
    env = registry.make(ENV_ID, **kwargs)
    labels = {}
    for seed in seeds:  # the day's label, whether or not a reply ever parsed
        env.reset(seed=seed)
        labels[seed] = env.unwrapped.day.label
    if token_policy:
        trajs = collect(registry.factory(ENV_ID, **kwargs), agent, seeds, env_id=ENV_ID,
                        num_envs=num_envs, greedy=True, max_context_tokens=max_context_tokens)
        return [{"seed": t.seed, "prediction": t.turns[-1].info.get("first_prediction") if t.turns
                 else None, "label": labels[t.seed]} for t in trajs]
    out = []
    for seed in seeds:
        obs, info = env.reset(seed=seed)
        reply = agent.act([[{"role": "user", "content": obs}]], [info])[0].text
        *_, info = env.step(reply)
        out.append({"seed": seed, "prediction": info["first_prediction"], "label": labels[seed]})
    return out


def scores(preds: list[dict[str, Any]], majority: str) -> dict[str, Any]:
    """Accuracy with its Wilson interval, MCC (an invalid reply counts as wrong for accuracy
    and as the majority label for MCC), invalid share."""
    from turnrl.envs.stock.env import matthews_corrcoef
    from turnrl.evaluate import wilson_interval

    n = len(preds)
    right = sum(p["prediction"] == p["label"] for p in preds)
    filled = [p["prediction"] or majority for p in preds]
    return {"accuracy": right / n, "ci95": list(wilson_interval(right, n)),
            "mcc": matthews_corrcoef(filled, [p["label"] for p in preds]), "days": n,
            "invalid_rate": sum(p["prediction"] is None for p in preds) / n}


def paired(a: list[dict[str, Any]], b: list[dict[str, Any]], a_label: str, b_label: str) -> dict:
    """B - A on the same days: paired bootstrap interval and exact McNemar p."""
    from turnrl.compare import compare_records
    from turnrl.evaluate import EpisodeRecord

    def records(preds):
        return [EpisodeRecord(env="stock", seed=p["seed"], sample=0,
                              won=p["prediction"] == p["label"]) for p in preds]

    stats = compare_records(records(a), records(b), a_label=a_label, b_label=b_label).overall
    return {"a": a_label, "b": b_label, "difference": stats.difference,
            "ci95": list(stats.ci95), "mcnemar_p": stats.mcnemar_p}


# ------------------------------------------------------------------------- children
def overrides(settings: dict[str, Any], run_dir: Path, model: str, extra: list[str]) -> list[str]:
    return [f"model.name_or_path={model}", f"run_dir={run_dir}", "progress=false",
            "eval.before=false", f"checkpoint_every={max(1, settings['updates'])}",
            f"rollout.max_new_tokens={settings['max_new_tokens']}", *extra]


def child(kind: str, model: str, settings: dict[str, Any], work: Path) -> None:
    """``sft``: SFT on oracle answers, export the model. ``no_reflection`` / ``reflection``:
    GRPO from the SFT model, evaluating as it goes."""
    from transformers.utils import logging as hf_logging

    from turnrl.envs import registry
    from turnrl.trainer import Trainer, load_config
    from turnrl.trainer.logging import read_metrics

    hf_logging.disable_progress_bar()
    split, curve_seeds = settings["eval_split"], eval_seeds(settings["eval_split"], settings["curve_days"])
    run_dir = work / kind
    if kind == "sft":
        extra = ["algorithm.name=sft", "total_updates=0", "env.kwargs.max_attempts=1",
                 f"sft.episodes={settings['sft_episodes']}", f"sft.epochs={settings['sft_epochs']}"]
    else:
        extra = ["sft.episodes=0", f"env.kwargs.max_attempts={3 if kind == 'reflection' else 1}",
                 f"total_updates={settings['updates']}"]
    cfg = load_config(CONFIG, overrides(settings, run_dir, model, extra))
    kwargs = dict(cfg.env.kwargs)
    majority = registry.make(ENV_ID, **kwargs).unwrapped.majority_label  # MCC fills invalid
    start = time.time()
    trainer = Trainer(cfg)

    def evaluate(seeds):
        t0 = time.time()
        preds = predictions(trainer.policy, seeds, kwargs, token_policy=True,
                            num_envs=2 * cfg.rollout.num_envs,
                            max_context_tokens=cfg.rollout.max_context_tokens)
        return preds, time.time() - t0

    played: list[dict[str, float]] = []  # per update: the training episodes' answers
    rollout = trainer.rollout

    def rollout_and_count():
        trajs = rollout()
        ends = [t.turns[-1].info.get("metrics", {}) for t in trajs if t.turns]
        played.append({key: sum(m.get(key, 0.0) for m in ends) / max(1, len(ends))
                       for key in ("first_correct", "final_correct", "attempts")})
        return trajs

    trainer.rollout = rollout_and_count  # the trainer plays through it
    curve, eval_s = [], 0.0
    result: dict[str, Any] = {"kind": kind}
    if kind == "sft":
        trainer.train_sft()
        result["model"] = str(trainer.export(work / "sft_model"))
    else:
        every = settings["eval_every"] or settings["updates"]
        preds, dt = evaluate(curve_seeds)
        eval_s += dt
        curve.append({"update": 0, **scores(preds, majority)})
        while trainer.update < settings["updates"]:
            trainer.cfg.total_updates = min(settings["updates"], trainer.update + every)
            trainer.train_rl()
            preds, dt = evaluate(curve_seeds)
            eval_s += dt
            curve.append({"update": trainer.update, **scores(preds, majority)})
        trainer.save()
    train_s = time.time() - start - eval_s
    preds, dt = evaluate(eval_seeds(split, settings["test_days"]))
    trainer.close()
    # --updates 0 leaves an RL run without a metrics file: no rows
    rows = read_metrics(run_dir) if (run_dir / "metrics.jsonl").exists() else []
    train = [r for r in rows if r["phase"] == "train"]
    result.update({
        "predictions": preds, "curve": curve, "train_s": train_s, "eval_s": eval_s + dt,
        "episodes": (cfg.sft.episodes if kind == "sft" else cfg.rollout.episodes_per_update * len(train)),
        "updates": len(train),
        "rollout": [{"update": r["step"], "return": r["rollout/return"], **counts}
                    for r, counts in zip(train, played, strict=True)],
        "sft_loss": [r["sft/sft_loss"] for r in rows if r["phase"] == "sft"],
    })
    (work / f"{kind}.json").write_text(json.dumps(result))


# ------------------------------------------------------------------------- the study
def _settings_args(argv: list[str]) -> list[str]:
    """``argv`` without ``--work DIR`` / ``--work=DIR``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--work":
            skip = True
        elif not arg.startswith("--work="):
            out.append(arg)
    return out


def build_model(path: Path, settings: dict[str, Any]) -> str:
    """The config's tiny model, built once from the env's text for every run."""
    from turnrl.agents import tiny
    from turnrl.trainer import load_config
    from turnrl.trainer.corpus import env_text_corpus

    cfg = load_config(CONFIG)
    spec = dict(cfg.model.tiny)
    seeds = spec.pop("corpus_seeds", 16)
    texts = env_text_corpus(ENV_ID, range(seeds), **cfg.env.kwargs)
    tiny.make_tiny_model(path, texts, seed=0, **spec)
    return str(path)


def baselines(settings: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    from turnrl.agents import make_agent
    from turnrl.trainer import load_config

    kwargs = dict(load_config(CONFIG).env.kwargs)
    seeds = eval_seeds(settings["eval_split"], settings["test_days"])
    return {name: predictions(make_agent(agent), seeds, kwargs, token_policy=False)
            for name, agent in BASELINES.items()}


def summarise(runs: dict[str, dict], base: dict[str, list], settings: dict[str, Any]) -> dict:
    from turnrl.envs import registry
    from turnrl.trainer import load_config

    majority = registry.make(ENV_ID, **load_config(CONFIG).env.kwargs).unwrapped.majority_label
    table = {name: {**scores(preds, majority), "kind": "baseline"} for name, preds in base.items()}
    sft = runs["sft"]
    table["after SFT"] = {**scores(sft["predictions"], majority), "kind": "trained",
                          "episodes": sft["episodes"], "train_s": sft["train_s"]}
    for kind in RUNS:
        r = runs[kind]
        table[f"GRPO, {kind.replace('_', ' ')}"] = {
            **scores(r["predictions"], majority), "kind": "trained",
            "episodes": sft["episodes"] + r["episodes"], "rl_episodes": r["episodes"],
            "train_s": sft["train_s"] + r["train_s"]}
    comparisons = [paired(base["lexicon"], sft["predictions"], "lexicon", "after SFT")]
    comparisons += [paired(base["lexicon"], runs[k]["predictions"], "lexicon", f"GRPO, {k.replace('_', ' ')}")
                    for k in RUNS]
    comparisons.append(paired(sft["predictions"], runs["reflection"]["predictions"], "after SFT",
                              "GRPO, reflection"))
    comparisons.append(paired(sft["predictions"], runs["no_reflection"]["predictions"], "after SFT",
                              "GRPO, no reflection"))
    comparisons.append(paired(runs["no_reflection"]["predictions"], runs["reflection"]["predictions"],
                              "GRPO, no reflection", "GRPO, reflection"))
    # the baselines on the curve days (the curve's reference lines)
    curve_n = min(settings["curve_days"], settings["test_days"])  # the eval days' first ones
    lines = {name: scores(preds[:curve_n], majority)["accuracy"] for name, preds in base.items()}
    return {"table": table, "comparisons": comparisons, "curve_baselines": lines}


def markdown(report: dict[str, Any]) -> str:
    """The BENCHMARKS.md table: first-answer accuracy and MCC on the held-out days."""
    s = report["settings"]
    lines = [
        "| predictor | accuracy [95% CI] | MCC | train episodes (SFT + RL) | train time |",
        "|---|---|---|---|---|",
    ]
    for name, row in report["table"].items():
        lo, hi = row["ci95"]
        if row["kind"] == "baseline":
            episodes, wall = "-", "-"
        else:
            rl = row.get("rl_episodes")
            episodes = (f"{row['episodes'] - rl} + {rl}" if rl is not None else f"{row['episodes']} + 0")
            wall = f"{row['train_s'] / 60:.1f} min"
        lines.append(f"| {name} | {row['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] | {row['mcc']:.3f} "
                     f"| {episodes} | {wall} |")
    lines += ["", "| paired on the same days: B - A | difference [95% CI] | McNemar p |",
              "|---|---|---|"]
    for c in report["comparisons"]:
        lo, hi = c["ci95"]
        lines.append(f"| {c['b']} - {c['a']} | {c['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}] "
                     f"| {c['mcnemar_p']:.3g} |")
    refl = report["runs"]["reflection"]["rollout"]
    if refl:
        tail = refl[-max(1, len(refl) // 4):]
        first = sum(r.get("first_correct", 0.0) for r in tail) / len(tail)
        final = sum(r.get("final_correct", 0.0) for r in tail) / len(tail)
        lines += ["", f"Reflection run, last quarter of its training rollouts (sampled): first "
                  f"answer right {first:.2f}, right after reflecting (by the 3rd answer) {final:.2f}."]
    lines += ["", f"{s['test_days']} {s['eval_split']} days; {report['total_wall_s'] / 60:.1f} min "
              f"in all (training, evaluation and baselines). No explanation scorer "
              f"(`explanation_weight` 0): the reward is the answer's correctness only."]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    per_update = report["episodes_per_update"]
    for kind, colour in zip(RUNS, ("tab:blue", "tab:orange"), strict=True):
        curve = report["runs"][kind]["curve"]
        xs = [c["update"] * per_update for c in curve]
        ax.errorbar(xs, [c["accuracy"] for c in curve],
                    yerr=[[c["accuracy"] - c["ci95"][0] for c in curve],
                          [c["ci95"][1] - c["accuracy"] for c in curve]],
                    fmt="-o", color=colour, capsize=3, label=f"GRPO, {kind.replace('_', ' ')}")
    styles = {"majority": ":", "lexicon": "--", "oracle": "-."}
    for name, acc in report["curve_baselines"].items():
        ax.axhline(acc, color="grey", linestyle=styles.get(name, "-"), label=name)
    s = report["settings"]
    ax.set_xlabel(f"RL episodes (after SFT on {s['sft_episodes']} oracle episodes)")
    ax.set_ylabel(f"first-answer accuracy ({s['curve_days']} {s['eval_split']} days)")
    ax.set_ylim(0.3, 0.9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("StockExplanation-v0 (synthetic market), tiny model from scratch")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (seconds, not minutes)")
    for key, value in DEFAULTS.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=None,
                            help=f"default {value} (--quick: {QUICK[key]})")
    parser.add_argument("--eval-split", choices=("test", "validation"), default="test",
                        help="validation: train days held out of training (choose settings there)")
    parser.add_argument("--out", default="benchmarks/results/learning_stock.json")
    parser.add_argument("--work", help="working directory (default: a new temporary one); a "
                        "phase whose results are already there is not run again")
    parser.add_argument("--child", nargs=4, metavar=("KIND", "MODEL", "SETTINGS", "WORK"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, model, settings, work = args.child
        child(kind, model, json.loads(settings), Path(work))
        return
    settings = dict(QUICK if args.quick else DEFAULTS)
    settings.update({k: getattr(args, k) for k in DEFAULTS if getattr(args, k) is not None})
    settings["eval_split"] = args.eval_split
    start = time.time()
    work = Path(args.work or tempfile.mkdtemp(prefix="turnrl-stock-learn-"))
    work.mkdir(parents=True, exist_ok=True)
    model = str(work / "model")
    if not (work / "model" / "config.json").exists():
        build_model(work / "model", settings)
    runs: dict[str, dict] = {}
    for kind in ("sft", *RUNS):
        t0 = time.time()
        if (work / f"{kind}.json").exists():  # a phase done by an earlier call with --work
            runs[kind] = json.loads((work / f"{kind}.json").read_text())
            continue
        shutil.rmtree(work / kind, ignore_errors=True)  # an unfinished earlier try
        subprocess.run([sys.executable, __file__, "--child", kind,
                        runs["sft"]["model"] if kind != "sft" else model,
                        json.dumps(settings), str(work)], check=True)
        runs[kind] = json.loads((work / f"{kind}.json").read_text())
        acc = scores(runs[kind]["predictions"], "Positive")["accuracy"]
        print(f"{kind:<14} accuracy {acc:.3f} ({time.time() - t0:.0f} s)", flush=True)
    base = baselines(settings)
    from turnrl.trainer import load_config

    cfg = load_config(CONFIG)
    report = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        # the settings that made the numbers (--work only says where they were kept)
        "command": " ".join(["python benchmarks/learning_stock.py", *_settings_args(sys.argv[1:])]),
        "python": platform.python_version(), "settings": settings, "config": str(CONFIG.name),
        "episodes_per_update": cfg.rollout.episodes_per_update,
        **summarise(runs, base, settings),
        "runs": {k: {key: v for key, v in r.items() if key != "predictions"} for k, r in runs.items()},
        "total_wall_s": time.time() - start,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, out.with_suffix(".png"))
    print(markdown(report))
    print(f"total {report['total_wall_s'] / 60:.1f} min; wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
