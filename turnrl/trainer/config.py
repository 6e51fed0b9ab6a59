"""Training configuration: one typed dataclass per component, read from YAML.

``turnrl train configs/quickstart.yaml rollout.episodes_per_update=32 optim.lr=3e-5``
loads the file, applies the ``key=value`` overrides (values read as YAML), then validates
everything and reports every error at once.

Units are in the names: ``episodes_per_update`` (episodes collected per update),
``minibatch_size`` (samples per optimizer step), ``micro_batch_size`` (samples per
forward pass; gradients are accumulated over ``minibatch_size / micro_batch_size``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from turnrl.agents.precision import COMPUTE_DTYPES, WEIGHT_DTYPES
from turnrl.envs.pool import POOL_KINDS
from turnrl.errors import ConfigError, did_you_mean
from turnrl.rollout import REASONING_HISTORY, ROLLOUT_MODES
from turnrl.trainer import algorithms
from turnrl.trainer.algorithms import (
    BACKENDS,
    BASE_DEFAULTS,
    IS_MASK_LEVELS,
    IS_MASK_MODES,
    KL_ESTIMATORS,
    KL_PLACEMENTS,
    LOSS_AGG_MODES,
)
from turnrl.trajectory import parse_context

__all__ = [
    "ModelConfig", "EnvConfig", "RolloutConfig", "AlgorithmConfig", "OptimConfig",
    "SFTConfig", "EvalConfig", "DistributedConfig", "TrainConfig", "load_config", "apply_overrides",
    "LORA_KEYS", "DISTRIBUTED_STRATEGIES",
]

#: ``distributed.strategy``: whole replicas (DDP) or sharded weights (FSDP2).
DISTRIBUTED_STRATEGIES = ("ddp", "fsdp")


@dataclass
class ModelConfig:
    """The policy model."""

    #: Hugging Face id or local directory. Empty with ``tiny`` set: build a tiny model.
    name_or_path: str = ""
    #: Build a tiny model from scratch (offline): hidden_size, num_layers, vocab_size,
    #: corpus_seeds (env seeds whose text trains the tokenizer).
    tiny: dict[str, Any] | None = None
    #: Weights and activations: float32 | bfloat16 | float16; null: bfloat16 on CUDA,
    #: float32 on CPU. Whatever the weights, logprobs, entropy, values, advantages and every
    #: loss are computed in float32 (the LM head's output is cast before the softmax;
    #: value heads stay float32). bfloat16 halves the weights', gradients' and optimizer
    #: state's memory and runs on tensor cores, but full fine-tuning then keeps no float32
    #: master copy: an update smaller than ~1/256 of a weight is rounded away, so with a
    #: small optim.lr prefer LoRA (peft keeps adapters in float32) or float32. float16
    #: needs loss scaling, which turnrl does not do: not for training.
    dtype: str | None = None
    #: Mixed precision: "bfloat16" keeps the weights, gradients and optimizer state in
    #: float32 (model.dtype null or float32) and runs the forward and backward passes under
    #: torch.autocast in bfloat16, the LM head in float32; vLLM engines then run in
    #: bfloat16. Tensor-core speed without losing updates smaller than a bfloat16 step
    #: (the setting for full fine-tuning with a small lr; 16 bytes per parameter for
    #: weights + gradients + AdamW). null / "float32": no autocast.
    compute_dtype: str | None = None
    #: cpu | cuda | cuda:N; default CUDA when available.
    device: str | None = None
    #: Recompute each transformer layer's activations in backward instead of keeping them
    #: (policy, and a separate critic's backbone): activation memory of one layer instead
    #: of all, for ~30% more compute per update; same gradients.
    gradient_checkpointing: bool = False
    #: Compute logprobs and entropy from the final hidden states, applying the LM head to
    #: this many positions at a time (and recomputing each chunk's logits in backward), so
    #: that no [tokens, vocab] logits tensor exists: its memory grows with the chunk, not
    #: the context (vocab 151,936: 0.6 MB per position in float32). 0: the full logits at
    #: once. Same values up to float rounding; e.g. 1024.
    logprob_chunk_tokens: int = 0
    #: Critic: "separate" (own backbone + value head; ppo's default), "shared" (linear
    #: head on the policy's last hidden state; value gradients also train the backbone),
    #: "head" (MLP on the detached last hidden state: value learning never moves the
    #: policy; vldac), "none" (rloo, grpo, sft). Null: the preset's choice.
    critic: str | None = None
    #: Extra chat-template variables, e.g. ``{enable_thinking: false}`` for Qwen3's
    #: non-thinking mode (passed to ``apply_chat_template`` for every rendering).
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    #: LoRA adapters (peft) instead of full fine-tuning, e.g. ``{r: 8, alpha: 16,
    #: dropout: 0.0, target_modules: all-linear}``; null trains every weight. With LoRA
    #: the KL reference is the base with adapters disabled (no second copy in memory).
    lora: dict[str, Any] | None = None


@dataclass
class EnvConfig:
    """What to train on: one env id, or a suite with sampling weights."""

    #: Registered env id (set this or ``suite``).
    id: str = ""
    #: Keyword arguments for ``turnrl.make``. With a suite: added to every entry's own
    #: (e.g. ``{max_turns: 30}``); keys the suite sets per entry cannot be overridden.
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: Suite name (set this or ``id``).
    suite: str = ""
    #: Sampling weight per suite entry name (default: equal).
    weights: dict[str, float] = field(default_factory=dict)
    #: Train seeds for an env id: [start, stop) range.
    train_seeds: list[int] = field(default_factory=lambda: [0, 10_000])
    #: Eval seeds for an env id: [start, stop) range, disjoint from train seeds.
    eval_seeds: list[int] = field(default_factory=lambda: [100_000, 100_050])


@dataclass
class RolloutConfig:
    """Collecting episodes."""

    episodes_per_update: int = 16
    #: Episodes per (env, seed) group (RLOO/GRPO need >= 2).
    group_size: int = 1
    #: Environments in flight at once.
    num_envs: int = 16
    #: "full" (whole conversation) or "window(k)" (instructions + task + last k exchanges).
    context: str = "full"
    #: Episodes whose next context would exceed this are truncated (and bootstrapped).
    max_context_tokens: int = 2048
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    #: Threads stepping envs within a tick.
    step_workers: int = 1
    #: Sampling engine: "hf" (the trained model itself) or "vllm" (a vLLM engine in this
    #: process, weights synced after every update).
    backend: str = "hf"
    #: "lockstep" (a batch barrier per turn; any backend) or "async" (backend vllm: each
    #: episode its own task, an env steps as soon as its reply is done; num_envs caps the
    #: episodes in flight).
    mode: str = "lockstep"
    #: Where the envs live: "local" (this process), "subprocess" (worker processes, restarted
    #: if they die) or "ray" (Ray actors; ``ray.address``). See docs/scaling.md.
    env_pool: str = "local"
    #: Envs per worker process / Ray actor (subprocess and ray pools).
    envs_per_worker: int = 4
    #: vLLM engines (backend vllm): more than 1 runs each as a Ray actor (data-parallel
    #: rollout, weights synced to every one; ``ray.address``).
    vllm_engines: int = 1
    #: Extra ``vllm.LLM`` arguments for backend vllm.
    vllm: dict[str, Any] = field(default_factory=dict)
    #: Backend vllm: share of the GPU's memory the engine may take (weights + KV cache);
    #: null: vLLM's default (0.9, too much when the trainer shares the GPU).
    vllm_gpu_memory_utilization: float | None = None
    #: Backend vllm, colocated on the trainer's GPU: free the engine's memory during each
    #: update (vLLM sleep mode; CUDA/ROCm only): 0 off, 1 offload its weights to CPU and
    #: drop the KV cache, 2 drop both (the weights come back with the next sync).
    vllm_sleep: int = 0
    #: When the chat template renders earlier assistant turns differently from how they
    #: were generated (Qwen3 drops earlier ``<think>`` reasoning): "keep" trains on every
    #: turn as generated (one sample per episode; a warning names the mismatch), "strip"
    #: gives each turn the history (or its window) as the template renders it (a turn whose
    #: context is not an extension of the last starts a new sample). Null: what the
    #: template does.
    reasoning_history: str | None = None
    #: Backend hf: keep each live episode's key/value states between turns and prefill only
    #: the new observation tokens (same tokens; logprobs equal within ~1e-6). Contexts
    #: rebuilt each turn (window(k), reasoning_history strip) are prefilled whole.
    kv_reuse: bool = False


@dataclass
class AlgorithmConfig:
    """The update rule: an algorithm (a row of :mod:`turnrl.trainer.algorithms`) and its
    coefficients.

    Settings typed ``| None`` and left null take the algorithm's value (its row's
    ``defaults``, else :data:`~turnrl.trainer.algorithms.BASE_DEFAULTS`); every optional
    term (KL, ratio guard, dual clip, truncated IS, value clip, entropy) is switched off
    by setting it to 0.
    """

    #: A registered algorithm: ppo | vldac | rloo | grpo | gigpo | ospo | sft (``turnrl
    #: train --help`` lists them with their critics and group sizes).
    name: str = "ppo"
    #: Discount per turn (GAE; rloo/grpo/gigpo discount an episode's return with it).
    gamma: float = 1.0
    lam: float = 0.95
    clip_ratio: float | None = None
    #: Dual-clip constant (> 1); 0 disables.
    dual_clip: float | None = None
    #: Value clip range; 0 disables (unclipped value loss).
    value_clip: float | None = None
    #: Weight of the value loss when the critic shares the policy's backbone.
    vf_coef: float = 0.5
    #: Entropy bonus; 0 disables.
    entropy_coef: float = 0.0
    #: KL to the reference (the policy RL starts from; with LoRA the base with adapters
    #: off): coefficient (0 disables), estimator, and where it goes: "reward" (k1 per
    #: token, summed per turn, subtracted from turn rewards) or "loss".
    kl_coef: float | None = None
    kl_estimator: str = "k3"
    kl_in: str = "loss"
    #: Whiten advantages over the rollout batch (over turns for GAE algorithms, over
    #: episodes for rloo/grpo).
    normalize_advantages: bool | None = None
    #: token-mean | seq-mean-token-mean
    loss_agg: str = "token-mean"
    #: Updates that train the critic only, before the policy moves.
    critic_warmup_updates: int | None = None
    #: VL-DAC's guard: where any importance ratio within a turn exceeds this, that turn's
    #: tokens use only the clipped term (no gradient); 0 disables.
    ratio_guard: float | None = None
    #: Truncated importance sampling: weigh each token's policy loss by
    #: min(exp(logp_train_old - logp_rollout), cap), correcting for a rollout engine whose
    #: logprobs differ from the trainer's (vLLM); 0 disables.
    tis_cap: float | None = None
    #: Importance-sampling masking: leave out of the policy loss the tokens ("token") or
    #: whole samples ("sequence") whose ratio rho = pi_trainer / pi_rollout (the trainer's
    #: logprob before the update over the sampling engine's) is outside [is_mask_low,
    #: is_mask_high]; "none" disables. A sample's ratio is the product of its action
    #: tokens' ratios (is_mask_mode "product") or their geometric mean ("geometric":
    #: length-independent, give it a narrow band such as [0.99, 1.01]). Masked tokens leave
    #: the loss and its normaliser (the token mean is over the kept tokens; entropy and KL
    #: terms too); ``is_masked_frac`` logs the share of action tokens left out. Which to use
    #: when (hf sampler, vLLM, async or stale rollouts): docs/scaling.md.
    is_mask: str = "none"
    is_mask_mode: str = "product"
    is_mask_low: float = 0.5
    is_mask_high: float = 2.0
    #: grpo, gigpo, ospo: divide by the group's standard deviation; false drops it (Dr.
    #: GRPO; gigpo's default, verl-agent's "mean_norm"). For gigpo it applies to both the
    #: episode and the turn-level part.
    group_std: bool | None = None
    #: gigpo: weight omega of the turn-level (anchor-state) advantage; 0 disables it.
    step_adv_weight: float | None = None
    #: gigpo: discount of the turn-level returns-to-go G_t = r_t + step_gamma G_{t+1}.
    step_gamma: float | None = None


@dataclass
class OptimConfig:
    lr: float = 1e-5
    critic_lr: float = 1e-4
    weight_decay: float = 0.0
    #: Passes over each rollout batch (PPO's K).
    epochs_per_update: int = 2
    #: Samples per optimizer step.
    minibatch_size: int = 8
    #: Samples per forward pass (gradient accumulation over minibatch / micro).
    micro_batch_size: int = 4
    max_grad_norm: float = 1.0
    #: Form forward passes by tokens instead of samples (scoring, updates, SFT): each
    #: process's share of a minibatch is sorted by length and packed greedily into
    #: micro-batches of at most this many padded tokens (a longer sample gets one of its
    #: own), so one long episode no longer sets the peak; micro_batch_size is then not
    #: used. Losses keep the minibatch's normalisation (same gradients). 0 or null: off.
    max_tokens_per_micro_batch: int | None = None


@dataclass
class SFTConfig:
    """SFT on expert episodes (the ``sft`` preset, or a warm start before RL)."""

    #: Expert episodes gathered from ``info["expert_action"]`` on train seeds (0: no SFT).
    episodes: int = 0
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 8


@dataclass
class EvalConfig:
    #: Evaluate every N updates (0: only before and after training).
    every: int = 0
    #: Eval episodes per env (taken from the eval seeds).
    episodes: int = 20
    #: Greedy decoding for evaluation (else sampling at the rollout temperature).
    greedy: bool = True
    #: Evaluate before training too (off: e.g. a run that starts from a checkpoint
    #: already evaluated).
    before: bool = True


@dataclass
class RayConfig:
    """Joining Ray (``rollout.env_pool: ray``)."""

    #: null: the Ray this process already runs, else a new local one; "auto" or
    #: "ray://head:10001": a cluster.
    address: str | None = None


@dataclass
class DistributedConfig:
    """Several training processes, started by ``accelerate launch`` or ``torchrun``
    (data parallel, DDP or FSDP2; see :mod:`turnrl.trainer.distributed`). A run started as
    one process ignores this section. Batch sizes stay global: ``episodes_per_update`` and
    ``minibatch_size`` count over all processes, so a config gives the same updates on any
    number of them; ``micro_batch_size`` is per process and forward pass."""

    #: "ddp": every process holds the whole model, its gradients and optimizer state.
    #: "fsdp": each holds 1/N of them (FSDP2, per transformer layer; policy, separate
    #: critic and KL reference), for full fine-tuning whose weights + gradients + AdamW
    #: states do not fit one device. Scoring and updates gather a layer at a time;
    #: rollouts and evaluation with rollout.backend=hf gather the whole policy (its
    #: weights must fit one device); checkpoints, exports and vLLM syncs gather one tensor
    #: at a time. Not with LoRA.
    strategy: str = "ddp"
    #: DDP's ``find_unused_parameters``: set it for a model with parameters that get no
    #: gradient in a forward (DDP then stops with "Expected to have finished reduction").
    find_unused_parameters: bool = False
    #: Seconds a rank waits for the others at a collective (e.g. for the slowest rank's
    #: rollouts to end) before the run is aborted.
    timeout_s: int = 1800


@dataclass
class TrainConfig:
    """Everything ``turnrl train`` needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    #: Policy updates (ppo); ignored by sft.
    total_updates: int = 20
    seed: int = 0
    #: Run directory (config.yaml, metrics.jsonl, tensorboard/, checkpoints/, ...).
    run_dir: str = "runs/run"
    #: Save a checkpoint every N updates (0: only at the end).
    checkpoint_every: int = 5
    #: Episodes per update written to samples.jsonl.
    log_episodes: int = 4
    #: Episodes per update whose training samples go to tokens.jsonl token by token
    #: (ids, text, loss mask, logprobs, advantages, values) for ``turnrl view``.
    log_tokens: int = 2
    #: Show a progress bar.
    progress: bool = True

    def __post_init__(self) -> None:
        self.apply_preset()
        self.validate()

    def apply_preset(self) -> None:
        """Fill the settings left null with the algorithm's values (its table row)."""
        if self.algorithm.name not in algorithms.names():
            return  # validate() reports the unknown name
        row = algorithms.get(self.algorithm.name)
        if self.model.critic is None:
            self.model.critic = row.setting("critic")
        for key in BASE_DEFAULTS:
            if getattr(self.algorithm, key) is None:
                setattr(self.algorithm, key, row.setting(key))

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise one :class:`ConfigError` listing every problem."""
        e: list[str] = []
        for check in (_check_model, _check_env, _check_rollout, _check_algorithm, _check_run):
            e += check(self)
        if e:
            raise config_error(e)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_error(errors: list[str]) -> ConfigError:
    """One error: ``invalid config: ...`` on one line; several: one per line below it.
    The list is kept as the exception's ``errors`` attribute."""
    if len(errors) == 1:
        text = f"invalid config: {errors[0]}"
    else:
        text = "invalid config:\n  - " + "\n  - ".join(errors)
    error = ConfigError(text)
    error.errors = list(errors)
    return error


