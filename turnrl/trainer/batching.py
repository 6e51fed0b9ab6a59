"""From :class:`~turnrl.trajectory.Sample` lists to padded tensors, and the forward pass
that gives per-token logprobs.

:func:`token_logprobs` either takes the model's full logits (``[B, S, V]``; simple, but
with a 151,936-token vocabulary that is 0.6 MB per position in float32, several times over
for log-softmax, entropy and backward) or, with ``chunk_tokens``, applies the LM head to
the final hidden states a chunk of positions at a time, so that its memory grows with the
chunk, not with the sequence. :func:`pack_by_tokens` groups samples into micro-batches by
token count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from turnrl.errors import UnsupportedSettingsError
from turnrl.trainer.losses import entropy_from_logits
from turnrl.trajectory import Sample

__all__ = ["Batch", "collate", "token_logprobs", "pack_by_tokens", "lm_head_of"]


@dataclass
class Batch:
    """Right-padded tensors for a list of samples.

    ``[B, S]``: input_ids, attention_mask, loss_mask, turn_index, rollout_logprobs.
    ``[B, K]``: value_positions, value_turns, value_mask (K = most value reads per sample).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    turn_index: torch.Tensor
    rollout_logprobs: torch.Tensor
    value_positions: torch.Tensor
    value_turns: torch.Tensor
    value_mask: torch.Tensor
    samples: list[int]

    def to(self, device: Any) -> Batch:
        fields = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()}
        return Batch(**fields)


def collate(samples: Sequence[Sample], pad_id: int, indices: Sequence[int] | None = None) -> Batch:
    """Pad ``samples`` on the right into a :class:`Batch`."""
    b = len(samples)
    s = max(len(x) for x in samples)
    k = max(len(x.value_positions) for x in samples)
    input_ids = torch.full((b, s), pad_id, dtype=torch.long)
    attention = torch.zeros((b, s), dtype=torch.long)
    loss_mask = torch.zeros((b, s), dtype=torch.float32)
    turn_index = torch.full((b, s), -1, dtype=torch.long)
    logps = torch.zeros((b, s), dtype=torch.float32)
    vpos = torch.zeros((b, k), dtype=torch.long)
    vturn = torch.full((b, k), -1, dtype=torch.long)
    vmask = torch.zeros((b, k), dtype=torch.float32)
    for i, x in enumerate(samples):
        n = len(x)
        input_ids[i, :n] = torch.tensor(x.input_ids)
        attention[i, :n] = 1
        loss_mask[i, :n] = torch.tensor(x.loss_mask, dtype=torch.float32)
        turn_index[i, :n] = torch.tensor(x.turn_index)
        logps[i, :n] = torch.tensor(x.rollout_logprobs, dtype=torch.float32)
        m = len(x.value_positions)
        vpos[i, :m] = torch.tensor(x.value_positions)
        vturn[i, :m] = torch.tensor(x.value_turns)
        vmask[i, :m] = 1.0
    return Batch(input_ids, attention, loss_mask, turn_index, logps, vpos, vturn, vmask,
                 list(indices) if indices is not None else list(range(b)))


