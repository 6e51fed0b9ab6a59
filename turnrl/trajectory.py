"""The one data model: what happened in an episode, turn by turn.

A :class:`Trajectory` holds the env id, seed, task, the chat messages the agent saw and
wrote, and one :class:`Turn` per env step (the agent's action text and, for trainable
policies, the sampled token ids and their logprobs; the reward; the observation after).
Training samples are built from trajectories without re-tokenizing anything the policy
generated.

Everything here is plain Python (no torch), and round-trips through JSON.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypedDict

__all__ = [
    "Message", "Action", "Turn", "Trajectory", "Sample", "ContextMode", "parse_context",
    "context_ids", "build_samples", "save_jsonl", "load_jsonl", "state_key",
]

Role = Literal["system", "user", "assistant", "tool"]


class Message(TypedDict):
    """A chat message: ``{"role": ..., "content": ...}``."""

    role: Role
    content: str


@dataclass
class Action:
    """An agent's reply.

    Attributes:
        text: the whole reply, given to the env as its action.
        token_ids: ids the policy sampled (trainable policies only).
        logprobs: sampling logprob of each id in ``token_ids``.
    """

    text: str
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None


def _jsonable(value: Any) -> Any:
    """Drop what JSON cannot hold (numpy scalars become Python numbers)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item"):
        return value.item()
    return repr(value)


@dataclass
class Turn:
    """One env step.

    Attributes:
        action: the agent's whole reply.
        reward: reward returned by the env for this step.
        observation: the observation that followed.
        terminated: the task ended on this step.
        truncated: the turn budget ran out on this step.
        info: the env's info dict after the step.
        token_ids: ids the policy sampled for ``action`` (trainable policies only).
        logprobs: the sampling logprob of each id in ``token_ids``.
        obs_token_ids: ids that follow the action in the conversation: the end of the
            assistant turn, the observation message and the next assistant header
            (token-level rollouts only; see :mod:`turnrl.agents.prompting`).
        context_ids: the ids the policy generated this action from, when they are not the
            previous turn's context + its action + its observation ids: the chat template
            rewrote history (``reasoning_history: strip``, e.g. earlier ``<think>``
            reasoning removed). Such a turn starts a new training sample. None otherwise.
        state_key: the env state this action was taken in (:func:`state_key` of the
            observation it answered and that observation's info): equal keys, same state.
            GiGPO compares the turns taken from one state. Set by the rollout.
    """

    action: str
    reward: float
    observation: str
    terminated: bool = False
    truncated: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    obs_token_ids: list[int] | None = None
    context_ids: list[int] | None = None
    state_key: str | None = None

    @property
    def invalid(self) -> bool:
        return bool(self.info.get("invalid_action", False))


@dataclass
class Trajectory:
    """An episode.

    Attributes:
        env_id: registered id of the environment.
        seed: the seed passed to ``reset``.
        task: the goal text (``info["task"]`` at reset).
        messages: the conversation: system instructions, the first observation, then
            assistant replies and observations (``user`` or ``tool`` role) alternating.
        turns: one :class:`Turn` per env step.
        reset_info: the info dict returned by ``reset``.
        group: index of the (env, seed) group for grouped rollouts (RLOO, GRPO).
        entry: the suite entry the episode was played for (its name in tables and
            per-env metrics); the env id when played outside a suite.
        failed: set when the episode could not run to the end (e.g. a crashed worker);
            such episodes are reported, never silently dropped.
        restarts: how often the episode was played again from its reset because the
            worker process holding its env died (env pools); this record is the last try.
        prompt_token_ids: ids of the opening messages and the first assistant header
            (token-level rollouts only).
    """

    env_id: str
    seed: int | None
    task: str
    messages: list[Message] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    reset_info: dict[str, Any] = field(default_factory=dict)
    group: int | None = None
    entry: str = ""
    failed: str | None = None
    restarts: int = 0
    prompt_token_ids: list[int] | None = None

    # --- summary ----------------------------------------------------------------
    @property
    def num_turns(self) -> int:
        return len(self.turns)

    @property
    def total_return(self) -> float:
        """Undiscounted sum of rewards."""
        return float(sum(t.reward for t in self.turns))

    @property
    def won(self) -> bool:
        """Whether the env reported success at the last step."""
        last = self.turns[-1].info if self.turns else self.reset_info
        return bool(last.get("won", False))

    @property
    def terminated(self) -> bool:
        return bool(self.turns and self.turns[-1].terminated)

    @property
    def truncated(self) -> bool:
        return bool(self.turns and self.turns[-1].truncated)

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated

    @property
    def invalid_actions(self) -> int:
        return sum(1 for t in self.turns if t.invalid)

    @property
    def rewards(self) -> list[float]:
        return [t.reward for t in self.turns]

    # --- serialisation ----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["reset_info"] = _jsonable(self.reset_info)
        for turn in data["turns"]:
            turn["info"] = _jsonable(turn["info"])
        data["summary"] = {
            "won": self.won,
            "return": self.total_return,
            "turns": self.num_turns,
            "invalid_actions": self.invalid_actions,
            "terminated": self.terminated,
            "truncated": self.truncated,
        }
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trajectory:
        data = {k: v for k, v in data.items() if k != "summary"}
        turns = [Turn(**t) for t in data.pop("turns", [])]
        return cls(turns=turns, **data)


