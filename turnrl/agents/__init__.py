"""Agents: the :class:`Agent` protocol and the baselines. Model-backed agents
(``hf``, ``vllm``, ``openai``) live in their own modules and import their backends lazily.

Agents by name (``make_agent("random")``, ``make_agent("hf:PATH")``, ``turnrl eval
--agent``) come from :mod:`turnrl.agent_registry`, re-exported here.
"""

from __future__ import annotations

from turnrl.agent_registry import list_agents, make_agent, register_agent
from turnrl.agents.base import Action, Agent, Policy
from turnrl.agents.baselines import ExpertAgent, RandomAgent
from turnrl.agents.scripted_code import ScriptedCodeAgent

__all__ = [
    "Action", "Agent", "Policy", "ExpertAgent", "RandomAgent", "ScriptedCodeAgent",
    "make_agent", "register_agent", "list_agents",
]
