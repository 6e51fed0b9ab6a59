"""Rollout throughput by backend: HF lockstep, vLLM lockstep, vLLM async.

Same tiny model (built from scratch, head_dim 64 as vLLM's CPU attention needs), same
envs, same seeds, same sampling settings (temperature 1, ``--max-new-tokens`` per reply)
for the three ways turnrl can collect episodes:

- ``hf-lockstep``: the trained Hugging Face model generates each turn's batch
  (``rollout.backend=hf``, the default);
- ``vllm-lockstep``: a vLLM engine in this process answers each turn's batch
  (``rollout.backend=vllm``);
- ``vllm-async``: the same engine, each episode its own task (``rollout.mode=async``): an
  env steps as soon as its own reply is done while the engine keeps decoding the others.

Workloads: TextWorld coin-collector games and ALFWorld households (real engines; the
untrained model's replies are mostly invalid commands, which the games answer like any
other), and ``tool-latency``: a stand-in for tool envs whose steps wait outside the
process (a sandbox run, a web API) -- each step sleeps a seeded 20-120 ms, about what a
bubblewrap sandbox run takes here. It is simulated, and labelled so in the table. Each (workload, backend) runs in its own subprocess, one after another: vLLM's
CPU backend pins the process's threads, which would skew a later HF run in the same
process. Each run first plays a warm-up collect (compilation, caches), then the timed one.

Reported: episodes/s, generated tokens/s (tokens of all replies / wall time) and ratios
to ``hf-lockstep`` measured in the same invocation.

Usage::

    python benchmarks/rollout_backends.py [--episodes 48] [--num-envs 16] [--max-new-tokens 32]

Writes ``benchmarks/results/rollout_backends.json`` and prints a Markdown table. Needs
vLLM (``make vllm``); without it only ``hf-lockstep`` runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BACKENDS = ("hf-lockstep", "vllm-lockstep", "vllm-async")
WORKLOADS = {
    "textworld": ("turnrl/TextWorld-v0",
                  {"challenge": "tw-coin_collector", "settings": {"level": 2}, "max_turns": 8}),
    "alfworld": ("turnrl/ALFWorld-v0", {"max_turns": 8}),
    "tool-latency": ("bench/ToolLatency-v0", {"max_turns": 8}),
}


def _tool_latency_env(max_turns: int = 8):
    """A stand-in for a tool env whose steps wait on something outside the process (a
    sandbox run, a web API): each step sleeps a seeded 20-120 ms (turnrl's bubblewrap
    sandbox: p50 70 ms, p95 100 ms under load, BENCHMARKS.md) and answers briefly."""
    import random

    from turnrl.envs.base import TextEnv

    class ToolLatency(TextEnv):
        instructions = "Call the tool with any text; the episode ends after a few calls."

        def _reset_episode(self, options):
            self._rng = random.Random(self.episode_seed)
            return "Call the tool.", {"task": "call the tool"}

        def parse_action(self, reply):
            return reply

        def _step_action(self, command):
            time.sleep(self._rng.uniform(0.02, 0.12))
            return "tool output: ok", 0.0, False, {}

    return ToolLatency(max_turns=max_turns)
RESULTS = Path(__file__).resolve().parent / "results"


# ------------------------------------------------------------------------- one run
def run_one(args: argparse.Namespace) -> dict:
    import turnrl
    from turnrl.envs import registry
    from turnrl.rollout import collect

    env_id, kwargs = WORKLOADS[args.workload]
    turnrl.register("bench/ToolLatency-v0", _tool_latency_env, override=True)
    if args.backend == "hf-lockstep":
        from turnrl.agents.hf import HFPolicy

        agent = HFPolicy(args.model, max_new_tokens=args.max_new_tokens, temperature=1.0)
        mode = "lockstep"
    else:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        from turnrl.agents.vllm import VLLMPolicy

        agent = VLLMPolicy(args.model, max_new_tokens=args.max_new_tokens, temperature=1.0,
                           max_model_len=2048, seed=0)
        mode = args.backend.split("-")[1]

    def make():
        return turnrl.make(env_id, **kwargs)

    common = dict(env_id=env_id, num_envs=args.num_envs, step_workers=args.step_workers,
                  mode=mode, max_context_tokens=2048)
    seeds = list(range(args.episodes))
    registry.prepare(env_id, seeds, kwargs)
    collect(make, agent, seeds[: min(8, len(seeds))], **common)  # warm-up
    start = time.perf_counter()
    trajs = collect(make, agent, seeds, **common)
    wall = time.perf_counter() - start
    turns = sum(t.num_turns for t in trajs)
    tokens = sum(len(turn.token_ids or ()) for t in trajs for turn in t.turns)
    return {"workload": args.workload, "backend": args.backend, "episodes": len(trajs),
            "turns": turns, "tokens": tokens, "wall_s": round(wall, 3),
            "episodes_per_s": round(len(trajs) / wall, 3), "tokens_per_s": round(tokens / wall, 1),
            "failed": sum(bool(t.failed) for t in trajs),
            "first_failure": next((t.failed for t in trajs if t.failed), None)}


# ------------------------------------------------------------------------- driver
def build_model(out: Path) -> Path:
    from turnrl.agents import tiny
    from turnrl.trainer.corpus import env_text_corpus

    texts = []
    for env_id, kwargs in WORKLOADS.values():
        if env_id.startswith("turnrl/"):
            texts += env_text_corpus(env_id, range(4), **kwargs)
    return tiny.make_tiny_model(out, texts, vocab_size=1000, hidden_size=256, num_layers=4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=48)
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--step-workers", type=int, default=16,
                        help="threads stepping envs (every env at once by default)")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--out", default=str(RESULTS / "rollout_backends.json"))
    # one run, in a subprocess of the driver
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(args)), flush=True)
        return

    backends = list(args.backends)
    if importlib.util.find_spec("vllm") is None:
        dropped = [b for b in backends if b.startswith("vllm")]
        backends = [b for b in backends if not b.startswith("vllm")]
        print(f"vLLM is not installed (`make vllm`): skipping {', '.join(dropped)}", file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(Path(tmp) / "model")
        for workload in args.workloads:
            for backend in backends:
                cmd = [sys.executable, __file__, "--one", "--model", str(model), "--workload", workload,
                       "--backend", backend, "--episodes", str(args.episodes),
                       "--num-envs", str(args.num_envs), "--max-new-tokens", str(args.max_new_tokens),
                       "--step-workers", str(args.step_workers)]
                proc = subprocess.run(cmd, capture_output=True, text=True,
                                      env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                if proc.returncode or not lines:
                    raise SystemExit(f"{workload}/{backend} failed:\n{proc.stderr[-4000:]}")
                row = json.loads(lines[-1][len("RESULT "):])
                rows.append(row)
                print(f"{workload:10s} {backend:14s} {row['episodes_per_s']:7.2f} ep/s "
                      f"{row['tokens_per_s']:8.1f} tok/s", file=sys.stderr)
    for row in rows:
        base = next((r for r in rows if r["workload"] == row["workload"]
                     and r["backend"] == "hf-lockstep"), None)
        row["vs_hf_lockstep"] = round(row["tokens_per_s"] / base["tokens_per_s"], 2) if base else None
    report = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(), "command": "python benchmarks/rollout_backends.py "
        + " ".join(sys.argv[1:]),
        "settings": {"episodes": args.episodes, "num_envs": args.num_envs,
                     "max_new_tokens": args.max_new_tokens, "step_workers": args.step_workers,
                     "model": "tiny Llama, hidden 256, 4 layers, head_dim 64, vocab 1000"},
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(markdown(report))


def markdown(report: dict) -> str:
    """The results as a Markdown table (also used by ``benchmarks/report.py``)."""
    lines = ["| workload | backend | episodes/s | tokens/s | vs HF lockstep |", "|---|---|---|---|---|"]
    for r in report["rows"]:
        ratio = f"{r['vs_hf_lockstep']:.2f}x" if r["vs_hf_lockstep"] is not None else "-"
        name = r["workload"] + (" (simulated)" if r["workload"] == "tool-latency" else "")
        failed = f" ({r['failed']} failed)" if r.get("failed") else ""
        lines.append(f"| {name} | {r['backend']} | {r['episodes_per_s']:.2f}{failed} | "
                     f"{r['tokens_per_s']:.0f} | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
