"""The environment contract every turnrl environment follows.

:class:`TextEnv` is a :class:`gymnasium.Env` whose observations and actions are text.
It fixes the parts every text environment shares -- the Gymnasium API, whole-reply
actions, invalid replies answered with feedback, the turn budget, the standard ``info``
keys -- so that a subclass only says how its world starts (:meth:`TextEnv._reset_episode`),
how a reply becomes a command (:meth:`TextEnv.parse_action`) and what a command does
(:meth:`TextEnv._step_action`).

``terminated`` and ``truncated``
    ``terminated`` means the task is over (won, lost, or the world ended): there is no
    next state, so PPO bootstraps nothing. ``truncated`` means the turn budget
    (``max_turns``) ran out while the task was still open: the next state exists and its
    value is bootstrapped. The two are never folded together.

Standard ``info`` keys (absent only where meaningless):
    ``task`` (reset only): the episode's goal text.
    ``won``: whether the task has been achieved -- the number evaluation reports.
    ``invalid_action``: the reply held no usable command (or one the world rejects).
    ``admissible_actions``: commands valid in the new state, where the env knows them.
    ``expert_action``: an oracle's next command, or ``None`` where there is none.
    ``obs_role``: ``"user"`` or ``"tool"`` -- how the observation is rendered in chat.
    ``metrics``: env-specific float metrics.
    ``turn``: turns taken so far in the episode.
    ``tools`` (reset only, optional): JSON-schema function specs of the tools the agent
    may call natively; the rollout hands them to the model's chat template.
    ``state_key`` (optional): a string identical exactly when the env's state is (e.g.
    :func:`state_digest` of the engine's state), whatever the observation's wording; GiGPO
    compares the turns taken from one state. Without it the observation's text stands in.
"""

from __future__ import annotations

import copy
import hashlib
import string
from collections.abc import Iterable
from typing import Any, ClassVar

import gymnasium as gym
from gymnasium import spaces
from gymnasium.error import ResetNeeded

from turnrl.envs.parsing import InvalidReply

__all__ = ["TEXT_CHARSET", "InvalidAction", "TextEnv", "sanitize_text", "state_digest"]


def _build_charset() -> str:
    chars = set(string.printable) - set("\x0b\x0c")  # keeps \n, \t, \r
    chars.update(chr(c) for c in range(0xA0, 0x180))  # Latin-1 supplement, Latin Extended-A
    chars.update(chr(c) for c in range(0x2010, 0x2060))  # dashes, quotes, bullets, ellipsis
    chars.update(chr(c) for c in range(0x2190, 0x2200))  # arrows
    chars.update(chr(c) for c in range(0x2500, 0x2580))  # box drawing
    chars.update("\u20ac\ufffd")  # euro sign, replacement character
    return "".join(sorted(chars))


#: Every character an observation may hold. Gymnasium's default ``Text`` charset is
#: alphanumeric only (no spaces), which no text game satisfies.
TEXT_CHARSET: str = _build_charset()
_CHARSET_SET = frozenset(TEXT_CHARSET)


def sanitize_text(text: str) -> str:
    """Replace characters outside :data:`TEXT_CHARSET` with U+FFFD so the text always
    lies in the observation space (e.g. an echoed reply with emoji or control codes)."""
    if _CHARSET_SET.issuperset(text):  # C-level scan: this runs on every observation
        return text
    return "".join(ch if ch in _CHARSET_SET else "\ufffd" for ch in text)


def state_digest(facts: Iterable[str]) -> str:
    """A short key for ``info["state_key"]``: a digest of a set of facts, independent of
    their order (sorted first) and of repeats.

    >>> state_digest(["at(P, kitchen)", "open(door)"]) == state_digest(["open(door)", "at(P, kitchen)"])
    True
    """
    text = "\n".join(sorted(set(facts)))
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


class InvalidAction(InvalidReply):
    """Raise from :meth:`TextEnv.parse_action` when a reply holds no usable command.

    The message is shown to the agent as the next observation, so write it for the agent:
    say what was wrong and what a good reply looks like.
    """


