"""The long-horizon study: ppo, vldac, gigpo (turn-level credit) against grpo and rloo
(trajectory-level) from one SFT checkpoint, same episode budget, on ALFWorld and on a
long TextWorld family.

For each study a tiny model is built once from the env's text (nothing is downloaded)
and warm-started by SFT on a **limited** set of expert episodes (one SFT run per seed).
Every RL run starts from its seed's SFT model, plays ``--updates`` updates of 16
episodes (ppo and vldac: 16 games; the group methods: 4 games x 4) and is evaluated on
held-out games with sampled replies (the policy RL trains), the same seeds and the same
sampling seed for every method, so two methods' episodes pair up game by game:

* ``alfworld``: ``configs/alfworld-tiny.yaml`` -- ALFWorld's six task types on generated
  households (suite ``alfworld``, train seeds); held out: suite ``alfworld-unseen``, goal
  combinations never trained on, 20 games per task type.
* ``textworld``: ``configs/textworld-long.yaml`` -- ``tw-coin_collector`` level 6: the
  coin is 6 rooms down a chain, 12 turns; a step back the way it came wastes turns the
  agent cannot spare. Held out: the config's eval seeds.

Every method runs on ``--seeds`` (default 0); SFT and ``--extra-algos`` get
``--extra-seeds`` more (default: the two methods with the best training success -- mean
rollout success over the last third of the updates, not the held-out score, which is not
tuned on). Reported: held-out success with Wilson 95% CIs
(per seed, mean over seeds, per ALFWorld task type), episodes used, wall time, training
curves, and paired comparisons (:mod:`turnrl.compare`: paired bootstrap CI, exact
McNemar) of each turn-level method against grpo and rloo, and of each method against
SFT, on the same games and the seeds both ran.

Each run is a subprocess, one after another. Usage::

    python benchmarks/learning_alfworld.py [--studies alfworld textworld] [--updates N]
        [--algos ppo vldac gigpo grpo rloo] [--extra-seeds 1 2] [--quick]

Writes ``benchmarks/results/learning_alfworld.json`` and ``.png`` and prints the tables.
``--quick`` (a few minutes) checks the pipeline end to end with tiny budgets.
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
from dataclasses import asdict, dataclass
from pathlib import Path

ALGOS = ("ppo", "vldac", "gigpo", "grpo", "rloo")
TURN_LEVEL = ("ppo", "vldac", "gigpo")
TRAJECTORY_LEVEL = ("grpo", "rloo")
GROUP = {"ppo": 1, "vldac": 1, "gigpo": 4, "grpo": 4, "rloo": 4}
COLOURS = {"sft": "black", "ppo": "tab:blue", "vldac": "tab:orange", "gigpo": "tab:purple",
           "grpo": "tab:red", "rloo": "tab:green"}


@dataclass(frozen=True)
class Study:
    config: str
    #: held-out target: a suite (every entry, all its eval seeds unless ``episodes``), or
    #: None for the config's env on its eval seeds.
    heldout: str | None
    episodes: int
    updates: int
    title: str
    #: config overrides of ``--quick`` (few games to generate)
    quick: tuple[str, ...] = ()


STUDIES = {
    "alfworld": Study("configs/alfworld-tiny.yaml", "alfworld-unseen", 20, 25,
                      "ALFWorld, generated households: held-out on unseen goal combinations"),
    "textworld": Study("configs/textworld-long.yaml", None, 60, 40,
                       "TextWorld coin_collector L6 (6 rooms, 12 turns): held-out games",
                       quick=("env.train_seeds=[0,4]",)),
}
QUICK = {"updates": 1, "episodes": 1, "sft_episodes": 6, "sft_epochs": 1, "corpus_seeds": 1}


# ------------------------------------------------------------------------- one run
def _curve(run_dir: Path, per_update: int) -> list[dict]:
    from turnrl.trainer.logging import read_metrics

    return [{"update": r["step"] + 1, "episodes": (r["step"] + 1) * per_update,
             "success": r["rollout/success"], "turns": r["rollout/turns"]}
            for r in read_metrics(run_dir) if r["phase"] == "train"]


def heldout(study: Study, cfg, model_dir: Path, seed: int, episodes: int) -> dict:
    """Sampled replies of ``model_dir`` on the study's held-out games."""
    import turnrl
    from turnrl.agents.hf import HFPolicy
    from turnrl.evaluate import episode_records

    r = cfg.rollout
    agent = HFPolicy(str(model_dir), temperature=r.temperature, max_new_tokens=r.max_new_tokens,
                     seed=seed, compute_dtype=cfg.model.compute_dtype, kv_reuse=r.kv_reuse)
    trajectories = []
    if study.heldout is not None:
        target, first = study.heldout, 0
    else:
        target, first = cfg.env.id, cfg.env.eval_seeds[0]
    start = time.time()
    results = turnrl.evaluate(target, agent, episodes=episodes, seed=first,
                              env_kwargs=dict(cfg.env.kwargs), greedy=False,
                              context=r.context, max_context_tokens=r.max_context_tokens,
                              num_envs=r.num_envs, on_episode_end=trajectories.append)
    wins = sum(x.successes for x in results)
    total = sum(x.episodes for x in results)
    from turnrl.evaluate import wilson_interval

    return {
        "success": wins / total, "ci95": list(wilson_interval(wins, total)), "episodes": total,
        "turns": statistics.mean(t.num_turns for t in trajectories),
        "per_env": {x.env: {"success": x.success_rate, "ci95": list(x.success_ci95),
                            "episodes": x.episodes, "turns": x.mean_turns} for x in results},
        "records": [asdict(rec) for rec in episode_records(trajectories)],
        "wall_s": time.time() - start,
    }


