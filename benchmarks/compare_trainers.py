"""ppo, vldac, rloo, grpo and gigpo side by side: same tiny model, same TextWorld family, same
episode budget, several seeds each.

Every run starts from the quickstart config (``configs/quickstart.yaml``): one tiny
model built once and shared by all runs, SFT on 8 expert episodes, then
``total_updates`` RL updates of 32 episodes each, held-out success (50 unseen games,
sampled replies) measured every ``--eval-every`` updates. Shared knobs (lr, epochs,
minibatch, gamma, lam, KL coefficient) come from that config; preset-specific ones (clip,
ratio guard, critic, value warm-up, advantage normalisation) take each preset's
defaults. rloo, grpo and gigpo play groups of 4 episodes per game (8 games per update),
ppo and vldac 32 games per update.

Each run is a subprocess, one after another, so time per update is measured under the
same conditions and peak memory is each run's own. Reported per preset: held-out
success vs episodes (mean and per seed), median time per update (rollout and
optimisation), the bytes held by training state (weights, gradients, Adam moments of
policy, critic and reference), and peak RSS.

Usage::

    python benchmarks/compare_trainers.py [--seeds 0 1 2] [--updates 50] [--algos ppo vldac rloo grpo gigpo]

Writes ``benchmarks/results/compare_trainers.json`` and ``.png`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ALGOS = ("ppo", "vldac", "rloo", "grpo", "gigpo")
CONFIG = "configs/quickstart.yaml"
GROUP = {"ppo": 1, "vldac": 1, "rloo": 4, "grpo": 4, "gigpo": 4}


# ------------------------------------------------------------------------- one run
def _state_bytes(trainer) -> dict[str, int]:
    """Bytes of weights, gradients and optimizer state, counted once per storage."""
    seen: dict[int, tuple[str, int]] = {}

    def add(kind, tensor):
        if tensor is not None and hasattr(tensor, "untyped_storage"):
            storage = tensor.untyped_storage()
            seen.setdefault(storage.data_ptr(), (kind, storage.nbytes()))

    learner = trainer.learner
    for kind, module in (("policy", learner.model), ("critic", learner.critic),
                         ("reference", learner.reference)):
        if module is None:
            continue
        for p in module.parameters():
            add(kind, p)
            add(kind, p.grad)
    for kind, opt in (("policy", learner.optimizer), ("critic", learner.critic_optimizer)):
        if opt is None:
            continue
        for state in opt.state.values():
            for value in state.values():
                add(kind, value)
    out: dict[str, int] = {"policy": 0, "critic": 0, "reference": 0}
    for kind, nbytes in seen.values():
        out[kind] += nbytes
    out["total"] = sum(out.values())
    return out


def child(algo: str, seed: int, model: str, updates: int, eval_every: int, out: Path) -> None:
    from transformers.utils import logging as hf_logging

    from turnrl.trainer import Trainer, load_config
    from turnrl.trainer.logging import read_metrics

    hf_logging.disable_progress_bar()

    run_dir = Path(tempfile.mkdtemp(prefix=f"turnrl-cmp-{algo}-{seed}-")) / "run"
    cfg = load_config(CONFIG, [
        f"model.name_or_path={model}", f"algorithm.name={algo}", f"seed={seed}",
        f"rollout.group_size={GROUP[algo]}", f"total_updates={updates}",
        f"eval.every={eval_every}", f"run_dir={run_dir}", "progress=false",
        f"checkpoint_every={updates}",
    ])
    start = time.time()
    trainer = Trainer(cfg)
    trainer.fit()
    wall = time.time() - start
    rows = read_metrics(run_dir)
    per_update = cfg.rollout.episodes_per_update
    curve = []
    for r in rows:
        if not r["phase"].startswith("eval:"):
            continue
        label = r["phase"].split(":", 1)[1]
        update = {"before": None, "after_sft": 0, "after_rl": updates}.get(label)
        if update is None and label.startswith("update_"):
            update = int(label.split("_")[1])
        if update is None:
            continue
        curve.append({"label": label, "update": update, "episodes": update * per_update,
                      "success": r["eval/success"],
                      "ci95": [r["eval/success_ci_low"], r["eval/success_ci_high"]]})
    train = [r for r in rows if r["phase"] == "train"]
    result = {
        "algo": algo, "seed": seed, "wall_s": wall, "curve": curve,
        "rollout_s": statistics.median(r["perf/rollout_s"] for r in train),
        "update_s": statistics.median(r["perf/update_s"] for r in train),
        "state_bytes": _state_bytes(trainer),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "config": {k: cfg.to_dict()["algorithm"][k] for k in
                   ("clip_ratio", "kl_coef", "ratio_guard", "critic_warmup_updates",
                    "normalize_advantages")} | {"critic": cfg.model.critic,
                                                "group_size": cfg.rollout.group_size},
    }
    out.write_text(json.dumps(result, indent=2))


# ------------------------------------------------------------------------- the study
def build_model(path: Path) -> str:
    """The quickstart's tiny model, built once for every run."""
    from turnrl.agents import tiny
    from turnrl.trainer import load_config
    from turnrl.trainer.corpus import env_text_corpus

    cfg = load_config(CONFIG)
    spec = dict(cfg.model.tiny)
    seeds = spec.pop("corpus_seeds", 16)
    texts = env_text_corpus(cfg.env.id, range(cfg.env.train_seeds[0], cfg.env.train_seeds[0] + seeds),
                            **cfg.env.kwargs)
    tiny.make_tiny_model(path, texts, seed=0, **spec)
    return str(path)


