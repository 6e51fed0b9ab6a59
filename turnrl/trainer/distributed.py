"""Several training processes: data parallel (DDP through ``accelerate``), or with the
model sharded (FSDP2, ``distributed.strategy: fsdp``; :mod:`turnrl.trainer.fsdp`).

One process is the default and needs nothing from here. Started by a multi-process
launcher (``accelerate launch --multi_gpu``, ``torchrun``), every process (rank) builds
the same :class:`~turnrl.trainer.Trainer`, and one update runs as follows:

- **rollout** (split): every rank draws the same (env, seed) groups from the same RNG
  and plays its contiguous block of them (whole groups, so no RLOO/GRPO group is split);
  the episodes are all-gathered, so every rank then holds the whole update's episodes in
  the order one process would have collected them;
- **scoring** (split): old and reference logprobs and values, by contiguous blocks of
  samples, all-gathered;
- **advantages** (on the whole buffer, on every rank): group baselines and whitening see
  every episode, exactly as in one process;
- **update** (split): each minibatch of ``optim.minibatch_size`` samples (the global
  count) is split across ranks, then into micro-batches; every loss term is divided by the
  whole minibatch's token (or sequence) count, so the parts add up to one process's loss
  and the all-reduced gradient equals its gradient. DDP all-reduces once per minibatch
  (``no_sync`` on the other micro-batches); every rank then takes the same optimizer step;
- **files** (rank 0): metrics, samples, checkpoints, exports, plots.

With FSDP each rank holds a shard of every weight, gradient and optimizer state. Scoring
and the update gather one layer at a time, every rank running as many passes (dummy ones
where its share is smaller), and the update reduce-scatters the gradients at every
micro-batch (so no rank ever holds a whole gradient). Generation (rollouts, evaluation),
whose forward counts differ between ranks, runs with the policy gathered whole
(:meth:`Distributed.gathered`); checkpoints, exports and engine syncs gather the weights
tensor by tensor.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any

import torch
from torch.distributed.device_mesh import init_device_mesh

from turnrl.errors import ConfigError
from turnrl.trainer import fsdp

__all__ = ["Distributed", "shard_range", "launched_world_size"]

#: Environment variables through which launchers give the number of processes
#: (torchrun / accelerate set WORLD_SIZE; MPI launchers the others).
_WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def launched_world_size() -> int:
    """Processes the launcher started (1 when started as a plain ``python`` process)."""
    for name in _WORLD_SIZE_VARS:
        value = os.environ.get(name)
        if value:
            return int(value)
    return 1


def shard_range(n: int, rank: int, world_size: int) -> range:
    """Rank ``rank``'s contiguous block of ``n`` items; blocks differ in size by at most
    one, the first ranks taking the extra ones.

    Example:
        >>> [list(shard_range(5, r, 2)) for r in range(2)]
        [[0, 1, 2], [3, 4]]
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