def _one_of(key: str, value: Any, allowed: tuple[str, ...]) -> list[str]:
    if value in allowed:
        return []
    return [f"{key} must be one of {', '.join(allowed)}, got {value!r}{did_you_mean(str(value), allowed)}"]


def _check_model(c: TrainConfig) -> list[str]:
    m, e = c.model, []
    if not m.name_or_path and not m.tiny:
        e.append("model.name_or_path is empty: give a Hugging Face id / local dir, or "
                 "set model.tiny to build a tiny model")
    if c.algorithm.name in algorithms.names():
        allowed = algorithms.get(c.algorithm.name).critics
        if m.critic not in allowed:
            e.append(f"model.critic {m.critic!r} does not go with algorithm {c.algorithm.name}: "
                     f"use {' or '.join(map(repr, allowed))} (or leave it null)")
    if m.logprob_chunk_tokens < 0:
        e.append(f"model.logprob_chunk_tokens must be >= 0 (0: full logits), got {m.logprob_chunk_tokens}")
    if m.dtype not in (None, *WEIGHT_DTYPES):
        e.append(f"model.dtype must be one of {', '.join(WEIGHT_DTYPES)} or null, got {m.dtype!r}")
    if m.compute_dtype not in (None, *COMPUTE_DTYPES):
        e.append(f"model.compute_dtype must be one of {', '.join(COMPUTE_DTYPES)} or null, got "
                 f"{m.compute_dtype!r}")
    elif m.compute_dtype not in (None, "float32") and m.dtype not in (None, "float32"):
        e.append(f"model.compute_dtype={m.compute_dtype} is mixed precision over float32 weights; "
                 f"model.dtype={m.dtype} gives {m.dtype} weights: set model.dtype to float32 or null")
    if m.tiny is not None:
        e += _check_tiny(m.tiny)
    if m.lora is not None:
        unknown = sorted(set(m.lora) - set(LORA_KEYS))
        if unknown:
            e.append(f"model.lora has unknown keys {unknown}; valid keys: {', '.join(LORA_KEYS)}")
        if not isinstance(m.lora.get("r", 8), int) or m.lora.get("r", 8) < 1:
            e.append(f"model.lora.r must be an integer >= 1, got {m.lora.get('r')!r}")
    return e