def summarise(results: list[dict]) -> dict:
    by_algo: dict[str, list[dict]] = {}
    for r in results:
        by_algo.setdefault(r["algo"], []).append(r)
    table = {}
    for algo, runs in by_algo.items():
        final = [next(c["success"] for c in r["curve"] if c["label"] == "after_rl") for r in runs]
        sft = [next(c["success"] for c in r["curve"] if c["label"] == "after_sft") for r in runs]
        table[algo] = {
            "seeds": [r["seed"] for r in runs],
            "after_sft_mean": statistics.mean(sft), "final_mean": statistics.mean(final),
            "final_per_seed": final,
            "final_sd": statistics.stdev(final) if len(final) > 1 else 0.0,
            "update_s": statistics.median(r["update_s"] for r in runs),
            "rollout_s": statistics.median(r["rollout_s"] for r in runs),
            "state_mb": statistics.median(r["state_bytes"]["total"] for r in runs) / 2**20,
            "critic_mb": statistics.median(r["state_bytes"]["critic"] for r in runs) / 2**20,
            "reference_mb": statistics.median(r["state_bytes"]["reference"] for r in runs) / 2**20,
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
            "wall_s": statistics.median(r["wall_s"] for r in runs),
        }
    return table


def markdown(table: dict, episodes: int) -> str:
    lines = [
        f"| preset | held-out success after SFT | after {episodes} RL episodes: mean ± sd (per seed) "
        "| time / update (rollout + optimise) | training state (critic) | peak RSS |",
        "|---|---|---|---|---|---|",
    ]
    for algo, t in table.items():
        seeds = ", ".join(f"{x:.0%}" for x in t["final_per_seed"])
        lines.append(
            f"| {algo} | {t['after_sft_mean']:.0%} | {t['final_mean']:.0%} ± {t['final_sd']:.0%} ({seeds}) "
            f"| {t['rollout_s'] + t['update_s']:.2f} s ({t['rollout_s']:.2f} + {t['update_s']:.2f}) "
            f"| {t['state_mb']:.1f} MB ({t['critic_mb']:.1f} MB) | {t['peak_rss_mb']:.0f} MB |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    colours = dict(zip(ALGOS, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"),
                       strict=True))
    algos = sorted({r["algo"] for r in results}, key=lambda a: ALGOS.index(a) if a in ALGOS else 99)
    for algo in algos:
        runs = [r for r in results if r["algo"] == algo]
        points: dict[int, list[float]] = {}
        for r in runs:
            for c in r["curve"]:
                if c["update"] is not None:
                    points.setdefault(c["episodes"], []).append(c["success"])
                    ax.plot([c["episodes"]], [c["success"]], ".", color=colours.get(algo), alpha=0.35)
        xs = sorted(points)
        ax.plot(xs, [statistics.mean(points[x]) for x in xs], "-o", color=colours.get(algo),
                label=f"{algo} (mean of {len(runs)} seeds)")
    ax.set_xlabel("RL episodes (after SFT on 8 expert episodes)")
    ax.set_ylabel("held-out success (50 games)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("TextWorld coin_collector L2, tiny model: presets side by side")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algos", nargs="+", default=list(ALGOS), choices=ALGOS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--updates", type=int, default=50)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--out", default="benchmarks/results/compare_trainers.json")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other presets' runs already in --out (e.g. to add one preset)")
    parser.add_argument("--child", nargs=4, metavar=("ALGO", "SEED", "MODEL", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        algo, seed, model, out = args.child
        child(algo, int(seed), model, args.updates, args.eval_every, Path(out))
        return

    work = Path(tempfile.mkdtemp(prefix="turnrl-compare-"))
    model = build_model(work / "model")
    results = []
    start = time.time()
    for seed in args.seeds:  # interleaved, so drift in machine load hits every preset alike
        for algo in args.algos:
            out = work / f"{algo}-{seed}.json"
            t0 = time.time()
            subprocess.run([sys.executable, __file__, "--updates", str(args.updates),
                            "--eval-every", str(args.eval_every), "--child", algo, str(seed),
                            model, str(out)], check=True)
            results.append(json.loads(out.read_text()))
            final = results[-1]["curve"][-1]["success"]
            print(f"{algo:<6} seed {seed}: held-out success {final:.0%} ({time.time() - t0:.0f} s)",
                  flush=True)
    if args.merge and Path(args.out).exists():
        kept = [r for r in json.loads(Path(args.out).read_text())["runs"] if r["algo"] not in args.algos]
        results = sorted(kept + results, key=lambda r: (ALGOS.index(r["algo"]), r["seed"]))
    table = summarise(results)
    episodes = args.updates * 32
    report = {
        "table": table, "runs": results, "updates": args.updates, "episodes": episodes,
        "total_wall_s": time.time() - start,
        "merged": bool(args.merge),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    plot(results, out.with_suffix(".png"))
    print(markdown(table, episodes))
    print(f"total {report['total_wall_s'] / 60:.1f} min; wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