class Distributed:
    """The process group a trainer runs in: one process (``accelerator=None``) or
    several through an ``accelerate.Accelerator``, data parallel (``strategy="ddp"``) or
    sharded (``"fsdp"``). Every method is a plain local operation in one process, so the
    training loop has a single code path.

    Build it with :meth:`from_config`.
    """

    def __init__(self, accelerator: Any | None = None, strategy: str = "ddp") -> None:
        self.accelerator = accelerator
        self.rank = accelerator.process_index if accelerator is not None else 0
        self.world_size = accelerator.num_processes if accelerator is not None else 1
        self.is_main = self.rank == 0
        #: The model is sharded (FSDP2): several processes and ``strategy="fsdp"``.
        self.sharded = accelerator is not None and strategy == "fsdp"

    @classmethod
    def from_config(cls, cfg: Any, *, device: str | None = None) -> Distributed:
        """One process unless a launcher started several (``WORLD_SIZE > 1``).

        Args:
            cfg: a :class:`~turnrl.trainer.config.DistributedConfig`.
            device: ``model.device`` from the config: ``cpu`` trains on CPU with the gloo
                backend; null or ``cuda`` gives each rank its own GPU (nccl).

        Raises:
            ConfigError: a device pinned to one GPU (``cuda:N``) with several processes,
                or accelerate set up for its own sharding (FSDP, DeepSpeed, Megatron: turnrl
                shards itself, with ``distributed.strategy=fsdp``).
        """
        world_size = launched_world_size()
        if world_size <= 1:
            return cls(None)
        if device is not None and device.startswith("cuda:"):
            raise ConfigError(
                f"model.device={device!r} would put all {world_size} processes on one GPU; "
                "leave model.device null (or 'cuda') so each rank takes its own GPU")
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

        cpu = device == "cpu" or (device is None and not torch.cuda.is_available())
        ddp = DistributedDataParallelKwargs(
            find_unused_parameters=cfg.find_unused_parameters,
            # LM buffers (rotary frequencies) are constants: no broadcast per forward.
            broadcast_buffers=False,
        )
        group = InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.timeout_s))
        accelerator = Accelerator(cpu=cpu, kwargs_handlers=[ddp, group])
        kind = str(accelerator.distributed_type).rsplit(".", 1)[-1]
        if kind != "NO" and not kind.startswith("MULTI_"):
            raise ConfigError(
                f"accelerate is set up for {kind} (from `accelerate config` or the launch "
                "flags), but turnrl shards the model itself: it needs the whole policy for "
                "rollouts and gathers it around them. Run `accelerate config` and pick "
                "multi-GPU without FSDP/DeepSpeed (or launch with `accelerate launch "
                "--multi_gpu` / `torchrun`), and set distributed.strategy=fsdp to shard the "
                "model (FSDP2), or ddp (the default) for whole replicas")
        if accelerator.mixed_precision == "fp16":
            raise ConfigError(
                "accelerate is set up for fp16 mixed precision, whose loss scaling turnrl does "
                "not drive; set mixed_precision to 'no' (or bf16) and choose the weights' dtype "
                "with model.dtype (bfloat16 on GPUs by default)")
        if accelerator.num_processes != world_size:
            raise ConfigError(
                f"the launcher started {world_size} processes but accelerate set up "
                f"{accelerator.num_processes} ({kind}); on a machine without GPUs set "
                "model.device=cpu or launch with ACCELERATE_USE_CPU=true")
        return cls(accelerator, cfg.strategy)

    # ------------------------------------------------------------------ placement
    @property
    def device(self) -> str | None:
        """This rank's device (``cuda:LOCAL_RANK`` or ``cpu``); None in one process."""
        if self.accelerator is None:
            return None
        device = self.accelerator.device
        return "cpu" if device.type == "cpu" else str(device)

    def check_minibatch(self, minibatch_size: int, micro_batch_size: int) -> None:
        """Raise :class:`ConfigError` unless every rank gets a sample of each minibatch
        (``minibatch_size`` counts samples per optimizer step over all ranks)."""
        if self.world_size > minibatch_size:
            raise ConfigError(
                f"optim.minibatch_size ({minibatch_size}) counts samples per optimizer step "
                f"over all {self.world_size} processes, so it must be at least "
                f"{self.world_size}; e.g. optim.minibatch_size="
                f"{self.world_size * micro_batch_size}")

    def shard(self, n: int) -> range:
        """This rank's contiguous block of ``n`` items (all of them in one process)."""
        return shard_range(n, self.rank, self.world_size)

    def seed(self, seed: int) -> int:
        """A sampling seed for this rank: ``seed`` on rank 0 (so one process and rank 0
        sample alike), distinct streams on the others."""
        return seed if self.rank == 0 else seed + 1_000_003 * self.rank

    @contextlib.contextmanager
    def local_main_first(self) -> Iterator[None]:
        """Run the body on each machine's first rank, then on the others (which then find
        its files, e.g. generated games or a built tiny model, instead of racing to write
        them)."""
        if self.accelerator is None:
            yield
            return
        with self.accelerator.local_main_process_first():
            yield

    # ------------------------------------------------------------------ training
    def shard_modules(self, modules: Sequence[torch.nn.Module | None]) -> None:
        """FSDP: shard each module in place (before its optimizer is built: the optimizer
        must hold the shards). Otherwise nothing: DDP wraps in :meth:`prepare`."""
        if not self.sharded:
            return
        mesh = init_device_mesh(self.accelerator.device.type, (self.world_size,))
        for module in modules:
            if module is not None:
                fsdp.shard_module(module, mesh)

    def prepare(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer
                ) -> tuple[torch.nn.Module, Any]:
        """Wrap a module and its optimizer for training (DDP); as given in one process and
        with FSDP (sharded by :meth:`shard_modules`). The module keeps its parameters: the
        wrapper is only for the training forward."""
        if self.accelerator is None:
            return model, optimizer
        if self.sharded:
            fsdp.check_optimizer(optimizer, model)
            return model, optimizer
        wrapped, optimizer = self.accelerator.prepare(model, optimizer)
        return wrapped, optimizer

    def prepare_optimizer(self, optimizer: torch.optim.Optimizer) -> Any:
        """Prepare an optimizer over parameters of an already prepared module."""
        if self.accelerator is None or self.sharded:
            return optimizer
        return self.accelerator.prepare_optimizer(optimizer)

    def sync(self, modules: Sequence[torch.nn.Module], enabled: bool) -> contextlib.AbstractContextManager:
        """Around a micro-batch's forward and backward: all-reduce gradients at its
        backward only when ``enabled`` (the minibatch's last micro-batch). FSDP
        reduce-scatters at every micro-batch instead: accumulating whole gradients over
        micro-batches would hold the whole model's gradient on every rank."""
        if self.accelerator is None or enabled or self.sharded:
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        for module in modules:
            stack.enter_context(self.accelerator.no_sync(module))
        return stack

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate a rank's part of a loss that sums over ranks: DDP (and FSDP's
        reduce-scatter) average the ranks' gradients, so the part is scaled by the number
        of ranks first."""
        if self.accelerator is None:
            loss.backward()
        else:
            self.accelerator.backward(loss * self.world_size)

    def clip_grad_norm(self, module: torch.nn.Module, max_norm: float) -> float:
        """Clip the (synchronised) gradients of ``module``; their norm before clipping."""
        params = [p for p in module.parameters() if p.requires_grad]
        if self.accelerator is None:
            return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        if self.sharded:  # the norm over all ranks' shards
            return fsdp.clip_grad_norm(params, max_norm)
        return float(self.accelerator.clip_grad_norm_(params, max_norm))

    # ------------------------------------------------------------------ whole weights
    def gathered(self, modules: Sequence[torch.nn.Module | None], enabled: bool = True
                 ) -> contextlib.AbstractContextManager:
        """Around generation, where ranks run different numbers of forward passes: FSDP
        gathers the modules' weights whole for the block (every rank enters it at once);
        nothing otherwise, or when not ``enabled``."""
        if not (self.sharded and enabled):
            return contextlib.nullcontext()
        return fsdp.gathered(modules)

    def reshard(self, modules: Sequence[torch.nn.Module | None]) -> None:
        """FSDP: free the whole weights that no-grad forward passes left gathered (a
        model's root group); nothing otherwise."""
        if self.sharded:
            fsdp.reshard(modules)

    def full_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        """FSDP: ``model``'s weights gathered whole (on CPU, rank 0; every rank must call
        it); None otherwise (the model's own ``state_dict()`` is whole)."""
        if not self.sharded:
            return None
        return fsdp.whole_tensors(model.state_dict(keep_vars=True), keep=self.is_main)

    def save_pretrained(self, model: Any, path: Any, tokenizer: Any = None) -> None:
        """Rank 0 saves ``model`` (and ``tokenizer``) as a Hugging Face directory; with
        FSDP its weights are gathered first, so every rank must call it."""
        state = self.full_state_dict(model)
        if not self.is_main:
            return
        model.save_pretrained(path, state_dict=state)  # None: the model's own
        if tokenizer is not None:
            tokenizer.save_pretrained(path)

    # ------------------------------------------------------------------ communication
    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if self.accelerator is None:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank."""
        if self.accelerator is None:
            return flag
        return any(self.gather(bool(flag)))

    def barrier(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()
