"""The front end every token-level policy shares (HF, vLLM, Ray-vLLM).

:class:`TokenPolicyBase` checks the sampling settings, holds the tokenizer and its chat
renderer, and answers chat conversations (:meth:`act`) by rendering them to ids and
calling the backend's ``generate``. Backends only implement ``generate``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from turnrl.agents.base import Action
from turnrl.agents.prompting import ChatRenderer
from turnrl.errors import ConfigError
from turnrl.trajectory import Message

__all__ = ["TokenPolicyBase", "check_sampling", "eos_ids_of"]


def eos_ids_of(generation_config: Any) -> list[int]:
    """The end-of-sequence ids of a ``transformers.GenerationConfig`` (its
    ``eos_token_id`` is an int, a list of ints or None; Qwen2.5-Instruct lists both
    ``<|im_end|>`` and ``<|endoftext|>``)."""
    eos = getattr(generation_config, "eos_token_id", None)
    if eos is None:
        return []
    return [int(eos)] if isinstance(eos, int) else [int(i) for i in eos]


def check_sampling(*, temperature: float, top_p: float, max_new_tokens: int) -> None:
    """Raise one :class:`ConfigError` naming every bad sampling setting."""
    errors = []
    if not temperature > 0:
        errors.append(f"temperature must be > 0, got {temperature!r}")
    if not 0 < top_p <= 1:
        errors.append(f"top_p must be in (0, 1], got {top_p!r}")
    if max_new_tokens < 1:
        errors.append(f"max_new_tokens must be >= 1, got {max_new_tokens!r}")
    if errors:
        raise ConfigError("; ".join(errors))


class TokenPolicyBase(ABC):
    """Tokenizer, chat renderer and sampling settings of a token policy.

    Args:
        tokenizer: a Hugging Face tokenizer with a chat template.
        temperature: sampling temperature (> 0); the trainer evaluates logprobs at the
            same one, so importance ratios start at 1.
        top_p: nucleus sampling threshold in (0, 1].
        max_new_tokens: reply budget; a reply cut by it has no end-of-turn token.
        stop: strings that end a reply (the tokens that produced them are kept).
        greedy: decode by argmax when a call does not say (``generate(greedy=None)``).
        template_kwargs: extra chat-template variables (e.g. ``{"enable_thinking": False}``).
        stop_ids: token ids that end a reply besides the tokenizer's eos and the template's
            end-of-turn token, e.g. the model's ``generation_config.eos_token_id``.

    Raises:
        ConfigError: a bad setting, or a tokenizer without a chat template.
    """

    def __init__(self, tokenizer: Any, *, temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int = 64, stop: Sequence[str] = (), greedy: bool = False,
                 template_kwargs: dict[str, Any] | None = None, stop_ids: Sequence[int] = ()) -> None:
        check_sampling(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
        self.tokenizer = tokenizer
        self.renderer = ChatRenderer(tokenizer, template_kwargs=template_kwargs, stop_ids=stop_ids)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.max_new_tokens = int(max_new_tokens)
        self.stop = tuple(stop)
        #: Default decoding when a call passes ``greedy=None``.
        self.greedy = bool(greedy)
        pad = tokenizer.pad_token_id
        #: Id that pads batches (the tokenizer's pad, else its eos, else 0).
        self.pad_id = int(pad if pad is not None else (tokenizer.eos_token_id or 0))

    def act(self, conversations: Sequence[list[Message]],
            infos: Sequence[dict[str, Any]] | None = None) -> list[Action]:
        """Render each conversation with the chat template and sample a reply."""
        return self.generate([self.renderer.prompt_ids(c) for c in conversations], infos=infos)

    @abstractmethod
    def generate(self, prompts: Sequence[Sequence[int]], *,
                 infos: Sequence[dict[str, Any]] | None = None,
                 greedy: bool | None = None) -> list[Action]:
        """One reply per prompt (see :class:`~turnrl.agents.base.TokenPolicy`)."""

    def _decoding(self, greedy: bool | None) -> bool:
        """This call's decoding: ``greedy`` when given, else the policy's default."""
        return self.greedy if greedy is None else bool(greedy)
