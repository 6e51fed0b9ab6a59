"""Agents: the :class:`Agent` protocol and the baselines. Model-backed agents
(``hf``, ``vllm``, ``openai``) live in their own modules and import their backends lazily."""

from __future__ import annotations

from typing import Any

from turnrl.agents.base import Action, Agent, Policy
from turnrl.agents.baselines import ExpertAgent, RandomAgent
from turnrl.agents.scripted_code import ScriptedCodeAgent
from turnrl.errors import ConfigError, did_you_mean

__all__ = ["Action", "Agent", "Policy", "ExpertAgent", "RandomAgent", "make_agent", "AGENTS"]

#: Agents that `turnrl eval --agent NAME` can build without extra arguments.
AGENTS = {"random": RandomAgent, "expert": ExpertAgent, "scripted_code": ScriptedCodeAgent}


def make_agent(name: str, **kwargs: Any) -> Agent:
    """Build an agent by name (``"random"``, ``"expert"``)."""
    try:
        cls = AGENTS[name]
    except KeyError:
        raise ConfigError(
            f"unknown agent {name!r}.{did_you_mean(name, AGENTS)} Available: {', '.join(AGENTS)}"
        ) from None
    return cls(**kwargs)
