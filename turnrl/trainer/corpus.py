"""Text of an environment for training a tiny model's tokenizer offline."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from turnrl.agents.baselines import ExpertAgent, RandomAgent
from turnrl.envs.registry import make
from turnrl.rollout import collect

__all__ = ["env_text_corpus"]


def env_text_corpus(
    env_id: str, seeds: Iterable[int], *, random_episodes: bool = True, **env_kwargs: Any
) -> list[str]:
    """Text for tokenizer training: instructions, observations and commands of expert (and
    random) episodes on the given seeds.

    Example:
        >>> texts = env_text_corpus("turnrl/TextWorld-v0", range(20), challenge="tw-coin_collector")
        >>> path = turnrl.agents.tiny.make_tiny_model("/tmp/tiny", texts, hidden_size=128)
    """
    env = make(env_id, **env_kwargs)
    texts = [getattr(env.unwrapped, "instructions", "")]
    env.close()
    seeds = list(seeds)
    agents = [ExpertAgent(fallback="look")] + ([RandomAgent(seed=0)] if random_episodes else [])
    for agent in agents:
        for traj in collect(lambda: make(env_id, **env_kwargs), agent, seeds, env_id=env_id):
            texts.extend(m["content"] for m in traj.messages[1:])
            for turn in traj.turns:
                texts.extend(turn.info.get("admissible_actions") or [])
    return [t for t in texts if t]
