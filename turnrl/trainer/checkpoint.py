"""Checkpoints: model, critic, optimizers, every RNG and the step -- enough to resume a
run exactly where it stopped -- and the lock that keeps one trainer per run directory.

A checkpoint is written to a temporary directory and renamed into place, so a
``checkpoints/step_NNNNNN`` directory is complete or absent. One that is damaged anyway
(files truncated or deleted by hand, a full disk) is reported with a
:class:`~turnrl.errors.CheckpointError` naming the file, never skipped silently.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from turnrl.errors import CheckpointError, ConfigError
from turnrl.trainer.fsdp import sharded_like

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "load_weights", "rng_state",
           "set_rng_state", "seed_everything", "restore_sampler_rng", "RunLock", "claim_run_dir"]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


def restore_sampler_rng(generator: torch.Generator, state: dict[str, Any], *, rank: int,
                        world_size: int, seed: int) -> None:
    """Give a rank's sampling generator its state from a checkpoint: its own when the run
    resumes on as many processes; otherwise rank 0 goes on and the others restart from
    ``seed`` + the step."""
    rngs = state.get("policy_rng_ranks") or [state["policy_rng"]]
    if len(rngs) == world_size:
        generator.set_state(rngs[rank])
        return
    generator.set_state(state["policy_rng"])
    if rank:
        generator.manual_seed(seed + int(state["update"]))


def save_checkpoint(
    run_dir: str | Path, step: int, *, model: Any, tokenizer: Any, extra: dict[str, Any],
    keep: int = 2, weights: dict[str, Any] | None = None,
) -> Path:
    """Write ``checkpoints/step_NNNNNN/`` (model dir + ``state.pt``), atomically, and keep
    the newest ``keep`` checkpoints. ``weights``: the model's whole state dict when the
    model holds shards (FSDP); None saves the model's own."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp_step_{step:06d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp / "model", state_dict=weights)  # None: the model's own
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
    """The newest ``checkpoints/step_*`` directory, or None when there is none.

    Raises:
        CheckpointError: the newest one is incomplete (its ``state.pt`` is missing):
            resuming from an older one instead would silently lose updates.
    """
    root = Path(run_dir) / "checkpoints"
    found = sorted(p for p in root.glob("step_*") if p.is_dir())
    if not found:
        return None
    if not (found[-1] / "state.pt").exists():
        older = [p.name for p in found[:-1] if (p / "state.pt").exists()]
        hint = f"; delete it to resume from {older[-1]}" if older else ""
        raise CheckpointError(f"checkpoint {found[-1]} is incomplete: {found[-1] / 'state.pt'} "
                              f"is missing{hint}")
    return found[-1]


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The ``state.pt`` dict of a checkpoint directory (RNG restored by the caller).

    Raises:
        CheckpointError: the file is missing, truncated or not a checkpoint.
    """
    file = Path(path) / "state.pt"
    try:
        state = torch.load(file, weights_only=False)
    except Exception as exc:  # torch raises many kinds for a damaged file
        raise CheckpointError(f"cannot read checkpoint {file}: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if not isinstance(state, dict) or "update" not in state or "rng" not in state:
        raise CheckpointError(f"{file} is not a turnrl checkpoint (no 'update'/'rng' entries)")
    return state


def load_weights(model: Any, model_dir: str | Path, *, adapters: bool = False) -> None:
    """Load a saved model directory's weights into ``model`` in place: the whole model, or
    (``adapters``) only the LoRA adapters of a peft model (``adapter_model.safetensors``).
    A model sharded with FSDP takes its shards of the saved (whole) weights.

    Raises:
        CheckpointError: the weights are missing, truncated or do not fit ``model``.
    """
    model_dir = Path(model_dir)
    try:
        if adapters:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            set_peft_model_state_dict(model, load_file(model_dir / "adapter_model.safetensors"))
            return
        from transformers import AutoModelForCausalLM

        loaded = AutoModelForCausalLM.from_pretrained(model_dir, dtype=model.dtype)
        model.load_state_dict(sharded_like(model, loaded.state_dict()))
    except Exception as exc:  # safetensors, transformers and torch raise many kinds
        raise CheckpointError(f"cannot load the weights in {model_dir}: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc


def claim_run_dir(run_dir: str | Path, *, resume: bool, lock: bool = True) -> RunLock | None:
    """Make ``run_dir`` this trainer's: refuse a directory that holds a run unless resuming
    it, create it, and (``lock``: the run's first process) lock it.

    Raises:
        ConfigError: the directory holds a run and ``resume`` is false.
        CheckpointError: another trainer holds the directory, or its checkpoint is damaged.
    """
    run_dir = Path(run_dir)
    if not resume and latest_checkpoint(run_dir) is not None:
        raise ConfigError(f"{run_dir} already holds a run; resume it with "
                          f"`turnrl train --resume {run_dir}` or pick a new run_dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    return RunLock(run_dir) if lock else None


class RunLock:
    """An exclusive lock on a run directory (``run_dir/.lock``) for as long as a trainer
    uses it; a second trainer on the same directory is refused. The operating system drops
    the lock when the process ends, however it ends, so a killed run leaves no stale lock.

    Raises:
        CheckpointError: another process (or another trainer in this one) holds it.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self._fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            self._fd = None
            raise CheckpointError(
                f"{self.path.parent} is in use by another trainer (pid {holder}); wait for it "
                "to finish or pick another run_dir") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        """Give the directory back (idempotent)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.release()
