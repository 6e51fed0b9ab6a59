"""Chat rendering for token-exact multi-turn rollouts.

The policy's own sampled token ids are the source of truth: history is never re-rendered
and re-tokenized (unless the template itself rewrites history and the rollout is asked to
follow it; see ``reasoning_history`` in :func:`turnrl.rollout.collect`). A conversation's
token ids are built in pieces:

    prompt_ids(system, first user message)      -- ends with the generation prompt
    + sampled ids of action 0                   -- usually ends with the end-of-turn token
    + observation_ids(message 1, action 0's ids) -- the rest of the assistant turn's closing
                                                   text, the observation message, the next
                                                   generation prompt
    + sampled ids of action 1 ...

:class:`ChatRenderer` learns from the template itself what surrounds a new message: it
renders a short conversation whose assistant turn holds a placeholder, with and without a
message after it, and reads the text after the placeholder. It checks the template once,
when it is built, and says what differs if the template cannot be rendered this way.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from turnrl.errors import ConfigError
from turnrl.trajectory import Message

__all__ = ["ChatRenderer"]

_PLACEHOLDER = "\u2063turnrl-placeholder\u2063"
_REASONING = "\u2063turnrl-reasoning\u2063"
_OBSERVATION = "\u2063turnrl-observation\u2063"
#: Reasoning markup the history check tries (Qwen3, DeepSeek-R1 and most reasoning models).
_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"


class ChatRenderer:
    """Incremental chat-template rendering for one tokenizer.

    Args:
        tokenizer: a Hugging Face tokenizer with a chat template.
        template_kwargs: extra variables for the template (e.g. ``{"enable_thinking":
            False}`` for Qwen3's non-thinking mode).
        stop_ids: more token ids that end a reply (e.g. the model's
            ``generation_config.eos_token_id`` list), besides the tokenizer's eos and the
            template's own end-of-turn token.

    Attributes:
        assistant_tail: the text the template puts after an assistant message's content
            (e.g. ``"<|im_end|>\\n"``).
        turn_end_id: the template's own end-of-turn token (the first token of
            ``assistant_tail`` when it is a special token), or None.
        stop_ids: every token id that ends a reply.
        history_rewrite: how the template renders an earlier assistant turn differently
            from how it was generated (e.g. it drops ``<think>`` reasoning), or None.

    Raises:
        ConfigError: at construction, when the template cannot be rendered turn by turn: no
            chat template, assistant messages dropped, a generation prompt that is not
            where the template puts the assistant's content, or a closing text that
            changes when a message follows. The message says what differs.
    """

    def __init__(self, tokenizer: Any, *, template_kwargs: dict[str, Any] | None = None,
                 stop_ids: Sequence[int] = ()) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                "the tokenizer has no chat template; use an instruct/chat model or set "
                "tokenizer.chat_template (turnrl.agents.tiny builds one for tiny models)")
        self.tokenizer = tokenizer
        self.template_kwargs = dict(template_kwargs or {})
        self._opening = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
        self._base = [*self._opening, {"role": "assistant", "content": _PLACEHOLDER}]
        base_text = self._render_checked(self._base)
        at = base_text.rfind(_PLACEHOLDER)
        if at < 0:
            raise ConfigError("the chat template drops assistant messages; cannot render turns")
        self.assistant_tail = base_text[at + len(_PLACEHOLDER):]
        self._check_generation_prompt(base_text[:at])
        self._tool_role_ok = self._template_accepts_role("tool")
        for role in ("user", "tool") if self._tool_role_ok else ("user",):
            self._message_delta({"role": role, "content": _OBSERVATION})  # raises if it cannot
        tail_ids = self.encode(self.assistant_tail) if self.assistant_tail else []
        self.turn_end_id: int | None = tail_ids[0] if tail_ids and self._special(tail_ids[0]) else None
        eos = self.tokenizer.eos_token_id
        self.stop_ids: frozenset[int] = frozenset(
            int(i) for i in (*stop_ids, eos, self.turn_end_id) if i is not None)
        self.history_rewrite = self._find_history_rewrite()
        self._warned_keep = False

    # -------------------------------------------------------------------- rendering
    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool = False,
               tools: Sequence[dict[str, Any]] | None = None) -> str:
        """The chat template's text for ``messages``; ``tools`` (JSON-schema function specs)
        go to the template, which lists them where the model expects (Qwen: in the system
        message)."""
        extra = {"tools": list(tools)} if tools else {}
        return self.tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt,
            **extra, **self.template_kwargs)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (special-token text becomes the special tokens)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_ids(self, messages: Sequence[Message], *,
                   tools: Sequence[dict[str, Any]] | None = None) -> list[int]:
        """Ids of ``messages`` (and ``tools``) as the template renders them, then the
        generation prompt."""
        return self.encode(self.render(messages, add_generation_prompt=True, tools=tools))

    def action_text(self, token_ids: Sequence[int]) -> str:
        """The reply text of sampled ids: a final stop token is dropped, any other special
        token is kept, so that rendering the text gives back the same ids."""
        ids = list(token_ids)
        if ids and ids[-1] in self.stop_ids:
            ids = ids[:-1]
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def ended(self, token_ids: Sequence[int]) -> bool:
        """Whether sampled ids ended the reply themselves (a stop token last)."""
        return bool(token_ids) and token_ids[-1] in self.stop_ids

    def closing_text(self, action_ids: Sequence[int]) -> str:
        """What closes an assistant turn after these sampled ids, as the template closes
        it: the template's closing text, less its end-of-turn token when the policy
        sampled that token itself. A reply ended by another stop token (e.g.
        ``<|endoftext|>``) or cut by the budget gets the whole closing text."""
        if self.turn_end_id is not None and action_ids and action_ids[-1] == self.turn_end_id:
            return self.assistant_tail[len(self.tokenizer.convert_ids_to_tokens(self.turn_end_id)):]
        return self.assistant_tail

    def observation_ids(self, message: Message, *, action_ids: Sequence[int]) -> list[int]:
        """Ids that follow an action: the closing text of the assistant turn
        (:meth:`closing_text`), the observation message and the next generation prompt.

        Args:
            message: the observation, role ``user`` or ``tool``.
            action_ids: the ids the policy sampled for the action before it.
        """
        return self.encode(self.closing_text(action_ids) + self._message_delta(self._supported(message)))

    def final_ids(self, *, action_ids: Sequence[int]) -> list[int]:
        """Ids that close the last assistant turn, for full-text decoding."""
        tail = self.closing_text(action_ids)
        return self.encode(tail) if tail else []

    def warn_if_history_differs(self) -> None:
        """Warn (once per renderer) that appending turns keeps what the template would drop
        from history (``reasoning_history: keep`` with a rewriting template)."""
        if self.history_rewrite and not self._warned_keep:
            self._warned_keep = True
            warnings.warn(
                f"reasoning_history=keep: the chat template {self.history_rewrite}, but the "
                "rollout keeps every turn as it was generated, so training sees history the "
                "deployed template never shows; set rollout.reasoning_history=strip to train "
                "on history as the template renders it", RuntimeWarning, stacklevel=3)

    # -------------------------------------------------------------------- checks
    def _render_checked(self, messages: list[Message], **kwargs: Any) -> str:
        try:
            return self.render(messages, **kwargs)
        except Exception as exc:  # a template may raise anything (jinja, its own errors)
            raise ConfigError(f"the chat template cannot render a plain system/user/assistant "
                              f"conversation: {type(exc).__name__}: {exc}") from exc

    def _check_generation_prompt(self, before_content: str) -> None:
        """The newest assistant turn must begin with the generation prompt: the policy's
        sampled ids follow it. (The template may put more there that the model writes
        itself, e.g. Qwen3's empty ``<think></think>`` block.)"""
        prompt = self._render_checked(self._opening, add_generation_prompt=True)
        if not before_content.startswith(prompt):
            raise ConfigError(
                "the chat template's generation prompt is not how it begins the assistant's "
                f"turn: the generation prompt ends {prompt[-60:]!r}, the assistant's content "
                f"follows {before_content[-60:]!r}; the model would be trained on a context it "
                "never generated from. Use another template (or template_kwargs that make "
                "them agree)")

    def _message_delta(self, message: Message) -> str:
        """The text a message adds after a closed assistant turn, up to and including the
        next generation prompt."""
        full = self._render_checked([*self._base, message], add_generation_prompt=True)
        at = full.rfind(_PLACEHOLDER)
        after = full[at + len(_PLACEHOLDER):] if at >= 0 else ""
        if at < 0 or not after.startswith(self.assistant_tail):
            raise ConfigError(
                f"the chat template closes an assistant turn with {self.assistant_tail!r} when "
                f"it is the last message, but with {after[:40]!r} when a {message['role']} "
                "message follows, so turns cannot be rendered one at a time; use a template "
                "that closes assistant turns the same way")
        return after[len(self.assistant_tail):]

    def _find_history_rewrite(self) -> str | None:
        """How an earlier assistant turn renders differently from how it was generated
        (None when it renders the same)."""
        follow = {"role": "user", "content": _OBSERVATION}
        generated = self._render_checked(self._opening, add_generation_prompt=True)
        full = self._render_checked([*self._base, follow], add_generation_prompt=True)
        opening = self._render_checked(self._opening)
        history = full[len(opening): full.rfind(_PLACEHOLDER)]
        if full.startswith(opening) and history != generated[len(opening):]:
            return (f"opens earlier assistant turns with {history!r} but generates after "
                    f"{generated[len(opening):]!r}")
        reasoning = f"{_THINK_OPEN}\n{_REASONING}\n{_THINK_CLOSE}\n\n{_PLACEHOLDER}"
        thought = [*self._opening, {"role": "assistant", "content": reasoning}, follow]
        if _REASONING not in self._render_checked(thought, add_generation_prompt=True):
            return f"drops {_THINK_OPEN}...{_THINK_CLOSE} reasoning from earlier assistant turns"
        spaced = f" {_PLACEHOLDER} \n"
        padded = [*self._opening, {"role": "assistant", "content": spaced}, follow]
        if spaced not in self._render_checked(padded, add_generation_prompt=True):
            return "strips the whitespace around earlier assistant turns' content"
        return None

    def _special(self, token_id: int) -> bool:
        """A special token: named (eos, pad, ...) or added as special (``<|im_end|>`` when
        the eos is ``<|endoftext|>``)."""
        if token_id in set(getattr(self.tokenizer, "all_special_ids", [])):
            return True
        added = getattr(self.tokenizer, "added_tokens_decoder", {}).get(token_id)
        return bool(added is not None and getattr(added, "special", False))

    def _supported(self, message: Message) -> Message:
        if message["role"] == "tool" and not self._tool_role_ok:
            return {"role": "user", "content": "Tool output:\n" + message["content"]}
        if message["role"] not in ("user", "tool"):
            raise ValueError(f"observation role must be 'user' or 'tool', got {message['role']!r}")
        return message

    def _template_accepts_role(self, role: str) -> bool:
        try:
            text = self.render([*self._base, {"role": role, "content": _OBSERVATION}])
        except Exception:  # templates that raise on unknown roles
            return False
        return _OBSERVATION in text
