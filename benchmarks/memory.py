"""Peak memory of one update with the memory levers off and on, at 1k-8k tokens per sample.

The model: a ``Qwen2ForCausalLM`` built in memory from a ``Qwen2Config`` resembling
Qwen2.5-0.5B -- hidden 896, 24 layers, 14 attention heads, 2 KV heads, MLP 4864,
vocabulary 151,936, tied embeddings, 494 M parameters -- with random weights (nothing is
downloaded). float32 on CPU; bfloat16 on CUDA (turnrl's default precision there).

One update: :meth:`turnrl.trainer.learner.Learner.update` on a minibatch of one sample of
``T`` tokens (a prompt and a reply every other 64 tokens, so about half the tokens are
trained), one epoch, one optimizer step: forward, backward (policy loss, entropy), gradient
clipping and the AdamW step, whose two state tensors per weight are allocated in this first
step and so count towards the peak. No critic, no KL reference; the scoring pass (old
logprobs, no gradients) is not part of it.

- **off**: today's defaults -- the full ``[T, vocab]`` logits (float32), every layer's
  activations kept for backward, sample-count micro-batches (of 1 sample: the least memory
  that setting allows, so the ratio is not inflated by padding).
- **on**: ``model.logprob_chunk_tokens`` (``--chunk``, default 1024),
  ``model.gradient_checkpointing``, ``optim.max_tokens_per_micro_batch = T``. With one
  sample per update the token budget has nothing to split; what it saves (every sample of
  a sample-count micro-batch padded to the longest) shows only against micro-batches of
  several samples, which this benchmark does not use for "off".

Each (tokens, setting) runs in a fresh subprocess, so peaks don't mix. Two figures:

- the peak up to the end of the backward pass -- what the levers act on -- read when the
  optimizer step starts;
- the peak of the whole update. Its first AdamW step allocates two float32 states per
  weight (4 GB here) on top of weights and gradients, which sets this peak whenever the
  backward pass needs less; in later updates those states stay resident throughout, so
  every peak of a later update is higher by them.

On CPU a figure is the process's peak resident memory (``VmHWM``: weights, gradients,
optimizer state, activations, the Python runtime). glibc's malloc is told to map each block
over 64 KiB on its own (``MALLOC_MMAP_THRESHOLD_``), so that freed tensors leave the
resident set; with its default heap the peaks drift by a GB or more with fragmentation
(measured: a 4k update above an 8k one). On CUDA: ``torch.cuda.max_memory_allocated``.
On CPU each run is capped (``--max-gb``, lowered to what the machine has free at its start
minus 1.5 GB, through ``RLIMIT_AS`` set after the model is built); a run that needs more
stops with an allocation error and is reported as out of memory at that cap: its real peak
is higher.

Usage::

    python benchmarks/memory.py [--tokens 1024 2048 4096 8192] [--chunk 1024] [--max-gb 18]
        [--device cpu|cuda]

Writes ``benchmarks/results/memory.json`` and prints a Markdown table. About 12 minutes on
2 idle cores (an update with the levers on takes ~30 s per 1k tokens here, 8k: ~4.5 min;
the "off" runs past 2k stop at the cap within a minute); longer when other jobs share them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
#: Qwen2.5-0.5B's shape.
QWEN25_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                  intermediate_size=4864, vocab_size=151_936, tie_word_embeddings=True,
                  max_position_embeddings=32_768, rope_theta=1_000_000.0, rms_norm_eps=1e-6)
GB = 1024**3


def _proc_status(field: str) -> int:
    """A ``/proc/self/status`` size in bytes (VmRSS, VmSize)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise KeyError("MemAvailable")


