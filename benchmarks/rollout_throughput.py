"""Rollout engine throughput at 1, 4, 16 and 64 envs, against (a) a sequential loop over
the envs with the same model and (b) pure batched generation of the same batches with no
envs at all.

Same tiny model (HF backend, the default), same TextWorld coin-collector games, same
sampling settings:

- **engine**: ``turnrl.rollout.collect`` in lockstep mode with ``num_envs`` envs;
- **sequential**: the same episodes played one after another, one env, one reply per
  ``generate`` call (what a simple agent loop does);
- **pure generation**: the exact prompt batches the engine sent to the model, replayed
  straight into ``HFPolicy.generate`` -- no envs, no bookkeeping. engine / pure is the
  share of time the engine spends generating; the rest is env steps and turnrl's own code;
- **engine + KV reuse**: the engine again, with a second policy of the same seed whose
  ``kv_reuse`` keeps each live episode's key/value states between turns, so a turn
  prefills only the new observation tokens instead of the whole history. Same episodes
  (token ids compared), measured right after the plain engine.

A second table measures KV reuse on the quickstart's rollout shape (32 envs, replies of
at most 6 tokens, ``configs/quickstart.yaml``) at 6, 8 and 12 turns per episode: the plain
engine and the engine with KV reuse on the same seeds and sampler state, one after the
other.

Goals: engine >= 5x sequential at 16 envs; engine >= 0.9x pure generation; KV reuse >= 2x
the plain engine on the quickstart-shaped rollout with 6+ turns.

Usage::

    python benchmarks/rollout_throughput.py [--envs 1 4 16 64] [--episodes 64]

Writes ``benchmarks/results/rollout_throughput.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ENV_ID = "turnrl/TextWorld-v0"
KWARGS = {"challenge": "tw-coin_collector", "settings": {"level": 2}, "max_turns": 6}


class _Recording:
    """The policy, with every batch of prompts it was asked for recorded."""

    def __init__(self, policy):
        self.policy = policy
        self.renderer = policy.renderer
        self.max_new_tokens = policy.max_new_tokens
        self.batches: list[list[list[int]]] = []

    def generate(self, prompts, *, infos=None, greedy=None):
        self.batches.append([list(p) for p in prompts])
        return self.policy.generate(prompts, greedy=greedy)


def _tokens(trajs) -> int:
    return sum(len(turn.token_ids or ()) for t in trajs for turn in t.turns)


#: The quickstart's rollout (configs/quickstart.yaml), with more turns per episode.
QUICKSTART = {"num_envs": 32, "max_new_tokens": 6, "temperature": 1.0}


def _kv_reuse_row(model: Path, turns: int, seeds: list[int]) -> dict:
    """Plain engine vs engine + KV reuse on the quickstart's rollout shape, ``turns`` turns
    per episode: same seeds, same sampler state, measured one after the other."""
    from turnrl.agents.hf import HFPolicy
    from turnrl.envs import registry
    from turnrl.rollout import collect

    kwargs = {**KWARGS, "max_turns": turns}
    make = registry.factory(ENV_ID, **kwargs)
    n, new = QUICKSTART["num_envs"], QUICKSTART["max_new_tokens"]
    walls, runs = [], []
    for kv_reuse in (False, True):
        policy = HFPolicy(str(model), max_new_tokens=new, temperature=QUICKSTART["temperature"],
                          kv_reuse=kv_reuse, seed=0)
        collect(make, policy, seeds[:n], num_envs=n)  # warm-up
        policy.generator.manual_seed(1)
        start = time.perf_counter()
        runs.append(collect(make, policy, seeds, num_envs=n))
        walls.append(time.perf_counter() - start)
    same = [[t.token_ids for t in x.turns] for x in runs[0]] == \
        [[t.token_ids for t in x.turns] for x in runs[1]]
    row = {"turns_per_episode": turns, "episodes": len(runs[0]),
           "turns": sum(t.num_turns for t in runs[0]), "tokens": _tokens(runs[0]),
           "plain_tokens_per_s": round(_tokens(runs[0]) / walls[0], 1),
           "kv_reuse_tokens_per_s": round(_tokens(runs[1]) / walls[1], 1),
           "speedup": round(walls[0] / walls[1], 2), "same_episodes": same}
    print(f"quickstart shape, {turns} turns: KV reuse {row['speedup']:.2f}x "
          f"(same episodes: {same})", file=sys.stderr)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--episodes", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--sequential-episodes", type=int, default=16,
                        help="episodes for the sequential baseline (its rate does not depend on the count)")
    parser.add_argument("--kv-turns", type=int, nargs="*", default=[6, 8, 12],
                        help="turns per episode for the quickstart-shaped KV reuse table")
    parser.add_argument("--out", default=str(RESULTS / "rollout_throughput.json"))
    args = parser.parse_args()

    import torch

    from turnrl.agents import tiny
    from turnrl.agents.hf import HFPolicy
    from turnrl.envs import registry
    from turnrl.rollout import collect
    from turnrl.trainer.corpus import env_text_corpus

    torch.manual_seed(0)
    seeds = list(range(args.episodes))
    registry.prepare(ENV_ID, seeds, KWARGS)
    make = registry.factory(ENV_ID, **KWARGS)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = tiny.make_tiny_model(Path(tmp) / "m", env_text_corpus(ENV_ID, range(4), **KWARGS),
                                     vocab_size=800, hidden_size=128, num_layers=2)
        policy = HFPolicy(str(model), max_new_tokens=args.max_new_tokens, temperature=1.0)
        collect(make, policy, seeds[:4], num_envs=4)  # warm-up
        reuse = HFPolicy(str(model), max_new_tokens=args.max_new_tokens, temperature=1.0,
                         kv_reuse=True)
        collect(make, reuse, seeds[:4], num_envs=4)  # warm-up

        # (a) sequential: one env, one reply per call
        start = time.perf_counter()
        seq = collect(make, policy, seeds[:args.sequential_episodes], num_envs=1)
        seq_wall = time.perf_counter() - start
        seq_rate = _tokens(seq) / seq_wall
        for n in args.envs:
            sampler_state = policy.generator.get_state()
            recorder = _Recording(policy)
            start = time.perf_counter()
            trajs = collect(make, recorder, seeds, num_envs=n)
            wall = time.perf_counter() - start
            tokens = _tokens(trajs)
            # (c) the same episodes with KV reuse (a policy whose sampler is in the same state)
            reuse.generator.set_state(sampler_state)
            start = time.perf_counter()
            kv_trajs = collect(make, reuse, seeds, num_envs=n)
            kv_wall = time.perf_counter() - start
            same = [[t.token_ids for t in x.turns] for x in trajs] == \
                [[t.token_ids for t in x.turns] for x in kv_trajs]
            # (b) the same batches, straight into the model
            start = time.perf_counter()
            pure_tokens = sum(len(a.token_ids) for batch in recorder.batches for a in policy.generate(batch))
            pure_wall = time.perf_counter() - start
            row = {"num_envs": n, "episodes": len(trajs), "turns": sum(t.num_turns for t in trajs),
                   "tokens": tokens, "wall_s": round(wall, 2), "tokens_per_s": round(tokens / wall, 1),
                   "episodes_per_s": round(len(trajs) / wall, 2),
                   "sequential_tokens_per_s": round(seq_rate, 1),
                   "vs_sequential": round(tokens / wall / seq_rate, 2),
                   "pure_tokens_per_s": round(pure_tokens / pure_wall, 1),
                   "vs_pure_generation": round((tokens / wall) / (pure_tokens / pure_wall), 3),
                   "kv_reuse_tokens_per_s": round(_tokens(kv_trajs) / kv_wall, 1),
                   "kv_reuse_speedup": round(wall / kv_wall, 2), "kv_reuse_same_episodes": same}
            rows.append(row)
            print(f"{n:3d} envs: {row['tokens_per_s']:8.1f} tok/s, {row['vs_sequential']:5.2f}x sequential, "
                  f"{row['vs_pure_generation']:.3f}x pure generation, KV reuse "
                  f"{row['kv_reuse_speedup']:.2f}x (same episodes: {same})", file=sys.stderr)
        kv_rows = [_kv_reuse_row(Path(model), turns, seeds) for turns in args.kv_turns]
    report = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "python": platform.python_version(),
              "command": "python benchmarks/rollout_throughput.py " + " ".join(sys.argv[1:]),
              "settings": {"episodes": args.episodes, "max_new_tokens": args.max_new_tokens,
                           "env": f"{ENV_ID} {KWARGS}", "model": "tiny Llama, hidden 128, 2 layers"},
              "sequential": {"episodes": len(seq), "tokens_per_s": round(seq_rate, 1)},
              "rows": rows,
              "kv_reuse_quickstart": {"settings": QUICKSTART, "rows": kv_rows}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(markdown(report))


def markdown(report: dict) -> str:
    """The results as a Markdown table (also used by ``benchmarks/report.py``)."""
    lines = [f"Sequential loop: {report['sequential']['tokens_per_s']:.0f} tokens/s.", "",
             "| envs | engine tokens/s | episodes/s | vs sequential (goal >= 5x at 16) | "
             "vs pure generation (goal >= 0.9x) | + KV reuse tokens/s | KV reuse speed-up "
             "(goal >= 2x) | same episodes |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        kv = (f"{r['kv_reuse_tokens_per_s']:.0f} | {r['kv_reuse_speedup']:.2f}x | "
              f"{'yes' if r['kv_reuse_same_episodes'] else 'no'}") if "kv_reuse_speedup" in r else "- | - | -"
        lines.append(f"| {r['num_envs']} | {r['tokens_per_s']:.0f} | {r['episodes_per_s']:.2f} | "
                     f"{r['vs_sequential']:.2f}x | {r['vs_pure_generation']:.2f}x | {kv} |")
    quick = report.get("kv_reuse_quickstart")
    if quick:
        q = quick["settings"]
        lines += ["", f"KV reuse on the quickstart's rollout shape ({q['num_envs']} envs, replies of at "
                  f"most {q['max_new_tokens']} tokens, same seeds and sampler state):", "",
                  "| turns per episode | plain tokens/s | KV reuse tokens/s | speed-up (goal >= 2x) "
                  "| same episodes |", "|---|---|---|---|---|"]
        lines += [f"| {r['turns_per_episode']} | {r['plain_tokens_per_s']:.0f} | "
                  f"{r['kv_reuse_tokens_per_s']:.0f} | {r['speedup']:.2f}x | "
                  f"{'yes' if r['same_episodes'] else 'no'} |" for r in quick["rows"]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
