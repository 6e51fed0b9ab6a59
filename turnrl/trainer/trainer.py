"""The training loop.

    rollout -> old logprobs, values, reference logprobs -> turn advantages -> K epochs
    of minibatch updates -> evaluate -> checkpoint -> (at the end) export the model

Each step is a call to a small function; the math lives in
:mod:`turnrl.trainer.advantages` and :mod:`turnrl.trainer.losses`; the presets
(``ppo``, ``vldac``, ``rloo``, ``grpo``, ``sft``) in :mod:`turnrl.trainer.algorithms`.

The KL reference is the policy RL starts from (after any SFT warm start). Without LoRA
it is a frozen copy, saved once to ``run_dir/reference`` so a resumed run keeps it; with
LoRA it is the base model with the adapters switched off, so memory holds one base.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from turnrl.agents.hf import HFPolicy
from turnrl.errors import ConfigError
from turnrl.evaluate import wilson_interval
from turnrl.trainer import algorithms
from turnrl.trainer.batching import Batch, collate, token_logprobs
from turnrl.trainer.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from turnrl.trainer.config import TrainConfig
from turnrl.trainer.critic import ValueHead, ValueModel, gather_values
from turnrl.trainer.distributed import Distributed, shard_range
from turnrl.trainer.env_mix import EnvMix
from turnrl.trainer.logging import MetricsLogger
from turnrl.trainer.losses import aggregate, kl_penalty, nll_loss, policy_loss, value_loss
from turnrl.trainer.sft import ExpertTokens
from turnrl.trajectory import Sample, Trajectory, build_samples

__all__ = ["Trainer", "episode_metrics"]

#: Update statistics reported as their largest value (over minibatches and ranks); the
#: others are means over minibatches, summed over ranks where each rank holds a part.
_MAX_STATS = ("ratio_max",)
#: Statistics every rank computes alike (after the gradient all-reduce): not summed.
_SAME_ON_EVERY_RANK = ("grad_norm", "critic_grad_norm", "nan_skipped")


def episode_metrics(named: list[tuple[str, Trajectory]], prefix: str) -> dict[str, float]:
    """Success, return, turns, invalid-action rate, failed episodes and episodes replayed
    after their env worker died, overall and per env."""
    groups: dict[str, list[Trajectory]] = {"": [t for _, t in named]}
    if len({n for n, _ in named}) > 1:
        for name, traj in named:
            groups.setdefault(name, []).append(traj)
    out: dict[str, float] = {}
    for name, trajs in groups.items():
        if not trajs:
            continue
        key = f"{prefix}/{name}/" if name else f"{prefix}/"
        turns = sum(t.num_turns for t in trajs)
        wins = sum(t.won for t in trajs)
        out[key + "success"] = wins / len(trajs)
        out[key + "success_ci_low"], out[key + "success_ci_high"] = wilson_interval(wins, len(trajs))
        out[key + "return"] = float(np.mean([t.total_return for t in trajs]))
        out[key + "turns"] = turns / len(trajs)
        out[key + "invalid_rate"] = sum(t.invalid_actions for t in trajs) / max(turns, 1)
        out[key + "episodes"] = float(len(trajs))
        out[key + "failed"] = float(sum(t.failed is not None for t in trajs))
        out[key + "restarts"] = float(sum(t.restarts for t in trajs))  # replays after lost workers
    return out


class Trainer:
    """Trains a policy as a :class:`TrainConfig` says.

    Example:
        >>> cfg = load_config("configs/quickstart.yaml")
        >>> results = Trainer(cfg).fit()
    """

    def __init__(self, config: TrainConfig, *, resume: bool = False) -> None:
        self.cfg = config
        self.run_dir = Path(config.run_dir)
        # One process, or one rank of several started by `accelerate launch` / torchrun.
        self.dist = Distributed.from_config(config.distributed, device=config.model.device)
        if self.dist.world_size > config.optim.minibatch_size:
            raise ConfigError(
                f"optim.minibatch_size ({config.optim.minibatch_size}) counts samples per "
                f"optimizer step over all {self.dist.world_size} processes, so it must be at "
                f"least {self.dist.world_size}; e.g. optim.minibatch_size="
                f"{self.dist.world_size * config.optim.micro_batch_size}")
        if not resume and latest_checkpoint(self.run_dir) is not None:
            raise ConfigError(f"{self.run_dir} already holds a run; resume it with "
                              f"`turnrl train --resume {self.run_dir}` or pick a new run_dir")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        _seed_everything(config.seed)
        self.logger = MetricsLogger(self.run_dir, enabled=self.dist.is_main)  # rank 0 writes
        if self.dist.is_main:
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        self.envs = EnvMix.from_config(config.env, seed=config.seed, env_pool=config.rollout.env_pool,
                                       envs_per_worker=config.rollout.envs_per_worker,
                                       ray_address=config.ray.address)
        self.envs.shard(self.dist.rank, self.dist.world_size)  # each rank plays its share
        with self.dist.local_main_first():  # one rank per machine writes, the others then read
            self.envs.prepare(config.eval.episodes)  # e.g. generate TextWorld games in parallel
            model_path = self._model_path()
        if resume and config.model.lora and (self.run_dir / "sft_model" / "config.json").exists():
            model_path = str(self.run_dir / "sft_model")  # LoRA base after the SFT merge
        r = config.rollout
        self.policy = HFPolicy(
            model_path, temperature=r.temperature, top_p=r.top_p, max_new_tokens=r.max_new_tokens,
            device=self.dist.device or config.model.device, dtype=config.model.dtype,
            seed=self.dist.seed(config.seed),
        )
        self.tokenizer = self.policy.tokenizer
        self.lora = bool(config.model.lora)
        self._set_model(self._with_lora(self.policy.model) if self.lora else self.policy.model)
        self.device = self.policy.device
        # Rollouts and evaluation sample from here: the trained model, or a vLLM engine
        # that gets its weights after every update.
        self.sampler = self._build_sampler(model_path) if r.backend == "vllm" else self.policy
        self.algo = algorithms.get(config.algorithm.name)
        self.critic = self._build_critic(model_path) if self.algo.needs_critic else None
        # The KL reference: the policy as RL starts (rebuilt after an SFT warm start).
        self.use_reference = config.algorithm.kl_coef > 0
        self.ref_model = self._build_reference() if self.use_reference and not self.lora else None
        self.optimizer = self._policy_optimizer()
        self.critic_optimizer = (
            torch.optim.AdamW(self.critic.parameters(), lr=config.optim.critic_lr)
            if self.critic is not None else None
        )
        self.update = 0
        self.phase_done: dict[str, Any] = {}
        if resume:
            self._resume()
        self._prepare_training()

    # ================================================================ set-up
    def _model_path(self) -> str:
        m = self.cfg.model
        if m.name_or_path:
            return m.name_or_path
        path = self.run_dir / "base_model"
        if not (path / "config.json").exists():
            from turnrl.agents import tiny

            t = dict(m.tiny or {})
            seeds = t.pop("corpus_seeds", 20)
            texts = []
            for entry in self.envs.entries:
                texts += tiny.corpus_from_env(entry.env_id, entry.train_seeds[:seeds], **entry.kwargs)
            tiny.make_tiny_model(path, texts, seed=self.cfg.seed, **t)
        return str(path)

    def _set_model(self, model: Any) -> None:
        self.model = model
        self.policy.model = model  # rollouts sample from the model being trained

    def _build_sampler(self, model_path: str) -> Any:
        r = self.cfg.rollout
        kwargs = dict(temperature=r.temperature, top_p=r.top_p, max_new_tokens=r.max_new_tokens,
                      seed=self.dist.seed(self.cfg.seed),
                      max_model_len=r.max_context_tokens + r.max_new_tokens,
                      dtype=self.cfg.model.dtype, engine_kwargs=r.vllm)
        if r.vllm_engines > 1:  # data-parallel rollout: engines as Ray actors
            from turnrl.agents.vllm_ray import RayVLLMPolicy

            sampler = RayVLLMPolicy(model_path, num_engines=r.vllm_engines,
                                    address=self.cfg.ray.address, **kwargs)
        else:
            from turnrl.agents.vllm import VLLMPolicy

            sampler = VLLMPolicy(model_path, **kwargs)
        sampler.sync_weights(self.model)  # LoRA / resumed weights, not only the base
        return sampler

    def _sync_sampler(self) -> float:
        """Give the rollout engine the trainer's weights; seconds taken (0 for hf)."""
        if self.sampler is self.policy:
            return 0.0
        self.sampler.sync_weights(self.model)
        return self.sampler.last_sync_s

    def _with_lora(self, model: Any) -> Any:
        """Wrap ``model`` with fresh LoRA adapters (only they are trainable)."""
        from peft import LoraConfig, get_peft_model

        spec = dict(self.cfg.model.lora or {})
        lora = LoraConfig(r=int(spec.get("r", 8)), lora_alpha=float(spec.get("alpha", 16)),
                          lora_dropout=float(spec.get("dropout", 0.0)),
                          target_modules=spec.get("target_modules", "all-linear"),
                          task_type="CAUSAL_LM")
        return get_peft_model(model, lora)

    def _prepare_training(self) -> None:
        """The modules the training forward runs through, with their optimizers: the
        policy and critic themselves in one process, DDP wrappers around them in several
        (one all-reduce per minibatch). Rollouts, scoring and checkpoints keep using the
        plain modules, which hold the same parameters."""
        self.train_model, self.optimizer = self.dist.prepare(self.model, self.optimizer)
        self.train_critic = self.critic
        if self.critic is not None:
            self.train_critic, self.critic_optimizer = self.dist.prepare(self.critic,
                                                                         self.critic_optimizer)

    def _policy_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=self.cfg.optim.lr, weight_decay=self.cfg.optim.weight_decay,
        )

    def _build_critic(self, model_path: str) -> torch.nn.Module:
        kind, hidden = self.cfg.model.critic, self.model.config.hidden_size
        if kind == "separate":
            critic = ValueModel.from_pretrained(model_path)
        elif kind == "head":  # VL-DAC: an MLP on the detached last hidden state
            critic = ValueHead(hidden, hidden_dim=hidden, detach=True)
        else:
            critic = ValueHead(hidden)
        return critic.to(self.device)

    def _build_reference(self) -> torch.nn.Module:
        ref = copy.deepcopy(self.model).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        return ref

    def _reference_logprobs(self, batch: Batch) -> torch.Tensor:
        """Logprobs of the KL reference: the frozen copy, or (LoRA) the adapter-free base."""
        if self.lora:
            with self.model.disable_adapter():
                return token_logprobs(self.model, batch.input_ids, batch.attention_mask,
                                      temperature=self.policy.temperature)["logprobs"]
        return token_logprobs(self.ref_model, batch.input_ids, batch.attention_mask,
                              temperature=self.policy.temperature)["logprobs"]

    # ================================================================ the run
    def fit(self) -> dict[str, dict[str, float]]:
        """SFT warm start (if configured), then RL updates, with evaluations before, after
        SFT and after RL. Returns those evaluations."""
        results = self.phase_done.setdefault("results", {})
        try:
            if "before" not in results:
                results["before"] = self.evaluate("before")
            if self.cfg.sft.episodes and "after_sft" not in results:
                self.train_sft()
                results["after_sft"] = self.evaluate("after_sft")
                self.save()
            if self.algo.name != "sft":
                self.train_rl()
                results["after_rl"] = self.evaluate("after_rl")
        finally:
            self.envs.close()  # env worker processes / actors
            if hasattr(self.sampler, "engines"):  # vLLM engine actors
                self.sampler.close()
        self.save()
        if self.dist.is_main:
            (self.run_dir / "results.json").write_text(json.dumps(results, indent=2))
        self.export()
        self.logger.close()
        return results

    def export(self, path: str | Path | None = None) -> Path:
        """Save the trained policy as a plain Hugging Face model (default
        ``run_dir/final_model``). LoRA adapters are merged into the base first, and the
        trainer keeps the merged model."""
        path = Path(path) if path is not None else self.run_dir / "final_model"
        if self.lora:
            self._set_model(self.model.merge_and_unload())
            self.lora = False
        if self.dist.is_main:
            self.model.save_pretrained(path)
            self.tokenizer.save_pretrained(path)
        self.dist.barrier()  # every rank returns once the files are there
        return path

    def train_rl(self) -> None:
        from tqdm import tqdm

        if self.use_reference and self.update == 0 and not self.lora:
            # The policy RL starts from (after SFT), kept on disk for a resumed run.
            self.ref_model = self._build_reference()
            if self.dist.is_main:
                self.ref_model.save_pretrained(self.run_dir / "reference")

        total = self.cfg.total_updates
        bar = tqdm(total=total, initial=self.update, desc="rl", unit="update",
                   disable=not self._progress)
        while self.update < total:
            metrics = self.rl_update()
            self.update += 1
            bar.update(1)
            bar.set_postfix(success=f"{metrics['rollout/success']:.2f}",
                            ret=f"{metrics['rollout/return']:.2f}")
            if self.cfg.eval.every and self.update % self.cfg.eval.every == 0 and self.update < total:
                self.evaluate(f"update_{self.update}")
            if self.cfg.checkpoint_every and self.update % self.cfg.checkpoint_every == 0:
                self.save()
        bar.close()

    # ================================================================ one RL update
    def rl_update(self) -> dict[str, float]:
        cfg, t0 = self.cfg, time.time()
        # ---- rollout (each rank plays its share; every rank then holds all episodes)
        named = self._gather_episodes(self._rollout())
        trajs = [t for _, t in named]
        samples = build_samples(trajs, cfg.rollout.context)
        t_rollout = time.time() - t0
        if not samples:
            metrics = episode_metrics(named, "rollout")
            self.logger.log(self.update, metrics)
            return metrics
        # ---- old logprobs, values, reference
        scored = self._score(samples)
        # ---- advantages
        turn_adv, returns, values = self._advantages(trajs, samples, scored, _group_ids(named))
        # ---- update
        t1 = time.time()
        stats = self._optimize(samples, scored, turn_adv, returns)
        t_update = time.time() - t1
        stats["perf/sync_s"] = self._sync_sampler()
        # ---- logging
        n_tokens = sum(sum(s.loss_mask) for s in samples)
        metrics = {
            **episode_metrics(named, "rollout"), **stats,
            "adv/mean": float(turn_adv[scored["turn_mask"] > 0].mean()),
            "adv/abs_mean": float(turn_adv[scored["turn_mask"] > 0].abs().mean()),
            "perf/rollout_s": t_rollout, "perf/update_s": t_update,
            "perf/action_tokens": float(n_tokens),
            "perf/train_tokens_per_s": sum(len(s) for s in samples) * cfg.optim.epochs_per_update
            / max(t_update, 1e-9),
            "perf/rollout_tokens_per_s": n_tokens / max(t_rollout, 1e-9),
            "logprob/rollout_vs_train_mean_abs": scored["mismatch_mean"],
            "logprob/rollout_vs_train_max_abs": scored["mismatch_max"],
        }
        if self.critic is not None:
            metrics["value/mean"] = float(values[:, :-1][scored["turn_mask"] > 0].mean())
        if cfg.log_episodes:
            self.logger.log_episodes(self.update, trajs[: cfg.log_episodes], phase="train")
        if cfg.log_tokens and self.dist.is_main:
            t2 = time.time()
            self.logger.log_tokens(self.update, self._token_records(named, samples, scored, turn_adv))
            metrics["perf/log_tokens_s"] = time.time() - t2
        self.logger.log(self.update, metrics)
        return metrics

    def _token_records(self, named, samples, scored, turn_adv) -> list[dict[str, Any]]:
        """Token-level view of the first ``log_tokens`` episodes' samples (for the viewer)."""
        from turnrl.viewer.audit import token_sources

        keep = set(range(min(self.cfg.log_tokens, len(named))))
        records = []
        for i, s in enumerate(samples):
            if s.trajectory not in keep:
                continue
            name, traj = named[s.trajectory]
            adv = _spread(turn_adv[s.trajectory][None], torch.tensor([s.turn_index]))[0]
            records.append({
                "env": name, "seed": traj.seed, "episode": s.trajectory, "won": traj.won,
                "return": traj.total_return, "input_ids": s.input_ids,
                "tokens": [self.tokenizer.decode([t]) for t in s.input_ids],
                "sources": token_sources(traj, s, self.cfg.rollout.context),
                "loss_mask": s.loss_mask, "turn_index": s.turn_index,
                "rollout_logprobs": [round(x, 5) for x in s.rollout_logprobs],
                "train_logprobs": [round(float(x), 5) for x in scored["old_logp"][i]],
                "advantages": [round(float(x), 5) for x in adv],
                "value_positions": s.value_positions, "value_turns": s.value_turns,
                "values": [round(float(x), 5) for x in scored["values"][i]] if self.critic is not None
                else None,
            })
        return records

    @property
    def _progress(self) -> bool:
        """Show progress bars: when configured, and on rank 0 only."""
        return self.cfg.progress and self.dist.is_main

    def _gather_episodes(self, named: list[tuple[str, Trajectory]]) -> list[tuple[str, Trajectory]]:
        """Every rank's episodes, in the order one process would have collected them (this
        rank's own in one process)."""
        if self.dist.world_size == 1:
            return named
        return self.envs.merge(self.dist.gather(named))

    def _rollout(self) -> list[tuple[str, Trajectory]]:
        r = self.cfg.rollout
        self.sampler.greedy = False
        return self.envs.collect_train(
            self.sampler, episodes=r.episodes_per_update, group_size=r.group_size,
            num_envs=r.num_envs, context=r.context, max_context_tokens=r.max_context_tokens,
            step_workers=r.step_workers, mode=r.mode,
        )

    def _score(self, samples: list[Sample]) -> dict[str, Any]:
        """Logprobs of the current (old) policy, critic values, reference logprobs; each
        rank scores a contiguous block of the samples, and every rank gets all blocks."""
        block = self.dist.shard(len(samples))
        parts = self.dist.gather(self._score_block(samples[block.start:block.stop]))
        diffs = sum(p["mismatch_sum"] for p in parts)
        count = sum(p["mismatch_count"] for p in parts)
        return {
            "old_logp": [x for p in parts for x in p["old_logp"]],
            "ref_logp": [x for p in parts for x in p["ref_logp"]] if self.use_reference else None,
            "values": [x for p in parts for x in p["values"]],
            "mismatch_mean": diffs / count if count else 0.0,
            "mismatch_max": max(p["mismatch_max"] for p in parts),
        }

    @torch.no_grad()
    def _score_block(self, samples: list[Sample]) -> dict[str, Any]:
        mb = self.cfg.optim.micro_batch_size
        old_logp, ref_logp, values = [], [], []
        mismatch = []
        self.model.eval()
        for start in range(0, len(samples), mb):
            chunk = samples[start:start + mb]
            batch = collate(chunk, self.policy.pad_id).to(self.device)
            out = token_logprobs(self.model, batch.input_ids, batch.attention_mask,
                                 temperature=self.policy.temperature,
                                 with_hidden=self._critic_reads_hidden())
            for i, s in enumerate(chunk):
                n = len(s)
                old_logp.append(out["logprobs"][i, :n].cpu())
                mask = batch.loss_mask[i, :n].cpu() > 0
                diff = (out["logprobs"][i, :n].cpu() - batch.rollout_logprobs[i, :n].cpu()).abs()
                mismatch.append(diff[mask])
            v = self._values(batch, out.get("hidden"))
            values.extend(v[i, : len(s.value_positions)].cpu() for i, s in enumerate(chunk))
            if self.use_reference:
                ref = self._reference_logprobs(batch)
                ref_logp.extend(ref[i, : len(s)].cpu() for i, s in enumerate(chunk))
        self.model.train()
        diffs = torch.cat(mismatch) if mismatch else torch.zeros(0)
        return {"old_logp": old_logp, "ref_logp": ref_logp, "values": values,
                "mismatch_sum": float(diffs.sum()), "mismatch_count": diffs.numel(),
                "mismatch_max": float(diffs.max()) if diffs.numel() else 0.0}

    def _critic_reads_hidden(self) -> bool:
        """The critic is a head on the policy's hidden states (shared or detached)."""
        return self.critic is not None and isinstance(self.critic, ValueHead)

    def _values(self, batch: Batch, hidden: torch.Tensor | None, *, train: bool = False
                ) -> torch.Tensor:
        """``[B, K]`` values at the batch's value positions (zeros without a critic);
        ``train``: through the critic's training wrapper (in the update)."""
        if self.critic is None:
            return torch.zeros_like(batch.value_mask)
        critic = self.train_critic if train else self.critic
        if isinstance(self.critic, ValueHead):
            per_token = critic(hidden)
        else:
            per_token = critic(batch.input_ids, batch.attention_mask)
        return gather_values(per_token, batch.value_positions, batch.value_mask)

    def _advantages(self, trajs: list[Trajectory], samples: list[Sample], scored: dict[str, Any],
                    groups: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-turn advantages ``[N, T]``, returns ``[N, T]`` and values ``[N, T + 1]``.

        ``groups``: group id of each trajectory (episodes of one (env, seed) group share
        one); default: the trajectories' own group indices.
        """
        a = self.cfg.algorithm
        n, t_max = len(trajs), max(1, max(t.num_turns for t in trajs))
        rewards = torch.zeros(n, t_max)
        turn_mask = torch.zeros(n, t_max)
        values = torch.zeros(n, t_max + 1)
        terminated = torch.zeros(n, dtype=torch.bool)
        for i, traj in enumerate(trajs):
            k = traj.num_turns
            rewards[i, :k] = torch.tensor(traj.rewards)
            turn_mask[i, :k] = 1.0
            terminated[i] = traj.terminated and not traj.failed
        # V(s_t): each turn's own sample (its first value read) wins; V(s_L) from the last.
        filled = torch.zeros(n, t_max + 1, dtype=torch.bool)
        for s, v in zip(samples, scored["values"], strict=True):
            for j, (turn, value) in enumerate(zip(s.value_turns, v.tolist(), strict=True)):
                if j == 0 or not filled[s.trajectory, turn]:
                    values[s.trajectory, turn] = value
                    filled[s.trajectory, turn] = True
        if scored["ref_logp"] is not None and a.kl_in == "reward":
            rewards = rewards - a.kl_coef * self._turn_kl(samples, scored, n, t_max)
        if groups is None:
            groups = [t.group if t.group is not None else -1 - i for i, t in enumerate(trajs)]
        adv, returns = self.algo.advantages(
            rewards=rewards, values=values, turn_mask=turn_mask, terminated=terminated,
            groups=groups, turn_groups=_turn_groups(trajs, t_max, self.algo), cfg=a,
        )
        if a.normalize_advantages:
            adv = _whiten(adv, turn_mask, per_episode=self.algo.per_episode)
        scored["turn_mask"] = turn_mask
        scored["num_turns"] = [t.num_turns for t in trajs]
        return adv * turn_mask, returns, values

    def _turn_kl(self, samples, scored, n, t_max) -> torch.Tensor:
        """k1 KL summed over each turn's action tokens, ``[N, T]`` (for KL in reward)."""
        kl = torch.zeros(n, t_max)
        for s, old, ref in zip(samples, scored["old_logp"], scored["ref_logp"], strict=True):
            per_token = kl_penalty(old, ref, "k1")
            for pos, turn in enumerate(s.turn_index):
                if turn >= 0 and s.loss_mask[pos]:
                    kl[s.trajectory, turn] += float(per_token[pos])
        return kl

    def _optimize(self, samples: list[Sample], scored: dict[str, Any], turn_adv: torch.Tensor,
                  returns: torch.Tensor) -> dict[str, float]:
        o, a = self.cfg.optim, self.cfg.algorithm
        train_policy = self.update >= a.critic_warmup_updates  # VL-DAC: value head first
        sums: dict[str, float] = {}
        count = 0
        order_rng = np.random.default_rng(self.cfg.seed * 100_003 + self.update)
        for _ in range(o.epochs_per_update):
            order = order_rng.permutation(len(samples))
            for start in range(0, len(order), o.minibatch_size):
                stats = self._minibatch(
                    [int(i) for i in order[start:start + o.minibatch_size]],
                    samples, scored, turn_adv, returns, train_policy,
                )
                for key, value in stats.items():
                    sums[key] = (max(sums.get(key, value), value) if key in _MAX_STATS
                                 else sums.get(key, 0.0) + value)
                count += 1
        sums = self._sum_over_ranks(sums)
        return {k: v if k in _MAX_STATS else v / max(count, 1) for k, v in sums.items()}

    def _sum_over_ranks(self, stats: dict[str, float]) -> dict[str, float]:
        """Add up the ranks' parts of the update statistics (each rank holds its samples'
        part of every loss); the largest for :data:`_MAX_STATS`; rank 0's for those every
        rank computes alike."""
        if self.dist.world_size == 1:
            return stats
        parts = self.dist.gather(stats)
        out: dict[str, float] = {}
        for key in dict.fromkeys(k for part in parts for k in part):
            values = [part[key] for part in parts if key in part]
            if key in _SAME_ON_EVERY_RANK:
                out[key] = values[0]
            else:
                out[key] = max(values) if key in _MAX_STATS else sum(values)
        return out

    def _micro_batches(self, idx: list[int]) -> list[tuple[list[int], bool]]:
        """This rank's share of the batch ``idx`` as micro-batches of at most
        ``optim.micro_batch_size`` samples, as many on every rank, so that all ranks run
        the same number of forward and backward passes. A rank left with fewer samples than
        micro-batches pads with dummy ones (``True`` in the pair): a real sample whose loss
        is masked out."""
        size = self.cfg.optim.micro_batch_size
        n_micro = max(1, -(-len(idx) // (self.dist.world_size * size)))
        block = self.dist.shard(len(idx))
        mine = idx[block.start:block.stop]
        out = []
        for k in range(n_micro):
            part = shard_range(len(mine), k, n_micro)
            out.append(([mine[i] for i in part], False) if len(part) else (idx[:1], True))
        return out

    def _normalizers(self, idx: list[int], samples: list[Sample], scored: dict[str, Any]
                     ) -> dict[str, float]:
        """What the loss terms of the batch ``idx`` are divided by, so that its pieces
        (micro-batches, ranks) add up to it: ``policy`` (action tokens for token-mean,
        sequences with action tokens for seq-mean-token-mean), ``tokens`` and ``values``
        (value targets)."""
        chosen = [samples[i] for i in idx]
        values = 0
        if self.critic is not None:
            values = sum(turn < scored["num_turns"][s.trajectory]
                         for s in chosen for turn in s.value_turns)
        return {"policy": _policy_normalizer(chosen, self.cfg.algorithm.loss_agg),
                "tokens": _policy_normalizer(chosen, "token-mean"), "values": max(values, 1)}

    def _minibatch(self, idx: list[int], samples, scored, turn_adv, returns, train_policy
                   ) -> dict[str, float]:
        """One optimizer step on the samples ``idx`` (the same list on every rank). Each
        rank runs its share in micro-batches, gradients are all-reduced at the last one,
        and every rank takes the same step. A non-finite loss or gradient on any rank skips
        the step on all of them (NaN guard)."""
        o = self.cfg.optim
        norm = self._normalizers(idx, samples, scored)
        modules = [m for m in (self.train_model, self.train_critic) if m is not None]
        self._zero_grad()
        acc: dict[str, float] = {}
        finite = True
        micro = self._micro_batches(idx)
        for k, (mb, dummy) in enumerate(micro):
            with self.dist.sync(modules, enabled=k == len(micro) - 1):
                total, stats = self._micro_loss(mb, dummy, samples, scored, turn_adv, returns,
                                                norm, train_policy)
                if torch.isfinite(total):
                    for key, value in stats.items():
                        acc[key] = (max(acc.get(key, value), value) if key in _MAX_STATS
                                    else acc.get(key, 0.0) + value)
                else:
                    finite = False
                # Even a NaN loss is backpropagated: every rank must join the all-reduce.
                self.dist.backward(total)
        skip = self.dist.any(not finite)
        if not skip:
            acc["grad_norm"] = self.dist.clip_grad_norm(self.model, o.max_grad_norm)
            if self.critic is not None:
                acc["critic_grad_norm"] = self.dist.clip_grad_norm(self.critic, o.max_grad_norm)
            skip = not all(math.isfinite(acc.get(k, 0.0)) for k in ("grad_norm", "critic_grad_norm"))
        acc["nan_skipped"] = float(skip)
        if skip:
            self._zero_grad()
            return acc
        if train_policy:
            self.optimizer.step()
        if self.critic_optimizer is not None:
            self.critic_optimizer.step()
        return acc

    def _zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.critic_optimizer is not None:
            self.critic_optimizer.zero_grad(set_to_none=True)

    def _micro_loss(self, mb: list[int], dummy: bool, samples, scored, turn_adv, returns,
                    norm: dict[str, float], train_policy: bool) -> tuple[torch.Tensor, dict[str, float]]:
        """A micro-batch's part of its minibatch's loss (every term divided by the
        minibatch's count in ``norm``), and its part of the statistics (none for a dummy)."""
        a = self.cfg.algorithm
        batch = collate([samples[i] for i in mb], self.policy.pad_id, mb).to(self.device)
        if dummy:  # runs the passes every rank must run; adds nothing
            batch.loss_mask = torch.zeros_like(batch.loss_mask)
        old = _pad([scored["old_logp"][i] for i in mb], batch.input_ids.shape[1]).to(self.device)
        traj = torch.tensor([samples[i].trajectory for i in mb])
        adv_tokens = _spread(turn_adv[traj], batch.turn_index.cpu()).to(self.device)
        out = token_logprobs(self.train_model, batch.input_ids, batch.attention_mask,
                             temperature=self.policy.temperature, with_entropy=True,
                             with_hidden=self._critic_reads_hidden())
        mask = batch.loss_mask
        weights = None
        if a.tis_cap is not None:  # rollout engine vs trainer: truncated importance weights
            weights = torch.exp(old - batch.rollout_logprobs).clamp(max=a.tis_cap) * mask
        pg, pg_stats = policy_loss(out["logprobs"], old, adv_tokens, mask,
                                   clip_low=a.clip_ratio, clip_high=a.clip_ratio,
                                   dual_clip=a.dual_clip, ratio_guard=a.ratio_guard or None,
                                   turn_index=batch.turn_index, token_weights=weights,
                                   agg=a.loss_agg, normalizer=norm["policy"])
        entropy = aggregate(out["entropy"], mask, a.loss_agg, normalizer=norm["policy"])
        loss = pg - a.entropy_coef * entropy
        # Token means over this micro-batch, weighted by its share of the minibatch's tokens.
        share = float(mask.sum()) / norm["tokens"]
        stats = {"policy_loss": float(pg.detach()), "entropy": float(entropy.detach())}
        for key, value in pg_stats.items():
            stats[key] = float(value) if key in _MAX_STATS else float(value) * share
        if scored["ref_logp"] is not None:
            ref = _pad([scored["ref_logp"][i] for i in mb], mask.shape[1]).to(self.device)
            kl = aggregate(kl_penalty(out["logprobs"], ref, a.kl_estimator), mask, a.loss_agg,
                           normalizer=norm["policy"])
            if a.kl_in == "loss":
                loss = loss + a.kl_coef * kl
            stats["kl_ref"] = float(kl.detach())
        v_loss = self._value_loss(batch, out.get("hidden"), mb, samples, scored, returns,
                                  normalizer=norm["values"], dummy=dummy)
        total = (loss if train_policy else loss * 0.0)
        if v_loss is not None:
            # vf_coef weighs value against policy gradients in a shared backbone; a
            # separate critic or a detached head has its own optimizer and lr.
            total = total + (a.vf_coef if self.cfg.model.critic == "shared" else 1.0) * v_loss
            stats["value_loss"] = float(v_loss.detach())
        return total, ({} if dummy else stats)

    def _value_loss(self, batch: Batch, hidden, mb, samples, scored, returns, *,
                    normalizer: float | None = None, dummy: bool = False) -> torch.Tensor | None:
        if self.critic is None:
            return None
        values = self._values(batch, hidden, train=True)
        k = values.shape[1]
        old = torch.zeros(len(mb), k)
        target = torch.zeros(len(mb), k)
        train = torch.zeros(len(mb), k)
        for row, i in enumerate(mb):
            s = samples[i]
            for j, turn in enumerate(s.value_turns):
                if turn < scored["num_turns"][s.trajectory] and not dummy:  # V(s_L): bootstrap only
                    old[row, j] = scored["values"][i][j]
                    target[row, j] = returns[s.trajectory, turn]
                    train[row, j] = 1.0
        dev = self.device
        loss, _ = value_loss(values, old.to(dev), target.to(dev), train.to(dev),
                             clip=self.cfg.algorithm.value_clip, agg="token-mean",
                             normalizer=normalizer)
        return loss

    # ================================================================ SFT
    def train_sft(self) -> dict[str, float]:
        """Masked NLL on expert episodes gathered from ``info["expert_action"]`` (each rank
        plays its share of them; each rank trains on its part of every batch)."""
        from tqdm import tqdm

        s_cfg, r = self.cfg.sft, self.cfg.rollout
        expert = ExpertTokens(self.policy.renderer)
        named = self.envs.collect_train(expert, episodes=s_cfg.episodes, group_size=1,
                                        num_envs=r.num_envs, context=r.context,
                                        max_context_tokens=r.max_context_tokens)
        samples = build_samples([t for _, t in self._gather_episodes(named)], r.context)
        optimizer = self.dist.prepare_optimizer(torch.optim.AdamW(self.model.parameters(), lr=s_cfg.lr))
        rng = np.random.default_rng(self.cfg.seed)
        self.model.train()
        losses = []
        for epoch in tqdm(range(s_cfg.epochs), desc="sft", unit="epoch", disable=not self._progress):
            order = rng.permutation(len(samples))
            parts = [self._sft_step([int(i) for i in order[start:start + s_cfg.batch_size]],
                                    samples, optimizer)
                     for start in range(0, len(order), s_cfg.batch_size)]
            # each batch's loss: the sum of the ranks' parts
            losses.append(float(np.mean([sum(x) for x in zip(*self.dist.gather(parts), strict=True)])))
            self.logger.log(epoch, {"sft/sft_loss": losses[-1]}, phase="sft")
        self.phase_done["sft_epochs"] = s_cfg.epochs
        if self.lora:
            self._merge_sft_adapters()
        self._sync_sampler()
        return {"sft_loss": losses[-1] if losses else math.nan, "sft_samples": len(samples)}

    def _sft_step(self, idx: list[int], samples: list[Sample], optimizer: Any) -> float:
        """One SFT optimizer step on the samples ``idx``; this rank's part of its loss."""
        agg = self.cfg.algorithm.loss_agg
        normalizer = _policy_normalizer([samples[i] for i in idx], agg)
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        micro = self._micro_batches(idx)
        for k, (chunk, dummy) in enumerate(micro):
            with self.dist.sync([self.train_model], enabled=k == len(micro) - 1):
                batch = collate([samples[i] for i in chunk], self.policy.pad_id).to(self.device)
                mask = torch.zeros_like(batch.loss_mask) if dummy else batch.loss_mask
                out = token_logprobs(self.train_model, batch.input_ids, batch.attention_mask)
                loss = nll_loss(out["logprobs"], mask, agg, normalizer=normalizer)
                self.dist.backward(loss)
                total += float(loss.detach())
        self.dist.clip_grad_norm(self.model, self.cfg.optim.max_grad_norm)
        optimizer.step()
        return total

    def _merge_sft_adapters(self) -> None:
        """Fold the SFT adapters into the base and start RL with fresh ones, so the KL
        reference (adapters off) is the post-SFT policy, as it is without LoRA. The merged
        base is saved to ``run_dir/sft_model`` for a resumed run."""
        base = self.model.merge_and_unload()
        if self.dist.is_main:
            base.save_pretrained(self.run_dir / "sft_model")
            self.tokenizer.save_pretrained(self.run_dir / "sft_model")
        self._set_model(self._with_lora(base))
        self.optimizer = self._policy_optimizer()
        self.train_model, self.optimizer = self.dist.prepare(self.model, self.optimizer)

    # ================================================================ evaluation
    def evaluate(self, label: str) -> dict[str, float]:
        e, r = self.cfg.eval, self.cfg.rollout
        self.sampler.greedy = e.greedy
        try:
            named = self.envs.collect_eval(self.sampler, episodes=e.episodes, num_envs=r.num_envs,
                                           context=r.context, max_context_tokens=r.max_context_tokens,
                                           step_workers=r.step_workers, mode=r.mode)
        finally:
            self.sampler.greedy = False
        named = self._gather_episodes(named)  # each rank played a share of the eval seeds
        metrics = episode_metrics(named, "eval")
        self.logger.log(self.update, metrics, phase=f"eval:{label}")
        self.logger.log_episodes(self.update, [t for _, t in named][: self.cfg.log_episodes],
                                 phase=f"eval:{label}")
        return metrics

    # ================================================================ checkpoints
    def save(self) -> Path:
        """Write a checkpoint (rank 0). Every rank calls it: each one's sampling RNG is
        kept, so a resumed run on as many processes samples as the straight one would."""
        policy_rngs = self.dist.gather(self.policy.generator.get_state())
        extra = {
            "update": self.update,
            "optimizer": self.optimizer.state_dict(),
            "critic": self.critic.state_dict() if self.critic is not None else None,
            "critic_optimizer": (self.critic_optimizer.state_dict()
                                 if self.critic_optimizer is not None else None),
            "env_rng": self.envs.state(),
            "policy_rng": policy_rngs[0],
            "policy_rng_ranks": policy_rngs,
            "phase_done": self.phase_done,
        }
        path = (save_checkpoint(self.run_dir, self.update, model=self.model,
                                tokenizer=self.tokenizer, extra=extra) if self.dist.is_main else None)
        return self.dist.gather(path)[0]  # rank 0's path, once it is written

    def _resume(self) -> None:
        path = latest_checkpoint(self.run_dir)
        if path is None:
            raise ConfigError(f"no checkpoint under {self.run_dir}/checkpoints to resume from")
        from transformers import AutoModelForCausalLM

        state = load_checkpoint(path)
        if self.lora:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            set_peft_model_state_dict(self.model, load_file(path / "model" / "adapter_model.safetensors"))
        else:
            loaded = AutoModelForCausalLM.from_pretrained(path / "model", dtype=self.model.dtype)
            self.model.load_state_dict(loaded.state_dict())
            if self.use_reference and (self.run_dir / "reference" / "config.json").exists():
                ref = AutoModelForCausalLM.from_pretrained(self.run_dir / "reference",
                                                           dtype=self.model.dtype)
                self.ref_model.load_state_dict(ref.state_dict())
        self.optimizer.load_state_dict(state["optimizer"])
        if self.critic is not None and state.get("critic") is not None:
            self.critic.load_state_dict(state["critic"])
            self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.envs.set_state(state["env_rng"])
        rngs = state.get("policy_rng_ranks") or [state["policy_rng"]]
        if len(rngs) == self.dist.world_size:
            self.policy.generator.set_state(rngs[self.dist.rank])
        else:  # resumed on another number of processes: rank 0 goes on, the others restart
            self.policy.generator.set_state(state["policy_rng"])
            if self.dist.rank:
                self.policy.generator.manual_seed(self.dist.seed(self.cfg.seed) + int(state["update"]))
        set_rng_state(state["rng"])
        self.update = int(state["update"])
        self.phase_done = state.get("phase_done", {})
        self._sync_sampler()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _policy_normalizer(samples: list[Sample], agg: str) -> int:
    """A batch's count for its policy-loss terms: action tokens (``token-mean``) or
    sequences with any (``seq-mean-token-mean``); at least 1."""
    tokens = [sum(s.loss_mask) for s in samples]
    return max(sum(tokens) if agg == "token-mean" else sum(t > 0 for t in tokens), 1)


def _group_ids(named: list[tuple[str, Trajectory]]) -> list[int]:
    """One integer per trajectory, shared by the episodes of one (entry, seed) group.
    Ungrouped episodes (``group is None``) each get their own id."""
    ids: dict[Any, int] = {}
    out = []
    for i, (name, traj) in enumerate(named):
        key = (name, traj.group) if traj.group is not None else ("", -1 - i)
        out.append(ids.setdefault(key, len(ids)))
    return out


def _turn_groups(trajs: list[Trajectory], t_max: int, algo: Any) -> torch.Tensor | None:
    """``[N, T]`` group id of each turn: (trajectory, ``info["turn_group"]``) pairs
    numbered; None when no turn has a group. Raises for presets that need them."""
    ids: dict[Any, int] = {}
    out = torch.full((len(trajs), t_max), -1, dtype=torch.long)
    missing = 0
    for i, traj in enumerate(trajs):
        for t, turn in enumerate(traj.turns):
            key = turn.info.get("turn_group")
            if key is None:
                missing += 1
                continue
            out[i, t] = ids.setdefault((i, key), len(ids))
    if algo.needs_turn_groups and missing:
        raise ConfigError(
            f"algorithm {algo.name} compares the decisions of a turn group, but {missing} "
            "turns have no info['turn_group']; use an env that sets it (e.g. "
            "turnrl/RideDispatchDriver-v0: the drivers of one round)")
    return out if ids else None


def _whiten(adv: torch.Tensor, turn_mask: torch.Tensor, *, per_episode: bool) -> torch.Tensor:
    """Normalise advantages over the batch: over real turns, or over episodes when each
    episode has one advantage (then long episodes do not weigh more)."""
    real = turn_mask > 0
    values = adv[:, 0][real[:, 0]] if per_episode else adv[real]
    if values.numel() < 2:
        return adv
    out = (adv - values.mean()) / (values.std() + 1e-8)
    return torch.where(real, out, adv)


def _pad(rows: list[torch.Tensor], width: int) -> torch.Tensor:
    out = torch.zeros(len(rows), width)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def _spread(turn_adv: torch.Tensor, turn_index: torch.Tensor) -> torch.Tensor:
    from turnrl.trainer.advantages import spread_to_tokens

    return spread_to_tokens(turn_adv, turn_index)