def _check_tiny(tiny: dict[str, Any]) -> list[str]:
    """``model.tiny``: known keys, integers in range (checked here, not minutes later when
    the model is built)."""
    unknown = sorted(set(tiny) - set(TINY_KEYS))
    e = [f"model.tiny has unknown keys {unknown}; valid keys: {', '.join(TINY_KEYS)}"] if unknown else []
    for key, (low, why) in TINY_KEYS.items():
        value = tiny.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
            e.append(f"model.tiny.{key} must be an integer >= {low}{why}, got {value!r}")
    return e


def _check_env(c: TrainConfig) -> list[str]:
    env, e = c.env, []
    if bool(env.id) == bool(env.suite):
        e.append("set exactly one of env.id and env.suite")
    for name in ("train_seeds", "eval_seeds"):
        value = getattr(env, name)
        if len(value) != 2 or value[0] >= value[1]:
            e.append(f"env.{name} must be [start, stop) with start < stop, got {value}")
    if len(env.train_seeds) == 2 and len(env.eval_seeds) == 2:
        (a0, a1), (b0, b1) = env.train_seeds, env.eval_seeds
        if a0 < b1 and b0 < a1:
            e.append(f"env.train_seeds {env.train_seeds} and env.eval_seeds "
                     f"{env.eval_seeds} overlap; eval seeds must be held out")
    return e


