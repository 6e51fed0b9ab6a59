"""SFT on expert episodes: the ``sft`` preset and the warm start before RL.

Expert episodes are played through the same token-level rollout engine as RL episodes,
by :class:`ExpertTokens`, which "samples" the tokens of ``info["expert_action"]`` followed by
the end-of-turn token. So SFT samples have exactly the format (and masks) RL samples have.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from turnrl.agents.base import Action
from turnrl.agents.prompting import ChatRenderer
from turnrl.errors import ConfigError

__all__ = ["ExpertTokens"]


class ExpertTokens:
    """A token-level agent that replies with the env's oracle action.

    Args:
        renderer: the policy's :class:`ChatRenderer` (same tokenizer and template).
        template: how the command is written as a reply, e.g. ``"{action}"`` or
            ``"Action: {action}"``.
    """

    #: Envs with an ``expert`` switch turn their oracle on for this agent.
    needs_expert = True

    def __init__(self, renderer: ChatRenderer, template: str = "{action}") -> None:
        if "{action}" not in template:
            raise ConfigError(f"template must contain '{{action}}', got {template!r}")
        self.renderer = renderer
        self.template = template
        self.max_new_tokens = 0
        if renderer.turn_end_id is None and not renderer.stop_ids:
            raise ConfigError("the tokenizer has no end-of-turn token")
        # the template's own end-of-turn token closes an expert reply, as the model should
        self.eos_id = renderer.turn_end_id if renderer.turn_end_id is not None else min(renderer.stop_ids)

    def generate(
        self, prompts: Sequence[Sequence[int]], *, infos: Sequence[dict[str, Any]] | None = None,
        greedy: bool | None = None,
    ) -> list[Action]:
        if infos is None or len(infos) != len(prompts):
            raise ConfigError("ExpertTokens needs the env infos (one per prompt)")
        actions = []
        for info in infos:
            expert = info.get("expert_action")
            if expert is None:
                raise ConfigError("an env state has no expert_action; SFT data needs an oracle")
            text = self.template.format(action=expert)
            ids = self.renderer.encode(text) + [self.eos_id]
            actions.append(Action(text=text, token_ids=ids, logprobs=[0.0] * len(ids)))
        return actions