def _workload(tokens: int, seed: int) -> tuple[list[Any], Any, Any]:
    """One sample of ``tokens`` ids: 64 prompt/observation tokens, then alternately 64
    trained reply tokens and 64 observation tokens; its rollout logprobs, and per-turn
    advantages."""
    import torch

    from turnrl.trainer.estimators import TurnAdvantages
    from turnrl.trainer.learner import Scored
    from turnrl.trajectory import Sample

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, QWEN25_05B["vocab_size"], (tokens,), generator=gen).tolist()
    mask, turn = [0] * tokens, [-1] * tokens
    turns = 0
    for start in range(64, tokens, 128):
        for pos in range(start, min(start + 64, tokens)):
            mask[pos], turn[pos] = 1, turns
        turns += 1
    logps = [-float(x) if m else 0.0 for x, m in
             zip(torch.rand(tokens, generator=gen) * 4 + 0.5, mask, strict=True)]
    sample = Sample(ids, mask, turn, logps, value_turns=[], value_positions=[], trajectory=0)
    scored = Scored(old_logp=[torch.tensor(logps)], ref_logp=None, values=[torch.zeros(0)])
    adv = TurnAdvantages(advantages=torch.randn(1, turns, generator=gen), returns=torch.zeros(1, turns),
                         values=torch.zeros(1, turns + 1), turn_mask=torch.ones(1, turns),
                         num_turns=[turns])
    return [sample], scored, adv


