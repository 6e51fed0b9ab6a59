"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for full fine-tuning that does not fit
one rank: each rank keeps ``1/world_size`` of every weight, gradient and optimizer state.

:func:`shard_module` shards a model in place, each transformer layer (the classes its
``_no_split_modules`` names) then the whole model, so a forward all-gathers one layer at a
time and a backward reduce-scatters the gradients into the shards. Parameters become
``DTensor`` shards, hence optimizers are built after sharding.

An FSDP forward is a collective: every rank must run as many as the others. The update
and scoring do (equal micro-batch counts, dummy passes where a rank has fewer), gathering
one layer at a time. Generation does not (each rank plays its own episodes, of its own
lengths), so it runs inside :func:`gathered`, where every layer is all-gathered once and
stays whole until the block ends.

Weights and optimizer states leave the shards whole, in the one-process layout
(:func:`whole_tensors`), and come back with :func:`sharded_like` /
:func:`sharded_optimizer_state`; so checkpoints, exports and engine syncs read the same on
any number of processes. Every function here leaves a module or state without ``DTensor``
entries as it is: callers need not know whether FSDP is on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

__all__ = ["shard_module", "layers_of", "gathered", "reshard", "whole_tensors", "sharded_like",
           "sharded_optimizer_state", "clip_grad_norm", "check_optimizer"]