def token_logprobs(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    with_hidden: bool = False,
    chunk_tokens: int = 0,
) -> dict[str, torch.Tensor]:
    """Logprob of each token given the ones before it.

    Args:
        model: a Hugging Face causal LM (possibly with peft adapters, possibly in a
            ``DistributedDataParallel`` wrapper).
        input_ids, attention_mask: ``[B, S]``, right-padded.
        temperature: logprobs are of ``softmax(logits / temperature)``.
        with_entropy, with_hidden: also return those.
        chunk_tokens: 0 takes the model's full logits ``[B, S, V]``. N > 0 takes the final
            hidden states from the model's backbone and applies the LM head to N positions
            at a time (positions of all rows together, padding skipped), so no ``[B, S, V]``
            tensor exists; in backward each chunk's logits are recomputed rather than kept
            (:class:`_LinearHeadLogprobs`). Same values as 0 up to float rounding.

    Returns:
        A dict with ``logprobs [B, S]`` (float32; position 0, which has no context, is 0),
        and optionally ``entropy [B, S]`` (float32; of the distribution that produced each
        token) and ``hidden [B, S, H]`` (last hidden state, after the final norm). With
        ``chunk_tokens``, positions whose token is padding get 0 in both.

    Raises:
        UnsupportedSettingsError: ``chunk_tokens`` with a model whose logits are
            transformed in a way the chunked path does not reproduce (see
            :func:`lm_head_of`).
    """
    if chunk_tokens > 0:
        return _chunked_token_logprobs(model, input_ids, attention_mask, temperature=temperature,
                                       with_entropy=with_entropy, with_hidden=with_hidden,
                                       chunk_tokens=chunk_tokens)
    out = model(input_ids=input_ids, attention_mask=attention_mask,
                output_hidden_states=with_hidden, use_cache=False)
    logits = out.logits[:, :-1, :].float() / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    chosen = torch.gather(logp_all, -1, input_ids[:, 1:, None]).squeeze(-1)
    zeros = chosen.new_zeros(chosen.shape[0], 1)
    result = {"logprobs": torch.cat([zeros, chosen], dim=1)}
    if with_entropy:
        result["entropy"] = torch.cat([zeros, entropy_from_logits(logits)], dim=1)
    if with_hidden:
        result["hidden"] = out.hidden_states[-1]
    return result


# ---------------------------------------------------------------------- chunked LM head
#: Model families whose forward rescales the LM head's output before the softmax: the
#: config attribute, and whether the logits are divided (else multiplied) by it.
_LOGIT_SCALES = {"cohere": ("logit_scale", False), "granite": ("logits_scaling", True)}
#: Config attributes (with their neutral value) through which other models transform
#: their logits (softcapping, multipliers); the chunked path refuses them.
_LOGIT_TRANSFORMS = {"final_logit_softcapping": None, "logit_scale": None, "logits_scaling": 1.0,
                     "lm_head_multiplier": 1.0, "output_multiplier": 1.0, "dim_model_base": None}


def lm_head_of(model: Any) -> tuple[torch.nn.Module, torch.nn.Module, float]:
    """The backbone (``get_decoder()``), the LM head (``get_output_embeddings()``, tied to
    the input embeddings or not) and the factor the model multiplies the head's output by
    before the softmax (Cohere's ``logit_scale``, Granite's ``1 / logits_scaling``; else 1)
    of a causal LM, a peft model around one, or either in a ``DistributedDataParallel``.

    Raises:
        UnsupportedSettingsError: the model has no separate LM head, or transforms its
            logits otherwise (e.g. Gemma 2/3's ``final_logit_softcapping``).
    """
    lm = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    head = lm.get_output_embeddings()
    config = lm.config.get_text_config()
    fix = "; compute logprobs from the full logits instead (model.logprob_chunk_tokens=0)"
    if head is None:
        raise UnsupportedSettingsError(f"{type(lm).__name__} has no output embeddings (LM head) "
                                       f"for chunked logprobs{fix}")
    family = next((f for f in _LOGIT_SCALES if str(config.model_type).startswith(f)), None)
    scale_name, divide = _LOGIT_SCALES.get(family, ("", False))
    for name, neutral in _LOGIT_TRANSFORMS.items():
        value = getattr(config, name, None)
        if name != scale_name and value is not None and value != neutral:
            raise UnsupportedSettingsError(
                f"chunked logprobs do not reproduce {config.model_type}'s {name}={value!r} "
                f"(a transformation of the logits){fix}")
    value = float(getattr(config, scale_name, None) or 1.0) if family else 1.0
    return lm.get_decoder(), head, (1.0 / value if divide else value)


