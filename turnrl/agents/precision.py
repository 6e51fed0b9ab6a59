"""Mixed precision: float32 weights, bfloat16 matrix multiplies.

Full fine-tuning with bfloat16 *weights* loses small updates: a bfloat16 number has 8
significant bits, so a weight of 0.02 moves in steps of about 1e-4, and AdamW's update of
about ``lr`` per step (1e-6 in published agent RL recipes) rounds to nothing. Keeping the
weights, gradients and optimizer state in float32 and running the forward and backward
passes under ``torch.autocast`` in bfloat16 gives bfloat16's speed with float32's updates
(what Hugging Face's ``Trainer(bf16=True)`` and verl's FSDP mixed precision do).

:func:`enable_autocast` does this to a loaded model with forward hooks, so every caller
(the rollout's generation, the trainer's scoring and update, the KL reference, a copy of
the model, a DDP/FSDP or peft wrapper around it) runs it the same way. The LM head stays
a float32 island: logits, and so logprobs, are computed in float32 from float32 hidden
states (bfloat16 logits of size ~10 carry errors of ~0.03), so the rollout's and the
trainer's logprobs differ only by the backbone's bfloat16 rounding.
"""

from __future__ import annotations

from typing import Any

from turnrl.errors import ConfigError

__all__ = ["enable_autocast", "compute_dtype_of", "COMPUTE_DTYPES", "WEIGHT_DTYPES"]

#: What ``model.compute_dtype`` can be (float16 would need loss scaling; not supported).
COMPUTE_DTYPES = ("float32", "bfloat16")
#: What ``model.dtype`` (the weights) can be.
WEIGHT_DTYPES = ("float32", "bfloat16", "float16")

_MARK = "_turnrl_compute_dtype"


class _Autocast:
    """Forward pre-hook + forward hook pair that runs a module's forward under
    ``torch.autocast(device_type, dtype, enabled)``. The hook is called even when the
    forward raises, so the autocast state never leaks out of the module. Deep copies of
    the module (the KL reference) get their own copy of the hooks."""

    def __init__(self, dtype: Any, *, enabled: bool) -> None:
        self.dtype, self.enabled = dtype, enabled
        self.active: list[Any] = []

    def __deepcopy__(self, memo: dict) -> _Autocast:
        return _Autocast(self.dtype, enabled=self.enabled)

    def enter(self, module: Any, args: tuple) -> tuple | None:
        import torch

        device_type = next(module.parameters()).device.type
        ctx = torch.autocast(device_type, dtype=self.dtype, enabled=self.enabled)
        ctx.__enter__()
        self.active.append(ctx)
        if not self.enabled:  # the float32 island: float32 inputs too
            return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a
                         for a in args)
        return None

    def exit(self, module: Any, args: tuple, output: Any) -> None:
        self.active.pop().__exit__(None, None, None)


def enable_autocast(model: Any, compute_dtype: str | None) -> Any:
    """Run ``model``'s forward (and so its backward) in ``compute_dtype`` under
    ``torch.autocast``, its LM head (if it has one) in float32; returns ``model``.

    ``None`` or ``"float32"`` leave the model as it is. The weights must be float32: mixed
    precision exists to keep float32 weights.

    Raises:
        ConfigError: an unknown dtype, or weights that are not float32.
    """
    import torch

    if compute_dtype in (None, "float32"):
        return model
    if compute_dtype not in COMPUTE_DTYPES:
        raise ConfigError(f"model.compute_dtype must be one of {', '.join(COMPUTE_DTYPES)} or "
                          f"null, got {compute_dtype!r}")
    weights = next(model.parameters()).dtype
    if weights != torch.float32:
        raise ConfigError(
            f"model.compute_dtype={compute_dtype} is mixed precision over float32 weights, but "
            f"the weights are {str(weights).removeprefix('torch.')}: set model.dtype=float32")
    if getattr(model, _MARK, None) is not None:
        return model
    dtype = getattr(torch, compute_dtype)
    _hook(model, _Autocast(dtype, enabled=True))
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        _hook(head, _Autocast(dtype, enabled=False))
    setattr(model, _MARK, compute_dtype)
    return model


def _hook(module: Any, autocast: _Autocast) -> None:
    module.register_forward_pre_hook(autocast.enter)
    module.register_forward_hook(autocast.exit, always_call=True)


def compute_dtype_of(model: Any) -> str | None:
    """The compute dtype :func:`enable_autocast` gave ``model`` (or a wrapper's inner
    model), None if none."""
    for candidate in (model, getattr(model, "module", None), getattr(model, "base_model", None)):
        found = getattr(candidate, _MARK, None) if candidate is not None else None
        if found:
            return found
    return None
