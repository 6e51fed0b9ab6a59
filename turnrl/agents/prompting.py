"""Chat rendering for token-exact multi-turn rollouts.

The policy's own sampled token ids are the source of truth: history is never re-rendered
and re-tokenized. A conversation's token ids are built in pieces:

    prompt_ids(system, first user message)        -- ends with the assistant header
    + sampled ids of action 0                     -- usually ends with the end-of-turn token
    + observation_ids(message 1, action 0 ended?) -- the rest of the assistant's closing text,
                                                     the observation message, the next header
    + sampled ids of action 1 ...

:class:`ChatRenderer` renders one new message at a time through the tokenizer's chat
template, by rendering a fixed short conversation with and without the new message and
taking the difference. Its cost per turn is constant, whatever the history's length.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from turnrl.errors import ConfigError
from turnrl.trajectory import Message

__all__ = ["ChatRenderer"]

_PLACEHOLDER = "\u2063turnrl-placeholder\u2063"


class ChatRenderer:
    """Incremental chat-template rendering for one tokenizer.

    Args:
        tokenizer: a Hugging Face tokenizer with a chat template.

    Raises:
        ConfigError: the tokenizer has no chat template, or its template renders earlier
            messages differently once a new one is appended (then incremental rendering
            would drift from what the model is trained on).
    """

    def __init__(self, tokenizer: Any) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                "the tokenizer has no chat template; use an instruct/chat model or set "
                "tokenizer.chat_template (turnrl.agents.tiny builds one for tiny models)"
            )
        self.tokenizer = tokenizer
        self._base = [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": _PLACEHOLDER},
        ]
        base_text = self.render(self._base)
        at = base_text.rfind(_PLACEHOLDER)
        if at < 0:
            raise ConfigError("the chat template drops assistant messages; cannot render turns")
        self._base_text = base_text
        #: Text the template puts after an assistant message's content (e.g. "<|im_end|>\n").
        self.assistant_tail = base_text[at + len(_PLACEHOLDER):]
        self.eos_ids = self._end_of_turn_ids()
        self._tool_role_ok = self._template_accepts_role("tool")

    # -------------------------------------------------------------------- rendering
    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool = False) -> str:
        """The chat template's text for ``messages``."""
        return self.tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (special-token text becomes the special tokens)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        """Ids of the opening messages followed by the assistant header."""
        return self.encode(self.render(messages, add_generation_prompt=True))

    def action_text(self, token_ids: Sequence[int]) -> str:
        """The reply text of sampled ids: the end-of-turn token is dropped, any other
        special token is kept, so that rendering the text gives back the same ids."""
        ids = list(token_ids)
        if ids and ids[-1] in self.eos_ids:
            ids = ids[:-1]
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def ended(self, token_ids: Sequence[int]) -> bool:
        """Whether sampled ids closed the turn themselves (end-of-turn token last)."""
        return bool(token_ids) and token_ids[-1] in self.eos_ids

    def observation_ids(self, message: Message, *, action_ended: bool) -> list[int]:
        """Ids that follow an action: the template's closing text of the assistant turn
        (without the end-of-turn token if the policy sampled it), the observation message
        and the next assistant header.

        Args:
            message: the observation, role ``user`` or ``tool``.
            action_ended: the sampled ids ended with the end-of-turn token.
        """
        delta = self._message_delta(self._supported(message))
        tail = self.assistant_tail
        if action_ended:
            tail = self._strip_eos_text(tail)
        return self.encode(tail + delta)

    def final_ids(self, *, action_ended: bool) -> list[int]:
        """Ids that close the last assistant turn (template tail), for full-text decoding."""
        tail = self.assistant_tail
        if action_ended:
            tail = self._strip_eos_text(tail)
        return self.encode(tail) if tail else []

    # -------------------------------------------------------------------- internals
    def _message_delta(self, message: Message) -> str:
        full = self.render([*self._base, message], add_generation_prompt=True)
        if not full.startswith(self._base_text):
            raise ConfigError(
                "the chat template renders earlier turns differently once a message is "
                "appended, so turns cannot be rendered incrementally without re-tokenizing "
                "history; use a template that renders history unchanged"
            )
        return full[len(self._base_text):]

    def _supported(self, message: Message) -> Message:
        if message["role"] == "tool" and not self._tool_role_ok:
            return {"role": "user", "content": "Tool output:\n" + message["content"]}
        if message["role"] not in ("user", "tool"):
            raise ValueError(f"observation role must be 'user' or 'tool', got {message['role']!r}")
        return message

    def _strip_eos_text(self, tail: str) -> str:
        for eos in self.eos_ids:
            text = self.tokenizer.convert_ids_to_tokens(eos)
            if isinstance(text, str) and tail.startswith(text):
                return tail[len(text):]
        return tail

    def _end_of_turn_ids(self) -> set[int]:
        ids = set()
        eos = self.tokenizer.eos_token_id
        if eos is not None:
            ids.add(int(eos))
        # The first special token of the assistant tail (e.g. <|im_end|>, <|eot_id|>).
        tail_ids = self.encode(self.assistant_tail) if self.assistant_tail else []
        special = set(getattr(self.tokenizer, "all_special_ids", []))
        if tail_ids and tail_ids[0] in special:
            ids.add(int(tail_ids[0]))
        return ids

    def _template_accepts_role(self, role: str) -> bool:
        try:
            text = self.render([*self._base, {"role": role, "content": _PLACEHOLDER}])
        except Exception:  # templates that raise on unknown roles
            return False
        return _PLACEHOLDER in text
