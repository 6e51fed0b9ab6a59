"""Memory per process of PPO updates with the model replicated (DDP) or sharded (FSDP2).

Two processes (``torchrun``, gloo on CPU), each running the trainer's own update
(:meth:`turnrl.trainer.Trainer.rl_update`: rollout with the HF backend, scoring, K epochs
of minibatches) on the ride-dispatch driver env, with ``distributed.strategy`` ``ddp`` and
then ``fsdp``. The model: a tiny Llama built offline (hidden 640, 12 layers, MLP 1280,
a ~2k-token vocabulary trained on the env's text; ~49 M parameters, float32), as the
policy, a separate critic (the same backbone + a value head) and a frozen KL reference.
So per process DDP holds 16 bytes per parameter for the policy and for the critic
(weights, gradients, AdamW's two states) and 4 for the reference; FSDP half of each.

Per rank and strategy, after the warm-up update (AdamW's states exist from then on):

- **training state**: the bytes of the tensors this rank holds for the three models
  (its shards under FSDP): weights, gradients, optimizer states;
- **peak RSS** of each phase of the second update (``VmHWM``, reset before each phase
  through ``/proc/self/clear_refs``): rollout (the policy gathered whole under FSDP),
  scoring (old and reference logprobs, values: a layer at a time), update;
- the update's time.

glibc's malloc maps every block over 64 KiB on its own (``MALLOC_MMAP_THRESHOLD_``), so
freed tensors leave the resident set, as in ``benchmarks/memory.py``. RSS includes the
Python runtime, torch and the env (the "idle" column: after imports, before the model).

Usage::

    python benchmarks/fsdp_memory.py [--hidden 640] [--layers 12]

Writes ``benchmarks/results/fsdp_memory.json`` and prints a Markdown table; about 9
minutes on 2 cores shared with other jobs (two updates per strategy, most of it the HF
rollouts and the updates of a 49 M-parameter model on one thread per rank).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
GB = 1024**3
STRATEGIES = ("ddp", "fsdp")
PHASES = ("rollout", "score", "update")


def _status(field: str) -> int:
    """A ``/proc/self/status`` size in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


def _local_bytes(tensors: Any) -> int:
    """Bytes of the tensors this rank holds (a DTensor's local shard)."""
    from torch.distributed.tensor import DTensor

    total = 0
    for t in tensors:
        if t is None:
            continue
        t = t.to_local() if isinstance(t, DTensor) else t
        total += t.numel() * t.element_size()
    return total


def _training_state(trainer: Any) -> int:
    import torch

    learner = trainer.learner
    tensors = []
    for module in (learner.model, learner.critic, learner.reference):
        if module is not None:
            tensors += [p for p in module.parameters()] + [p.grad for p in module.parameters()]
    for opt in (learner.optimizer, learner.critic_optimizer):
        if opt is not None:
            tensors += [v for state in opt.state.values() for v in state.values()
                        if isinstance(v, torch.Tensor) and v.dim() > 0]
    return _local_bytes(tensors)


def _measured(phase: str, fn: Any, peaks: dict[str, float]) -> Any:
    """``fn`` that records its peak RSS under ``phase``."""
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        _reset_peak()
        try:
            return fn(*args, **kwargs)
        finally:
            peaks[phase] = _status("VmHWM") / GB
    return wrapped


def worker(args: argparse.Namespace) -> None:
    """One rank (under torchrun): a warm-up update, then a measured one."""
    import torch

    from turnrl.trainer import Trainer, load_config

    torch.set_num_threads(1)
    idle = _status("VmRSS") / GB
    dispatch = "{grid: 5, drivers: 4, rounds: 2, orders: 8}"
    cfg = load_config(None, [
        f"model.tiny={{hidden_size: {args.hidden}, num_layers: {args.layers}, "
        f"intermediate_size: {2 * args.hidden}, vocab_size: 2000, corpus_seeds: 4}}",
        "env.id=turnrl/RideDispatchDriver-v0",
        f"env.kwargs={{settings: {dispatch}, decisions_per_round: 2}}",
        "algorithm.name=ppo", "model.critic=separate", "algorithm.kl_coef=0.05",
        "rollout.episodes_per_update=4", "rollout.max_new_tokens=8", "rollout.num_envs=4",
        "rollout.context=window(1)", "optim.minibatch_size=8", "optim.micro_batch_size=2",
        "optim.epochs_per_update=1", "total_updates=2", "progress=false", "log_tokens=0",
        "log_episodes=0", f"distributed.strategy={args.strategy}", f"run_dir={args.run_dir}"])
    trainer = Trainer(cfg)
    trainer.rl_update()  # warm-up: AdamW's states exist from its step on
    peaks: dict[str, float] = {}
    trainer.rollout = _measured("rollout", trainer.rollout, peaks)
    trainer.learner.score = _measured("score", trainer.learner.score, peaks)
    trainer.learner.update = _measured("update", trainer.learner.update, peaks)
    start = time.time()
    trainer.rl_update()
    seconds = time.time() - start
    row = {"strategy": args.strategy, "rank": trainer.dist.rank, "idle_gb": idle,
           "state_gb": _training_state(trainer) / GB,
           "params_m": sum(p.numel() for p in trainer.model.parameters()) / 1e6,
           "peak_gb": peaks, "update_s": seconds}
    Path(args.out).with_name(f"{args.strategy}_rank{trainer.dist.rank}.json").write_text(json.dumps(row))
    trainer.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(strategy: str, args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """Both ranks of one strategy, in fresh processes."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), __file__, "--worker",
           "--strategy", strategy, "--hidden", str(args.hidden), "--layers", str(args.layers),
           "--run-dir", str(work / strategy), "--out", str(work / "rows.json")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=HERE.parent)
    if proc.returncode:
        raise RuntimeError(f"{strategy} failed: {proc.stderr[-3000:]}")
    return [json.loads((work / f"{strategy}_rank{r}.json").read_text()) for r in range(2)]


def markdown(report: dict[str, Any]) -> str:
    """The results as a Markdown table (per rank; the two ranks' largest figures)."""
    lines = ["| strategy | training state per rank | peak RSS per rank: rollout / scoring / update "
             "| idle RSS | update time |", "|---|---|---|---|---|"]
    for strategy in STRATEGIES:
        ranks = [r for r in report["rows"] if r["strategy"] == strategy]
        if not ranks:
            continue
        peaks = " / ".join(f"{max(r['peak_gb'][p] for r in ranks):.2f} GB" for p in PHASES)
        lines.append(f"| {strategy} | {max(r['state_gb'] for r in ranks):.2f} GB | {peaks} | "
                     f"{max(r['idle_gb'] for r in ranks):.2f} GB | "
                     f"{max(r['update_s'] for r in ranks):.0f} s |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=640)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--strategy", choices=STRATEGIES, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in STRATEGIES:
            rows += run(strategy, args, Path(tmp))
            print(json.dumps(rows[-2:]), file=sys.stderr, flush=True)
    params = rows[0]["params_m"]
    report = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "command": "python benchmarks/fsdp_memory.py " + " ".join(sys.argv[1:]),
              "model": f"tiny Llama, hidden {args.hidden}, {args.layers} layers, {params:.1f} M "
                       "parameters, float32; separate critic, KL reference", "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fsdp_memory.json").write_text(json.dumps(report, indent=1))
    print(markdown(report))


if __name__ == "__main__":
    main()