def child(spec: dict) -> None:
    from transformers.utils import logging as hf_logging

    from turnrl.trainer import Trainer, load_config

    hf_logging.disable_progress_bar()
    study = Study(**spec["study"])
    cfg = load_config(study.config, spec["overrides"])
    start = time.time()
    Trainer(cfg).fit()
    train_s = time.time() - start
    run_dir = Path(cfg.run_dir)
    result = {
        "algo": spec["algo"], "seed": spec["seed"], "train_wall_s": train_s,
        "rl_episodes": cfg.total_updates * cfg.rollout.episodes_per_update,
        "sft_episodes": cfg.sft.episodes,
        "curve": _curve(run_dir, cfg.rollout.episodes_per_update),
        "heldout": heldout(study, cfg, run_dir / "final_model", spec["eval_seed"],
                           spec["episodes"]),
        "model_dir": str(run_dir / "final_model"),
    }
    Path(spec["out"]).write_text(json.dumps(result, indent=2))


# ------------------------------------------------------------------------- the study
def build_model(study: Study, path: Path, corpus_seeds: int | None, overrides: list[str]) -> str:
    """The study's tiny model (tokenizer trained on its envs' text), built once."""
    from turnrl.trainer import builders, load_config
    from turnrl.trainer.env_mix import EnvMix

    cfg = load_config(study.config, overrides)
    spec = dict(cfg.model.tiny)
    if corpus_seeds is not None:
        spec["corpus_seeds"] = corpus_seeds
    envs = EnvMix.from_config(cfg.env, seed=0)
    try:
        builders.build_tiny_model(path, envs.entries, spec, seed=0)
    finally:
        envs.close()
    return str(path)


