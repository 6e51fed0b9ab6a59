"""Building the parts a training run wires together, from plain arguments: the tiny
offline model, LoRA adapters, the critic, the frozen KL reference and the rollout engine.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from turnrl.agents.base import RolloutEngine
from turnrl.agents.precision import enable_autocast
from turnrl.agents.tiny import make_tiny_model
from turnrl.agents.vllm import VLLMPolicy
from turnrl.agents.vllm_ray import RayVLLMPolicy
from turnrl.envs.suites import SuiteEntry
from turnrl.trainer.corpus import env_text_corpus
from turnrl.trainer.critic import ValueHead, ValueModel
from turnrl.trainer.logging import phase

__all__ = ["build_tiny_model", "with_lora", "build_critic", "frozen_copy", "build_engine",
           "enable_gradient_checkpointing"]


def build_tiny_model(path: Path, entries: Sequence[SuiteEntry], spec: dict[str, Any], *,
                     seed: int, progress: bool = False) -> Path:
    """Build (once) a tiny model at ``path`` whose tokenizer is trained on the text of
    the entries' envs; ``spec`` is ``model.tiny`` (``corpus_seeds``: train seeds per entry
    whose episodes give the text; the rest goes to
    :func:`~turnrl.agents.tiny.make_tiny_model`). ``progress`` says so on stderr."""
    if (path / "config.json").exists():
        return path
    spec = dict(spec)
    seeds = spec.pop("corpus_seeds", 20)
    texts: list[str] = []
    with phase("building the tiny model (tokenizer trained on env text)", enabled=progress):
        for entry in entries:
            texts += env_text_corpus(entry.env_id, entry.train_seeds[:seeds], **entry.kwargs)
        return make_tiny_model(path, texts, seed=seed, **spec)


def with_lora(model: Any, spec: dict[str, Any]) -> Any:
    """``model`` wrapped with fresh LoRA adapters (only they are trainable); ``spec`` is
    ``model.lora`` (``r``, ``alpha``, ``dropout``, ``target_modules``)."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=int(spec.get("r", 8)), lora_alpha=float(spec.get("alpha", 16)),
                      lora_dropout=float(spec.get("dropout", 0.0)),
                      target_modules=spec.get("target_modules", "all-linear"),
                      task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def build_critic(kind: str, model_path: str, hidden_size: int, device: Any, *,
                 dtype: torch.dtype | None = None, compute_dtype: str | None = None,
                 gradient_checkpointing: bool = False) -> torch.nn.Module | None:
    """The critic ``kind`` names: ``separate`` (own backbone from ``model_path`` + value
    head), ``shared`` (linear head on the policy's hidden state), ``head`` (MLP on the
    detached hidden state, VL-DAC) or ``none``.

    Args:
        dtype: the separate critic's backbone weights (the policy's dtype; None: as saved).
            Value heads stay float32 and read the hidden state in float32.
        compute_dtype: mixed precision for the separate critic's backbone, as for the
            policy (:func:`~turnrl.agents.precision.enable_autocast`).
        gradient_checkpointing: for the separate critic's backbone.
    """
    if kind == "none":
        return None
    if kind == "separate":
        critic = ValueModel.from_pretrained(model_path, **({"dtype": dtype} if dtype else {}))
        enable_autocast(critic.backbone, compute_dtype)
        if gradient_checkpointing:
            enable_gradient_checkpointing(critic.backbone)
    elif kind == "head":
        critic = ValueHead(hidden_size, hidden_dim=hidden_size, detach=True)
    else:
        critic = ValueHead(hidden_size)
    return critic.to(device)


def enable_gradient_checkpointing(model: Any) -> None:
    """Recompute each transformer layer's activations in backward instead of keeping them
    (Hugging Face gradient checkpointing, non-reentrant: same gradients, no input that
    must require grad, works with peft adapters). Active in training mode only, so
    scoring and generation (eval mode) run as before."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of ``model`` in eval mode (the KL reference without LoRA)."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def build_engine(model_path: str, *, engines: int, ray_address: str | None, temperature: float,
                 top_p: float, max_new_tokens: int, seed: int, max_model_len: int,
                 dtype: str | None, engine_kwargs: dict[str, Any],
                 template_kwargs: dict[str, Any] | None = None, sleep_level: int = 0,
                 gpu_memory_utilization: float | None = None) -> RolloutEngine:
    """A vLLM rollout engine: one in this process, or ``engines`` > 1 as Ray actors
    (data-parallel rollout). vLLM and Ray are imported when the engine is built."""
    if gpu_memory_utilization is not None:
        engine_kwargs = {"gpu_memory_utilization": gpu_memory_utilization, **engine_kwargs}
    kwargs = dict(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed,
                  max_model_len=max_model_len, dtype=dtype, engine_kwargs=engine_kwargs,
                  template_kwargs=template_kwargs, sleep_level=sleep_level)
    if engines > 1:
        return RayVLLMPolicy(model_path, num_engines=engines, address=ray_address, **kwargs)
    return VLLMPolicy(model_path, **kwargs)
