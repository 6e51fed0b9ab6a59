"""The ALFWorld recipe on one GPU: rollout and update throughput, model FLOPs utilisation,
peak memory and the rollout/update time split, from three real updates.

A random-weight model of the Qwen2.5-1.5B architecture (hidden 1536, 28 layers, 12 query /
2 key-value heads, vocabulary 151,936, bf16) with Qwen's real tokenizer and Qwen2.5's chat
template, both built offline (``tests/model_families.py``: nothing is downloaded), plays
ALFWorld's generated households through ``configs/alfworld-qwen2.5-1.5b.yaml`` (vLLM
colocated with sleep mode, chunked logprobs, gradient checkpointing, token-budget
micro-batches) for three updates. A random model's replies are mostly invalid actions, so
episodes run to the turn limit: this measures the machinery, not learning.

Reported: vLLM rollout tokens/s (sampled tokens over rollout wall time), update tokens/s
(trained sequence tokens x epochs over update time), model FLOPs utilisation of the update
(6 x parameters x update tokens/s over the GPU's dense bf16 peak; the recomputation of
gradient checkpointing is not counted, as is usual), peak GPU memory (max allocated, the
trainer's process; the vLLM engine's share is its gpu_memory_utilization), the time split,
and the update's losses (finite) as a sign the recipe runs end to end.

Usage::

    python benchmarks/gpu.py              # one GPU, about 8 minutes
    python benchmarks/gpu.py --dry-run    # the same code on CPU at toy size (a test runs it)

Writes ``benchmarks/results/gpu.json`` (``gpu-dryrun.json`` for a dry run).
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
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))  # model_families: the offline Qwen tokenizer

#: Dense bf16 peak FLOPs of common GPUs (per GPU, without sparsity), for MFU.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12,
                   "A10": 125e12, "L4": 121e12, "RTX 4090": 165e12}
#: Qwen2.5-1.5B's architecture (config.json of Qwen/Qwen2.5-1.5B-Instruct).
QWEN25_15B = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                  num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                  rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
TOY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1,
           num_key_value_heads=1, max_position_embeddings=4096, tie_word_embeddings=True)
#: Dry runs stay small: the recipe's settings, on a toy model and a few short episodes.


def build_model(out: Path, *, dry_run: bool) -> tuple[Path, int]:
    """A random Qwen2 model of the 1.5B architecture with Qwen's tokenizer and Qwen2.5's
    template, saved to ``out`` (dry run: a toy Qwen2 with a small tokenizer trained on
    ALFWorld's text, so a CPU runs the same code in a minute or two); returns the path and
    its parameter count."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    if dry_run:
        from turnrl.agents.tiny import train_tokenizer
        from turnrl.trainer.corpus import env_text_corpus

        tokenizer = train_tokenizer(env_text_corpus("turnrl/ALFWorld-v0", range(2), random_episodes=False,
                                                    task_types=["pick_and_place_simple"]),
                                    vocab_size=600)
        stops, vocab, shape, dtype = ["<|im_end|>"], len(tokenizer), TOY, torch.float32
    else:
        from model_families import FAMILIES, QWEN_VOCAB_SIZE, build_tokenizer

        family = FAMILIES["qwen2.5"]
        tokenizer = build_tokenizer(family)
        stops, vocab, shape, dtype = list(family.stop_tokens), QWEN_VOCAB_SIZE, QWEN25_15B, torch.bfloat16
    config = Qwen2Config(vocab_size=vocab, **shape, bos_token_id=None,
                         eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(dtype)
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.convert_tokens_to_ids(t) for t in stops],
        pad_token_id=config.pad_token_id)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out, sum(p.numel() for p in model.parameters())


