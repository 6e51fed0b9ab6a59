"""The algorithm table: one row per algorithm, and the names the trainer's settings take.

A row says everything the rest of turnrl needs to know about an algorithm: its advantage
estimator, the critics it works with, the defaults it gives the settings a config leaves
null, the smallest episode group it needs and the rollout fields it reads. Config
validation, the presets, ``turnrl train --help``, the README's listing and the error
messages all read this table, so adding an algorithm is one estimator function and one
row (:func:`register_algorithm`).

This module imports no torch: a config is checked without loading any model code.
Estimators are referenced as ``"module:function"`` and imported when a run starts.

Example (a toy estimator; see ``tests/trainer/test_algorithms.py``)::

    def constant(turns, *, gamma):                 # in my_pkg/estimators.py
        adv = turns.turn_mask * gamma
        return adv, adv

    register_algorithm(Algorithm(
        "constant", "my_pkg.estimators:constant", params=("gamma",),
        description="every action gets advantage gamma"))
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from turnrl.errors import ConfigError, did_you_mean

__all__ = [
    "Algorithm", "register_algorithm", "get", "names", "table", "describe",
    "BASE_DEFAULTS", "CRITIC_KINDS", "LOSS_AGG_MODES", "KL_ESTIMATORS", "KL_PLACEMENTS",
    "BACKENDS", "ROLLOUT_FIELDS", "IS_MASK_LEVELS", "IS_MASK_MODES",
]

#: How a loss is reduced over tokens (see :mod:`turnrl.trainer.losses`).
LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean")
#: Per-token KL estimators (see :func:`turnrl.trainer.losses.kl_penalty`).
KL_ESTIMATORS = ("k1", "k2", "k3")
#: Where the KL to the reference goes: subtracted from turn rewards, or added to the loss.
KL_PLACEMENTS = ("reward", "loss")
#: Importance-sampling masks (:func:`turnrl.trainer.losses.importance_mask`): off, per
#: token, per sample; a sample's ratio: its tokens' product, or their geometric mean.
IS_MASK_LEVELS = ("none", "token", "sequence")
IS_MASK_MODES = ("product", "geometric")
#: Critics: own backbone + value head; linear head sharing the policy's backbone; MLP on
#: the policy's detached last hidden state (VL-DAC); none.
CRITIC_KINDS = ("separate", "shared", "head", "none")
#: Sampling engines for rollouts.
BACKENDS = ("hf", "vllm")
#: Per-turn fields an estimator can ask the rollout for, beyond rewards and values:
#: ``turn_groups`` -- ``info["turn_group"]`` on every turn (decisions compared together);
#: ``state_keys`` -- ``Turn.state_key`` on every turn: the env state it acted on
#: (``info["state_key"]`` where the env gives one, else the observation's text).
ROLLOUT_FIELDS = ("turn_groups", "state_keys")

#: The value a setting takes when neither the config nor the algorithm's row sets it.
#: Every optional term is switched off by 0 (never by null: null means "the default").
BASE_DEFAULTS: Mapping[str, Any] = MappingProxyType({
    "clip_ratio": 0.2,
    "kl_coef": 0.0,
    "normalize_advantages": False,
    "critic_warmup_updates": 0,
    "ratio_guard": 0.0,
    "dual_clip": 0.0,
    "tis_cap": 0.0,
    "value_clip": 0.2,
    "group_std": True,
    "step_adv_weight": 0.0,
    "step_gamma": 1.0,
})


@dataclass(frozen=True)
class Algorithm:
    """One row of the algorithm table.

    Attributes:
        name: what ``algorithm.name`` is set to.
        estimator: ``"module:function"`` (or the function itself) computing
            ``(advantages, returns)``, both ``[B, T]``, from a
            :class:`~turnrl.trainer.turns.TurnBatch` and the keyword arguments named in
            ``params``; None for an algorithm without RL updates (``sft``).
        params: :class:`~turnrl.trainer.config.AlgorithmConfig` fields passed to the
            estimator as keyword arguments (plain values, never the config).
        critics: the critics it works with; the first is its default.
        defaults: values for the settings a config leaves null (over :data:`BASE_DEFAULTS`).
        min_group_size: episodes per (env, seed) group it needs (``rollout.group_size``).
        needs: rollout fields from :data:`ROLLOUT_FIELDS` it reads.
        per_episode: one advantage per episode, so batch statistics (whitening) are
            taken over episodes, not turns (long episodes do not weigh more).
        description: one line for listings and ``--help``.
    """

    name: str
    estimator: str | Callable[..., Any] | None
    params: tuple[str, ...] = ()
    critics: tuple[str, ...] = ("none",)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    min_group_size: int = 1
    needs: tuple[str, ...] = ()
    per_episode: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        errors = []
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            errors.append(f"name must be a word (letters, digits, - or _), got {self.name!r}")
        bad_critics = [c for c in self.critics if c not in CRITIC_KINDS]
        if not self.critics or bad_critics:
            errors.append(f"critics must be a non-empty subset of {CRITIC_KINDS}, got {self.critics}")
        unknown = sorted(set(self.defaults) - set(BASE_DEFAULTS))
        if unknown:
            errors.append(f"defaults has unknown keys {unknown}; allowed: {', '.join(BASE_DEFAULTS)}")
        bad_needs = sorted(set(self.needs) - set(ROLLOUT_FIELDS))
        if bad_needs:
            errors.append(f"needs has unknown fields {bad_needs}; allowed: {', '.join(ROLLOUT_FIELDS)}")
        if self.min_group_size < 1:
            errors.append(f"min_group_size must be >= 1, got {self.min_group_size}")
        if isinstance(self.estimator, str) and ":" not in self.estimator:
            errors.append(f"estimator must be 'module:function', got {self.estimator!r}")
        if errors:
            raise ConfigError(f"algorithm {self.name!r}: " + "; ".join(errors))
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))

    @property
    def needs_critic(self) -> bool:
        """Whether its default critic is a value function (GAE needs values)."""
        return self.critics[0] != "none"

    @property
    def trains_rl(self) -> bool:
        """False for algorithms without RL updates (``sft``)."""
        return self.estimator is not None

    def estimator_fn(self) -> Callable[..., Any]:
        """The estimator function (imported on first use)."""
        if self.estimator is None:
            raise ConfigError(f"algorithm {self.name!r} has no advantage estimator")
        if callable(self.estimator):
            return self.estimator
        module, _, attr = self.estimator.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"algorithm {self.name!r}: cannot load estimator "
                              f"{self.estimator!r}: {exc}") from exc

    def setting(self, key: str) -> Any:
        """The value this algorithm gives setting ``key`` when a config leaves it null."""
        if key == "critic":
            return self.critics[0]
        return self.defaults.get(key, BASE_DEFAULTS[key])


_ESTIMATORS = "turnrl.trainer.estimators"

_TABLE: dict[str, Algorithm] = {}


def register_algorithm(algorithm: Algorithm, *, override: bool = False) -> Algorithm:
    """Add a row to the table.

    Raises:
        ConfigError: the name is taken and ``override`` is false.
    """
    if algorithm.name in _TABLE and not override:
        raise ConfigError(f"algorithm {algorithm.name!r} is already registered; pass "
                                "override=True to replace it")
    _TABLE[algorithm.name] = algorithm
    return algorithm


def get(name: str) -> Algorithm:
    """The row for ``name``.

    Raises:
        ConfigError: unknown name (close matches and every known name listed).
    """
    try:
        return _TABLE[name]
    except KeyError:
        raise ConfigError(f"unknown algorithm {name!r}.{did_you_mean(name, _TABLE)} "
                          f"Available: {', '.join(_TABLE)}") from None


def names() -> tuple[str, ...]:
    """Registered algorithm names, in table order."""
    return tuple(_TABLE)


def table() -> tuple[Algorithm, ...]:
    """Every row, in table order."""
    return tuple(_TABLE.values())


def describe() -> str:
    """One line per algorithm (name, critics, group size, description), for ``--help``."""
    width = max(len(a.name) for a in _TABLE.values())
    lines = []
    for a in _TABLE.values():
        extra = f"; group_size >= {a.min_group_size}" if a.min_group_size > 1 else ""
        lines.append(f"{a.name:<{width}}  {a.description} (critic: {'|'.join(a.critics)}{extra})")
    return "\n".join(lines)


# The built-in rows. VL-DAC values follow Bredis et al. (2025) where the paper fixes them
# (clip 0.1, ratio guard 10, k3 KL to the reference, a detached MLP value head trained
# alone first); its warm-up length is ours, sized for runs of tens of updates. RLOO, GRPO,
# GiGPO and OSPO have no critic: their advantages are statistics over a group, so no further
# normalisation by default. GiGPO's defaults are Feng et al. (2025)'s and verl-agent's:
# omega 1, gamma 0.95 for the turn-level returns-to-go, means subtracted without dividing
# by the std (verl-agent's "mean_norm").
for _row in (
    Algorithm("ppo", f"{_ESTIMATORS}:gae", params=("gamma", "lam"),
              critics=("separate", "shared", "head"),
              defaults={"normalize_advantages": True},
              description="turn-level PPO: a critic and turn-level GAE"),
    Algorithm("vldac", f"{_ESTIMATORS}:gae", params=("gamma", "lam"), critics=("head",),
              defaults={"clip_ratio": 0.1, "kl_coef": 0.04, "normalize_advantages": True,
                        "critic_warmup_updates": 2, "ratio_guard": 10.0},
              description="VL-DAC: turn-level GAE from a detached value head, token-level "
                          "PPO (clip 0.1, ratio guard), k3 KL to the reference"),
    Algorithm("rloo", f"{_ESTIMATORS}:rloo", params=("gamma",),
              min_group_size=2, per_episode=True,
              description="REINFORCE leave-one-out over episode groups"),
    Algorithm("grpo", f"{_ESTIMATORS}:grpo", params=("gamma", "group_std"),
              min_group_size=2, per_episode=True,
              description="group-relative: (R - mean) / std over episode groups"),
    Algorithm("gigpo", f"{_ESTIMATORS}:gigpo",
              params=("gamma", "group_std", "step_adv_weight", "step_gamma"),
              defaults={"group_std": False, "step_adv_weight": 1.0, "step_gamma": 0.95},
              min_group_size=2, needs=("state_keys",),
              description="group-in-group: grpo's episode advantage + a turn-level one among "
                          "the group's turns taken from the same env state (anchor states)"),
    Algorithm("ospo", f"{_ESTIMATORS}:ospo", params=("group_std",),
              needs=("turn_groups",),
              description="one-step policy optimisation: each decision's reward against the "
                          "other decisions of its turn group (e.g. drivers in one round)"),
    Algorithm("sft", None, description="masked NLL on expert episodes only (no RL updates)"),
):
    register_algorithm(_row)