def run(script_args: list[str], spec: dict, work: Path) -> dict:
    out = work / f"{spec['name']}.json"
    spec = {**spec, "out": str(out)}
    if out.exists():  # finished before (--work of an interrupted study)
        result = json.loads(out.read_text())
        result.setdefault("wall_s", result["train_wall_s"] + result["heldout"]["wall_s"])
    else:
        t0 = time.time()
        subprocess.run([sys.executable, __file__, *script_args, "--child", json.dumps(spec)],
                       check=True)
        result = json.loads(out.read_text())
        result["wall_s"] = time.time() - t0
        out.write_text(json.dumps(result, indent=2))
    h = result["heldout"]
    print(f"  {spec['name']}: held-out {h['success']:.0%} [{h['ci95'][0]:.0%}, {h['ci95'][1]:.0%}]"
          f" over {h['episodes']} episodes ({result['wall_s']:.0f} s)", flush=True)
    return result


def train_score(result: dict) -> float:
    """Mean rollout success over the last third of the updates (training games only)."""
    curve = result["curve"]
    tail = curve[-max(1, len(curve) // 3):]
    return statistics.mean(c["success"] for c in tail) if tail else 0.0


def paired(runs: list[dict], a: str, b: str) -> dict | None:
    """``b`` against ``a`` on the held-out games of every seed both have (a seed's games
    are one bootstrap unit per game; seeds are the ``sample`` index)."""
    from turnrl.compare import compare_records
    from turnrl.evaluate import EpisodeRecord

    def records(algo):
        out = []
        for r in runs:
            if r["algo"] == algo:
                out += [EpisodeRecord(**{**rec, "sample": r["seed"]}) for rec in r["heldout"]["records"]]
        return out

    ra, rb = records(a), records(b)
    if not ra or not rb:
        return None
    return compare_records(ra, rb, a_label=a, b_label=b).to_dict()


def run_study(name: str, args, script_args: list[str]) -> dict:
    study = STUDIES[name]
    quick = args.quick
    updates = QUICK["updates"] if quick else (args.updates or study.updates)
    episodes = QUICK["episodes"] if quick else study.episodes
    if args.work:
        work = Path(args.work) / name
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix=f"turnrl-study-{name}-"))
    print(f"== {name}: building the tiny model", flush=True)
    model = build_model(study, work / "model", QUICK["corpus_seeds"] if quick else None,
                        list(study.quick) if quick else [])
    base = {"study": asdict(study), "episodes": episodes}
    common = list(study.quick) if quick else []
    sft_over = [*common, f"model.name_or_path={model}", "algorithm.name=sft", "total_updates=0",
                "eval.before=false", "eval.episodes=1", "progress=false"]
    if quick:
        sft_over += [f"sft.episodes={QUICK['sft_episodes']}", f"sft.epochs={QUICK['sft_epochs']}"]
    runs: list[dict] = []
    sft_dirs: dict[int, str] = {}

    def sft(seed):
        r = run(script_args, {**base, "name": f"sft-{seed}", "algo": "sft", "seed": seed,
                              "eval_seed": 0, "overrides": sft_over + [
                                  f"seed={seed}", f"run_dir={work / f'sft-{seed}'}"]}, work)
        runs.append(r)
        sft_dirs[seed] = r["model_dir"]

    def rl(algo, seed):
        over = [*common, f"model.name_or_path={sft_dirs[seed]}", f"algorithm.name={algo}",
                f"seed={seed}",
                f"rollout.group_size={GROUP[algo]}", f"total_updates={updates}",
                "sft.episodes=0", "eval.before=false", "eval.every=0", "eval.episodes=1",
                f"checkpoint_every={updates}", f"run_dir={work / f'{algo}-{seed}'}",
                "progress=false"]
        runs.append(run(script_args, {**base, "name": f"{algo}-{seed}", "algo": algo,
                                      "seed": seed, "eval_seed": 0, "overrides": over}, work))

    for seed in args.seeds:
        sft(seed)
        for algo in args.algos:
            rl(algo, seed)
    scores = {r["algo"]: train_score(r) for r in runs if r["algo"] != "sft"}
    best = args.extra_algos or sorted(scores, key=scores.get, reverse=True)[:2]
    for seed in args.extra_seeds:
        sft(seed)
        for algo in best:
            rl(algo, seed)

    table = summarise(runs)
    # Every turn-level method against every trajectory-level one, and every method against
    # SFT, on the seeds both ran (no pick of a "best" method on the held-out games).
    pairs = [(b, a) for a in TRAJECTORY_LEVEL for b in TURN_LEVEL]
    pairs += [(b, "sft") for b in ALGOS]
    comparisons = {}
    for b, a in pairs:
        c = paired(runs, a, b) if a in table and b in table else None
        if c is not None:
            comparisons[f"{b} vs {a}"] = c
    command = " ".join(["python benchmarks/learning_alfworld.py", *sys.argv[1:]])
    return {"study": asdict(study), "command": command, "updates": updates,
            "episodes_per_update": 16,
            "train_scores": scores, "extra_seed_algos": best,
            "table": table, "comparisons": comparisons, "runs": runs,
            # the runs' own times, summed (a rerun over --work reuses them)
            "wall_s": sum(r["wall_s"] for r in runs)}