def layers_of(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer layers of ``module``: instances of the classes that Hugging Face
    models name in ``_no_split_modules`` (e.g. ``LlamaDecoderLayer``), anywhere inside it
    (a critic's backbone too)."""
    names = {name for m in module.modules() for name in (getattr(m, "_no_split_modules", None) or ())}
    return [m for m in module.modules() if type(m).__name__ in names]


def shard_module(module: torch.nn.Module, mesh: Any) -> None:
    """Shard ``module`` in place over ``mesh``: each transformer layer, then the rest
    (embeddings, final norm, LM head) as the root group. A group's weights share one dtype,
    so parts of the rest in another dtype (a float32 value head on a bfloat16 backbone) are
    groups of their own. A model without ``_no_split_modules`` is one group, gathered
    whole at every forward."""
    layers = layers_of(module)
    for part in [*layers, *_other_dtype_parts(module, layers)]:
        fully_shard(part, mesh=mesh)
    fully_shard(module, mesh=mesh)


def _other_dtype_parts(module: torch.nn.Module, layers: list[torch.nn.Module]) -> list[torch.nn.Module]:
    """The outermost submodules of ``module`` outside ``layers`` whose parameters all have
    one dtype, other than the one that holds most of the root group's weights."""
    in_layers = {id(p) for layer in layers for p in layer.parameters()}
    sizes: dict[torch.dtype, int] = {}
    for p in module.parameters():
        if id(p) not in in_layers:
            sizes[p.dtype] = sizes.get(p.dtype, 0) + p.numel()
    if len(sizes) < 2:
        return []
    main = max(sizes, key=sizes.__getitem__)
    parts: list[torch.nn.Module] = []
    taken: set[int] = set()
    for sub in module.modules():  # outer modules first
        params = [p for p in sub.parameters() if id(p) not in in_layers]
        if sub is module or not params or any(id(p) in taken for p in params):
            continue
        if len({p.dtype for p in params}) == 1 and params[0].dtype != main:
            parts.append(sub)
            taken.update(id(p) for p in params)
    return parts


def check_optimizer(optimizer: torch.optim.Optimizer, module: torch.nn.Module) -> None:
    """Raise ``ValueError`` unless ``optimizer`` holds ``module``'s sharded parameters (one
    built before :func:`shard_module` would step stale copies and train nothing)."""
    own = {id(p) for p in module.parameters()}
    stale = [p for group in optimizer.param_groups for p in group["params"] if id(p) not in own]
    if stale:
        raise ValueError(f"the optimizer holds {len(stale)} parameters that are not the sharded "
                         "module's: build optimizers after sharding the module")


def _fsdp_modules(modules: Iterable[torch.nn.Module | None]) -> list[FSDPModule]:
    return [m for module in modules if module is not None for m in module.modules()
            if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def gathered(modules: Sequence[torch.nn.Module | None]) -> Iterator[None]:
    """All-gather every sharded group of ``modules`` once (every rank at once) and keep them
    whole until the block ends, so that forward passes inside run without collectives and
    ranks may run different numbers of them (generation; it also runs under inference
    mode, where FSDP's own per-forward gathering would leave inference tensors behind).
    Memory: the whole weights, as one process holds them. Then each group is sharded
    again and trains as before."""
    groups = _fsdp_modules(modules)
    roots = {id(m) for m in modules if isinstance(m, FSDPModule)}
    for group in groups:
        group.set_reshard_after_forward(False, recurse=False)
        group.unshard()
    try:
        yield
    finally:
        for group in groups:
            group.reshard()
            # A root keeps its parameters after forward (FSDP's default: backward needs
            # them at once), so it is left at False.
            if id(group) not in roots:
                group.set_reshard_after_forward(True, recurse=False)


def reshard(modules: Sequence[torch.nn.Module | None]) -> None:
    """Free the whole weights that forward passes left gathered: FSDP keeps a root group's
    (embeddings, LM head) after forward, for the backward that usually follows at once;
    after no-grad passes (scoring) nothing else frees them."""
    for group in _fsdp_modules(modules):
        group.reshard()


def _whole(tensor: torch.Tensor, keep: bool) -> torch.Tensor | None:
    full = tensor.full_tensor()  # an all-gather: every rank takes part
    return full.detach().cpu() if keep else None


def whole_tensors(obj: Any, *, keep: bool = True) -> Any:
    """``obj`` (a state dict, an optimizer state, nested dicts and lists) with every
    ``DTensor`` in it gathered whole, on CPU; ``keep=False`` (ranks that write nothing)
    takes part in the gathers and keeps None. Everything else is left as it is (``obj``
    itself when it holds no ``DTensor``), and a tensor met twice (tied weights) stays one
    tensor. Every rank must call it at once with the same structure."""
    memo: dict[int, Any] = {}

    def walk(x: Any) -> Any:
        if isinstance(x, DTensor):
            if id(x) not in memo:
                memo[id(x)] = _whole(x, keep)
            return memo[id(x)]
        if isinstance(x, dict):
            out = {k: walk(v) for k, v in x.items()}
            return out if any(out[k] is not v for k, v in x.items()) else x
        if isinstance(x, list):
            items = [walk(v) for v in x]
            return items if any(a is not b for a, b in zip(items, x, strict=True)) else x
        return x

    return walk(obj)


def _like(tensor: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``tensor`` (whole, on every rank) as a shard laid out like ``target`` (no
    communication: each rank cuts its own part)."""
    if not isinstance(target, DTensor) or isinstance(tensor, DTensor):
        return tensor
    return distribute_tensor(tensor.to(target.device), target.device_mesh, target.placements,
                             src_data_rank=None)


def sharded_like(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A whole state dict (e.g. read from a checkpoint) laid out for ``module``: entries
    whose parameter is sharded are cut into this rank's shard; the rest unchanged. For
    ``module.load_state_dict``."""
    own = module.state_dict(keep_vars=True)
    return {k: _like(v, own[k]) if k in own else v for k, v in state.items()}


def sharded_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> dict[str, Any]:
    """A whole optimizer state dict (the one-process layout: states by parameter index)
    laid out for ``optimizer``, whose parameters may be shards: each per-parameter tensor
    of a parameter's full shape is cut like that parameter. For ``optimizer.load_state_dict``."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not any(isinstance(p, DTensor) for p in params):
        return state
    per_param = {}
    for index, values in state["state"].items():
        p = params[int(index)]
        per_param[index] = {k: _like(v, p) if isinstance(v, torch.Tensor) and v.shape == p.shape else v
                            for k, v in values.items()}
    return {**state, "state": per_param}


def clip_grad_norm(params: Sequence[torch.Tensor], max_norm: float) -> float:
    """Clip gradients (shards or whole) to a total norm of ``max_norm``; the total norm
    before clipping, over the whole gradient (the ranks' shards together)."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return float(norm)
