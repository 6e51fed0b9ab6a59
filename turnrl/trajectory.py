"""The one data model: what happened in an episode, turn by turn.

A :class:`Trajectory` holds the env id, seed, task, the chat messages the agent saw and
wrote, and one :class:`Turn` per env step (the agent's action text and, for trainable
policies, the sampled token ids and their logprobs; the reward; the observation after).
Training samples are built from trajectories without re-tokenizing anything the policy
generated.

Everything here is plain Python (no torch), and round-trips through JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypedDict

__all__ = ["Message", "Turn", "Trajectory", "save_jsonl", "load_jsonl"]

Role = Literal["system", "user", "assistant", "tool"]


class Message(TypedDict):
    """A chat message: ``{"role": ..., "content": ...}``."""

    role: Role
    content: str


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
    """

    action: str
    reward: float
    observation: str
    terminated: bool = False
    truncated: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None

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
        failed: set when the episode could not run to the end (e.g. a crashed worker);
            such episodes are reported, never silently dropped.
    """

    env_id: str
    seed: int | None
    task: str
    messages: list[Message] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    reset_info: dict[str, Any] = field(default_factory=dict)
    group: int | None = None
    failed: str | None = None

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