def summarise(runs: list[dict]) -> dict:
    table: dict[str, dict] = {}
    for algo in ("sft", *ALGOS):
        mine = [r for r in runs if r["algo"] == algo]
        if not mine:
            continue
        success = [r["heldout"]["success"] for r in mine]
        wins = sum(round(r["heldout"]["success"] * r["heldout"]["episodes"]) for r in mine)
        total = sum(r["heldout"]["episodes"] for r in mine)
        from turnrl.evaluate import wilson_interval

        envs = mine[0]["heldout"]["per_env"].keys()
        table[algo] = {
            "seeds": [r["seed"] for r in mine], "per_seed": success,
            "ci95_per_seed": [r["heldout"]["ci95"] for r in mine],
            "success_mean": statistics.mean(success),
            "success_pooled_ci95": list(wilson_interval(wins, total)),
            "per_env": {e: statistics.mean(r["heldout"]["per_env"][e]["success"] for r in mine)
                        for e in envs},
            "turns": statistics.mean(r["heldout"]["turns"] for r in mine),
            "rl_episodes": mine[0]["rl_episodes"] if algo != "sft" else 0,
            "sft_episodes": mine[0]["sft_episodes"],
            "train_wall_s": statistics.median(r["train_wall_s"] for r in mine),
        }
    return table


