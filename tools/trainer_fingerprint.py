"""Fingerprint of what the trainer computes, to check that a refactor changes nothing.

    python tools/trainer_fingerprint.py record OUT.json [--cases quickstart grpo ...]
    python tools/trainer_fingerprint.py compare OLD.json NEW.json

``record`` runs a few short training runs on CPU (fixed seeds) through the public API
(``Trainer(load_config(...)).fit()``) and stores, per run: every metrics row (timings
dropped), a SHA-256 of every weight of the final policy and critic, the evaluation results,
and the logged episodes and token records. ``compare`` reports every difference; a
behaviour-preserving change gives none ("bit-identical").

Cases:
  quickstart  configs/quickstart.yaml, SFT warm start + 5 PPO updates (eval on 10 games)
  grpo, vldac, rloo, ppo-lora   5 updates on a toy word-count env with a tiny model
  ospo        SFT + 5 OSPO updates on the ride-dispatch driver view
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # toy_envs

#: Metrics that measure time, not what was computed.
_TIMING = ("perf/", "time_s")


def _toy_setup(work: Path) -> str:
    """Register the word-count env (as tests/trainer/test_presets.py does) and build the
    tiny guess-number model the tests use; returns the model directory."""
    from toy_envs import GuessNumber

    import turnrl
    from turnrl.envs.base import TextEnv

    class WordCount(TextEnv):
        instructions = "Reply with some words."

        def __init__(self, *, max_turns: int = 2, render_mode: str | None = None) -> None:
            super().__init__(max_turns=max_turns, render_mode=render_mode)

        def _reset_episode(self, options):
            return "Say something.", {"task": "Say something.", "expert_action": "guess 3"}

        def parse_action(self, reply: str) -> str:
            return reply

        def _step_action(self, command: str):
            return "Again.", 0.1 * len(command.split()), False, {"expert_action": "guess 3"}

    turnrl.register("turnrl/WordCount-v0", WordCount, override=True)
    try:
        from turnrl.models.tiny import make_tiny_model
    except ImportError:  # before the move
        from turnrl.agents.tiny import make_tiny_model
    texts = [GuessNumber.instructions, "Find the number between 1 and 10.", "Correct!",
             "No, go higher.", "No, go lower.", "Reply with 'guess N', e.g. 'guess 3'."]
    texts += [f"guess {n}" for n in range(1, 11)]
    return str(make_tiny_model(work / "tiny_guess", texts * 5, vocab_size=300, hidden_size=64,
                               num_layers=2))


def _toy(model: str, run_dir: Path, *extra: str) -> list[str]:
    return [f"model.name_or_path={model}", "env.id=turnrl/WordCount-v0",
            "rollout.episodes_per_update=8", "rollout.group_size=4", "rollout.max_new_tokens=6",
            "rollout.num_envs=8", "total_updates=5", f"run_dir={run_dir}",
            "eval.episodes=2", "progress=false", "optim.lr=1e-3", "optim.critic_lr=1e-3",
            "optim.minibatch_size=4", "optim.micro_batch_size=2", "checkpoint_every=0", *extra]


def _cases(work: Path) -> dict[str, tuple[str | None, list[str]]]:
    model = _toy_setup(work)
    dispatch = "{grid: 5, drivers: 4, rounds: 4, orders: 16}"
    return {
        "quickstart": (str(ROOT / "configs/quickstart.yaml"), [
            "total_updates=5", "eval.episodes=10", "checkpoint_every=0", "progress=false",
            f"run_dir={work / 'quickstart'}"]),
        "grpo": (None, _toy(model, work / "grpo", "algorithm.name=grpo",
                            "algorithm.loss_agg=seq-mean-token-mean")),
        "vldac": (None, _toy(model, work / "vldac", "algorithm.name=vldac",
                             "algorithm.critic_warmup_updates=1")),
        "rloo": (None, _toy(model, work / "rloo", "algorithm.name=rloo", "algorithm.kl_coef=0.1",
                            "algorithm.kl_in=reward", "algorithm.kl_estimator=k1")),
        "ppo-lora": (None, _toy(model, work / "ppo-lora", "algorithm.name=ppo",
                                "model.lora={r: 4, alpha: 8}", "algorithm.kl_coef=0.05",
                                "sft.episodes=4", "sft.epochs=2", "sft.batch_size=4",
                                "rollout.context=window(1)", "rollout.group_size=1")),
        "ospo": (None, [
            "model.tiny={hidden_size: 64, num_layers: 2, vocab_size: 300, corpus_seeds: 4}",
            "env.id=turnrl/RideDispatchDriver-v0",
            f"env.kwargs={{settings: {dispatch}, decisions_per_round: 2}}",
            "algorithm.name=ospo", "rollout.episodes_per_update=4", "rollout.max_new_tokens=4",
            "rollout.num_envs=4", "total_updates=5", f"run_dir={work / 'ospo'}",
            "eval.episodes=2", "progress=false", "optim.lr=1e-3", "optim.minibatch_size=2",
            "optim.micro_batch_size=2", "sft.episodes=4", "sft.epochs=30", "sft.lr=3e-3",
            "checkpoint_every=0"]),
    }


def _hash_module(module: Any) -> dict[str, str]:
    if module is None:
        return {}
    return {name: hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]
            for name, t in module.state_dict().items()}


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _untimed(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not k.startswith(_TIMING)}


def record(cases: list[str], out: Path) -> None:
    from transformers.utils import logging as hf_logging

    from turnrl.trainer import Trainer, load_config

    hf_logging.disable_progress_bar()
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="turnrl-fingerprint-") as tmp:
        work = Path(tmp)
        table = _cases(work)
        for name in cases:
            path, overrides = table[name]
            start = time.time()
            trainer = Trainer(load_config(path, overrides))
            results = trainer.fit()
            run = Path(trainer.run_dir)
            result[name] = {
                "results": results,
                "metrics": [_untimed(r) for r in _lines(run / "metrics.jsonl")],
                "policy": _hash_module(trainer.model),
                "critic": _hash_module(trainer.critic),
                "samples": _lines(run / "samples.jsonl"),
                "tokens": _lines(run / "tokens.jsonl"),
            }
            print(f"{name}: {time.time() - start:.0f} s", file=sys.stderr)
    out.write_text(json.dumps(result, indent=1, sort_keys=True))


def _diff(a: Any, b: Any, where: str, out: list[str], limit: int = 40) -> None:
    if len(out) >= limit:
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                out.append(f"{where}.{key}: only in {'new' if key in b else 'old'}")
            else:
                _diff(a[key], b[key], f"{where}.{key}", out, limit)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{where}: length {len(a)} != {len(b)}")
        for i, (x, y) in enumerate(zip(a, b, strict=False)):  # lengths reported above
            _diff(x, y, f"{where}[{i}]", out, limit)
    elif a != b and not (a != a and b != b):  # NaN equals NaN here
        out.append(f"{where}: {a!r} != {b!r}")


def compare(old: Path, new: Path, ignore: list[str]) -> int:
    a, b = json.loads(old.read_text()), json.loads(new.read_text())
    diffs: list[str] = []
    for name in sorted(set(a) & set(b)):
        _diff(a[name], b[name], name, diffs, limit=10_000)
    diffs = [d for d in diffs if not any(pattern in d for pattern in ignore)]
    for line in diffs[:60]:
        print(line)
    compared = sorted(set(a) & set(b))
    print(f"{len(diffs)} differences over {len(compared)} runs ({', '.join(compared)})")
    return 1 if diffs else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("record")
    p.add_argument("out", type=Path)
    p.add_argument("--cases", nargs="+", default=["quickstart", "grpo", "vldac", "rloo",
                                                  "ppo-lora", "ospo"])
    p = sub.add_parser("compare")
    p.add_argument("old", type=Path)
    p.add_argument("new", type=Path)
    p.add_argument("--ignore", nargs="*", default=[],
                   help="skip differences whose description contains any of these")
    args = parser.parse_args()
    if args.command == "record":
        record(args.cases, args.out)
        return 0
    return compare(args.old, args.new, args.ignore)


if __name__ == "__main__":
    sys.exit(main())