def _check_rollout(c: TrainConfig) -> list[str]:
    r, e = c.rollout, []
    if r.episodes_per_update < 1:
        e.append(f"rollout.episodes_per_update must be >= 1, got {r.episodes_per_update}")
    if r.group_size < 1 or r.episodes_per_update % r.group_size:
        e.append(f"rollout.episodes_per_update ({r.episodes_per_update}) must be a multiple "
                 f"of rollout.group_size ({r.group_size})")
    try:
        parse_context(r.context)
    except ValueError as exc:
        e.append(f"rollout.context: {exc}")
    if r.max_context_tokens <= r.max_new_tokens:
        e.append(f"rollout.max_context_tokens ({r.max_context_tokens}) must exceed "
                 f"rollout.max_new_tokens ({r.max_new_tokens})")
    e += _one_of("rollout.backend", r.backend, BACKENDS)
    e += _one_of("rollout.env_pool", r.env_pool, POOL_KINDS)
    e += _one_of("rollout.mode", r.mode, ROLLOUT_MODES)
    if r.reasoning_history is not None:
        e += _one_of("rollout.reasoning_history", r.reasoning_history, REASONING_HISTORY)
    if r.mode == "async" and r.backend != "vllm":
        e.append(f"rollout.mode=async needs rollout.backend=vllm (the HF policy generates in "
                 f"lockstep batches), got backend {r.backend!r}")
    if r.vllm_sleep not in (0, 1, 2):
        e.append(f"rollout.vllm_sleep must be 0 (off), 1 or 2, got {r.vllm_sleep}")
    if r.vllm_gpu_memory_utilization is not None and not 0 < r.vllm_gpu_memory_utilization <= 1:
        e.append(f"rollout.vllm_gpu_memory_utilization must be in (0, 1], got "
                 f"{r.vllm_gpu_memory_utilization}")
    if r.vllm_engines < 1:
        e.append(f"rollout.vllm_engines must be >= 1, got {r.vllm_engines}")
    elif r.vllm_engines > 1 and r.backend != "vllm":
        e.append(f"rollout.vllm_engines={r.vllm_engines} needs rollout.backend=vllm")
    if r.envs_per_worker < 1:
        e.append(f"rollout.envs_per_worker must be >= 1, got {r.envs_per_worker}")
    if not r.temperature > 0:
        e.append(f"rollout.temperature must be > 0, got {r.temperature}")
    return e


