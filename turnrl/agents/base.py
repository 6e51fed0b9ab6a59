"""The agent interface.

``Agent.act(conversations) -> actions`` is batched: one conversation (list of chat
messages) in, one :class:`Action` out, for every env waiting on a reply. Agents that
need more than the text (the random and expert baselines read admissible commands and
the env's oracle) get the latest ``info`` dict of each env through ``infos``; language
model agents ignore it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from turnrl.trajectory import Action, Message  # Action lives in the data model; re-exported

__all__ = ["Action", "Agent", "Policy"]


@runtime_checkable
class Agent(Protocol):
    """Anything that answers conversations."""

    def act(
        self,
        conversations: Sequence[list[Message]],
        infos: Sequence[dict[str, Any]] | None = None,
    ) -> list[Action]:
        """Reply to each conversation.

        Args:
            conversations: one message list per env waiting on a reply.
            infos: the latest ``info`` dict of each of those envs (same order).

        Returns:
            One :class:`Action` per conversation, same order.
        """
        ...


@runtime_checkable
class Policy(Agent, Protocol):
    """A trainable agent: also exposes its tokenizer and model."""

    tokenizer: Any
    model: Any
