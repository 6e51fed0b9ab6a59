"""The training recipe: build the parts from a config, then run them in order.

    rollout -> score (old logprobs, values, reference logprobs) -> turn advantages ->
    K epochs of minibatch updates -> sync the rollout engine -> evaluate -> checkpoint

Each step is a call into a component: :class:`~turnrl.trainer.env_mix.EnvMix` plays
episodes, :class:`~turnrl.trainer.learner.Learner` scores and updates, the algorithm's
row (:mod:`~turnrl.trainer.algorithms`) gives the advantage estimator, and
:mod:`~turnrl.trainer.builders` makes the models. The KL reference is the policy RL
starts from (after any SFT): a frozen copy saved to ``run_dir/reference``, or with LoRA
the base model with its adapters switched off.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from turnrl.agents.base import RolloutEngine, TokenPolicy
from turnrl.agents.hf import HFPolicy
from turnrl.errors import ConfigError
from turnrl.evaluate import episode_metrics
from turnrl.trainer import algorithms, builders
from turnrl.trainer.checkpoint import (
    claim_run_dir,
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    restore_sampler_rng,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from turnrl.trainer.config import TrainConfig
from turnrl.trainer.distributed import Distributed
from turnrl.trainer.env_mix import EnvMix
from turnrl.trainer.estimators import TurnAdvantages, compute_advantages
from turnrl.trainer.learner import BatchSettings, Learner, LossSettings, Scored
from turnrl.trainer.logging import (
    MetricsLogger,
    episode_bar,
    phase,
    token_records,
    update_metrics,
)
from turnrl.trainer.sft import ExpertTokens
from turnrl.trajectory import Sample, Trajectory, build_samples

__all__ = ["Trainer"]


class Trainer:
    """Trains a policy as a :class:`TrainConfig` says.

    Args:
        config: the run's configuration.
        resume: continue the run in ``config.run_dir`` from its last checkpoint.

    Example:
        >>> cfg = load_config("configs/quickstart.yaml")
        >>> results = Trainer(cfg).fit()
    """

    def __init__(self, config: TrainConfig, *, resume: bool = False) -> None:
        cfg, r, m = config, config.rollout, config.model
        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir)
        # One process, or one rank of several started by `accelerate launch` / torchrun.
        self.dist = Distributed.from_config(cfg.distributed, device=m.device)
        self._progress = cfg.progress and self.dist.is_main  # progress bars on rank 0 only
        self.dist.check_minibatch(cfg.optim.minibatch_size, cfg.optim.micro_batch_size)
        # one trainer per run directory (rank 0 holds the lock for the run)
        self._lock = claim_run_dir(self.run_dir, resume=resume, lock=self.dist.is_main)
        seed_everything(cfg.seed)
        self.logger = MetricsLogger(self.run_dir, enabled=self.dist.is_main,  # rank 0 writes
                                    config=cfg.to_dict())
        self.envs = EnvMix.from_config(cfg.env, seed=cfg.seed, env_pool=r.env_pool,
                                       envs_per_worker=r.envs_per_worker, ray_address=cfg.ray.address)
        self.envs.shard(self.dist.rank, self.dist.world_size)  # each rank plays its share
        with self.dist.local_main_first():  # one rank per machine writes, the others then read
            with phase("preparing episodes (e.g. generating games)", enabled=self._progress):
                self.envs.prepare(cfg.eval.episodes)  # e.g. TextWorld games, in parallel
            model_path = m.name_or_path or str(builders.build_tiny_model(
                self.run_dir / "base_model", self.envs.entries, m.tiny or {}, seed=cfg.seed,
                progress=self._progress))
        if resume and m.lora and (self.run_dir / "sft_model" / "config.json").exists():
            model_path = str(self.run_dir / "sft_model")  # LoRA base after the SFT merge
        self.algorithm = algorithms.get(cfg.algorithm.name)
        self.lora = bool(m.lora)
        # The trained model; rollouts sample from it, or from a vLLM engine that gets its
        # weights after every update.
        self.policy = HFPolicy(model_path, temperature=r.temperature, top_p=r.top_p,
                               max_new_tokens=r.max_new_tokens, device=self.dist.device or m.device,
                               dtype=m.dtype, seed=self.dist.seed(cfg.seed),
                               template_kwargs=m.chat_template_kwargs, kv_reuse=r.kv_reuse,
                               compute_dtype=m.compute_dtype)
        self.tokenizer = self.policy.tokenizer
        model = builders.with_lora(self.policy.model, m.lora) if self.lora else self.policy.model
        self.policy.model = model
        self.engine: RolloutEngine | None = None
        if r.backend == "vllm":
            self.engine = builders.build_engine(
                model_path, engines=r.vllm_engines, ray_address=cfg.ray.address,
                temperature=r.temperature, top_p=r.top_p, max_new_tokens=r.max_new_tokens,
                seed=self.dist.seed(cfg.seed), max_model_len=r.max_context_tokens + r.max_new_tokens,
                dtype=m.compute_dtype or m.dtype, engine_kwargs=r.vllm,
                template_kwargs=m.chat_template_kwargs,
                sleep_level=r.vllm_sleep, gpu_memory_utilization=r.vllm_gpu_memory_utilization)
            self.engine.sync_weights(model)  # LoRA / resumed weights, not only the base
        self.sampler: TokenPolicy = self.engine or self.policy
        self.learner = self._build_learner(model, model_path)
        self.update = 0
        self.phase_done: dict[str, Any] = {}
        if resume:
            self._resume()

    # ================================================================ set-up
    def _build_learner(self, model: Any, model_path: str) -> Learner:
        a, o, m = self.cfg.algorithm, self.cfg.optim, self.cfg.model
        if m.gradient_checkpointing:  # the policy; a separate critic's backbone below
            builders.enable_gradient_checkpointing(model)
        critic = builders.build_critic(
            m.critic if self.algorithm.needs_critic else "none", model_path, model.config.hidden_size,
            self.policy.device, dtype=model.dtype, compute_dtype=m.compute_dtype,
            gradient_checkpointing=m.gradient_checkpointing)
        # The KL reference: the policy as RL starts (reset after an SFT warm start).
        reference = builders.frozen_copy(model) if a.kl_coef > 0 and not self.lora else None
        self.dist.shard_modules([model, critic, reference])  # FSDP, before the optimizers
        return Learner(
            model, self._policy_optimizer(model), critic=critic,
            critic_optimizer=(torch.optim.AdamW(critic.parameters(), lr=o.critic_lr)
                              if critic is not None else None),
            reference=reference, reference_is_base=self.lora and a.kl_coef > 0, dist=self.dist,
            pad_id=self.policy.pad_id, temperature=self.policy.temperature, seed=self.cfg.seed,
            logprob_chunk_tokens=m.logprob_chunk_tokens, losses=LossSettings(
                clip_ratio=a.clip_ratio, dual_clip=a.dual_clip, ratio_guard=a.ratio_guard,
                tis_cap=a.tis_cap, entropy_coef=a.entropy_coef, kl_coef=a.kl_coef,
                is_mask=a.is_mask, is_mask_mode=a.is_mask_mode, is_mask_low=a.is_mask_low,
                is_mask_high=a.is_mask_high,
                kl_estimator=a.kl_estimator, kl_in_loss=a.kl_in == "loss", loss_agg=a.loss_agg,
                value_clip=a.value_clip, value_coef=a.vf_coef if m.critic == "shared" else 1.0),
            batches=BatchSettings(epochs=o.epochs_per_update, minibatch_size=o.minibatch_size,
                                  micro_batch_size=o.micro_batch_size, max_grad_norm=o.max_grad_norm,
                                  max_tokens_per_micro_batch=o.max_tokens_per_micro_batch or 0))

    def _policy_optimizer(self, model: Any) -> torch.optim.Optimizer:
        return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                 lr=self.cfg.optim.lr, weight_decay=self.cfg.optim.weight_decay)

    @property
    def model(self) -> Any:
        """The policy being trained."""
        return self.learner.model

    @property
    def critic(self) -> torch.nn.Module | None:
        return self.learner.critic

    @property
    def ref_model(self) -> torch.nn.Module | None:
        """The frozen KL reference (None with LoRA: the base with adapters off is used)."""
        return self.learner.reference

    # ================================================================ the run
    def fit(self) -> dict[str, dict[str, float]]:
        """SFT warm start (if configured), then RL updates, with evaluations before, after
        SFT and after RL. Returns those evaluations."""
        results = self.phase_done.setdefault("results", {})
        try:
            if self.cfg.eval.before and "before" not in results:
                results["before"] = self.evaluate("before")
            if self.cfg.sft.episodes and "after_sft" not in results:
                self.train_sft()
                results["after_sft"] = self.evaluate("after_sft")
                self.save()
            if self.algorithm.trains_rl:
                self.train_rl()
                results["after_rl"] = self.evaluate("after_rl")
            self.save()
            if self.dist.is_main:
                (self.run_dir / "results.json").write_text(json.dumps(results, indent=2))
            self.export()
        finally:
            self.close()
        return results

    def close(self) -> None:
        """Stop env workers and engine actors, close the logs, free the run directory."""
        self.envs.close()
        if self.engine is not None:
            self.engine.close()
        self.logger.close()
        if self._lock is not None:
            self._lock.release()

    def train_rl(self) -> None:
        """RL updates until ``total_updates``, evaluating and checkpointing as configured."""
        if self.cfg.algorithm.kl_coef > 0 and self.update == 0 and not self.lora:
            # The policy RL starts from (after SFT), kept on disk for a resumed run.
            self.learner.reset_reference()
            self.dist.save_pretrained(self.learner.reference, self.run_dir / "reference")
        total = self.cfg.total_updates
        bar = tqdm(total=total, initial=self.update, desc="rl", unit="update", disable=not self._progress)
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
    def rl_update(self, episodes: list[Trajectory] | None = None) -> dict[str, float]:
        """One update: rollout, score, advantages, K epochs of minibatches, engine sync.

        Args:
            episodes: train on these episodes (this process's share of them, as
                :meth:`rollout` would return) instead of playing new ones.

        Returns:
            The update's metrics (also appended to ``metrics.jsonl``).
        """
        cfg, t0 = self.cfg, time.time()
        # ---- rollout (each rank plays its share; every rank then holds all episodes)
        trajs = self._gather(self.rollout() if episodes is None else episodes)
        if self.engine is not None:
            self.engine.sleep()  # its memory is the update's until the next sync
        samples = build_samples(trajs, cfg.rollout.context)
        t_rollout = time.time() - t0
        if not samples:
            metrics = episode_metrics(trajs, "rollout")
            self.logger.log(self.update, metrics)
            return metrics
        # ---- old logprobs, values, reference
        scored = self.learner.score(samples)
        # ---- advantages
        adv = self.advantages(trajs, samples, scored)
        # ---- update
        t1 = time.time()
        stats = self.learner.update(samples, scored, adv, step=self.update,
                                    train_policy=self.update >= cfg.algorithm.critic_warmup_updates)
        t_update = time.time() - t1
        stats["perf/sync_s"] = self._sync_engine()
        # ---- logging
        metrics = {**episode_metrics(trajs, "rollout"), **stats,
                   **update_metrics(samples, scored, adv, t_rollout, t_update,
                                    epochs=cfg.optim.epochs_per_update,
                                    with_values=self.critic is not None)}
        if cfg.log_episodes:
            self.logger.log_episodes(self.update, trajs[: cfg.log_episodes], phase="train")
        if cfg.log_tokens and self.dist.is_main:
            t2 = time.time()
            self.logger.log_tokens(self.update, token_records(
                trajs, samples, train_logprobs=scored.old_logp,
                values=scored.values if self.critic is not None else None,
                turn_advantages=adv.advantages, tokenizer=self.tokenizer,
                context=cfg.rollout.context, episodes=cfg.log_tokens))
            metrics["perf/log_tokens_s"] = time.time() - t2
        self.logger.log(self.update, metrics)
        return metrics

    def rollout(self) -> list[Trajectory]:
        """This process's share of one update's training episodes (sampled replies)."""
        r = self.cfg.rollout
        with self.dist.gathered([self.model], enabled=self.engine is None):  # FSDP: whole
            return self.envs.collect_train(
                self.sampler, episodes=r.episodes_per_update, group_size=r.group_size,
                num_envs=r.num_envs, context=r.context, max_context_tokens=r.max_context_tokens,
                step_workers=r.step_workers, mode=r.mode, greedy=False,
                reasoning_history=r.reasoning_history)

    def advantages(self, trajectories: list[Trajectory], samples: list[Sample],
                   scored: Scored) -> TurnAdvantages:
        """Per-turn advantages of a rollout batch by the configured algorithm."""
        a = self.cfg.algorithm
        kl_in_reward = scored.ref_logp is not None and a.kl_in == "reward"
        return compute_advantages(
            self.algorithm, trajectories, samples, scored.values,
            {name: getattr(a, name) for name in self.algorithm.params},
            normalize=a.normalize_advantages, kl_coef=a.kl_coef, logprobs=scored.old_logp,
            ref_logprobs=scored.ref_logp if kl_in_reward else None)

    def _gather(self, trajectories: list[Trajectory]) -> list[Trajectory]:
        """Every rank's episodes, in the order one process would have collected them (this
        rank's own in one process)."""
        if self.dist.world_size == 1:
            return trajectories
        return self.envs.merge(self.dist.gather(trajectories))

    def _sync_engine(self) -> float:
        """Wake the rollout engine and give it the trainer's weights; seconds taken (0 for
        hf)."""
        if self.engine is None:
            return 0.0
        self.engine.wake_up()
        return self.engine.sync_weights(self.model)

    # ================================================================ SFT
    def train_sft(self) -> dict[str, float]:
        """Masked NLL on expert episodes gathered from ``info["expert_action"]`` (each rank
        plays its share of them; each rank trains on its part of every batch)."""
        s, r = self.cfg.sft, self.cfg.rollout
        with episode_bar(s.episodes, "sft data", enabled=self._progress) as bar:
            trajs = self.envs.collect_train(
                ExpertTokens(self.policy.renderer), episodes=s.episodes, group_size=1,
                num_envs=r.num_envs, context=r.context, max_context_tokens=r.max_context_tokens,
                reasoning_history=r.reasoning_history, on_episode_end=lambda _: bar.update())
        samples = build_samples(self._gather(trajs), r.context)
        optimizer = self.dist.prepare_optimizer(torch.optim.AdamW(self.model.parameters(), lr=s.lr))
        rng = np.random.default_rng(self.cfg.seed)
        self.model.train()
        losses = []
        for epoch in tqdm(range(s.epochs), desc="sft", unit="epoch", disable=not self._progress):
            order = rng.permutation(len(samples))
            parts = [self.learner.sft_step([int(i) for i in order[start:start + s.batch_size]],
                                           samples, optimizer)
                     for start in range(0, len(order), s.batch_size)]
            # each batch's loss: the sum of the ranks' parts
            losses.append(float(np.mean([sum(x) for x in zip(*self.dist.gather(parts), strict=True)])))
            self.logger.log(epoch, {"sft/sft_loss": losses[-1]}, phase="sft")
        self.phase_done["sft_epochs"] = s.epochs
        if self.lora:
            self._merge_sft_adapters()
        self._sync_engine()
        return {"sft_loss": losses[-1] if losses else math.nan, "sft_samples": len(samples)}

    def _merge_sft_adapters(self) -> None:
        """Fold the SFT adapters into the base and start RL with fresh ones, so the KL
        reference (adapters off) is the post-SFT policy, as it is without LoRA. The merged
        base is saved to ``run_dir/sft_model`` for a resumed run."""
        base = self.model.merge_and_unload()
        if self.dist.is_main:
            base.save_pretrained(self.run_dir / "sft_model")
            self.tokenizer.save_pretrained(self.run_dir / "sft_model")
        model = builders.with_lora(base, self.cfg.model.lora)
        self.policy.model = model
        self.learner.set_model(model, self._policy_optimizer(model))

    # ================================================================ evaluation
    def evaluate(self, label: str) -> dict[str, float]:
        """Play the first ``eval.episodes`` eval seeds of every env; log and return the
        ``eval/...`` metrics."""
        e, r = self.cfg.eval, self.cfg.rollout
        total = sum(len(x.eval_seeds[: e.episodes]) for x in self.envs.entries)
        with (episode_bar(total, f"eval {label}", enabled=self._progress) as bar,
              self.dist.gathered([self.model], enabled=self.engine is None)):
            trajs = self._gather(self.envs.collect_eval(
                self.sampler, episodes=e.episodes, num_envs=r.num_envs, context=r.context,
                max_context_tokens=r.max_context_tokens, step_workers=r.step_workers,
                mode=r.mode, greedy=e.greedy, reasoning_history=r.reasoning_history,
                on_episode_end=lambda _: bar.update()))
        metrics = episode_metrics(trajs, "eval")
        self.logger.log(self.update, metrics, phase=f"eval:{label}")
        self.logger.log_episodes(self.update, trajs[: self.cfg.log_episodes], phase=f"eval:{label}")
        return metrics

    # ================================================================ checkpoints
    def save(self) -> Path:
        """Write a checkpoint (rank 0). Every rank calls it: each one's sampling RNG is
        kept, so a resumed run on as many processes samples as the straight one would."""
        policy_rngs = self.dist.gather(self.policy.generator.get_state())
        extra = {"update": self.update, **self.learner.state_dict(), "env_rng": self.envs.state(),
                 "policy_rng": policy_rngs[0], "policy_rng_ranks": policy_rngs,
                 "phase_done": self.phase_done, "log_offsets": self.logger.offsets()}
        weights = self.dist.full_state_dict(self.model)  # FSDP: gathered whole; else None
        path = (save_checkpoint(self.run_dir, self.update, model=self.model, weights=weights,
                                tokenizer=self.tokenizer, extra=extra) if self.dist.is_main else None)
        return self.dist.gather(path)[0]  # rank 0's path, once it is written

    def _resume(self) -> None:
        path = latest_checkpoint(self.run_dir)
        if path is None:
            raise ConfigError(f"no checkpoint under {self.run_dir}/checkpoints to resume from")
        state = load_checkpoint(path)
        load_weights(self.model, path / "model", adapters=self.lora)
        if self.ref_model is not None and (self.run_dir / "reference" / "config.json").exists():
            load_weights(self.ref_model, self.run_dir / "reference")  # saved as RL started
        self.learner.load_state_dict(state)
        self.envs.set_state(state["env_rng"])
        restore_sampler_rng(self.policy.generator, state, rank=self.dist.rank,
                            world_size=self.dist.world_size, seed=self.dist.seed(self.cfg.seed))
        set_rng_state(state["rng"])
        self.logger.truncate(state.get("log_offsets"))  # rows after the checkpoint are replayed
        self.update = int(state["update"])
        self.phase_done = state.get("phase_done", {})
        self._sync_engine()

    def export(self, path: str | Path | None = None) -> Path:
        """Save the trained policy as a plain Hugging Face model (default
        ``run_dir/final_model``). LoRA adapters are merged into the base first, and the
        trainer keeps the merged model."""
        path = Path(path) if path is not None else self.run_dir / "final_model"
        if self.lora:
            merged = self.model.merge_and_unload()
            self.policy.model = merged
            self.learner.set_model(merged, None)  # training is over: no optimizer
            self.lora = False
        self.dist.save_pretrained(self.model, path, self.tokenizer)
        self.dist.barrier()  # every rank returns once the files are there
        return path

