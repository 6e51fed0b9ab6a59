"""Checks of the token-exactness contract, shared by the HF and vLLM template tests.

:class:`Recorder` wraps a token policy and keeps every prompt it was asked to answer with
the reply it gave; :func:`check_samples` then checks, for every training sample, that
each generation prompt is the sample's prefix up to that turn's value position, that the
sampled ids appear there verbatim, that the loss mask is 1 exactly on them, and that the
text around them is the chat template's own rendering of the conversation.
"""

from __future__ import annotations

from typing import Any

from turnrl.envs.base import TextEnv
from turnrl.trajectory import Trajectory, build_samples

_EMPTY_THINK = "<think>\n\n</think>\n\n"


def qwen3_history(text: str) -> str:
    """How Qwen3's template renders an earlier assistant turn's content: everything up to
    the last ``</think>`` and the newlines after it dropped."""
    return text.split("</think>")[-1].lstrip("\n") if "</think>" in text else text


#: How each family's template renders an assistant turn that is followed by a user message.
HISTORY = {"qwen2.5": lambda text: text, "qwen3": qwen3_history, "llama3": str.strip}


class Recorder:
    """A token policy that answers through ``policy`` and records (prompt, action)."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self.renderer = policy.renderer
        self.max_new_tokens = policy.max_new_tokens
        self.calls: list[tuple[list[int], Any]] = []

    def generate(self, prompts, *, infos=None, greedy=None):
        actions = self.policy.generate(prompts, infos=infos, **({} if greedy is None else {"greedy": greedy}))
        self.calls += [(list(p), a) for p, a in zip(prompts, actions, strict=True)]
        return actions


class Chatter(TextEnv):
    """Any reply is fine; three turns. Every ``tool_every``-th observation is a tool
    message (0: all are user messages), so both roles go through the template."""

    instructions = "Say a few words each turn."

    def __init__(self, *, max_turns: int = 3, tool_every: int = 2,
                 render_mode: str | None = None) -> None:
        super().__init__(max_turns=max_turns, render_mode=render_mode)
        self.tool_every = tool_every

    def _reset_episode(self, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        self._replies = 0
        return "Tell me something.", {"task": "Tell me something."}

    def parse_action(self, reply: str) -> str:
        return reply

    def _step_action(self, command: str) -> tuple[str, float, bool, dict[str, Any]]:
        self._replies += 1
        role = "tool" if self.tool_every and self._replies % self.tool_every == 0 else "user"
        return f"Noted {len(command)} characters.", 0.1 * len(command.split()), False, {"obs_role": role}


def _messages_until(traj: Trajectory, turns: int) -> list[dict[str, str]]:
    """The conversation up to (and with) the observation after ``turns`` actions."""
    return list(traj.messages[: 2 + 2 * turns])


def check_samples(trajs: list[Trajectory], recorder: Recorder, history: Any) -> int:
    """Check every sample of ``trajs`` (``history``: how the template renders an earlier
    assistant turn's content, see :data:`HISTORY`); returns how many were checked."""
    renderer = recorder.renderer
    prompts = {id(a.token_ids): p for p, a in recorder.calls}  # turns keep the same lists
    samples = build_samples(trajs, "full")
    for s in samples:
        traj = trajs[s.trajectory]
        for j, turn in enumerate(s.value_turns[:-1]):
            action = traj.turns[turn]
            pos = s.value_positions[j] + 1
            # the prompt the policy answered is exactly this sample's prefix
            assert s.input_ids[:pos] == prompts[id(action.token_ids)], (turn, "prefix")
            # the sampled ids are there verbatim, and only they carry loss
            assert s.input_ids[pos:pos + len(action.token_ids)] == action.token_ids
        trained = [i for i, m in zip(s.input_ids, s.loss_mask, strict=True) if m]
        assert trained == [i for t in s.value_turns[:-1] for i in traj.turns[t].token_ids]
        assert [t >= 0 for t in s.turn_index] == [bool(m) for m in s.loss_mask]
        assert _sample_text(s, traj, renderer, history) == _template_text(s, traj, renderer)
    return len(samples)


def _sample_text(sample: Any, traj: Trajectory, renderer: Any, history: Any) -> str:
    """The sample decoded, each reply's content shown as the template shows it in history
    (so a template that rewrites history compares equal except for what it rewrites)."""
    tok = renderer.tokenizer
    pieces, pos = [], 0
    for j, t in enumerate(sample.value_turns[:-1]):
        ids = traj.turns[t].token_ids
        start = sample.value_positions[j] + 1
        pieces.append(tok.decode(sample.input_ids[pos:start], skip_special_tokens=False))
        content = ids[:-1] if ids and ids[-1] in renderer.stop_ids else ids
        pieces.append(history(tok.decode(content, skip_special_tokens=False)))
        if ids and ids[-1] == renderer.turn_end_id:  # the template's own end of turn, sampled
            pieces.append(tok.convert_ids_to_tokens(renderer.turn_end_id))
        pos = start + len(ids)
    pieces.append(tok.decode(sample.input_ids[pos:], skip_special_tokens=False))
    return _without_empty_think("".join(pieces))


def _template_text(sample: Any, traj: Trajectory, renderer: Any) -> str:
    """The template's rendering of the conversation the sample covers (through the
    observation after its last reply, then the generation prompt)."""
    messages = traj.messages[: 2 + 2 * sample.value_turns[-1]]
    return _without_empty_think(renderer.render(messages, add_generation_prompt=True))


def _without_empty_think(text: str) -> str:
    # Qwen3's non-thinking generation prompt ends with an empty think block that history
    # does not show; the replies were generated after it either way
    return text.replace(_EMPTY_THINK, "")