def _check_algorithm(c: TrainConfig) -> list[str]:
    a, e = c.algorithm, []
    if a.name not in algorithms.names():
        return [f"algorithm.name must be one of {', '.join(algorithms.names())}, got "
                f"{a.name!r}{did_you_mean(a.name, algorithms.names())}"]
    row = algorithms.get(a.name)
    if c.rollout.group_size < row.min_group_size:
        e.append(f"algorithm {a.name} compares episodes within a group of the same (env, "
                 f"seed), so it needs rollout.group_size >= {row.min_group_size}, got "
                 f"{c.rollout.group_size}: set e.g. rollout.group_size=4 "
                 f"(rollout.episodes_per_update a multiple of it)")
    if not row.trains_rl and c.sft.episodes < 1:
        e.append(f"algorithm.name is {a.name} but sft.episodes is 0: set sft.episodes")
    e += _one_of("algorithm.loss_agg", a.loss_agg, LOSS_AGG_MODES)
    e += _one_of("algorithm.kl_estimator", a.kl_estimator, KL_ESTIMATORS)
    e += _one_of("algorithm.kl_in", a.kl_in, KL_PLACEMENTS)
    if not 0 <= a.gamma <= 1 or not 0 <= a.lam <= 1 or not 0 <= a.step_gamma <= 1:
        e.append(f"algorithm.gamma, algorithm.lam and algorithm.step_gamma must be in [0, 1], "
                 f"got {a.gamma}, {a.lam}, {a.step_gamma}")
    if not 0 < a.clip_ratio < 1:
        e.append(f"algorithm.clip_ratio must be in (0, 1), got {a.clip_ratio}")
    for key, low in (("dual_clip", 1.0), ("ratio_guard", 1.0), ("tis_cap", 0.0)):
        value = getattr(a, key)
        if value != 0 and not value > low:
            e.append(f"algorithm.{key} must be > {low:g} (or 0 to disable), got {value}")
    for key in ("kl_coef", "entropy_coef", "value_clip", "critic_warmup_updates", "step_adv_weight"):
        if getattr(a, key) < 0:
            e.append(f"algorithm.{key} must be >= 0 (0 disables), got {getattr(a, key)}")
    return e + _check_is_mask(a)