class TextEnv(gym.Env[str, str]):
    """Base class of turnrl environments: text in, text out, Gymnasium API.

    Subclasses set :attr:`instructions` and implement :meth:`_reset_episode`,
    :meth:`parse_action` and :meth:`_step_action`. They must not override :meth:`reset`
    or :meth:`step`.

    Args:
        max_turns: turn budget; reaching it sets ``truncated`` (never ``terminated``).
        invalid_penalty: reward added on a turn whose reply was invalid (usually <= 0).
        max_obs_chars: observations longer than this are cut in the middle, with a marker.
        max_action_chars: longest reply the action space describes. Longer replies are
            accepted by :meth:`step` but answered as invalid.
        render_mode: ``None``, ``"ansi"`` (render returns the last exchange) or
            ``"human"`` (render prints it).
        instructions: replaces the class's system prompt (:attr:`instructions`); ``""``
            sends none (e.g. for a small model trained from scratch, to which the prompt
            is only tokens to read). ``None`` keeps the class's.

    Example:
        >>> import turnrl
        >>> env = turnrl.make("turnrl/TextWorld-v0", challenge="tw-coin_collector")
        >>> obs, info = env.reset(seed=0)
        >>> obs, reward, terminated, truncated, info = env.step(info["expert_action"])
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi", "human"], "render_fps": 4}

    #: Task-independent system prompt: what the agent is, the action format, an example.
    instructions: str = ""

    def __init__(
        self,
        *,
        max_turns: int = 50,
        invalid_penalty: float = 0.0,
        max_obs_chars: int = 16_384,
        max_action_chars: int = 16_384,
        render_mode: str | None = None,
        instructions: str | None = None,
    ) -> None:
        if not isinstance(max_turns, int) or isinstance(max_turns, bool) or max_turns < 1:
            raise ValueError(f"max_turns must be an int >= 1, got {max_turns!r}")
        if max_obs_chars < 256:
            raise ValueError(f"max_obs_chars must be >= 256, got {max_obs_chars!r}")
        if max_action_chars < 1:
            raise ValueError(f"max_action_chars must be >= 1, got {max_action_chars!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be None or one of {self.metadata['render_modes']}, "
                f"got {render_mode!r}"
            )
        if instructions is not None and not isinstance(instructions, str):
            raise ValueError(f"instructions must be a string or None, got {instructions!r}")
        if instructions is not None:
            self.instructions = instructions
        self.max_turns = max_turns
        self.invalid_penalty = float(invalid_penalty)
        self.max_obs_chars = max_obs_chars
        self.max_action_chars = max_action_chars
        self.render_mode = render_mode
        self.observation_space = spaces.Text(
            max_length=max_obs_chars, min_length=0, charset=TEXT_CHARSET
        )
        self.action_space = spaces.Text(
            max_length=max_action_chars, min_length=0, charset=TEXT_CHARSET
        )
        self._turn = 0
        self._needs_reset = True
        self._episode_seed: int | None = None
        self._last_info: dict[str, Any] = {}
        self._transcript: list[tuple[str, str]] = []

    # ------------------------------------------------------------------ subclass API
    def _reset_episode(self, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Start a new episode; return ``(observation, info)``.

        ``info`` must hold ``task``. Use :attr:`episode_seed` (always set) to choose the
        episode deterministically and :attr:`np_random` for any other randomness.
        """
        raise NotImplementedError

    def parse_action(self, reply: str) -> str:
        """Turn the agent's whole reply into a command.

        Raises:
            InvalidAction: the reply holds no usable command; the message is the
                feedback observation.
        """
        raise NotImplementedError

    def _step_action(self, command: str) -> tuple[str, float, bool, dict[str, Any]]:
        """Apply a parsed command; return ``(observation, reward, terminated, info)``.

        Set ``info["invalid_action"] = True`` if the world rejected the command; the base
        class then adds :attr:`invalid_penalty` to the reward.
        """
        raise NotImplementedError

    def _invalid_info(self) -> dict[str, Any]:
        """Info for a turn whose reply could not be parsed: the state did not change, so
        by default the previous state's keys (admissible actions, expert action, won) carry
        over."""
        keep = ("admissible_actions", "expert_action", "won", "metrics", "state_key")
        return {k: copy.deepcopy(self._last_info[k]) for k in keep if k in self._last_info}

    # ------------------------------------------------------------------ Gymnasium API
    @property
    def episode_seed(self) -> int:
        """The seed that picked the current episode: the ``seed`` given to :meth:`reset`,
        or one drawn from :attr:`np_random` when reset was called without a seed."""
        if self._episode_seed is None:
            raise ResetNeeded("call reset() before reading episode_seed")
        return self._episode_seed

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        if options is not None and not isinstance(options, dict):
            raise TypeError(f"options must be a dict or None, got {type(options).__name__}")
        if seed is not None:
            self._episode_seed = int(seed)
        else:
            self._episode_seed = int(self.np_random.integers(0, 2**31 - 1))
        obs, info = self._reset_episode(dict(options or {}))
        if "task" not in info:
            raise RuntimeError(f"{type(self).__name__}._reset_episode must put 'task' in info")
        self._turn = 0
        self._needs_reset = False
        info = self._standardise(info)
        info.setdefault("episode_seed", self._episode_seed)
        self._last_info = info
        obs = self._clip(obs)
        self._transcript = [("observation", obs)]
        return obs, info

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self._needs_reset:
            raise ResetNeeded(
                "step() called before reset() or after the episode ended "
                "(terminated or truncated); call reset() first"
            )
        if not isinstance(action, str):
            raise TypeError(
                f"action must be the agent's reply as a str, got {type(action).__name__}: "
                f"{action!r:.80}"
            )
        try:
            if len(action) > self.max_action_chars:
                raise InvalidAction(
                    f"Your reply was {len(action)} characters long; replies are at most "
                    f"{self.max_action_chars}. Reply briefly with one command."
                )
            command = self.parse_action(action)
        except InvalidReply as exc:
            obs, reward, terminated = str(exc), 0.0, False
            info = self._invalid_info()
            info["invalid_action"] = True
        else:
            obs, reward, terminated, info = self._step_action(command)
            info.setdefault("invalid_action", False)
        if info["invalid_action"]:
            reward += self.invalid_penalty
        self._turn += 1
        truncated = (not terminated) and self._turn >= self.max_turns
        info = self._standardise(info)
        self._last_info = info
        self._needs_reset = terminated or truncated
        obs = self._clip(obs)
        self._transcript.append(("action", action))
        self._transcript.append(("observation", obs))
        if self.render_mode == "human":
            self.render()
        return obs, float(reward), bool(terminated), bool(truncated), info

    def render(self) -> str | None:
        """``"ansi"``: the last exchange as text; ``"human"``: print it."""
        if self.render_mode is None:
            return None
        lines = []
        for kind, text in self._transcript[-2:]:
            lines.append(f"> {text}" if kind == "action" else text)
        out = "\n".join(lines)
        if self.render_mode == "human":
            print(out)
            return None
        return out

    # ------------------------------------------------------------------ helpers
    def _standardise(self, info: dict[str, Any]) -> dict[str, Any]:
        info = dict(info)
        info.setdefault("won", False)
        info.setdefault("invalid_action", False)
        info.setdefault("obs_role", "user")
        info.setdefault("metrics", {})
        info["turn"] = self._turn
        if info["obs_role"] not in ("user", "tool"):
            raise RuntimeError(f"info['obs_role'] must be 'user' or 'tool', got {info['obs_role']!r}")
        return info

    def _clip(self, obs: str) -> str:
        obs = sanitize_text(obs)
        if len(obs) <= self.max_obs_chars:
            return obs
        budget = self.max_obs_chars - 64  # room for the marker
        head = budget // 2
        tail = budget - head
        removed = len(obs) - head - tail
        return obs[:head] + f"\n[... {removed} characters cut ...]\n" + obs[len(obs) - tail:]