def _chunked_token_logprobs(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                            temperature: float, with_entropy: bool, with_hidden: bool,
                            chunk_tokens: int) -> dict[str, torch.Tensor]:
    decoder, head, multiplier = lm_head_of(model)
    hidden = _final_hidden(model, decoder, input_ids, attention_mask)  # [B, S, H]
    valid = attention_mask[:, 1:] > 0  # [B, S-1]: the predicted token is not padding
    rows = hidden[:, :-1][valid]  # [N, H]
    targets = input_ids[:, 1:][valid]  # [N]
    if type(head) is torch.nn.Linear:  # exactly a Linear: its weight is the whole head
        logp, entropy = _LinearHeadLogprobs.apply(rows, head.weight, head.bias, targets, multiplier,
                                                  temperature, chunk_tokens, with_entropy)
    else:  # e.g. a peft-wrapped head: call the module, checkpointed per chunk
        logp, entropy = _module_head_logprobs(head, rows, targets, multiplier, temperature,
                                              chunk_tokens, with_entropy)
    result = {"logprobs": _unflatten(logp, valid)}
    if with_entropy:
        result["entropy"] = _unflatten(entropy, valid)
    if with_hidden:
        result["hidden"] = hidden
    return result


def _final_hidden(model: Any, decoder: torch.nn.Module, input_ids: torch.Tensor,
                  attention_mask: torch.Tensor) -> torch.Tensor:
    """``[B, S, H]`` the backbone's last hidden state. The whole model is called (with
    ``logits_to_keep=1``: a ``[B, 1, V]`` head output) rather than the backbone alone, so
    that a ``DistributedDataParallel`` wrapper sees its forward and all-reduces the
    gradients; the backbone's output is read with a forward hook."""
    captured: list[torch.Tensor] = []

    def keep(module: torch.nn.Module, args: Any, output: Any) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output.last_hidden_state)

    handle = decoder.register_forward_hook(keep)
    try:
        out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                    logits_to_keep=1)
    finally:
        handle.remove()
    if out.logits.shape[1] != 1 or len(captured) != 1:
        raise UnsupportedSettingsError(
            f"chunked logprobs need a causal LM whose forward takes logits_to_keep and calls "
            f"its backbone once; {type(model).__name__} computed logits of shape "
            f"{tuple(out.logits.shape)}; set model.logprob_chunk_tokens=0")
    return captured[0]