def _check_is_mask(a: AlgorithmConfig) -> list[str]:
    e = _one_of("algorithm.is_mask", a.is_mask, IS_MASK_LEVELS)
    e += _one_of("algorithm.is_mask_mode", a.is_mask_mode, IS_MASK_MODES)
    if not 0 <= a.is_mask_low < 1 < a.is_mask_high:
        e.append(f"algorithm.is_mask_low and is_mask_high must satisfy 0 <= low < 1 < high "
                 f"(the band of kept ratios holds 1), got [{a.is_mask_low}, {a.is_mask_high}]")
    return e


def _check_run(c: TrainConfig) -> list[str]:
    o, e = c.optim, []
    # (with a token budget, micro-batches are formed by tokens: micro_batch_size is unused)
    if o.micro_batch_size < 1 or (o.minibatch_size % o.micro_batch_size and not o.max_tokens_per_micro_batch):
        e.append(f"optim.minibatch_size ({o.minibatch_size}) must be a multiple of "
                 f"optim.micro_batch_size ({o.micro_batch_size})")
    if (o.max_tokens_per_micro_batch or 0) < 0:
        e.append(f"optim.max_tokens_per_micro_batch must be >= 0 (0 or null: off), got "
                 f"{o.max_tokens_per_micro_batch}")
    if o.epochs_per_update < 1:
        e.append(f"optim.epochs_per_update must be >= 1, got {o.epochs_per_update}")
    if o.lr <= 0 or o.critic_lr <= 0:
        e.append("optim.lr and optim.critic_lr must be > 0")
    if c.total_updates < 0:
        e.append(f"total_updates must be >= 0, got {c.total_updates}")
    if not c.distributed.timeout_s > 0:
        e.append(f"distributed.timeout_s must be > 0, got {c.distributed.timeout_s}")
    e += _one_of("distributed.strategy", c.distributed.strategy, DISTRIBUTED_STRATEGIES)
    if c.distributed.strategy == "fsdp" and c.model.lora:
        e.append("distributed.strategy=fsdp shards full fine-tuning; with model.lora the "
                 "trainable adapters and their optimizer state are small, so train them with "
                 "distributed.strategy=ddp (or drop model.lora to shard the whole model)")
    return e