def child(tokens: int, levers: bool, chunk: int, device: str, cap_gb: float, seed: int) -> dict[str, Any]:
    """One update in this process; returns what was measured."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from turnrl.trainer import builders
    from turnrl.trainer.distributed import Distributed
    from turnrl.trainer.learner import BatchSettings, Learner, LossSettings

    torch.manual_seed(seed)
    cuda = device.startswith("cuda")
    model = Qwen2ForCausalLM(Qwen2Config(**QWEN25_05B)).to(
        device=device, dtype=torch.bfloat16 if cuda else torch.float32).train()
    if levers:
        builders.enable_gradient_checkpointing(model)
    learner = Learner(
        model, torch.optim.AdamW(model.parameters(), lr=1e-6), critic=None, critic_optimizer=None,
        reference=None, reference_is_base=False, dist=Distributed(None), pad_id=0, temperature=1.0,
        losses=LossSettings(entropy_coef=0.001),
        batches=BatchSettings(epochs=1, minibatch_size=1, micro_batch_size=1, max_grad_norm=1.0,
                              max_tokens_per_micro_batch=tokens if levers else 0),
        logprob_chunk_tokens=chunk if levers else 0)
    samples, scored, adv = _workload(tokens, seed)
    # the peak up to the optimizer step (forward and backward passes: what the levers act
    # on), read when the step starts; the step then adds AdamW's state
    step, before_step = learner.optimizer.step, {}

    def measured_step(*a: Any, **kw: Any) -> Any:
        before_step["gb"] = (torch.cuda.max_memory_allocated() if cuda else _proc_status("VmHWM")) / GB
        return step(*a, **kw)

    learner.optimizer.step = measured_step
    result: dict[str, Any] = {"tokens": tokens, "levers": "on" if levers else "off",
                              "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1)}
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        result["before_gb"] = torch.cuda.memory_allocated() / GB
    else:
        rss = _proc_status("VmRSS")
        cap = int(min(cap_gb * GB, rss + _available_bytes() - 1.5 * GB))
        # the address space may grow by what the cap leaves above the resident set
        limit = _proc_status("VmSize") + cap - rss
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
        result.update(before_gb=rss / GB, cap_gb=cap / GB)
    start = time.time()
    try:
        stats = learner.update(samples, scored, adv)
        result.update(status="ok", policy_loss=stats["policy_loss"], grad_norm=stats["grad_norm"],
                      backward_peak_gb=before_step["gb"])
    except (RuntimeError, MemoryError) as exc:  # an allocation past the cap / the GPU
        if not isinstance(exc, MemoryError) and "memory" not in str(exc).lower():
            raise
        result.update(status="oom", error=str(exc).splitlines()[0][:200])
    result["seconds"] = time.time() - start
    if cuda:
        result["peak_gb"] = torch.cuda.max_memory_allocated() / GB
    else:
        result["peak_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB
    return result


def run(tokens: int, levers: bool, args: argparse.Namespace) -> dict[str, Any]:
    """One (tokens, setting) in a fresh subprocess."""
    cmd = [sys.executable, __file__, "--child", str(tokens), "on" if levers else "off",
           "--chunk", str(args.chunk), "--device", args.device, "--max-gb", str(args.max_gb)]
    # glibc's malloc maps every block over 64 KiB on its own and unmaps it when freed, so
    # the resident set follows the live tensors, not what the heap keeps after frees
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    # killed (e.g. by the kernel) or an unexpected error: reported as such
    return {"tokens": tokens, "levers": "on" if levers else "off", "status": "failed",
            "error": f"exit {proc.returncode}: {(proc.stderr.strip().splitlines() or ['?'])[-1][:200]}"}


def _ok(row: dict[str, Any] | None) -> bool:
    return row is not None and row["status"] == "ok"


def _cell(row: dict[str, Any] | None, key: str) -> str:
    if row is None:
        return "not run"
    if row["status"] == "ok":
        return f"{row[key]:.1f} GB"
    if row["status"] == "oom":
        return f"out of memory (cap {row['cap_gb']:.1f} GB)" if "cap_gb" in row else "out of memory"
    return f"failed ({row.get('error', '?')})"


def _ratio(off: dict[str, Any] | None, on: dict[str, Any] | None, key: str) -> str:
    if _ok(off) and _ok(on):
        return f"**{off[key] / on[key]:.2f}x**"
    if _ok(on) and off is not None and off["status"] == "oom" and "cap_gb" in off:
        return f"> {off['cap_gb'] / on[key]:.2f}x"
    return "-"


def markdown(report: dict[str, Any]) -> str:
    """The results as a Markdown table (also used by ``benchmarks/report.py``)."""
    rows = {(r["tokens"], r["levers"]): r for r in report["rows"]}
    tokens = sorted({t for t, _ in rows})
    unit = "CUDA max allocated" if report.get("device", "cpu").startswith("cuda") else "peak RSS"
    first_on = next((rows[(t, "on")] for t in tokens if _ok(rows.get((t, "on")))), None)
    lines = [f"| tokens per sample | {unit} to the end of backward: off / on | off / on | "
             f"levers on vs {first_on['tokens'] if first_on else '-'} tokens | "
             f"{unit} of the whole update (AdamW step included): off / on | off / on | "
             "update time: off / on |",
             "|---|---|---|---|---|---|---|"]
    for t in tokens:
        off, on = rows.get((t, "off")), rows.get((t, "on"))
        growth = (f"{on['backward_peak_gb'] / first_on['backward_peak_gb']:.2f}x"
                  if _ok(on) and first_on else "-")
        times = " / ".join(f"{r['seconds']:.0f} s" if _ok(r) else "-" for r in (off, on))
        lines.append(
            f"| {t:,} | {_cell(off, 'backward_peak_gb')} / {_cell(on, 'backward_peak_gb')} | "
            f"{_ratio(off, on, 'backward_peak_gb')} | {growth} | "
            f"{_cell(off, 'peak_gb')} / {_cell(on, 'peak_gb')} | {_ratio(off, on, 'peak_gb')} | {times} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--chunk", type=int, default=1024, help="model.logprob_chunk_tokens (on)")
    parser.add_argument("--max-gb", type=float, default=18.0, help="memory cap per CPU run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", nargs=2, metavar=("TOKENS", "LEVERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(int(args.child[0]), args.child[1] == "on", args.chunk, args.device,
                               args.max_gb, seed=0)), flush=True)
        return
    rows = []
    for levers in (True, False):  # the runs that fit first; "off" may hit the cap
        for tokens in args.tokens:
            row = run(tokens, levers, args)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    report = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "command": "python benchmarks/memory.py " + " ".join(sys.argv[1:]), "device": args.device,
              "model": "Qwen2 (Qwen2.5-0.5B shape), random weights", "chunk": args.chunk,
              "max_gb": args.max_gb, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "memory.json").write_text(json.dumps(report, indent=1))
    print(markdown(report))


if __name__ == "__main__":
    main()