# ------------------------------------------------------------------------- report
def markdown(report: dict) -> str:
    out = []
    for s in report["studies"].values():
        table = s["table"]
        envs = list(next(iter(table.values()))["per_env"])
        per_type = len(envs) > 1
        budget = (f"{s['updates']} updates x {s['episodes_per_update']} episodes after SFT on "
                  if len(table) > 1 else "SFT only, on ")
        out.append(f"**{s['study']['title']}** ({budget}{table['sft']['sft_episodes']} expert "
                   f"episodes; `{s['command']}`)")
        out.append("")
        head = "| method | held-out success: mean (per seed, 95% CI) | pooled 95% CI | turns | RL episodes | train wall |"
        out += [head, "|---|---|---|---|---|---|"]
        for algo, t in table.items():
            seeds = "; ".join(f"{x:.0%} [{c[0]:.0%}, {c[1]:.0%}]"
                              for x, c in zip(t["per_seed"], t["ci95_per_seed"], strict=True))
            lo, hi = t["success_pooled_ci95"]
            out.append(f"| {algo} | **{t['success_mean']:.0%}** ({seeds}) | [{lo:.0%}, {hi:.0%}] "
                       f"| {t['turns']:.1f} | {t['rl_episodes']} | {t['train_wall_s'] / 60:.1f} min |")
        if per_type:
            out += ["", "| method | " + " | ".join(e.replace("_", " ") for e in envs) + " |",
                    "|---|" + "---|" * len(envs)]
            for algo, t in table.items():
                out.append(f"| {algo} | " + " | ".join(f"{t['per_env'][e]:.0%}" for e in envs) + " |")
        if s["comparisons"]:
            out += ["", "| paired comparison (B vs A, same games) | pairs | A | B | B - A [95% CI] | McNemar p |",
                    "|---|---|---|---|---|---|"]
            for c in s["comparisons"].values():
                o = c["overall"]
                lo, hi = o["difference_ci95"]
                out.append(f"| {c['b']} vs {c['a']} | {o['pairs']} | {o['success_a']:.0%} | "
                           f"{o['success_b']:.0%} | {o['difference']:+.0%} [{lo:+.0%}, {hi:+.0%}] | "
                           f"{o['mcnemar_p']:.3g} |")
        out.append("")
    out.append(f"Wall time of the runs, summed: {report['total_wall_s'] / 60:.0f} min "
               f"({report['machine']}).")
    return "\n".join(out).rstrip()


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    studies = report["studies"]
    fig, axes = plt.subplots(1, len(studies), figsize=(6.5 * len(studies), 4.2), squeeze=False)
    for ax, s in zip(axes[0], studies.values(), strict=True):
        for algo in ALGOS:
            runs = [r for r in s["runs"] if r["algo"] == algo]
            for i, r in enumerate(runs):
                xs = [c["episodes"] for c in r["curve"]]
                ys = [c["success"] for c in r["curve"]]
                k = 5  # running mean over 5 updates
                smooth = [statistics.mean(ys[max(0, j - k + 1): j + 1]) for j in range(len(ys))]
                ax.plot(xs, smooth, "-", color=COLOURS[algo], alpha=1.0 if i == 0 else 0.4,
                        label=f"{algo} (train games)" if i == 0 else None)
            if runs:
                final = s["table"][algo]["success_mean"]
                ax.plot([runs[0]["rl_episodes"]], [final], "D", color=COLOURS[algo], ms=7)
        sft = s["table"]["sft"]["success_mean"]
        ax.axhline(sft, color="black", ls="--", lw=1, label=f"SFT held-out {sft:.0%}")
        ax.set_title(s["study"]["title"], fontsize=9)
        ax.set_xlabel("RL episodes (lines: training success, running mean of 5 updates; "
                      "diamonds: held-out)", fontsize=8)
        ax.set_ylabel("success")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", nargs="+", default=list(STUDIES), choices=list(STUDIES))
    parser.add_argument("--algos", nargs="*", default=list(ALGOS), choices=ALGOS,
                        help="methods run on every --seeds seed (none: SFT only)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--extra-seeds", nargs="*", type=int, default=[1, 2],
                        help="more seeds for SFT and --extra-algos")
    parser.add_argument("--extra-algos", nargs="*", choices=ALGOS, default=[],
                        help="methods run on --extra-seeds (default: the two with the best "
                        "training success on --seeds)")
    parser.add_argument("--updates", type=int, help="RL updates per run (default: the study's)")
    parser.add_argument("--quick", action="store_true", help="tiny budgets: checks the pipeline")
    parser.add_argument("--out", default="benchmarks/results/learning_alfworld.json")
    parser.add_argument("--work", help="keep runs here; a rerun reuses the runs finished there")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other studies already in --out (e.g. to run one study)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    if args.quick:
        args.extra_seeds = []
    studies = {name: run_study(name, args, []) for name in args.studies}
    out = Path(args.out)
    if args.merge and out.exists():
        kept = json.loads(out.read_text())["studies"]
        studies = {name: studies.get(name) or kept[name] for name in STUDIES
                   if name in studies or name in kept}
    report = {"studies": studies, "quick": args.quick,
              "total_wall_s": sum(s["wall_s"] for s in studies.values()),
              "command": "python benchmarks/learning_alfworld.py" + (" --quick" if args.quick else ""),
              "date": time.strftime("%Y-%m-%d"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, out.with_suffix(".png"))
    print(markdown(report))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