#: Keys of ``model.tiny`` with their least value (and why): the tiny model's size, the
#: tokenizer's vocabulary (printable ASCII and the special tokens need 105), and the train
#: seeds per env whose episodes give the tokenizer's text.
TINY_KEYS: dict[str, tuple[int, str]] = {
    "hidden_size": (64, " (attention heads are 64 wide; vLLM's CPU attention needs that)"),
    "num_layers": (1, ""),
    "vocab_size": (105, " (printable ASCII plus 5 special tokens)"),
    "intermediate_size": (1, ""),
    "max_positions": (16, ""),
    "corpus_seeds": (1, ""),
}

#: Keys of ``model.lora``: rank, scaling alpha, dropout, and the modules to adapt
#: ("all-linear" or a list of module names); peft's ``r``, ``lora_alpha``,
#: ``lora_dropout``, ``target_modules``.
LORA_KEYS = ("r", "alpha", "dropout", "target_modules")


def _build(cls: type, data: dict[str, Any], prefix: str, errors: list[str]) -> Any:
    """Keyword arguments for ``cls`` from ``data``; unknown keys and values of the wrong
    type are reported in ``errors`` and left out (so the defaults stand in for them and the
    remaining settings can still be checked)."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            errors.append(f"unknown key {prefix}{key}.{did_you_mean(key, names)} "
                          f"Valid keys: {', '.join(names)}")
            continue
        sub = _SUBSECTION.get(names[key].name) if cls is TrainConfig else None
        if sub is not None:
            if not isinstance(value, dict):
                errors.append(f"{prefix}{key} must be a mapping, got {value!r}")
                continue
            kwargs[key] = _build(sub, value, f"{prefix}{key}.", errors)
        else:
            value = _coerce(value, hints.get(key), f"{prefix}{key}", errors)
            if value is not _BAD:
                kwargs[key] = value
    if cls is TrainConfig:
        return kwargs
    return cls(**kwargs)


_BAD = object()  # a value of the wrong type (reported; the field keeps its default)


def _coerce(value: Any, hint: Any, key: str, errors: list[str]) -> Any:
    """Check a value against the field type (scalars, and the container of lists and
    dicts); accept YAML's "3e-5" strings as floats. A bad value is reported in
    ``errors`` and returned as ``_BAD``."""
    origin = typing.get_origin(hint)
    allowed = typing.get_args(hint) if origin in (typing.Union, types.UnionType) else (hint,)
    if value is None:
        if type(None) not in allowed:
            errors.append(f"{key} must not be null")
            return _BAD
        return value
    containers = [typing.get_origin(a) for a in allowed if typing.get_origin(a) in (list, dict)]
    if containers:
        if isinstance(value, tuple(containers)):
            return value
        errors.append(f"{key} must be a {' or '.join(c.__name__ for c in containers)}, got {value!r}")
        return _BAD
    if float in allowed and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            errors.append(f"{key} must be a number, got {value!r}")
            return _BAD
    for kind in (int, bool, str):
        if kind in allowed and hint is not Any:
            if isinstance(value, kind) and (kind is not int or not isinstance(value, bool)):
                return value
            errors.append(f"{key} must be {kind.__name__}, got {value!r}")
            return _BAD
    return value


_SUBSECTION: dict[str, type] = {
    "model": ModelConfig, "env": EnvConfig, "rollout": RolloutConfig,
    "algorithm": AlgorithmConfig, "optim": OptimConfig, "sft": SFTConfig, "eval": EvalConfig,
    "distributed": DistributedConfig, "ray": RayConfig,
}


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (values read as YAML) to a nested dict."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override must be KEY=VALUE (e.g. optim.lr=3e-5), got {item!r}")
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: cannot read the value as YAML: "
                              f"{str(exc).splitlines()[0]}") from None
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config, apply overrides, validate; every error is reported at once.

    Raises:
        ConfigError: a missing or unreadable file, bad YAML, unknown keys, values of the
            wrong type or out of range -- all of them in one message.
    """
    data: dict[str, Any] = {}
    if path is not None:
        data = _read_yaml(Path(path))
    data = apply_overrides(data, list(overrides or []))
    errors: list[str] = []
    kwargs = _build(TrainConfig, data, "", errors)
    try:
        config = TrainConfig(**kwargs)
    except ConfigError as exc:  # range errors, reported together with the type errors
        errors += getattr(exc, "errors", [str(exc)])
        config = None
    if errors:
        raise config_error(errors)
    return config


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist" if not path.exists()
                          else f"config {path} is not a file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path} is not valid YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data
