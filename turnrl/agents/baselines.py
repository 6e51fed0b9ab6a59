"""Baseline agents that need no model: uniform random over admissible commands, and the
environment's own oracle (``info["expert_action"]``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from turnrl.agents.base import Action
from turnrl.errors import ConfigError
from turnrl.trajectory import Message

__all__ = ["RandomAgent", "ExpertAgent"]


def _require_infos(name: str, conversations: Sequence[Any], infos: Any) -> Sequence[dict]:
    if infos is None or len(infos) != len(conversations):
        raise ConfigError(
            f"the {name} agent reads each env's info dict; pass infos= with one dict per "
            f"conversation (got {None if infos is None else len(infos)} for "
            f"{len(conversations)} conversations)"
        )
    return infos


class RandomAgent:
    """Picks uniformly among ``info["admissible_actions"]``.

    Envs without admissible actions get ``fallback`` (default ``"look"``).

    Args:
        seed: seeds the agent's own generator, so runs are reproducible.
        fallback: reply used when an env lists no admissible actions.
    """

    name = "random"

    def __init__(self, seed: int | None = None, fallback: str = "look") -> None:
        self.rng = np.random.default_rng(seed)
        self.fallback = fallback

    def act(
        self,
        conversations: Sequence[list[Message]],
        infos: Sequence[dict[str, Any]] | None = None,
    ) -> list[Action]:
        infos = _require_infos(self.name, conversations, infos)
        actions = []
        for info in infos:
            choices = info.get("admissible_actions") or []
            text = str(choices[self.rng.integers(len(choices))]) if choices else self.fallback
            actions.append(Action(text=text))
        return actions


class ExpertAgent:
    """Replies with the env's oracle action, ``info["expert_action"]``.

    Raises:
        ConfigError: an env offers no expert action and ``fallback`` is None.
    """

    name = "expert"
    #: Envs with an ``expert`` switch turn their oracle on for this agent.
    needs_expert = True

    def __init__(self, fallback: str | None = None) -> None:
        self.fallback = fallback

    def act(
        self,
        conversations: Sequence[list[Message]],
        infos: Sequence[dict[str, Any]] | None = None,
    ) -> list[Action]:
        infos = _require_infos(self.name, conversations, infos)
        actions = []
        for info in infos:
            expert = info.get("expert_action")
            if expert is None:
                if self.fallback is None:
                    raise ConfigError(
                        "the env gave no expert_action for this state (its info has "
                        f"keys {sorted(info)}); this env may have no oracle, or it needs "
                        "expert=True"
                    )
                expert = self.fallback
            actions.append(Action(text=str(expert)))
        return actions
