"""The learner: the policy and critic being trained, their optimizers and the process
group, with the two things an RL update does to them -- score a batch, then update on it.

:meth:`Learner.score` computes, for every sample, the current (old) policy's logprobs, the
critic's values and the KL reference's logprobs (:class:`Scored`); :meth:`Learner.update`
runs K epochs of clipped minibatch updates from per-turn advantages
(:class:`~turnrl.trainer.estimators.TurnAdvantages`). :meth:`Learner.sft_step` is one
masked-NLL step. The loss math is in :mod:`turnrl.trainer.losses`.

With several training processes (:class:`~turnrl.trainer.distributed.Distributed`), each
rank scores a contiguous block of the samples and every rank gets all blocks; each
minibatch is split across ranks and then into micro-batches, every loss term divided by
the whole minibatch's count, so the all-reduced gradient is one process's gradient.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from turnrl.trainer import fsdp
from turnrl.trainer import turns as T
from turnrl.trainer.batching import Batch, collate, pack_by_tokens, token_logprobs
from turnrl.trainer.critic import ValueHead, gather_values
from turnrl.trainer.distributed import Distributed, shard_range
from turnrl.trainer.estimators import TurnAdvantages
from turnrl.trainer.losses import (
    aggregate,
    importance_mask,
    kl_penalty,
    nll_loss,
    policy_loss,
    value_loss,
)
from turnrl.trajectory import Sample

__all__ = ["Learner", "LossSettings", "BatchSettings", "Scored", "policy_normalizer"]

#: Update statistics reported as their largest value (over minibatches and ranks); the
#: others are means over minibatches, summed over ranks where each rank holds a part.
_MAX_STATS = ("ratio_max",)
#: Statistics every rank computes alike (after the gradient all-reduce): not summed.
_SAME_ON_EVERY_RANK = ("grad_norm", "critic_grad_norm", "nan_skipped")


@dataclass(frozen=True)
class LossSettings:
    """The loss terms of an RL update (0 switches an optional term off).

    Attributes:
        clip_ratio: PPO clip range for the importance ratio.
        dual_clip: dual-clip constant (> 1) for negative advantages.
        ratio_guard: VL-DAC: a turn with any ratio above this uses only the clipped term.
        tis_cap: truncated importance weights between rollout engine and trainer.
        is_mask, is_mask_mode, is_mask_low, is_mask_high: importance-sampling masking
            (:func:`~turnrl.trainer.losses.importance_mask`): "none", "token" or "sequence",
            the sequence ratio ("product" or "geometric") and the band of kept ratios.
        entropy_coef: entropy bonus.
        kl_coef: KL to the reference; ``kl_in_loss`` adds it to the loss (else it went into
            the rewards, and here it is only logged), with ``kl_estimator``.
        loss_agg: ``token-mean`` or ``seq-mean-token-mean``.
        value_clip: clip range of the value loss.
        value_coef: weight of the value loss in the total (the config's ``vf_coef`` for a
            critic sharing the policy's backbone, else 1: a separate critic or a detached
            head has its own optimizer).
    """

    clip_ratio: float = 0.2
    dual_clip: float = 0.0
    ratio_guard: float = 0.0
    tis_cap: float = 0.0
    is_mask: str = "none"
    is_mask_mode: str = "product"
    is_mask_low: float = 0.5
    is_mask_high: float = 2.0
    entropy_coef: float = 0.0
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    kl_in_loss: bool = True
    loss_agg: str = "token-mean"
    value_clip: float = 0.2
    value_coef: float = 1.0


@dataclass(frozen=True)
class BatchSettings:
    """How an update walks its samples: ``epochs`` passes, optimizer steps of
    ``minibatch_size`` samples (over all processes), forward passes of at most
    ``micro_batch_size`` samples (per process), gradient norm clipped at ``max_grad_norm``.

    ``max_tokens_per_micro_batch`` > 0 forms the forward passes by tokens instead
    (scoring, updates and SFT): a process's samples sorted by length and packed greedily
    into micro-batches of at most that many padded tokens (a longer sample alone);
    ``micro_batch_size`` is then not used.
    """

    epochs: int = 2
    minibatch_size: int = 8
    micro_batch_size: int = 4
    max_grad_norm: float = 1.0
    max_tokens_per_micro_batch: int = 0


@dataclass
class Scored:
    """What :meth:`Learner.score` computed for each sample of a batch (same order).

    Attributes:
        old_logp: ``[S_i]`` per sample: the current policy's logprob of each token.
        ref_logp: ``[S_i]`` per sample: the KL reference's; None without a reference.
        values: ``[K_i]`` per sample: the critic's values at its value positions (zeros
            without a critic).
        mismatch_mean, mismatch_max: |trainer - rollout| logprob of the sampled tokens.
        keep: ``[S_i]`` per sample: 1 on the action tokens the update trains on (the loss
            mask less the importance-sampling mask); None: every action token.
    """

    old_logp: list[torch.Tensor]
    ref_logp: list[torch.Tensor] | None
    values: list[torch.Tensor]
    mismatch_mean: float = 0.0
    mismatch_max: float = 0.0
    keep: list[torch.Tensor] | None = None


def policy_normalizer(samples: Sequence[Sample], agg: str,
                      keep: Sequence[torch.Tensor] | None = None) -> int:
    """A batch's count for its policy-loss terms: action tokens (``token-mean``) or
    sequences with any (``seq-mean-token-mean``); at least 1. With ``keep`` (``[S_i]`` per
    sample, :attr:`Scored.keep`) only the kept tokens count."""
    tokens = ([sum(s.loss_mask) for s in samples] if keep is None
              else [int(k.sum()) for k in keep])
    return max(sum(tokens) if agg == "token-mean" else sum(t > 0 for t in tokens), 1)


class Learner:
    """The trained modules and how they are updated.

    Args:
        model: the policy (a Hugging Face causal LM, possibly with LoRA adapters).
        optimizer: over the policy's trainable parameters.
        critic: a :class:`~turnrl.trainer.critic.ValueModel` or
            :class:`~turnrl.trainer.critic.ValueHead`, or None.
        critic_optimizer: the critic's optimizer (None without a critic).
        reference: the frozen KL reference, or None; with ``reference_is_base`` the KL
            reference is ``model`` with its LoRA adapters switched off instead.
        dist: the process group (one process: every operation is local).
        pad_id: token id that pads batches.
        temperature: logprobs are of ``softmax(logits / temperature)``, as sampled.
        losses, batches: the update's loss terms and batch sizes.
        seed: seeds the minibatch order (with the update number).
        logprob_chunk_tokens: apply the LM head to this many positions at a time (0: full
            logits; see :func:`~turnrl.trainer.batching.token_logprobs`).
    """

    def __init__(self, model: Any, optimizer: torch.optim.Optimizer, *,
                 critic: torch.nn.Module | None, critic_optimizer: torch.optim.Optimizer | None,
                 reference: torch.nn.Module | None, reference_is_base: bool, dist: Distributed,
                 pad_id: int, temperature: float, losses: LossSettings, batches: BatchSettings,
                 seed: int = 0, logprob_chunk_tokens: int = 0) -> None:
        self.dist = dist
        self.critic = critic
        self.reference = reference
        self.reference_is_base = reference_is_base
        self.pad_id = pad_id
        self.temperature = temperature
        self.losses = losses
        self.batches = batches
        self.seed = seed
        self.chunk_tokens = logprob_chunk_tokens
        self.device = next(model.parameters()).device
        self.set_model(model, optimizer)
        self.critic_optimizer = critic_optimizer
        self.train_critic = critic
        if critic is not None:
            # The critic's training wrapper (DDP in several processes); scoring and
            # checkpoints use the plain module, which holds the same parameters.
            self.train_critic, self.critic_optimizer = dist.prepare(critic, critic_optimizer)

    def set_model(self, model: Any, optimizer: torch.optim.Optimizer | None) -> None:
        """Train ``model`` with ``optimizer`` from now on (e.g. after merging LoRA adapters).
        ``optimizer=None`` keeps ``model`` for scoring only (the exported, merged policy):
        no training wrapper, and the old optimizer is dropped."""
        self.model = model
        if optimizer is None:
            self.train_model, self.optimizer = model, None
            return
        self.train_model, self.optimizer = self.dist.prepare(model, optimizer)

    @property
    def has_reference(self) -> bool:
        return self.reference is not None or self.reference_is_base

    @torch.no_grad()
    def reset_reference(self) -> None:
        """Make the frozen KL reference the current policy (e.g. after SFT), copying the
        weights in place (shard by shard under FSDP, where both are sharded alike)."""
        own = self.reference.state_dict(keep_vars=True)
        for name, tensor in self.model.state_dict(keep_vars=True).items():
            own[name].copy_(tensor)

    # ================================================================ scoring
    def score(self, samples: Sequence[Sample]) -> Scored:
        """Logprobs of the current (old) policy, critic values and reference logprobs of
        every sample; each rank scores a contiguous block, every rank gets all blocks."""
        block = self.dist.shard(len(samples))
        parts = self.dist.gather(self._score_block(samples[block.start:block.stop],
                                                   passes=self._score_passes(samples),
                                                   filler=samples[0]))
        count = sum(p["mismatch_count"] for p in parts)
        return Scored(
            old_logp=[x for p in parts for x in p["old_logp"]],
            ref_logp=[x for p in parts for x in p["ref_logp"]] if self.has_reference else None,
            values=[x for p in parts for x in p["values"]],
            mismatch_mean=sum(p["mismatch_sum"] for p in parts) / count if count else 0.0,
            mismatch_max=max(p["mismatch_max"] for p in parts),
        )

    @torch.no_grad()
    def _score_block(self, samples: Sequence[Sample], *, passes: int = 0,
                     filler: Sample | None = None) -> dict[str, Any]:
        """Score this rank's ``samples``, then run dummy passes on ``filler`` up to
        ``passes`` forward passes in all (FSDP: as many as every other rank)."""
        n_samples = len(samples)
        old_logp: list[Any] = [None] * n_samples
        values: list[Any] = [None] * n_samples
        ref_logp: list[Any] = [None] * n_samples if self.has_reference else []
        mismatch = []
        self.model.eval()
        groups = self._score_groups(samples)
        for group in groups:
            chunk = [samples[j] for j in group]
            batch, logp, v, ref = self._score_pass(chunk)
            for i, (j, s) in enumerate(zip(group, chunk, strict=True)):
                n = len(s)
                old_logp[j] = logp[i, :n].cpu()
                mask = batch.loss_mask[i, :n].cpu() > 0
                diff = (logp[i, :n].cpu() - batch.rollout_logprobs[i, :n].cpu()).abs()
                mismatch.append(diff[mask])
                values[j] = v[i, : len(s.value_positions)].cpu()
                if ref is not None:
                    ref_logp[j] = ref[i, :n].cpu()
        for _ in range(passes - len(groups)):
            self._score_pass([filler])
        self.dist.reshard([self.model, self.critic, self.reference])
        self.model.train()
        diffs = torch.cat(mismatch) if mismatch else torch.zeros(0)
        return {"old_logp": old_logp, "ref_logp": ref_logp, "values": values,
                "mismatch_sum": float(diffs.sum()), "mismatch_count": diffs.numel(),
                "mismatch_max": float(diffs.max()) if diffs.numel() else 0.0}

    def _score_pass(self, chunk: list[Sample]) -> tuple[Batch, torch.Tensor, torch.Tensor,
                                                         torch.Tensor | None]:
        """One scoring forward of the policy, critic and reference on ``chunk``: its batch,
        ``[B, S]`` logprobs, ``[B, K]`` values and ``[B, S]`` reference logprobs (None
        without a reference)."""
        batch = collate(chunk, self.pad_id).to(self.device)
        out = token_logprobs(self.model, batch.input_ids, batch.attention_mask,
                             temperature=self.temperature, with_hidden=self.critic_reads_hidden,
                             chunk_tokens=self.chunk_tokens)
        values = self.values(batch, out.get("hidden"))
        ref = self.reference_logprobs(batch) if self.has_reference else None
        return batch, out["logprobs"], values, ref

    def _score_passes(self, samples: Sequence[Sample]) -> int:
        """FSDP: the most scoring passes any rank runs on its block of ``samples`` (a
        sharded forward is a collective, so every rank runs that many); 0 otherwise."""
        if not self.dist.sharded:
            return 0
        blocks = [shard_range(len(samples), r, self.dist.world_size) for r in range(self.dist.world_size)]
        return max(len(self._score_groups(samples[b.start:b.stop])) for b in blocks)

    def _score_groups(self, samples: Sequence[Sample]) -> list[list[int]]:
        """Positions of ``samples`` per scoring pass: consecutive runs of
        ``micro_batch_size``, or packed by tokens (``max_tokens_per_micro_batch``)."""
        budget, size = self.batches.max_tokens_per_micro_batch, self.batches.micro_batch_size
        if budget:
            return pack_by_tokens([len(s) for s in samples], budget)
        return [list(range(start, min(start + size, len(samples))))
                for start in range(0, len(samples), size)]

    def reference_logprobs(self, batch: Batch) -> torch.Tensor:
        """``[B, S]`` logprobs of the KL reference: the frozen copy, or (LoRA) the
        adapter-free base."""
        if self.reference_is_base:
            with self.model.disable_adapter():
                return token_logprobs(self.model, batch.input_ids, batch.attention_mask,
                                      temperature=self.temperature,
                                      chunk_tokens=self.chunk_tokens)["logprobs"]
        return token_logprobs(self.reference, batch.input_ids, batch.attention_mask,
                              temperature=self.temperature, chunk_tokens=self.chunk_tokens)["logprobs"]

    @property
    def critic_reads_hidden(self) -> bool:
        """The critic is a head on the policy's hidden states (shared or detached)."""
        return isinstance(self.critic, ValueHead)

    def values(self, batch: Batch, hidden: torch.Tensor | None, *, train: bool = False) -> torch.Tensor:
        """``[B, K]`` values at the batch's value positions (zeros without a critic);
        ``train``: through the critic's training wrapper (in the update)."""
        if self.critic is None:
            return torch.zeros_like(batch.value_mask)
        critic = self.train_critic if train else self.critic
        if self.critic_reads_hidden:
            per_token = critic(hidden)
        else:
            per_token = critic(batch.input_ids, batch.attention_mask)
        return gather_values(per_token, batch.value_positions, batch.value_mask)

    # ================================================================ RL update
    def update(self, samples: Sequence[Sample], scored: Scored, adv: TurnAdvantages, *,
               train_policy: bool = True, step: int = 0) -> dict[str, float]:
        """``epochs`` passes of clipped minibatch updates; mean statistics per optimizer
        step (largest for ``ratio_max``), and with an importance-sampling mask
        ``is_masked_frac``: the share of the batch's action tokens it leaves out.

        Args:
            train_policy: False trains the critic only (VL-DAC's warm-up).
            step: the update number (with ``seed``, it orders the minibatches).
        """
        b = self.batches
        scored = self.with_importance_mask(samples, scored)
        sums: dict[str, float] = {}
        count = 0
        order_rng = np.random.default_rng(self.seed * 100_003 + step)
        for _ in range(b.epochs):
            order = order_rng.permutation(len(samples))
            for start in range(0, len(order), b.minibatch_size):
                idx = [int(i) for i in order[start:start + b.minibatch_size]]
                stats = self._minibatch(idx, samples, scored, adv, train_policy)
                for key, value in stats.items():
                    sums[key] = (max(sums.get(key, value), value) if key in _MAX_STATS
                                 else sums.get(key, 0.0) + value)
                count += 1
        sums = self._sum_over_ranks(sums)
        stats = {k: v if k in _MAX_STATS else v / max(count, 1) for k, v in sums.items()}
        if scored.keep is not None:  # every rank holds every sample's mask: not summed
            kept = sum(float(k.sum()) for k in scored.keep)
            stats["is_masked_frac"] = 1.0 - kept / max(sum(sum(s.loss_mask) for s in samples), 1)
        return stats

    def with_importance_mask(self, samples: Sequence[Sample], scored: Scored) -> Scored:
        """``scored`` with :attr:`Scored.keep` set by the importance-sampling mask
        (``losses.is_mask``; trainer logprobs before the update vs the rollout's), or as it
        is without one. The mask is fixed for the whole update."""
        c = self.losses
        if c.is_mask == "none":
            return scored
        keep = []
        for s, old in zip(samples, scored.old_logp, strict=True):
            rows = [old, torch.tensor(s.rollout_logprobs), torch.tensor(s.loss_mask)]
            keep.append(importance_mask(*(r[None].float() for r in rows), level=c.is_mask,
                                        mode=c.is_mask_mode, low=c.is_mask_low,
                                        high=c.is_mask_high)[0])
        return dataclasses.replace(scored, keep=keep)

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

    def micro_batches(self, idx: list[int], samples: Sequence[Sample]) -> list[tuple[list[int], bool]]:
        """This rank's share of the batch ``idx`` as micro-batches of at most
        ``micro_batch_size`` samples (or packed by tokens: ``max_tokens_per_micro_batch``),
        as many on every rank, so that all ranks run the same number of forward and
        backward passes. A rank left with fewer micro-batches pads with dummy ones
        (``True`` in the pair): a real sample whose loss is masked out."""
        if self.batches.max_tokens_per_micro_batch:
            return self._token_micro_batches(idx, samples)
        size = self.batches.micro_batch_size
        n_micro = max(1, -(-len(idx) // (self.dist.world_size * size)))
        block = self.dist.shard(len(idx))
        mine = idx[block.start:block.stop]
        out = []
        for k in range(n_micro):
            part = shard_range(len(mine), k, n_micro)
            out.append(([mine[i] for i in part], False) if len(part) else (idx[:1], True))
        return out

    def _token_micro_batches(self, idx: list[int], samples: Sequence[Sample]
                             ) -> list[tuple[list[int], bool]]:
        """:meth:`micro_batches` by tokens. Every rank holds every sample, so each one packs
        every rank's share and pads its own to the most micro-batches any rank has (no
        communication); a dummy pass runs the minibatch's shortest sample."""
        budget = self.batches.max_tokens_per_micro_batch
        packs = []
        for rank in range(self.dist.world_size):
            block = shard_range(len(idx), rank, self.dist.world_size)
            share = idx[block.start:block.stop]
            groups = pack_by_tokens([len(samples[i]) for i in share], budget)
            packs.append([([share[i] for i in group], False) for group in groups])
        mine = packs[self.dist.rank]
        shortest = min(idx, key=lambda i: (len(samples[i]), i))
        return mine + [([shortest], True)] * (max(1, *map(len, packs)) - len(mine))

    def _normalizers(self, chosen: list[Sample], adv: TurnAdvantages,
                     keep: list[torch.Tensor] | None = None) -> dict[str, float]:
        """What the loss terms of a minibatch are divided by, so that its pieces
        (micro-batches, ranks) add up to it: ``policy`` (action tokens for token-mean,
        sequences with action tokens for seq-mean-token-mean; only ``keep``'s tokens with an
        importance-sampling mask), ``tokens`` and ``values`` (value targets)."""
        values = 0
        if self.critic is not None:
            values = sum(turn < adv.num_turns[s.trajectory] for s in chosen for turn in s.value_turns)
        return {"policy": policy_normalizer(chosen, self.losses.loss_agg, keep),
                "tokens": policy_normalizer(chosen, "token-mean", keep), "values": max(values, 1)}

    def _minibatch(self, idx: list[int], samples: Sequence[Sample], scored: Scored,
                   adv: TurnAdvantages, train_policy: bool) -> dict[str, float]:
        """One optimizer step on the samples ``idx`` (the same list on every rank). Each
        rank runs its share in micro-batches, gradients are all-reduced at the last one,
        and every rank takes the same step. A non-finite loss or gradient on any rank skips
        the step on all of them (NaN guard)."""
        keep = [scored.keep[i] for i in idx] if scored.keep is not None else None
        norm = self._normalizers([samples[i] for i in idx], adv, keep)
        modules = [m for m in (self.train_model, self.train_critic) if m is not None]
        self._zero_grad()
        acc: dict[str, float] = {}
        finite = True
        micro = self.micro_batches(idx, samples)
        for k, (mb, dummy) in enumerate(micro):
            with self.dist.sync(modules, enabled=k == len(micro) - 1):
                total, stats = self._micro_loss(mb, dummy, samples, scored, adv, norm, train_policy)
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
            acc["grad_norm"] = self.dist.clip_grad_norm(self.model, self.batches.max_grad_norm)
            if self.critic is not None:
                acc["critic_grad_norm"] = self.dist.clip_grad_norm(self.critic,
                                                                   self.batches.max_grad_norm)
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

    def _micro_loss(self, mb: list[int], dummy: bool, samples: Sequence[Sample], scored: Scored,
                    adv: TurnAdvantages, norm: dict[str, float], train_policy: bool
                    ) -> tuple[torch.Tensor, dict[str, float]]:
        """A micro-batch's part of its minibatch's loss (every term divided by the
        minibatch's count in ``norm``), and its part of the statistics (none for a dummy)."""
        c = self.losses
        chunk = [samples[i] for i in mb]
        batch = collate(chunk, self.pad_id, mb).to(self.device)
        if dummy:  # runs the passes every rank must run; adds nothing
            batch.loss_mask = torch.zeros_like(batch.loss_mask)
        old = T.pad_rows([scored.old_logp[i] for i in mb], batch.input_ids.shape[1]).to(self.device)
        adv_tokens = T.sample_advantages(adv.advantages, chunk, batch.turn_index.cpu()).to(self.device)
        out = token_logprobs(self.train_model, batch.input_ids, batch.attention_mask,
                             temperature=self.temperature, with_entropy=True,
                             with_hidden=self.critic_reads_hidden, chunk_tokens=self.chunk_tokens)
        mask = batch.loss_mask
        if scored.keep is not None:  # importance-sampling mask: dropped tokens count nowhere
            mask = mask * T.pad_rows([scored.keep[i] for i in mb], mask.shape[1]).to(self.device)
        weights = None
        if c.tis_cap:  # rollout engine vs trainer: truncated importance weights
            weights = torch.exp(old - batch.rollout_logprobs).clamp(max=c.tis_cap) * mask
        pg, pg_stats = policy_loss(out["logprobs"], old, adv_tokens, mask,
                                   clip_low=c.clip_ratio, clip_high=c.clip_ratio,
                                   dual_clip=c.dual_clip or None, ratio_guard=c.ratio_guard or None,
                                   turn_index=batch.turn_index, token_weights=weights,
                                   agg=c.loss_agg, normalizer=norm["policy"])
        entropy = aggregate(out["entropy"], mask, c.loss_agg, normalizer=norm["policy"])
        loss = pg - c.entropy_coef * entropy
        # Token means over this micro-batch, weighted by its share of the minibatch's tokens.
        share = float(mask.sum()) / norm["tokens"]
        stats = {"policy_loss": float(pg.detach()), "entropy": float(entropy.detach())}
        for key, value in pg_stats.items():
            stats[key] = float(value) if key in _MAX_STATS else float(value) * share
        if scored.ref_logp is not None:
            ref = T.pad_rows([scored.ref_logp[i] for i in mb], mask.shape[1]).to(self.device)
            kl = aggregate(kl_penalty(out["logprobs"], ref, c.kl_estimator), mask, c.loss_agg,
                           normalizer=norm["policy"])
            if c.kl_in_loss:
                loss = loss + c.kl_coef * kl
            stats["kl_ref"] = float(kl.detach())
        v_loss = None
        if self.critic is not None:
            v_loss = self.value_loss(batch, out.get("hidden"), chunk, [scored.values[i] for i in mb],
                                     adv, normalizer=norm["values"], dummy=dummy)
        total = loss if train_policy else loss * 0.0
        if v_loss is not None:
            total = total + c.value_coef * v_loss
            stats["value_loss"] = float(v_loss.detach())
        return total, ({} if dummy else stats)

    def value_loss(self, batch: Batch, hidden: torch.Tensor | None, samples: Sequence[Sample],
                   old_values: Sequence[torch.Tensor], adv: TurnAdvantages, *,
                   normalizer: float | None = None, dummy: bool = False) -> torch.Tensor:
        """Clipped value loss of a batch of ``samples`` at their value positions, against
        the returns in ``adv``; reads of V(s_L) (the bootstrap) are not trained.

        Args:
            hidden: ``[B, S, H]`` the policy's last hidden state (a head critic reads it).
            old_values: ``[K_i]`` the values scored before the update (for clipping).
            normalizer: the whole minibatch's count of value targets.
            dummy: train nothing (a rank's padding micro-batch).
        """
        values = self.values(batch, hidden, train=True)
        k = values.shape[1]
        old = torch.zeros(len(samples), k)
        target = torch.zeros(len(samples), k)
        train = torch.zeros(len(samples), k)
        for row, s in enumerate(samples):
            for j, turn in enumerate(s.value_turns):
                if turn < adv.num_turns[s.trajectory] and not dummy:  # V(s_L): bootstrap only
                    old[row, j] = old_values[row][j]
                    target[row, j] = adv.returns[s.trajectory, turn]
                    train[row, j] = 1.0
        dev = self.device
        loss, _ = value_loss(values, old.to(dev), target.to(dev), train.to(dev),
                             clip=self.losses.value_clip or None, agg="token-mean",
                             normalizer=normalizer)
        return loss

    # ================================================================ SFT
    def sft_step(self, idx: list[int], samples: Sequence[Sample], optimizer: Any) -> float:
        """One SFT optimizer step (masked NLL of the action tokens, aggregated as
        ``losses.loss_agg``) on the samples ``idx``; this rank's part of its loss."""
        loss_agg = self.losses.loss_agg
        normalizer = policy_normalizer([samples[i] for i in idx], loss_agg)
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        micro = self.micro_batches(idx, samples)
        for k, (chunk, dummy) in enumerate(micro):
            with self.dist.sync([self.train_model], enabled=k == len(micro) - 1):
                batch = collate([samples[i] for i in chunk], self.pad_id).to(self.device)
                mask = torch.zeros_like(batch.loss_mask) if dummy else batch.loss_mask
                out = token_logprobs(self.train_model, batch.input_ids, batch.attention_mask,
                                     chunk_tokens=self.chunk_tokens)
                loss = nll_loss(out["logprobs"], mask, loss_agg, normalizer=normalizer)
                self.dist.backward(loss)
                total += float(loss.detach())
        self.dist.clip_grad_norm(self.model, self.batches.max_grad_norm)
        optimizer.step()
        return total

    # ================================================================ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Optimizer and critic state (the policy's weights are saved as a model dir), in
        the one-process layout: FSDP shards are gathered whole (every rank must call it;
        rank 0 keeps them)."""
        state = {
            "optimizer": self.optimizer.state_dict(),
            "critic": self.critic.state_dict() if self.critic is not None else None,
            "critic_optimizer": (self.critic_optimizer.state_dict()
                                 if self.critic_optimizer is not None else None),
        }
        return fsdp.whole_tensors(state, keep=self.dist.is_main)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load :meth:`state_dict` (written by any number of processes, sharded or not)."""
        self.optimizer.load_state_dict(fsdp.sharded_optimizer_state(self.optimizer, state["optimizer"]))
        if self.critic is not None and state.get("critic") is not None:
            self.critic.load_state_dict(fsdp.sharded_like(self.critic, state["critic"]))
            self.critic_optimizer.load_state_dict(
                fsdp.sharded_optimizer_state(self.critic_optimizer, state["critic_optimizer"]))
