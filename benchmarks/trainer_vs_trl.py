"""One policy update, turnrl vs TRL: same tiny model, same fixed batch, same loss.

What is compared: the optimisation step of a GRPO update (and of an RLOO update) on one
batch of single-turn samples -- forward, backward, gradient clipping and the optimizer
step over ``--prompts`` prompts x ``--group-size`` completions, in micro-batches of
``--micro-batch`` with gradients accumulated into one optimizer step -- by turnrl's
:class:`~turnrl.trainer.Trainer` and by TRL's ``GRPOTrainer`` / ``RLOOTrainer``. Reported
per side: median seconds per update over ``--rounds`` runs of ``--repeats`` updates each
(after ``--warmup`` untimed ones), the time spent scoring the batch and computing
advantages (not part of the update, shown apart), peak RSS of the process, and the ratio
turnrl / TRL of update times. Also checked: the advantages both trainers compute from the
same rewards, and (GRPO, whose losses are the same) the gradient norm of the first update.

How:

- The driver (turnrl's venv) builds one tiny Llama with ``make_tiny_model`` (its BPE
  tokenizer trained on prompt-like text and standard-library docstrings), renders the
  prompts with the tokenizer's chat template, samples ``--group-size`` completions per
  prompt with the model (temperature 1), cuts each at a seeded length in ``[max/4, max]``
  and ends it with eos (so lengths vary as in a real batch), draws fixed rewards, and
  saves it all as token ids to JSON. Generation is never timed.
- Each (algorithm, side, round) runs in its own subprocess, one after another, so time and
  peak memory (``ru_maxrss``) are that side's own; which side goes first alternates
  between rounds, so a change in the machine's load hits both sides alike. The TRL side
  runs with the Python of its own venv (``benchmarks/.trl-venv``, created on first run
  with the torch, transformers and accelerate versions of turnrl's venv plus TRL pinned to
  ``TRL_VERSION``); TRL is never installed into turnrl's venv.
- Both sides run their trainer's own loop with only the generation replaced by the fixed
  batch. turnrl: ``Trainer.rl_update(episodes)`` on the fixed single-turn trajectories;
  the update is ``Learner.update`` (what turnrl logs as ``perf/update_s``), timed by
  wrapping it; scoring is ``Learner.score`` + ``Trainer.advantages``. TRL:
  ``trainer.train()`` for ``warmup + repeats`` optimizer steps, with
  ``_generate_single_turn`` returning the fixed completion ids (after checking that TRL's
  own chat-template tokenisation gave the fixed prompt ids) and a reward function
  returning the fixed rewards. A callback times each optimizer step from ``on_step_begin``
  to ``on_step_end`` (the gradient-accumulation training steps, clipping,
  ``optimizer.step``, scheduler step, ``zero_grad``) less the time spent in
  ``_generate_and_score_completions`` (padding, rewards, advantages and, for RLOO, the
  old-logprob pass), which is reported as scoring instead.
- Matched settings: ``--threads`` torch threads per side (default 1: on a shared machine
  two OpenMP threads stall on each other whenever another job takes a core; one thread
  keeps times steady, and its CPU time, also reported, hardly moves with the load),
  float32, lr ``--lr`` (constant), AdamW (weight decay 0, max grad norm 1), one epoch /
  ``num_iterations=1``, one optimizer step per update, micro-batch ``--micro-batch``,
  clip 0.2, temperature 1, KL coefficient 0 (no reference model), no gradient
  checkpointing. GRPO: TRL ``loss_type="dapo"`` (token mean over the whole batch) =
  turnrl ``loss_agg=token-mean``; TRL ``scale_rewards="group"`` = turnrl
  ``group_std=true``. RLOO: TRL ``normalize_advantages=False`` = turnrl's preset.
- Left at each library's default: the optimizer implementation (TRL: fused AdamW;
  turnrl: ``torch.optim.AdamW``; ``--trl-optim adamw_torch`` gives TRL the same one),
  padding (TRL pads the whole batch once, prompts left and completions right; turnrl pads
  each micro-batch to its own longest sample), the LM head (TRL scores tokens with a
  chunked log-softmax, turnrl materialises the logits), GRPO's eps (TRL 1e-4, turnrl
  1e-6) and TRL's RLOO loss (a sequence-level ratio; turnrl's is per token).

Usage::

    python benchmarks/trainer_vs_trl.py [--algos grpo rloo] [--rounds 2] [--repeats 5]
        [--warmup 1] [--prompts 8] [--group-size 4] [--max-new-tokens 96] [--micro-batch 8]

Writes ``benchmarks/results/trainer_vs_trl.json`` and prints Markdown tables. The first
run creates ``benchmarks/.trl-venv`` (about 2 minutes; needs PyPI).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ALGOS = ("grpo", "rloo")
#: TRL release the comparison is pinned to (works with transformers >= 4.56.2).
TRL_VERSION = "1.16.0"
HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TRL_VENV = HERE / ".trl-venv"
ENV_ID = "bench/FixedPrompts-v0"

_ITEMS = ["apples", "pencils", "marbles", "books", "coins", "stickers", "cards", "shells"]
_NAMES = ["Tom", "Ana", "Li", "Sara", "Omar", "Ines", "Kai", "Maya"]
_TEMPLATES = [
    "{n} has {a} {x} and buys {b} more. How many {x} does {n} have now?",
    "{n} had {a} {x}, gave {b} away, then found {c}. How many {x} are left?",
    "A box holds {a} {x}. {n} fills {b} boxes and adds {c} loose {x}. How many {x} in all?",
    "{n} reads {a} pages a day for {b} days, then {c} pages more. How many pages in total?",
]
_INSTRUCTION = " Think step by step, then give the final number after 'Answer:'."
_CORPUS_MODULES = ("argparse", "collections", "json", "pathlib", "subprocess", "random", "statistics",
                   "logging", "unittest", "asyncio", "decimal", "datetime", "textwrap", "re", "os",
                   "shutil", "zipfile", "tarfile", "csv", "sqlite3", "threading", "functools",
                   "itertools", "inspect", "ast", "dataclasses")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------- the TRL venv
def trl_python() -> Path:
    """The TRL venv's Python; the venv is created on first use with the torch,
    transformers and accelerate versions of this (turnrl's) venv, so that only the trainer
    differs between the sides."""
    from importlib.metadata import version

    python = TRL_VENV / "bin" / "python"
    pins = [f"transformers=={version('transformers')}", f"accelerate=={version('accelerate')}",
            f"trl=={TRL_VERSION}"]
    torch_pin = f"torch=={version('torch').split('+')[0]}"  # the local CPU wheel, not CUDA's
    check = "import trl, transformers, accelerate, torch, datasets; print(trl.__version__)"
    if python.exists():
        probe = subprocess.run([str(python), "-c", check], capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == TRL_VERSION:
            return python
    print(f"creating {TRL_VENV} ({torch_pin}, {', '.join(pins)}) ...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(TRL_VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, torch_pin], check=True)
    subprocess.run([*pip, *pins], check=True)
    subprocess.run([str(python), "-c", check], check=True)
    return python


# ------------------------------------------------------------------------- the fixed batch
def prompt_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(_TEMPLATES).format(n=rng.choice(_NAMES), x=rng.choice(_ITEMS),
                                          a=rng.randint(2, 99), b=rng.randint(2, 30),
                                          c=rng.randint(1, 20)) + _INSTRUCTION
            for _ in range(n)]


def tokenizer_corpus() -> list[str]:
    """Text for the tiny model's tokenizer: the prompts' kind of text, plus English prose
    that is at hand offline (docstrings of the Python standard library), so that BPE
    reaches a vocabulary of thousands (the prompts alone stop at a few hundred tokens)."""
    import importlib
    import warnings

    texts = prompt_texts(400, seed=1) + [f"Answer: {i}" for i in range(200)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in _CORPUS_MODULES:
            module = importlib.import_module(name)
            texts += [d for k, v in sorted(vars(module).items()) if not k.startswith("_")
                      and isinstance(d := getattr(v, "__doc__", None), str)]
    return texts


def build_model(out: Path, args: argparse.Namespace) -> Path:
    from turnrl.agents import tiny

    return tiny.make_tiny_model(out, tokenizer_corpus(), vocab_size=args.vocab_size,
                                hidden_size=args.hidden_size, num_layers=args.num_layers, seed=0)


def make_batch(model_dir: Path, args: argparse.Namespace) -> dict:
    """Prompts rendered with the chat template, ``group_size`` sampled completions each
    (cut at a seeded length and ended with eos), their logprobs under the model, and
    fixed rewards. Everything as token ids / numbers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    texts = prompt_texts(args.prompts, seed=args.seed)
    prompt_ids = [list(tok.apply_chat_template([{"role": "user", "content": t}], tokenize=True,
                                               add_generation_prompt=True, return_dict=True)["input_ids"])
                  for t in texts]
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    completions, logprobs = [], []
    for ids in prompt_ids:
        x = torch.tensor([ids] * args.group_size)
        with torch.no_grad():  # min_new_tokens: no eos before the cut below
            out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=True, temperature=1.0,
                                 top_k=0, top_p=1.0, max_new_tokens=args.max_new_tokens,
                                 min_new_tokens=args.max_new_tokens, pad_token_id=tok.pad_token_id,
                                 return_dict_in_generate=True, output_logits=True)
        # [G, max_new_tokens, V]: the model's own logprobs at each generated position
        logp = torch.log_softmax(torch.stack(out.logits, dim=1).float(), dim=-1)
        group, group_lp = [], []
        for i, row in enumerate(out.sequences[:, len(ids):].tolist()):
            length = rng.randint(max(2, args.max_new_tokens // 4), args.max_new_tokens)
            comp = row[:length - 1] + [tok.eos_token_id]
            group.append(comp)
            group_lp.append([round(float(logp[i, t, c]), 6) for t, c in enumerate(comp)])
        completions.append(group)
        logprobs.append(group_lp)
    rewards = []
    for g in range(args.prompts):
        kind = g % 4
        if kind == 3:  # all equal: the group carries no signal, advantages 0
            rewards.append([1.0] * args.group_size)
        elif kind == 1:  # pass / fail
            rewards.append([float(rng.random() < 0.4) for _ in range(args.group_size)])
        else:  # graded
            rewards.append([round(rng.random(), 3) for _ in range(args.group_size)])
    flat = [tuple(c) for group in completions for c in group]
    if len(set(flat)) != len(flat):
        raise SystemExit("two sampled completions are identical; rewards are looked up by "
                         "completion ids, so change --seed")
    return {"prompts": texts, "prompt_ids": prompt_ids, "completions": completions,
            "parameters": sum(p.numel() for p in model.parameters()),
            "logprobs": logprobs, "rewards": rewards,
            "eos_id": tok.eos_token_id, "pad_id": tok.pad_token_id}


# ------------------------------------------------------------------------- turnrl side
def run_turnrl(args: argparse.Namespace, data: dict) -> dict:
    import torch

    import turnrl
    from turnrl.envs.base import TextEnv
    from turnrl.trainer import Trainer, load_config
    from turnrl.trajectory import Trajectory, Turn

    prompts = data["prompts"]

    class FixedPrompts(TextEnv):
        """The benchmark's prompts, one turn each. Only registered so the Trainer can be
        built; its rollout is replaced by the fixed batch."""

        def _reset_episode(self, options):
            return prompts[self.episode_seed % len(prompts)], {"task": "answer"}

        def parse_action(self, reply):
            return reply

        def _step_action(self, command):
            return "", 0.0, True, {}

    turnrl.register(ENV_ID, FixedPrompts, override=True, max_turns=1)
    n, g = len(prompts), args.group_size
    run_dir = Path(args.out).with_suffix("") / "run"  # in the driver's temporary directory
    cfg = load_config(None, [
        f"model.name_or_path={args.model}", "model.dtype=float32", "model.device=cpu",
        f"env.id={ENV_ID}", f"env.train_seeds=[0, {n}]", "env.eval_seeds=[100000, 100001]",
        f"algorithm.name={args.algo}", "algorithm.kl_coef=0.0", "algorithm.clip_ratio=0.2",
        "algorithm.loss_agg=token-mean", "algorithm.group_std=true",
        "algorithm.normalize_advantages=false", "algorithm.gamma=1.0",
        f"rollout.group_size={g}", f"rollout.episodes_per_update={n * g}", "rollout.temperature=1.0",
        f"rollout.max_new_tokens={args.max_new_tokens}",
        f"optim.lr={args.lr}", "optim.weight_decay=0.0", "optim.epochs_per_update=1",
        f"optim.minibatch_size={n * g}", f"optim.micro_batch_size={args.micro_batch}",
        "optim.max_grad_norm=1.0", f"total_updates={args.warmup + args.repeats}",
        f"run_dir={run_dir}", "progress=false", "log_episodes=0", "log_tokens=0",
        "checkpoint_every=0", "eval.episodes=1", f"seed={args.seed}",
    ])
    trainer = Trainer(cfg)

    def fixed_episodes():
        episodes = []
        for p, ids in enumerate(data["prompt_ids"]):
            for k in range(g):
                turn = Turn(action="", reward=data["rewards"][p][k], observation="", terminated=True,
                            token_ids=data["completions"][p][k], logprobs=data["logprobs"][p][k],
                            obs_token_ids=[])
                episodes.append(Trajectory(ENV_ID, p, "answer", turns=[turn], group=p, entry=ENV_ID,
                                           prompt_token_ids=list(ids)))
        return episodes

    timers = {"update": 0.0, "update_cpu": 0.0, "score": 0.0, "score_cpu": 0.0}
    captured = {}

    def timed(name, fn, capture=None):
        def wrapper(*a, **kw):
            t0, c0 = time.perf_counter(), time.process_time()
            out = fn(*a, **kw)
            timers[name] += time.perf_counter() - t0
            timers[name + "_cpu"] += time.process_time() - c0
            if capture and capture not in captured:
                captured[capture] = out
            return out
        return wrapper

    # time the learner's two steps and the advantages step (all public component calls)
    trainer.learner.update = timed("update", trainer.learner.update)
    trainer.learner.score = timed("score", trainer.learner.score)
    trainer.advantages = timed("score", trainer.advantages, capture="advantages")
    rss_before = _rss_mb()
    updates, updates_cpu, scores, grad_norms = [], [], [], []
    for _ in range(args.warmup + args.repeats):
        timers.update(update=0.0, update_cpu=0.0, score=0.0, score_cpu=0.0)
        metrics = trainer.rl_update(fixed_episodes())
        trainer.update += 1
        updates.append(timers["update"])
        updates_cpu.append(timers["update_cpu"])
        scores.append(timers["score"])
        grad_norms.append(metrics.get("grad_norm"))
    adv = captured["advantages"].advantages[:, 0]  # one advantage per episode, on its only turn
    return {
        "side": "turnrl", "algo": args.algo, "update_s": updates[args.warmup:],
        "update_cpu_s": updates_cpu[args.warmup:],
        "score_s": scores[args.warmup:], "grad_norm_first": grad_norms[0],
        "advantages": [[float(adv[p * g + k]) for k in range(g)] for p in range(n)],
        "peak_rss_mb": _rss_mb(), "rss_before_updates_mb": rss_before,
        "settings": {k: cfg.to_dict()["algorithm"][k] for k in
                     ("name", "clip_ratio", "kl_coef", "loss_agg", "group_std", "normalize_advantages")}
        | {"optimizer": type(trainer.learner.optimizer).__name__, "micro_batch_size": cfg.optim.micro_batch_size,
           "minibatch_size": cfg.optim.minibatch_size, "lr": cfg.optim.lr},
        "versions": {"torch": torch.__version__, "transformers": _version("transformers")},
    }


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


# ------------------------------------------------------------------------- TRL side
def run_trl(args: argparse.Namespace, data: dict) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    n, g = len(data["prompts"]), args.group_size
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": t}] for t in data["prompts"]]})
    by_prompt = {tuple(ids): p for p, ids in enumerate(data["prompt_ids"])}
    reward_of = {tuple(c): data["rewards"][p][k]
                 for p, group in enumerate(data["completions"]) for k, c in enumerate(group)}
    where = {tuple(c): (p, k) for p, group in enumerate(data["completions"]) for k, c in enumerate(group)}

    def fixed_reward(completion_ids, **kwargs):
        return [reward_of[tuple(c)] for c in completion_ids]

    common = dict(
        output_dir=str(Path(args.out).with_suffix("")), per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=n * g // args.micro_batch, num_generations=g,
        max_completion_length=args.max_new_tokens, learning_rate=args.lr, lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, max_steps=args.warmup + args.repeats,
        num_iterations=1, epsilon=0.2, beta=0.0, temperature=1.0, bf16=False, fp16=False,
        gradient_checkpointing=False, use_cpu=True, report_to="none", save_strategy="no",
        logging_steps=1, disable_tqdm=True, seed=args.seed, dataloader_num_workers=0,
    )
    if args.trl_optim:
        common["optim"] = args.trl_optim
    if args.algo == "grpo":
        config = trl.GRPOConfig(**common, loss_type="dapo", scale_rewards="group")
        trainer_cls = trl.GRPOTrainer
    else:
        config = trl.RLOOConfig(**common, normalize_advantages=False)
        trainer_cls = trl.RLOOTrainer
    trainer = trainer_cls(model=model, reward_funcs=fixed_reward, args=config, train_dataset=dataset,
                          processing_class=tok)

    def fixed_generation(prompt_ids, *rest, **kwargs):
        """The fixed completions of each prompt, in order of its repeats."""
        seen: dict[int, int] = {}
        out = []
        for ids in prompt_ids:
            p = by_prompt.get(tuple(ids))
            if p is None:
                raise SystemExit("TRL tokenised a prompt differently from the fixed batch")
            k = seen[p] = seen.get(p, -1) + 1
            out.append(list(data["completions"][p][k]))
        return (out, None) if args.algo == "grpo" else out

    timers = {"score": 0.0, "score_cpu": 0.0}
    captured = {}
    score = trainer._generate_and_score_completions

    def timed_score(batch):
        t0, c0 = time.perf_counter(), time.process_time()
        out = score(batch)
        timers["score"] += time.perf_counter() - t0
        timers["score_cpu"] += time.process_time() - c0
        if "advantages" not in captured:
            captured["advantages"] = out["advantages"].tolist()
            ids, mask = out["completion_ids"].tolist(), out["completion_mask"].tolist()
            captured["rows"] = [tuple(t for t, m in zip(r, mr, strict=True) if m)
                                for r, mr in zip(ids, mask, strict=True)]
        return out

    trainer._generate_single_turn = fixed_generation
    trainer._generate_and_score_completions = timed_score
    updates, updates_cpu, scores, grad_norms = [], [], [], []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.t0, self.c0 = time.perf_counter(), time.process_time()
            self.s0, self.sc0 = timers["score"], timers["score_cpu"]

        def on_step_end(self, a, state, control, **kw):
            spent_scoring = timers["score"] - self.s0
            updates.append(time.perf_counter() - self.t0 - spent_scoring)
            updates_cpu.append(time.process_time() - self.c0 - (timers["score_cpu"] - self.sc0))
            scores.append(spent_scoring)

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "grad_norm" in logs:
                grad_norms.append(float(logs["grad_norm"]))

    trainer.add_callback(StepTimer())
    rss_before = _rss_mb()
    trainer.train()
    advantages = [[None] * g for _ in range(n)]
    for row, a in zip(captured["rows"], captured["advantages"], strict=True):
        p, k = where[row]
        advantages[p][k] = a
    return {
        "side": "trl", "algo": args.algo, "update_s": updates[args.warmup:],
        "update_cpu_s": updates_cpu[args.warmup:], "score_s": scores[args.warmup:],
        "grad_norm_first": grad_norms[0] if grad_norms else None, "advantages": advantages,
        "peak_rss_mb": _rss_mb(), "rss_before_updates_mb": rss_before,
        "settings": {"trainer": trainer_cls.__name__, "loss_type": getattr(config, "loss_type", None),
                     "scale_rewards": getattr(config, "scale_rewards", None),
                     "normalize_advantages": getattr(config, "normalize_advantages", None),
                     "beta": config.beta, "epsilon": config.epsilon, "optim": str(config.optim),
                     "optimizer": type(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer")
                                       else trainer.optimizer).__name__,
                     "per_device_train_batch_size": config.per_device_train_batch_size,
                     "gradient_accumulation_steps": config.gradient_accumulation_steps,
                     "steps_per_generation": config.steps_per_generation, "lr": config.learning_rate},
        "versions": {"trl": trl.__version__, "torch": torch.__version__,
                     "transformers": _version("transformers"), "accelerate": _version("accelerate"),
                     "datasets": _version("datasets")},
    }


# ------------------------------------------------------------------------- driver
def advantage_checks(data: dict, results: dict) -> list[dict]:
    """Max abs difference of the advantages TRL and turnrl computed on the same rewards;
    for GRPO also turnrl's estimator with TRL's eps (1e-4), isolating the one difference."""
    import torch

    from turnrl.trainer.advantages import grpo_advantages

    rows = []
    for algo in results:
        ours, theirs = results[algo]["turnrl"]["advantages"], results[algo]["trl"]["advantages"]
        diff = max(abs(a - b) for ga, gb in zip(ours, theirs, strict=True) for a, b in zip(ga, gb, strict=True))
        rows.append({"algo": algo, "compared": f"turnrl {algo} preset vs TRL", "max_abs_diff": diff})
        if algo == "grpo":
            g = len(ours[0])
            rewards = torch.tensor([r for group in data["rewards"] for r in group])
            groups = [p for p in range(len(ours)) for _ in range(g)]
            matched = grpo_advantages(rewards, groups, scale_by_std=True, eps=1e-4).tolist()
            diff = max(abs(matched[p * g + k] - theirs[p][k]) for p in range(len(ours)) for k in range(g))
            rows.append({"algo": algo, "compared": "turnrl grpo_advantages(eps=1e-4) vs TRL",
                         "max_abs_diff": diff})
    return rows


def merge(runs: list[dict]) -> dict:
    """One side's runs (rounds) as one: timings pooled, the highest peak RSS, the first
    run's advantages and gradient norm (every run starts from the same weights)."""
    first = runs[0]
    return {**first, "update_s": [x for r in runs for x in r["update_s"]],
            "update_cpu_s": [x for r in runs for x in r["update_cpu_s"]],
            "score_s": [x for r in runs for x in r["score_s"]],
            "update_s_per_round": [statistics.median(r["update_s"]) for r in runs],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "rss_growth_mb": max(r["peak_rss_mb"] - r["rss_before_updates_mb"] for r in runs)}


def summarise(results: dict) -> list[dict]:
    rows = []
    for algo, sides in results.items():
        trl = sides.get("trl")
        for side, r in sides.items():
            upd = statistics.median(r["update_s"])
            rows.append({
                "algo": algo, "side": side, "update_s": upd,
                "update_min_s": min(r["update_s"]), "update_max_s": max(r["update_s"]),
                "update_cpu_s": statistics.median(r["update_cpu_s"]),
                "update_s_per_round": r["update_s_per_round"],
                "score_s": statistics.median(r["score_s"]), "peak_rss_mb": r["peak_rss_mb"],
                "rss_growth_mb": r["rss_growth_mb"], "grad_norm_first": r["grad_norm_first"],
                "ratio_vs_trl": upd / statistics.median(trl["update_s"]) if trl else None,
                "ratio_of_min_vs_trl": min(r["update_s"]) / min(trl["update_s"]) if trl else None,
                "cpu_ratio_vs_trl": (statistics.median(r["update_cpu_s"])
                                     / statistics.median(trl["update_cpu_s"])) if trl else None,
            })
    return rows


def markdown(rows: list[dict], checks: list[dict]) -> str:
    lines = ["| algorithm | trainer | update, wall: median (min-max) | update, CPU time "
             "| turnrl / TRL: wall (CPU) | scoring + advantages | peak RSS (growth in updates) "
             "| grad norm, 1st update |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        turnrl = r["side"] == "turnrl"
        ratio = (f"**{r['ratio_vs_trl']:.2f}x** ({r['cpu_ratio_vs_trl']:.2f}x)"
                 if turnrl and r["ratio_vs_trl"] is not None else "")
        gn = f"{r['grad_norm_first']:.4f}" if r["grad_norm_first"] is not None else "-"
        lines.append(f"| {r['algo']} | {'turnrl' if turnrl else 'TRL'} | {r['update_s'] * 1e3:.0f} ms "
                     f"({r['update_min_s'] * 1e3:.0f}-{r['update_max_s'] * 1e3:.0f}) "
                     f"| {r['update_cpu_s'] * 1e3:.0f} ms | {ratio} | {r['score_s'] * 1e3:.0f} ms "
                     f"| {r['peak_rss_mb']:.0f} MB (+{r['rss_growth_mb']:.0f}) | {gn} |")
    lines += ["", "| advantages on the same rewards | max abs difference |", "|---|---|"]
    lines += [f"| {c['compared']} | {c['max_abs_diff']:.1e} |" for c in checks]
    return "\n".join(lines)


def child_command(python: str, side: str, algo: str, model: Path, data: Path, out: Path,
                  args: argparse.Namespace) -> list[str]:
    cmd = [python, __file__, "--child", side, "--algo", algo, "--model", str(model), "--data", str(data),
           "--out", str(out), "--repeats", str(args.repeats), "--warmup", str(args.warmup),
           "--group-size", str(args.group_size), "--micro-batch", str(args.micro_batch),
           "--max-new-tokens", str(args.max_new_tokens), "--lr", str(args.lr), "--seed", str(args.seed),
           "--threads", str(args.threads)]
    return cmd + (["--trl-optim", args.trl_optim] if args.trl_optim else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algos", nargs="+", default=list(ALGOS), choices=ALGOS)
    parser.add_argument("--repeats", type=int, default=5, help="timed updates per run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed updates before them")
    parser.add_argument("--rounds", type=int, default=2,
                        help="runs per side, alternating which side goes first")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=4, help="completions per prompt")
    parser.add_argument("--micro-batch", type=int, default=8, help="samples per forward pass")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch / OpenMP threads of each side (1: steadiest on a shared machine)")
    parser.add_argument("--trl-optim", default=None,
                        help="TRL's `optim` (default: TRL's own default, adamw_torch_fused)")
    parser.add_argument("--out", default=str(RESULTS / "trainer_vs_trl.json"))
    # one side, in a subprocess of the driver
    parser.add_argument("--child", choices=("turnrl", "trl"), help=argparse.SUPPRESS)
    parser.add_argument("--algo", choices=ALGOS, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        data = json.loads(Path(args.data).read_text())
        result = (run_turnrl if args.child == "turnrl" else run_trl)(args, data)
        Path(args.out).write_text(json.dumps(result))
        return
    if (args.prompts * args.group_size) % args.micro_batch:
        parser.error(f"--prompts x --group-size ({args.prompts * args.group_size}) must be a multiple "
                     f"of --micro-batch ({args.micro_batch})")

    import torch

    torch.set_num_threads(args.threads)
    start = time.time()
    python = str(trl_python())
    with tempfile.TemporaryDirectory(prefix="turnrl-vs-trl-") as tmp:
        work = Path(tmp)
        model = build_model(work / "model", args)
        data = make_batch(model, args)
        (work / "batch.json").write_text(json.dumps(data))
        runs: dict[str, dict[str, list[dict]]] = {}
        threads_env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
                       "MKL_NUM_THREADS": str(args.threads)}
        for algo in args.algos:
            for rnd in range(args.rounds):
                # turnrl first in even rounds, TRL first in odd ones: drift in the machine's
                # load hits both sides alike
                for side in ("turnrl", "trl") if rnd % 2 == 0 else ("trl", "turnrl"):
                    out = work / f"{algo}-{side}-{rnd}.json"
                    exe = sys.executable if side == "turnrl" else python
                    t0 = time.time()
                    proc = subprocess.run(
                        child_command(exe, side, algo, model, work / "batch.json", out, args),
                        capture_output=True, text=True, env=threads_env)
                    if proc.returncode:
                        raise SystemExit(f"{algo}/{side} failed:\n{proc.stderr[-6000:]}")
                    r = json.loads(out.read_text())
                    runs.setdefault(algo, {}).setdefault(side, []).append(r)
                    print(f"{algo:5s} {side:7s} round {rnd}: update "
                          f"{statistics.median(r['update_s']) * 1e3:6.0f} ms, peak RSS "
                          f"{r['peak_rss_mb']:4.0f} MB ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    results = {algo: {side: merge(rs) for side, rs in sides.items()} for algo, sides in runs.items()}
    rows = summarise(results)
    checks = advantage_checks(data, results)
    lengths = [len(c) for group in data["completions"] for c in group]
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "python": platform.python_version(),
        "command": "python benchmarks/trainer_vs_trl.py " + " ".join(sys.argv[1:]),
        "versions": {"turnrl_side": next(iter(results.values()))["turnrl"]["versions"],
                     "trl_side": next(iter(results.values()))["trl"]["versions"]},
        "settings": {
            "model": f"tiny Llama (make_tiny_model), hidden {args.hidden_size}, {args.num_layers} layers, "
                     f"vocab {args.vocab_size}, float32, {data['parameters']} parameters",
            "prompts": args.prompts, "group_size": args.group_size, "micro_batch": args.micro_batch,
            "samples_per_update": args.prompts * args.group_size, "optimizer_steps_per_update": 1,
            "prompt_tokens": [len(p) for p in data["prompt_ids"]], "completion_tokens": lengths,
            "lr": args.lr, "warmup": args.warmup, "repeats": args.repeats, "rounds": args.rounds,
            "threads": args.threads,
            "seed": args.seed,
        },
        "rows": rows, "advantage_checks": checks,
        "runs": {algo: {side: [{k: v for k, v in r.items() if k != "advantages"} for r in rs]
                        for side, rs in sides.items()} for algo, sides in runs.items()},
        "rewards": data["rewards"],
        "advantages": {algo: {side: r["advantages"] for side, r in sides.items()}
                       for algo, sides in results.items()},
        "total_wall_s": round(time.time() - start, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(rows, checks))
    print(f"total {report['total_wall_s']:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
