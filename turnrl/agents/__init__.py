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
    """Build an agent by name (``"random"``, ``"expert"``, ``"scripted_code"``,
    ``"dispatch_greedy"`` and the other ride-dispatch baselines), or a
    Hugging Face policy from ``"hf:ID_OR_DIR"`` (e.g. a run's ``final_model``), which
    decodes greedily."""
    if name.startswith("hf:"):
        from turnrl.agents.hf import HFPolicy

        if not name[3:]:
            raise ConfigError("agent 'hf:' needs a model: hf:ORG/NAME or hf:PATH/TO/DIR")
        policy = HFPolicy(name[3:], max_new_tokens=int(kwargs.pop("max_new_tokens", 64)), **kwargs)
        policy.greedy = True
        return policy
    if name.startswith("openai:"):
        from turnrl.agents.openai import OpenAIAgent

        return OpenAIAgent(name[len("openai:"):], **kwargs)
    if name.startswith("dispatch_"):
        from turnrl.envs.ride_dispatch.policies import DispatchAgent

        return DispatchAgent(name.removeprefix("dispatch_"), **kwargs)
    if name in ("stock_majority", "stock_lexicon"):
        from turnrl.envs.stock.baselines import StockAgent

        return StockAgent(name.removeprefix("stock_"))
    try:
        cls = AGENTS[name]
    except KeyError:
        raise ConfigError(
            f"unknown agent {name!r}.{did_you_mean(name, AGENTS)} Available: "
            f"{', '.join(AGENTS)}, dispatch_random | dispatch_greedy | dispatch_matching "
            f"(ride dispatch), stock_majority | stock_lexicon, openai:MODEL (an "
            f"OpenAI-compatible server; --base-url), or hf:MODEL (a Hugging Face id or a saved model directory)"
        ) from None
    return cls(**kwargs)
