"""Checkpoints: model, critic, optimizers, every RNG and the step -- enough to resume a
run exactly where it stopped."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "load_weights", "rng_state",
           "set_rng_state"]


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    run_dir: str | Path, step: int, *, model: Any, tokenizer: Any, extra: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write ``checkpoints/step_NNNNNN/`` (model dir + ``state.pt``), atomically, and keep
    the newest ``keep`` checkpoints."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp_step_{step:06d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp / "model")
    tokenizer.save_pretrained(tmp / "model")
    torch.save({"step": step, "rng": rng_state(), **extra}, tmp / "state.pt")
    (tmp / "meta.json").write_text(json.dumps({"step": step}))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in sorted(root.glob("step_*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    root = Path(run_dir) / "checkpoints"
    found = sorted(p for p in root.glob("step_*") if (p / "state.pt").exists())
    return found[-1] if found else None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The ``state.pt`` dict of a checkpoint directory (RNG restored by the caller)."""
    return torch.load(Path(path) / "state.pt", weights_only=False)


def load_weights(model: Any, model_dir: str | Path, *, adapters: bool = False) -> None:
    """Load a saved model directory's weights into ``model`` in place: the whole model, or
    (``adapters``) only the LoRA adapters of a peft model (``adapter_model.safetensors``)."""
    model_dir = Path(model_dir)
    if adapters:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(model_dir / "adapter_model.safetensors"))
        return
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(model_dir, dtype=model.dtype)
    model.load_state_dict(loaded.state_dict())