def overrides(model: Path, run_dir: Path, *, dry_run: bool) -> list[str]:
    """The recipe, sized for three updates in minutes (or a toy CPU run)."""
    common = [f"model.name_or_path={model}", f"run_dir={run_dir}", "total_updates=3",
              "checkpoint_every=0", "log_tokens=0", "log_episodes=0",
              "env.kwargs={max_turns: 20}", "eval.every=0"]
    if dry_run:
        return common + [
            "model.dtype=float32", "model.device=cpu", "rollout.vllm_sleep=0",
            "rollout.episodes_per_update=2", "rollout.group_size=2", "rollout.num_envs=2",
            "rollout.max_new_tokens=8", "rollout.max_context_tokens=1024",
            "rollout.env_pool=local", "optim.minibatch_size=8", "optim.micro_batch_size=4",
            "optim.max_tokens_per_micro_batch=4096", "model.logprob_chunk_tokens=256",
            "env.kwargs={max_turns: 2}", "eval.episodes=1"]
    return common + ["rollout.episodes_per_update=64", "rollout.num_envs=64",
                     "rollout.max_new_tokens=64"]


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from turnrl.trainer import Trainer, load_config

    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        raise SystemExit("no CUDA GPU here: run with --dry-run to check the code on CPU")
    gpu = torch.cuda.get_device_name(0) if cuda else "none (CPU dry run)"
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in gpu), None)
    with tempfile.TemporaryDirectory(prefix="turnrl-gpu-") as tmp:
        start = time.perf_counter()
        model, n_params = build_model(Path(tmp) / "model", dry_run=args.dry_run)
        build_s = time.perf_counter() - start
        cfg = load_config(ROOT / "configs" / "alfworld-qwen2.5-1.5b.yaml",
                          overrides(model, Path(tmp) / "run", dry_run=args.dry_run))
        trainer = Trainer(cfg)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        updates = []
        try:
            for _ in range(cfg.total_updates):
                metrics = trainer.rl_update()
                trainer.update += 1
                updates.append({k: metrics.get(k) for k in (
                    "perf/rollout_s", "perf/update_s", "perf/sync_s", "perf/rollout_tokens_per_s",
                    "perf/train_tokens_per_s", "perf/action_tokens", "policy_loss", "kl_ref",
                    "rollout/turns", "rollout/invalid_rate", "logprob/rollout_vs_train_max_abs")})
        finally:
            trainer.close()
        total_s = time.perf_counter() - start
    last = updates[1:] or updates  # the first update pays for compilation and warm-up
    mean = lambda key: sum(u[key] for u in last) / len(last)  # noqa: E731
    train_tps = mean("perf/train_tokens_per_s")
    rollout_s, update_s = mean("perf/rollout_s"), mean("perf/update_s")
    return {
        "date": time.strftime("%Y-%m-%d"), "gpu": gpu, "dry_run": args.dry_run,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, GPU: {gpu}",
        "command": "python benchmarks/gpu.py" + (" --dry-run" if args.dry_run else ""),
        "parameters": n_params, "model": "Qwen2 toy" if args.dry_run else "Qwen2.5-1.5B architecture",
        "rollout_tokens_per_s": round(mean("perf/rollout_tokens_per_s"), 1),
        "update_tokens_per_s": round(train_tps, 1),
        "mfu": round(6 * n_params * train_tps / peak, 4) if peak else None,
        "achieved_tflops": round(6 * n_params * train_tps / 1e12, 2),
        "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "rollout_share": round(rollout_s / (rollout_s + update_s), 3),
        "seconds": {"model_build": round(build_s, 1), "total": round(total_s, 1),
                    "rollout_per_update": round(rollout_s, 2), "update_per_update": round(update_s, 2)},
        "updates": updates,
    }


def markdown(report: dict[str, Any]) -> str:
    """The results as a Markdown table (also used by ``benchmarks/report.py``)."""
    mfu = f"{report['mfu']:.1%}" if report.get("mfu") is not None else "-"
    mem = f"{report['peak_gpu_memory_gb']:.1f} GB" if report.get("peak_gpu_memory_gb") else "-"
    return "\n".join([
        "| model | vLLM rollout tokens/s | update tokens/s | MFU (update) | peak GPU memory | rollout share of an update |",
        "|---|---|---|---|---|---|",
        f"| {report['model']} ({report['parameters'] / 1e9:.2f} B) | {report['rollout_tokens_per_s']:.0f} | "
        f"{report['update_tokens_per_s']:.0f} | {mfu} | {mem} | {report['rollout_share']:.0%} |",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, toy size: checks the code")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    report = run(args)
    out = Path(args.out or HERE / "results" / ("gpu-dryrun.json" if args.dry_run else "gpu.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(markdown(report))
    losses = [u["policy_loss"] for u in report["updates"]]
    if not all(isinstance(x, float) and x == x for x in losses):
        raise SystemExit(f"non-finite policy losses: {losses}")


if __name__ == "__main__":
    main()
