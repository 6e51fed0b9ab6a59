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

from turnrl.agents.prompting import ChatRenderer
from turnrl.trajectory import Action, Message  # Action lives in the data model; re-exported

__all__ = ["Action", "Agent", "Policy", "TokenPolicy", "AsyncAgent", "CollectAware", "UsesOracle",
           "RolloutEngine"]


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


@runtime_checkable
class TokenPolicy(Protocol):
    """What the rollout engine drives by token ids (HF, vLLM and Ray-vLLM policies, the
    SFT expert): it gets each context as ids and answers with the ids it sampled, so the
    trainer later trains on exactly what was generated.

    Attributes:
        renderer: the chat template's incremental renderer (prompt, observation and
            end-of-turn ids).
        max_new_tokens: reply budget; a context is cut so that it plus this fits.
    """

    renderer: ChatRenderer
    max_new_tokens: int

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        infos: Sequence[dict[str, Any]] | None = None,
        greedy: bool | None = None,
    ) -> list[Action]:
        """One reply per prompt (token ids), with ``token_ids`` and ``logprobs`` set.

        Args:
            prompts: each env's context ids, ending with the assistant header.
            infos: the latest ``info`` of each env (used by oracle policies only).
            greedy: argmax decoding for this call; None: the policy's default.
        """
        ...


@runtime_checkable
class AsyncAgent(Protocol):
    """An agent that answers one prompt at a time without a batch barrier (rollout
    ``mode="async"``): the vLLM policies (token ids) and the OpenAI-compatible agent
    (chat messages). The rollout passes ``greedy`` only when its caller chose."""

    async def agenerate(
        self,
        prompt: Sequence[int] | list[Message],
        *,
        info: dict[str, Any] | None = None,
        key: Sequence[int] = (),
        greedy: bool | None = None,
    ) -> Action:
        """One reply. ``key`` identifies the request within the collect (seed position,
        group member, turn), so sampling is reproducible however requests interleave."""
        ...


@runtime_checkable
class CollectAware(Protocol):
    """An agent told when a :func:`~turnrl.rollout.collect` starts (the vLLM policies
    derive request seeds from the collect round, so sampled runs replay exactly)."""

    def begin_collect(self) -> None:
        """Called once per collect, before its first request."""
        ...


@runtime_checkable
class UsesOracle(Protocol):
    """An agent that reads the env's oracle, ``info["expert_action"]`` (the expert
    baseline, SFT data): envs with an ``expert`` switch turn it on for it."""

    needs_expert: bool


@runtime_checkable
class RolloutEngine(TokenPolicy, Protocol):
    """A sampling engine apart from the trained model (vLLM in-process or as Ray
    actors): the trainer hands it its weights after every update."""

    def sync_weights(self, model: Any) -> float:
        """Load ``model``'s current weights (LoRA merged) in place; seconds taken."""
        ...

    def sleep(self) -> None:
        """Free the engine's accelerator memory while the trainer updates (a no-op when
        the engine was not built to sleep)."""
        ...

    def wake_up(self) -> None:
        """Take the memory back (before the weight sync that follows an update)."""
        ...

    def close(self) -> None:
        """Release what the engine holds outside this object (actors, processes)."""
        ...
