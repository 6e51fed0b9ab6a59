"""Paired comparison of two agents, runs or results files on the same seeds.

``turnrl compare A B`` pairs the episodes of A and B by (env, seed, sample) -- the same
game played by both -- and reports, per env and pooled over all envs:

- the success rates of A and B and the difference **B - A** (so a positive number means
  B wins more often);
- a 95% paired bootstrap interval of that difference: seeds are resampled with
  replacement (a seed's pairs move together), 10,000 resamples from a fixed RNG seed, so
  the interval is reproducible;
- the exact McNemar p-value: a two-sided binomial test on the discordant pairs,
  ``b`` = A won and B lost, ``c`` = B won and A lost:
  ``p = min(1, 2 * sum_{i <= min(b, c)} C(b + c, i) / 2^(b + c))``, 1 when ``b + c = 0``.
  It treats pairs as independent; with several samples per seed they are not quite, and
  the seed-level bootstrap interval is the safer guide.

Each side is one of:

- a results file: ``turnrl eval --json`` output (it carries every episode's seed, sample
  and outcome) or ``turnrl eval --save-trajectories`` JSONL -- nothing is played;
- a run directory (holds ``config.yaml``): its ``final_model/`` is evaluated with the run's
  own evaluation settings (decoding, temperature, reply budget, context), by default on
  the run's eval envs and seeds (``eval.episodes`` of them); the trainer logs only a few
  eval episodes, so the run's policy is played again;
- an agent spec (``random``, ``expert``, ``hf:MODEL``, ...): played on ``target``.

Example:
    >>> c = compare("results/baseline.json", "hf:runs/quickstart/final_model",
    ...             target=EvalTarget("turnrl/TextWorld-v0", episodes=50, seed=100000))
    >>> c.overall.difference, c.overall.ci95, c.overall.mcnemar_p
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from turnrl.agent_registry import agent_spec, list_agents, make_agent
from turnrl.agents.base import Agent
from turnrl.envs.suites import get_suite
from turnrl.errors import ConfigError, did_you_mean
from turnrl.evaluate import (
    BOOTSTRAP_RESAMPLES,
    EpisodeRecord,
    bootstrap_ci,
    episode_records,
    evaluate,
)
from turnrl.trainer.config import TrainConfig, load_config
from turnrl.trajectory import Trajectory, load_jsonl

__all__ = ["compare", "compare_records", "mcnemar_exact", "load_records", "EvalTarget",
           "PairedStats", "Comparison", "Side", "resolve_side", "run_target", "choose_target",
           "build_agent", "side_records", "DIFFERENCE"]

#: What :attr:`PairedStats.difference` is.
DIFFERENCE = "B - A"


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value from the discordant pair counts: under the null
    hypothesis each of the ``b + c`` discordant pairs goes either way with probability 1/2.

    >>> mcnemar_exact(1, 5)   # 2 * (C(6, 0) + C(6, 1)) / 2^6 = 14/64
    0.21875
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)  # exact integers; the division rounds once


@dataclass(frozen=True)
class PairedStats:
    """The comparison on one env (or on all of them: ``env == "all"``).

    Attributes:
        env: the env (suite entry) name, or ``"all"`` for the pooled pairs.
        pairs: episode pairs compared; seeds: distinct (env, seed) among them.
        success_a, success_b: success rates over the pairs.
        difference: ``success_b - success_a``.
        ci95: paired bootstrap 95% interval of the difference (seeds resampled).
        a_only, b_only: discordant pairs: A won and B did not (McNemar's b), and the
            reverse (c).
        mcnemar_p: :func:`mcnemar_exact` of ``(a_only, b_only)``.
        unpaired_a, unpaired_b: episodes of A (B) with no partner, left out.
    """

    env: str
    pairs: int
    seeds: int
    success_a: float
    success_b: float
    difference: float
    ci95: tuple[float, float]
    a_only: int
    b_only: int
    mcnemar_p: float
    unpaired_a: int = 0
    unpaired_b: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"env": self.env, "pairs": self.pairs, "seeds": self.seeds,
                "success_a": self.success_a, "success_b": self.success_b,
                "difference": self.difference, "difference_ci95": list(self.ci95),
                "a_only": self.a_only, "b_only": self.b_only, "mcnemar_p": self.mcnemar_p,
                "unpaired_a": self.unpaired_a, "unpaired_b": self.unpaired_b}


@dataclass(frozen=True)
class Comparison:
    """A paired comparison: per env, in A's order, then pooled (``overall``)."""

    a: str
    b: str
    envs: list[PairedStats]
    overall: PairedStats
    resamples: int = BOOTSTRAP_RESAMPLES
    seed: int = 0
    #: (env, seed, sample) of A's / B's episodes left out for want of a partner.
    unpaired_a: list[tuple[str, int | None, int]] = field(default_factory=list)
    unpaired_b: list[tuple[str, int | None, int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The JSON written by ``turnrl compare --json``."""
        return {
            "a": self.a, "b": self.b, "difference": DIFFERENCE,
            "ci": {"method": "paired bootstrap over seeds, percentile", "level": 0.95,
                   "resamples": self.resamples, "rng_seed": self.seed},
            "test": "exact McNemar (two-sided binomial on discordant pairs)",
            "envs": [e.to_dict() for e in self.envs],
            "overall": self.overall.to_dict(),
            "unpaired_a": [list(k) for k in self.unpaired_a],
            "unpaired_b": [list(k) for k in self.unpaired_b],
        }


Pair = tuple[EpisodeRecord, EpisodeRecord]


def _paired_stats(env: str, pairs: Sequence[Pair], *, resamples: int, seed: int,
                  unpaired: tuple[int, int] = (0, 0)) -> PairedStats:
    n = len(pairs)
    wins_a = sum(a.won for a, _ in pairs)
    wins_b = sum(b.won for _, b in pairs)
    # One bootstrap cluster per (env, seed): its summed B - A and its number of pairs.
    sums: dict[tuple[str, int | None], list[int]] = {}
    for a, b in pairs:
        cell = sums.setdefault((a.env, a.seed), [0, 0])
        cell[0] += int(b.won) - int(a.won)
        cell[1] += 1
    totals = list(sums.values())
    ci = bootstrap_ci([t[0] for t in totals], [t[1] for t in totals], resamples=resamples, seed=seed)
    a_only = sum(a.won and not b.won for a, b in pairs)
    b_only = sum(b.won and not a.won for a, b in pairs)
    return PairedStats(env=env, pairs=n, seeds=len(sums), success_a=wins_a / n,
                       success_b=wins_b / n, difference=(wins_b - wins_a) / n, ci95=ci,
                       a_only=a_only, b_only=b_only, mcnemar_p=mcnemar_exact(a_only, b_only),
                       unpaired_a=unpaired[0], unpaired_b=unpaired[1])


def compare_records(
    a: Sequence[EpisodeRecord], b: Sequence[EpisodeRecord], *, a_label: str = "A",
    b_label: str = "B", resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
) -> Comparison:
    """Pair A's and B's episodes by (env, seed, sample) and compare them per env and
    pooled. Episodes without a partner are left out and listed.

    Raises:
        ConfigError: the two sides share no (env, seed, sample), or a side lists one
            twice.
    """
    keyed = []
    for label, records in ((a_label, a), (b_label, b)):
        index = {(r.env, r.seed, r.sample): r for r in records}
        if len(index) < len(records):
            raise ConfigError(f"{label} lists some (env, seed, sample) more than once")
        keyed.append(index)
    common = [k for k in keyed[0] if k in keyed[1]]
    if not common:
        raise ConfigError(f"{a_label} and {b_label} share no (env, seed) episode to pair: "
                          f"{a_label} has {_describe(a)}; {b_label} has {_describe(b)}")
    only_a = [k for k in keyed[0] if k not in keyed[1]]
    only_b = [k for k in keyed[1] if k not in keyed[0]]
    envs: dict[str, list[Pair]] = {}
    for k in common:
        envs.setdefault(k[0], []).append((keyed[0][k], keyed[1][k]))
    per_env = [
        _paired_stats(env, pairs, resamples=resamples, seed=seed, unpaired=(
            sum(k[0] == env for k in only_a), sum(k[0] == env for k in only_b)))
        for env, pairs in envs.items()]
    overall = _paired_stats("all", [p for pairs in envs.values() for p in pairs],
                            resamples=resamples, seed=seed, unpaired=(len(only_a), len(only_b)))
    return Comparison(a=a_label, b=b_label, envs=per_env, overall=overall, resamples=resamples,
                      seed=seed, unpaired_a=only_a, unpaired_b=only_b)


def _describe(records: Sequence[EpisodeRecord]) -> str:
    """``"tw-simple seeds 0-9, tw-cooking seeds 3, 5"`` (short)."""
    by_env: dict[str, set[int | None]] = {}
    for r in records:
        by_env.setdefault(r.env, set()).add(r.seed)
    if not by_env:
        return "no episodes"
    parts = []
    for env, seeds in by_env.items():
        ordered = sorted(seeds, key=lambda s: (s is None, s or 0))
        if len(ordered) > 4:
            shown = f"{len(ordered)} seeds {ordered[0]}..{ordered[-1]}"
        else:
            shown = "seeds " + ", ".join(str(s) for s in ordered)
        parts.append(f"{env} {shown}")
    return "; ".join(parts)


# ------------------------------------------------------------------------ results files
def load_records(path: str | Path) -> list[EpisodeRecord]:
    """Episode records of a results file: ``turnrl eval --json`` output (a list of per-env
    objects with ``episode_results``) or ``--save-trajectories`` JSONL.

    Raises:
        ConfigError: a missing or unreadable file, or eval JSON without per-episode
            results (written before turnrl recorded them: run ``turnrl eval --json`` again).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such results file")
    try:
        if path.suffix == ".jsonl":
            return episode_records(list(load_jsonl(path)))
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"{path}: cannot read results ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, list) or not all(isinstance(row, dict) and "env" in row for row in data):
        raise ConfigError(f"{path}: not `turnrl eval --json` output (a list of per-env objects)")
    missing = [row["env"] for row in data if "episode_results" not in row]
    if missing:
        raise ConfigError(f"{path}: env {missing[0]!r} has no per-episode results "
                          f"('episode_results'); write the file again with `turnrl eval --json`")
    try:
        return [EpisodeRecord.from_dict(row["env"], item) for row in data
                for item in row["episode_results"]]
    except (KeyError, ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: bad episode_results item ({type(exc).__name__}: {exc})") from None


# ------------------------------------------------------------------------ sides
@dataclass(frozen=True)
class EvalTarget:
    """Where agents and runs are played: an env id or suite, as for :func:`evaluate`."""

    target: str
    episodes: int | None = None
    seed: int = 0
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        seeds = "every eval seed" if self.episodes is None else f"{self.episodes} seeds"
        kwargs = "".join(f" {k}={v}" for k, v in self.env_kwargs.items())
        return f"{self.target}{kwargs} ({seeds} per env)"


@dataclass(frozen=True)
class Side:
    """One side of a comparison, as resolved from what the user wrote.

    Attributes:
        spec: as written (a path or an agent spec).
        kind: ``"results"`` (a results file: ``records`` set), ``"run"`` (a run
            directory: ``config`` set) or ``"agent"`` (an agent spec).
    """

    spec: str
    kind: str
    records: list[EpisodeRecord] | None = None
    config: TrainConfig | None = None

    @property
    def plays(self) -> bool:
        """Whether this side must be played (an agent or a run), not read."""
        return self.kind != "results"


def resolve_side(spec: str, label: str = "A") -> Side:
    """Read what ``spec`` names: a results file (read now), a run directory (its config
    read and its ``final_model/`` checked) or an agent spec (looked up, not built).

    Raises:
        ConfigError: none of those (close agent names suggested), a directory that is not
            a run directory, a run without ``final_model/``, or an unreadable file.
    """
    path = Path(spec)
    if path.is_file():
        return Side(spec, "results", records=load_records(path))
    if path.is_dir():
        if not (path / "config.yaml").is_file():
            raise ConfigError(f"{label} {spec!r} is a directory but not a run directory (no "
                              f"config.yaml); for a saved model write hf:{spec}")
        if not (path / "final_model").is_dir():
            raise ConfigError(f"{label} {spec!r}: the run has no final_model/ (not finished?); "
                              f"compare a saved model with hf:DIR")
        return Side(spec, "run", config=load_config(path / "config.yaml"))
    if path.suffix in (".json", ".jsonl"):
        raise ConfigError(f"{label} {spec!r}: no such results file")
    try:
        agent_spec(spec)
    except ConfigError:
        names = [a.name for a in list_agents()]
        raise ConfigError(
            f"{label} {spec!r} is neither a results file, a run directory nor a registered "
            f"agent.{did_you_mean(spec.partition(':')[0], names)} Agents: "
            f"{', '.join(a.usage for a in list_agents())}") from None
    return Side(spec, "agent")


def run_target(config: TrainConfig) -> EvalTarget:
    """The envs and seeds a run evaluated on: its env id with kwargs and the first
    ``eval.episodes`` eval seeds, or its suite (``eval.episodes`` seeds per entry)."""
    env, episodes = config.env, config.eval.episodes
    if env.suite:
        lengths = [len(e.eval_seeds) for e in get_suite(env.suite).entries]
        return EvalTarget(env.suite, episodes=None if episodes >= max(lengths) else episodes)
    start, stop = env.eval_seeds
    return EvalTarget(env.id, episodes=min(episodes, stop - start), seed=start,
                      env_kwargs=dict(env.kwargs))


def choose_target(a: Side, b: Side, target: EvalTarget | None) -> EvalTarget | None:
    """Where the sides that play are played: ``target`` when given, else the run
    directories' own eval envs (both runs must agree); None when both sides are files.

    Raises:
        ConfigError: a target given for two results files, an agent with no target, or
            two runs evaluated on different envs and no target.
    """
    playing = [s for s in (a, b) if s.plays]
    if not playing:
        if target is not None:
            raise ConfigError("--target applies to agents and run directories; two results "
                              "files are compared on the episodes they hold")
        return None
    if target is not None:
        return target
    runs = [run_target(s.config) for s in playing if s.config is not None]
    if not runs:
        raise ConfigError(f"agent {playing[0].spec!r} needs an env or suite to play: give "
                          f"--target (e.g. --target textworld)")
    if len(runs) == 2 and runs[0] != runs[1]:
        raise ConfigError(f"the runs were evaluated on different envs ({runs[0].describe()} "
                          f"vs {runs[1].describe()}); give --target")
    return runs[0]


def build_agent(side: Side, *, seed: int = 0, agent_kwargs: Mapping[str, Any] | None = None) -> Agent:
    """The agent that plays ``side``: the agent spec (seeded with ``seed`` where it draws
    random numbers; ``agent_kwargs`` passed on), or a run's ``final_model/`` as an
    :class:`~turnrl.agents.hf.HFPolicy` with the run's sampling settings."""
    if side.config is not None:
        m, r = side.config.model, side.config.rollout
        return make_agent(f"hf:{Path(side.spec) / 'final_model'}", temperature=r.temperature,
                          top_p=r.top_p, max_new_tokens=r.max_new_tokens, dtype=m.dtype,
                          device=m.device, seed=seed,
                          template_kwargs=dict(m.chat_template_kwargs) or None)
    if side.kind != "agent":
        raise ConfigError(f"{side.spec!r} is a results file; nothing to build")
    kwargs = dict(agent_kwargs or {})
    if agent_spec(side.spec).takes_seed():
        kwargs.setdefault("seed", seed)
    return make_agent(side.spec, **kwargs)


def side_records(
    side: Side, agent: Agent | None, target: EvalTarget | None, *, samples_per_seed: int = 1,
    num_envs: int = 8, on_episode_end: Callable[[Trajectory], Any] | None = None,
) -> list[EpisodeRecord]:
    """A side's episode records: read from its file, or played by ``agent`` on ``target``
    (a run with its own eval decoding -- greedy or sampled -- and context; any agent
    samples when ``samples_per_seed > 1``)."""
    if side.records is not None:
        return side.records
    if agent is None or target is None:
        raise ConfigError(f"{side.spec!r} must be played: give an agent and a target")
    decoding: dict[str, Any] = {}
    if side.config is not None:
        r = side.config.rollout
        decoding = {"greedy": side.config.eval.greedy if samples_per_seed == 1 else False,
                    "context": r.context, "max_context_tokens": r.max_context_tokens}
    results = evaluate(target.target, agent, episodes=target.episodes, seed=target.seed,
                       env_kwargs=dict(target.env_kwargs) or None, num_envs=num_envs,
                       samples_per_seed=samples_per_seed, on_episode_end=on_episode_end,
                       **decoding)
    return [rec for r in results for rec in r.records]


def compare(
    a: str, b: str, *, target: EvalTarget | None = None, samples_per_seed: int = 1,
    seed: int = 0, num_envs: int = 8, agent_kwargs: Mapping[str, Any] | None = None,
    resamples: int = BOOTSTRAP_RESAMPLES, bootstrap_seed: int = 0,
) -> Comparison:
    """Compare B with A on the same seeds (see the module docstring for what A and B can
    be and for the statistics).

    Args:
        a, b: results files, run directories or agent specs.
        target: where agents (and runs) play; default for runs: their own eval envs.
        samples_per_seed: episodes per seed for the sides that play.
        seed: seeds the agents that draw random numbers (as ``turnrl eval --seed``).
        num_envs: environments in flight at once.
        agent_kwargs: passed to agent specs (e.g. ``base_url`` for ``openai:MODEL``).
        resamples, bootstrap_seed: the paired bootstrap's resamples and RNG seed.

    Returns:
        The :class:`Comparison` (difference = B - A).

    Raises:
        ConfigError: an unknown side, a missing target, or no common seeds -- checked
            before anything is played where possible.
    """
    sides = (resolve_side(a, "A"), resolve_side(b, "B"))
    where = choose_target(*sides, target)
    agents = [build_agent(s, seed=seed, agent_kwargs=agent_kwargs) if s.plays else None
              for s in sides]
    records = [side_records(s, agent, where, samples_per_seed=samples_per_seed,
                            num_envs=num_envs) for s, agent in zip(sides, agents, strict=True)]
    return compare_records(*records, a_label=a, b_label=b, resamples=resamples,
                           seed=bootstrap_seed)