def state_key(observation: str, info: Mapping[str, Any]) -> str:
    """The key of the env state an observation shows: ``"env:" + info["state_key"]`` when the
    env gives one (e.g. a digest of its engine's state), else ``"obs:"`` + a digest of the
    observation's text with whitespace collapsed (runs of spaces, tabs and newlines become
    one space; leading and trailing ones dropped).

    >>> state_key(" You are in\ta  room. ", {}) == state_key("You are in a room.", {})
    True
    """
    key = info.get("state_key")
    if key is not None:
        return f"env:{key}"
    text = " ".join(observation.split())
    return "obs:" + hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


def save_jsonl(trajectories: Iterable[Trajectory], path: str | Path) -> None:
    """Write one trajectory per line."""
    with open(path, "w", encoding="utf-8") as f:
        for traj in trajectories:
            f.write(json.dumps(traj.to_dict(), ensure_ascii=False) + "\n")


def load_jsonl(path: str | Path) -> Iterator[Trajectory]:
    """Read trajectories written by :func:`save_jsonl`."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield Trajectory.from_dict(json.loads(line))


# ================================================================== token-level samples
@dataclass(frozen=True)
class ContextMode:
    """What the policy sees at each turn.

    ``full``: the whole conversation so far (one :class:`Sample` per episode).
    ``window``: the opening messages plus the last ``k`` exchanges (one Sample per turn).
    """

    kind: Literal["full", "window"] = "full"
    k: int = 0

    def __str__(self) -> str:
        return "full" if self.kind == "full" else f"window({self.k})"


def parse_context(spec: str | ContextMode) -> ContextMode:
    """``"full"`` or ``"window(K)"`` (K >= 0 exchanges kept) -> :class:`ContextMode`."""
    if isinstance(spec, ContextMode):
        return spec
    text = str(spec).strip().lower().replace(" ", "")
    if text == "full":
        return ContextMode("full")
    if text.startswith("window(") and text.endswith(")") and text[7:-1].isdigit():
        return ContextMode("window", int(text[7:-1]))
    raise ValueError(f"context must be 'full' or 'window(K)' with an integer K >= 0, got {spec!r}")


def _require_tokens(traj: Trajectory, upto: int) -> None:
    if traj.prompt_token_ids is None:
        raise ValueError(
            "trajectory has no token ids: it was not collected by a token-level policy "
            "(e.g. HFPolicy through turnrl.rollout.collect)"
        )
    for t in range(upto):
        turn = traj.turns[t]
        if turn.token_ids is None or turn.obs_token_ids is None:
            raise ValueError(f"turn {t} of the trajectory has no token ids")


def context_ids(traj: Trajectory, turn: int, mode: ContextMode) -> list[int]:
    """Token ids the policy sees before acting at ``turn`` (0-based).

    The rollout generates from exactly these ids and :func:`build_samples` trains on
    exactly these ids, so what is trained is what was sampled from. A turn with its own
    ``context_ids`` (history as the template rewrote it) has exactly those; in ``full``
    mode later turns extend them.
    """
    _require_tokens(traj, turn)
    if turn < traj.num_turns and traj.turns[turn].context_ids is not None:
        return list(traj.turns[turn].context_ids)
    ids = list(traj.prompt_token_ids or [])
    first = 0 if mode.kind == "full" else max(0, turn - mode.k)
    if mode.kind == "full":
        restarts = [t for t in range(min(turn, traj.num_turns)) if traj.turns[t].context_ids is not None]
        if restarts:
            ids, first = list(traj.turns[restarts[-1]].context_ids or []), restarts[-1]
    for t in range(first, turn):
        ids += traj.turns[t].token_ids or []
        ids += traj.turns[t].obs_token_ids or []
    return ids


@dataclass
class Sample:
    """One training sequence. All per-token lists have the same length.

    Attributes:
        input_ids: prompt, then for each turn the policy's sampled ids followed by the
            ids of the next observation message.
        loss_mask: 1 exactly on ids the policy sampled for a trained turn, else 0.
        turn_index: the trajectory turn each trained id belongs to; -1 elsewhere.
        rollout_logprobs: sampling logprob of each trained id; 0.0 elsewhere.
        value_turns: turns ``t`` whose state value V(s_t) is read in this sample
            (``t == num_turns`` is the state after the last action, for bootstrapping).
        value_positions: for each entry of ``value_turns``, the index of the last token
            before that turn's action (for ``num_turns``: the last token).
        trajectory: index of the source trajectory in the list given to build_samples.
        env_id: the trajectory's env id (for per-env metrics).
    """

    input_ids: list[int]
    loss_mask: list[int]
    turn_index: list[int]
    rollout_logprobs: list[float]
    value_turns: list[int]
    value_positions: list[int]
    trajectory: int
    env_id: str = ""

    def __len__(self) -> int:
        return len(self.input_ids)


def _sample_for_turns(traj: Trajectory, index: int, mode: ContextMode, turns: range) -> Sample:
    """A sample whose context is ``context_ids(turns.start)`` and which trains ``turns``."""
    ids = context_ids(traj, turns.start, mode)
    n = len(ids)
    mask, turn_index, logps = [0] * n, [-1] * n, [0.0] * n
    value_turns, value_positions = [], []
    for t in turns:
        turn = traj.turns[t]
        value_turns.append(t)
        value_positions.append(len(ids) - 1)
        action = turn.token_ids or []
        ids += action
        mask += [1] * len(action)
        turn_index += [t] * len(action)
        lp = turn.logprobs if turn.logprobs is not None else [0.0] * len(action)
        if len(lp) != len(action):
            raise ValueError(f"turn {t}: {len(action)} token ids but {len(lp)} logprobs")
        logps += list(lp)
        obs = turn.obs_token_ids or []
        ids += obs
        mask += [0] * len(obs)
        turn_index += [-1] * len(obs)
        logps += [0.0] * len(obs)
    value_turns.append(turns.stop)
    value_positions.append(len(ids) - 1)
    return Sample(ids, mask, turn_index, logps, value_turns, value_positions, index, traj.env_id)


def build_samples(trajectories: Sequence[Trajectory], context: str | ContextMode = "full") -> list[Sample]:
    """Training samples from token-level trajectories, without re-tokenizing anything.

    ``full``: one sample per episode holding every turn -- or, where turns have their own
    ``context_ids`` (history rewritten by the template), one sample per stretch of turns
    starting at each such turn. ``window(k)``: one sample per turn, its context the opening
    messages plus the last ``k`` exchanges. Every sample holds the same ids the policy
    generated from. Episodes with no turns or marked ``failed`` are skipped.
    """
    mode = parse_context(context)
    samples = []
    for index, traj in enumerate(trajectories):
        if not traj.turns or traj.failed:
            continue
        _require_tokens(traj, traj.num_turns)
        if mode.kind == "full":  # one sample, or one per stretch of turns that extend
            starts = [0] + [t for t in range(1, traj.num_turns) if traj.turns[t].context_ids is not None]
            for a, b in zip(starts, [*starts[1:], traj.num_turns], strict=True):
                samples.append(_sample_for_turns(traj, index, mode, range(a, b)))
        else:
            samples.extend(
                _sample_for_turns(traj, index, mode, range(t, t + 1)) for t in range(traj.num_turns)
            )
    return samples