def _unflatten(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``[N]`` values of the valid positions -> ``[B, S]`` (0 at position 0 and padding)."""
    out = values.new_zeros(valid.shape[0], valid.shape[1] + 1)
    out[:, 1:][valid] = values
    return out


def _chunk_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  multiplier: float, temperature: float) -> torch.Tensor:
    """``[c, H] -> [c, V]`` logits over ``temperature`` as the model gives them, in float32
    (float64 for float64 weights)."""
    logits = F.linear(hidden, weight, bias)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if multiplier != 1.0:
        logits = logits * multiplier
    return logits / temperature


class _LinearHeadLogprobs(torch.autograd.Function):
    """``hidden [N, H]`` through a linear head ``weight [V, H]`` (+ ``bias [V]``) ->
    ``(logprob of targets [N], entropy [N])`` (float32, or float64 for float64 inputs), a
    chunk of rows at a time.

    Forward keeps no logits; backward recomputes each chunk's and applies the softmax
    gradients directly: with ``p = softmax(z)``, ``d logp_y / dz = onehot(y) - p`` and
    ``d H / dz = -p (log p + H)``. The head's gradient is accumulated in float32.
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, multiplier: float, temperature: float, chunk: int,
                with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor]:
        n, dtype = hidden.shape[0], torch.promote_types(hidden.dtype, torch.float32)
        logp = hidden.new_zeros(n, dtype=dtype)
        entropy = hidden.new_zeros(n if with_entropy else 0, dtype=dtype)
        for start in range(0, n, chunk):
            rows = slice(start, start + chunk)
            logp_all = torch.log_softmax(_chunk_logits(hidden[rows], weight, bias, multiplier,
                                                       temperature), dim=-1)
            logp[rows] = logp_all.gather(-1, targets[rows, None]).squeeze(-1)
            if with_entropy:
                entropy[rows] = -(logp_all.exp() * logp_all).sum(-1)
        ctx.save_for_backward(hidden, weight, bias, targets)
        ctx.settings = (multiplier, temperature, chunk)
        if not with_entropy:
            ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx: Any, grad_logp: torch.Tensor | None, grad_entropy: torch.Tensor | None
                 ) -> tuple[torch.Tensor | None, ...]:
        hidden, weight, bias, targets = ctx.saved_tensors
        multiplier, temperature, chunk = ctx.settings
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        n, acc = hidden.shape[0], torch.promote_types(weight.dtype, torch.float32)
        if grad_logp is None:
            grad_logp = hidden.new_zeros(n, dtype=acc)
        if grad_entropy is not None and grad_entropy.numel() == 0:
            grad_entropy = None
        grad_hidden = torch.zeros_like(hidden) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_weight else None
        grad_bias = torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_bias else None
        for start in range(0, n, chunk):
            rows = slice(start, start + chunk)
            h = hidden[rows]
            logp_all = torch.log_softmax(_chunk_logits(h, weight, bias, multiplier, temperature), dim=-1)
            g_logp = grad_logp[rows, None]  # [c, 1]
            p = logp_all.exp()
            coef = g_logp
            if grad_entropy is not None:  # g_logp + g_H (log p + H), in place over log p
                ent = -(p * logp_all).sum(-1, keepdim=True)
                coef = logp_all.add_(ent).mul_(grad_entropy[rows, None]).add_(g_logp)
            grad_z = p.mul_(coef).neg_()  # -p * coef ...
            grad_z.scatter_add_(-1, targets[rows, None], g_logp)  # ... + onehot(y) * g_logp
            grad_z = grad_z.mul_(multiplier / temperature).to(weight.dtype)  # z = m (hW + b) / T
            if need_hidden:
                grad_hidden[rows] = grad_z @ weight
            if need_weight:
                if grad_weight.dtype == grad_z.dtype:
                    grad_weight.addmm_(grad_z.t(), h)
                else:
                    grad_weight += grad_z.t() @ h
            if need_bias:
                grad_bias += grad_z.sum(0)
        return (grad_hidden, grad_weight.to(weight.dtype) if need_weight else None,
                grad_bias.to(bias.dtype) if need_bias else None, None, None, None, None, None)


def _module_head_logprobs(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                          multiplier: float, temperature: float, chunk: int, with_entropy: bool
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """As :class:`_LinearHeadLogprobs` for any head module (peft-wrapped, ...): each chunk
    runs under ``torch.utils.checkpoint``, so backward recomputes its logits."""
    logps, entropies = [], []
    for start in range(0, hidden.shape[0], chunk):
        args = (head, hidden[start:start + chunk], targets[start:start + chunk], multiplier,
                temperature, with_entropy)
        if torch.is_grad_enabled():
            logp, entropy = checkpoint(_head_chunk, *args, use_reentrant=False)
        else:
            logp, entropy = _head_chunk(*args)
        logps.append(logp)
        entropies.append(entropy)
    empty = hidden.new_zeros(0, dtype=torch.float32)
    return torch.cat([empty, *logps]), torch.cat([empty, *entropies])


def _head_chunk(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                multiplier: float, temperature: float, with_entropy: bool
                ) -> tuple[torch.Tensor, torch.Tensor]:
    logits = head(hidden).float()
    if multiplier != 1.0:
        logits = logits * multiplier
    logp_all = torch.log_softmax(logits / temperature, dim=-1)
    logp = logp_all.gather(-1, targets[:, None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1) if with_entropy else logp.new_zeros(0)
    return logp, entropy


def pack_by_tokens(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Micro-batches of at most ``budget`` padded tokens: the positions of ``lengths``
    sorted longest first (ties in order), each group filled greedily while its size times
    its longest length stays within ``budget``; a sample longer than ``budget`` is a group
    of its own. Every position appears once.

    Example:
        >>> pack_by_tokens([3, 9, 4, 2, 4], budget=10)
        [[1], [2, 4], [0, 3]]
    """
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= budget:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups
