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
from turnrl.trainer.env_mix import EnvMix
from turnrl.trainer.logging import MetricsLogger
from turnrl.trainer.losses import aggregate, kl_penalty, nll_loss, policy_loss, value_loss
from turnrl.trainer.sft import ExpertTokens
from turnrl.trajectory import Sample, Trajectory, build_samples

__all__ = ["Trainer", "episode_metrics"]


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
        if not resume and latest_checkpoint(self.run_dir) is not None:
            raise ConfigError(f"{self.run_dir} already holds a run; resume it with "
                              f"`turnrl train --resume {self.run_dir}` or pick a new run_dir")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        _seed_everything(config.seed)
        self.logger = MetricsLogger(self.run_dir)
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        self.envs = EnvMix.from_config(config.env, seed=config.seed)
        self.envs.prepare(config.eval.episodes)  # e.g. generate TextWorld games in parallel
        model_path = self._model_path()
        if resume and config.model.lora and (self.run_dir / "sft_model" / "config.json").exists():
            model_path = str(self.run_dir / "sft_model")  # LoRA base after the SFT merge
        r = config.rollout
        self.policy = HFPolicy(
            model_path, temperature=r.temperature, top_p=r.top_p, max_new_tokens=r.max_new_tokens,
            device=config.model.device, dtype=config.model.dtype, seed=config.seed,
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
        from turnrl.agents.vllm import VLLMPolicy

        r = self.cfg.rollout
        sampler = VLLMPolicy(model_path, temperature=r.temperature, top_p=r.top_p,
                             max_new_tokens=r.max_new_tokens, seed=self.cfg.seed,
                             max_model_len=r.max_context_tokens + r.max_new_tokens,
                             dtype=self.cfg.model.dtype, engine_kwargs=r.vllm)
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
        if "before" not in results:
            results["before"] = self.evaluate("before")
        if self.cfg.sft.episodes and "after_sft" not in results:
            self.train_sft()
            results["after_sft"] = self.evaluate("after_sft")
            self.save()
        if self.algo.name != "sft":
            self.train_rl()
            results["after_rl"] = self.evaluate("after_rl")
        self.save()
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
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        return path

    def train_rl(self) -> None:
        from tqdm import tqdm

        if self.use_reference and self.update == 0 and not self.lora:
            # The policy RL starts from (after SFT), kept on disk for a resumed run.
            self.ref_model = self._build_reference()
            self.ref_model.save_pretrained(self.run_dir / "reference")

        total = self.cfg.total_updates
        bar = tqdm(total=total, initial=self.update, desc="rl", unit="update",
                   disable=not self.cfg.progress)
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
        # ---- rollout
        named = self._rollout()
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
        if cfg.log_tokens:
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

    def _rollout(self) -> list[tuple[str, Trajectory]]:
        r = self.cfg.rollout
        self.sampler.greedy = False
        return self.envs.collect_train(
            self.sampler, episodes=r.episodes_per_update, group_size=r.group_size,
            num_envs=r.num_envs, context=r.context, max_context_tokens=r.max_context_tokens,
            step_workers=r.step_workers, mode=r.mode,
        )

    @torch.no_grad()
    def _score(self, samples: list[Sample]) -> dict[str, Any]:
        """Logprobs of the current (old) policy, critic values, reference logprobs."""
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
        diffs = torch.cat(mismatch) if mismatch else torch.zeros(1)
        return {"old_logp": old_logp, "ref_logp": ref_logp or None, "values": values,
                "mismatch_mean": float(diffs.mean()) if diffs.numel() else 0.0,
                "mismatch_max": float(diffs.max()) if diffs.numel() else 0.0}

    def _critic_reads_hidden(self) -> bool:
        """The critic is a head on the policy's hidden states (shared or detached)."""
        return self.critic is not None and isinstance(self.critic, ValueHead)

    def _values(self, batch: Batch, hidden: torch.Tensor | None) -> torch.Tensor:
        """``[B, K]`` values at the batch's value positions (zeros without a critic)."""
        if self.critic is None:
            return torch.zeros_like(batch.value_mask)
        if isinstance(self.critic, ValueHead):
            per_token = self.critic(hidden)
        else:
            per_token = self.critic(batch.input_ids, batch.attention_mask)
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
                    sums[key] = sums.get(key, 0.0) + value
                count += 1
        return {k: v / max(count, 1) for k, v in sums.items()}

    def _minibatch(self, idx: list[int], samples, scored, turn_adv, returns, train_policy
                   ) -> dict[str, float]:
        o, a = self.cfg.optim, self.cfg.algorithm
        micro = [idx[i:i + o.micro_batch_size] for i in range(0, len(idx), o.micro_batch_size)]
        self.optimizer.zero_grad(set_to_none=True)
        if self.critic_optimizer is not None:
            self.critic_optimizer.zero_grad(set_to_none=True)
        acc: dict[str, float] = {}
        for mb in micro:
            batch = collate([samples[i] for i in mb], self.policy.pad_id, mb).to(self.device)
            old = _pad([scored["old_logp"][i] for i in mb], batch.input_ids.shape[1]).to(self.device)
            traj = torch.tensor([samples[i].trajectory for i in mb])
            adv_tokens = _spread(turn_adv[traj], batch.turn_index.cpu()).to(self.device)
            out = token_logprobs(self.model, batch.input_ids, batch.attention_mask,
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
                                       agg=a.loss_agg)
            entropy = aggregate(out["entropy"], mask, a.loss_agg)
            loss = pg - a.entropy_coef * entropy
            if scored["ref_logp"] is not None:
                ref = _pad([scored["ref_logp"][i] for i in mb], mask.shape[1]).to(self.device)
                kl = aggregate(kl_penalty(out["logprobs"], ref, a.kl_estimator), mask, a.loss_agg)
                if a.kl_in == "loss":
                    loss = loss + a.kl_coef * kl
                acc["kl_ref"] = acc.get("kl_ref", 0.0) + float(kl.detach()) / len(micro)
            v_loss = self._value_loss(batch, out.get("hidden"), mb, samples, scored, returns)
            total = (loss if train_policy else loss * 0.0)
            if v_loss is not None:
                # vf_coef weighs value against policy gradients in a shared backbone; a
                # separate critic or a detached head has its own optimizer and lr.
                total = total + (a.vf_coef if self.cfg.model.critic == "shared" else 1.0) * v_loss
                acc["value_loss"] = acc.get("value_loss", 0.0) + float(v_loss.detach()) / len(micro)
            if not torch.isfinite(total):
                acc["nan_skipped"] = 1.0
                self.optimizer.zero_grad(set_to_none=True)
                if self.critic_optimizer is not None:
                    self.critic_optimizer.zero_grad(set_to_none=True)
                return acc  # NaN guard: skip this optimizer step, log it
            (total * len(mb) / len(idx)).backward()
            acc["policy_loss"] = acc.get("policy_loss", 0.0) + float(pg.detach()) / len(micro)
            acc["entropy"] = acc.get("entropy", 0.0) + float(entropy.detach()) / len(micro)
            for key, value in pg_stats.items():
                acc[key] = acc.get(key, 0.0) + float(value) / len(micro)
        acc["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), o.max_grad_norm))
        if train_policy:
            self.optimizer.step()
        if self.critic_optimizer is not None:
            acc["critic_grad_norm"] = float(
                torch.nn.utils.clip_grad_norm_(self.critic.parameters(), o.max_grad_norm))
            self.critic_optimizer.step()
        acc["nan_skipped"] = acc.get("nan_skipped", 0.0)
        return acc

    def _value_loss(self, batch: Batch, hidden, mb, samples, scored, returns) -> torch.Tensor | None:
        if self.critic is None:
            return None
        values = self._values(batch, hidden)
        k = values.shape[1]
        old = torch.zeros(len(mb), k)
        target = torch.zeros(len(mb), k)
        train = torch.zeros(len(mb), k)
        for row, i in enumerate(mb):
            s = samples[i]
            for j, turn in enumerate(s.value_turns):
                if turn < scored["num_turns"][s.trajectory]:  # V(s_L) is a bootstrap, no target
                    old[row, j] = scored["values"][i][j]
                    target[row, j] = returns[s.trajectory, turn]
                    train[row, j] = 1.0
        dev = self.device
        loss, _ = value_loss(values, old.to(dev), target.to(dev), train.to(dev),
                             clip=self.cfg.algorithm.value_clip, agg="token-mean")
        return loss

    # ================================================================ SFT
    def train_sft(self) -> dict[str, float]:
        """Masked NLL on expert episodes gathered from ``info["expert_action"]``."""
        from tqdm import tqdm

        s_cfg, r = self.cfg.sft, self.cfg.rollout
        expert = ExpertTokens(self.policy.renderer)
        named = self.envs.collect_train(expert, episodes=s_cfg.episodes, group_size=1,
                                        num_envs=r.num_envs, context=r.context,
                                        max_context_tokens=r.max_context_tokens)
        samples = build_samples([t for _, t in named], r.context)
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=s_cfg.lr)
        rng = np.random.default_rng(self.cfg.seed)
        mb = self.cfg.optim.micro_batch_size
        self.model.train()
        losses = []
        for epoch in tqdm(range(s_cfg.epochs), desc="sft", unit="epoch", disable=not self.cfg.progress):
            order = rng.permutation(len(samples))
            epoch_loss = []
            for start in range(0, len(order), s_cfg.batch_size):
                idx = [int(i) for i in order[start:start + s_cfg.batch_size]]
                optimizer.zero_grad(set_to_none=True)
                total = 0.0
                for m0 in range(0, len(idx), mb):
                    chunk = idx[m0:m0 + mb]
                    batch = collate([samples[i] for i in chunk], self.policy.pad_id).to(self.device)
                    out = token_logprobs(self.model, batch.input_ids, batch.attention_mask)
                    loss = nll_loss(out["logprobs"], batch.loss_mask, self.cfg.algorithm.loss_agg)
                    (loss * len(chunk) / len(idx)).backward()
                    total += float(loss.detach()) * len(chunk) / len(idx)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.max_grad_norm)
                optimizer.step()
                epoch_loss.append(total)
            losses.append(float(np.mean(epoch_loss)))
            self.logger.log(epoch, {"sft/sft_loss": losses[-1]}, phase="sft")
        self.phase_done["sft_epochs"] = s_cfg.epochs
        if self.lora:
            self._merge_sft_adapters()
        self._sync_sampler()
        return {"sft_loss": losses[-1] if losses else math.nan, "sft_samples": len(samples)}

    def _merge_sft_adapters(self) -> None:
        """Fold the SFT adapters into the base and start RL with fresh ones, so the KL
        reference (adapters off) is the post-SFT policy, as it is without LoRA. The merged
        base is saved to ``run_dir/sft_model`` for a resumed run."""
        base = self.model.merge_and_unload()
        base.save_pretrained(self.run_dir / "sft_model")
        self.tokenizer.save_pretrained(self.run_dir / "sft_model")
        self._set_model(self._with_lora(base))
        self.optimizer = self._policy_optimizer()

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
        metrics = episode_metrics(named, "eval")
        self.logger.log(self.update, metrics, phase=f"eval:{label}")
        self.logger.log_episodes(self.update, [t for _, t in named][: self.cfg.log_episodes],
                                 phase=f"eval:{label}")
        return metrics

    # ================================================================ checkpoints
    def save(self) -> Path:
        extra = {
            "update": self.update,
            "optimizer": self.optimizer.state_dict(),
            "critic": self.critic.state_dict() if self.critic is not None else None,
            "critic_optimizer": (self.critic_optimizer.state_dict()
                                 if self.critic_optimizer is not None else None),
            "env_rng": self.envs.state(),
            "policy_rng": self.policy.generator.get_state(),
            "phase_done": self.phase_done,
        }
        return save_checkpoint(self.run_dir, self.update, model=self.model,
                               tokenizer=self.tokenizer, extra=extra)

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
        self.policy.generator.set_state(state["policy_rng"])
        set_rng_state(state["rng"])
        self.update = int(state["update"])
        self.phase_done = state.get("phase_done", {})
        self._sync_sampler()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
