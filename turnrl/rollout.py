"""The rollout engine: agents on environment pools, recorded as :class:`Trajectory`.

:func:`collect` keeps ``num_envs`` environments in lockstep. Each tick it gathers every
env waiting on a reply, asks the agent once for the whole batch, then steps those envs
(concurrently with ``step_workers`` threads). Finished envs take the next (seed, group
member) from the queue until every episode has been played.

Token-level policies (:class:`~turnrl.agents.hf.HFPolicy`) are driven by token ids: the
engine builds each context with :func:`~turnrl.trajectory.context_ids` -- the prompt, the
policy's own sampled ids and the incrementally rendered observations -- and the trainer
later trains on exactly those ids. Other agents get chat messages.
"""

from __future__ import annotations

import traceback
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

from turnrl.agents.base import Action, Agent
from turnrl.errors import ConfigError
from turnrl.trajectory import Message, Trajectory, Turn, context_ids, parse_context

__all__ = ["collect", "first_messages", "is_token_policy"]


def first_messages(instructions: str, observation: str) -> list[Message]:
    """The conversation an agent sees at the start of an episode."""
    messages: list[Message] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    messages.append({"role": "user", "content": observation})
    return messages


def is_token_policy(agent: Any) -> bool:
    """Whether ``agent`` generates from token ids (and reports sampled ids)."""
    return callable(getattr(agent, "generate", None)) and hasattr(agent, "renderer")


@dataclass
class _Slot:
    key: tuple[int, int]
    traj: Trajectory
    info: dict[str, Any] = field(default_factory=dict)


def collect(
    make_env: Callable[[], gym.Env],
    agent: Agent,
    seeds: Sequence[int],
    *,
    env_id: str = "",
    num_envs: int = 8,
    group_size: int = 1,
    context: str = "full",
    max_context_tokens: int | None = None,
    step_workers: int = 1,
    on_episode_end: Callable[[Trajectory], Any] | None = None,
    on_error: str = "mark",
) -> list[Trajectory]:
    """Play one episode per seed (``group_size`` per seed for grouped estimators).

    Args:
        make_env: builds one environment (called up to ``num_envs`` times).
        agent: answers batches of conversations (or token ids, for token policies).
        seeds: reset seeds, one episode group each.
        env_id: recorded in each trajectory.
        num_envs: environments in flight at once.
        group_size: episodes per seed (RLOO/GRPO groups); the group index is recorded.
        context: ``"full"`` or ``"window(k)"`` -- what a token policy sees each turn.
        max_context_tokens: a token policy's episode is truncated (``truncated=True`` on
            its last turn) when the next context plus the reply budget would exceed it.
        step_workers: threads stepping envs at once within a tick.
        on_episode_end: called with each finished trajectory (progress bars, logging).
        on_error: when an env raises in reset or step: ``"mark"`` records the episode
            with ``failed`` set (it counts as not won), warns, replaces the env and goes
            on; ``"raise"`` re-raises.

    Returns:
        Trajectories ordered by (seed position, group member).
    """
    errors = []
    if num_envs < 1:
        errors.append(f"num_envs must be >= 1, got {num_envs}")
    if group_size < 1:
        errors.append(f"group_size must be >= 1, got {group_size}")
    if step_workers < 1:
        errors.append(f"step_workers must be >= 1, got {step_workers}")
    if on_error not in ("mark", "raise"):
        errors.append(f"on_error must be 'mark' or 'raise', got {on_error!r}")
    if errors:
        raise ConfigError("; ".join(errors))
    engine = _Lockstep(
        make_env, agent, env_id=env_id, group_size=group_size, context=context,
        max_context_tokens=max_context_tokens, on_episode_end=on_episode_end, on_error=on_error,
    )
    queue = deque((i, g, int(s)) for i, s in enumerate(seeds) for g in range(group_size))
    return engine.run(queue, num_envs=min(num_envs, len(queue)), step_workers=step_workers)


class _Lockstep:
    """State of one :func:`collect` call."""

    def __init__(self, make_env, agent, *, env_id, group_size, context, max_context_tokens,
                 on_episode_end, on_error) -> None:
        self.make_env = make_env
        self.agent = agent
        self.env_id = env_id
        self.group_size = group_size
        self.mode = parse_context(context)
        self.max_context_tokens = max_context_tokens
        self.on_episode_end = on_episode_end
        self.on_error = on_error
        self.tokens = is_token_policy(agent)
        self.renderer = getattr(agent, "renderer", None)
        self.results: dict[tuple[int, int], Trajectory] = {}

    # ------------------------------------------------------------------ main loop
    def run(self, queue: deque, *, num_envs: int, step_workers: int) -> list[Trajectory]:
        self.queue = queue
        self.envs = [self.make_env() for _ in range(num_envs)]
        self.slots: list[_Slot | None] = [None] * num_envs
        pool = ThreadPoolExecutor(step_workers) if step_workers > 1 else None
        try:
            for slot in range(num_envs):
                self._start(slot)
            while any(s is not None for s in self.slots):
                waiting = [i for i, s in enumerate(self.slots) if s is not None]
                waiting = self._drop_overlong(waiting)
                if not waiting:
                    continue
                actions = self._act(waiting)
                steps = [(slot, action) for slot, action in zip(waiting, actions, strict=True)]
                outcomes = list(pool.map(self._step, steps) if pool else map(self._step, steps))
                for (slot, action), outcome in zip(steps, outcomes, strict=True):
                    self._record(slot, action, outcome)
        finally:
            if pool is not None:
                pool.shutdown()
            for env in self.envs:
                env.close()
        return [self.results[k] for k in sorted(self.results)]

    def _act(self, waiting: list[int]) -> list[Action]:
        slots = [self.slots[i] for i in waiting]
        if self.tokens:
            prompts = [context_ids(s.traj, s.traj.num_turns, self.mode) for s in slots]
            actions = self.agent.generate(prompts, infos=[s.info for s in slots])
        else:
            actions = self.agent.act([s.traj.messages for s in slots], [s.info for s in slots])
        if len(actions) != len(waiting):
            raise RuntimeError(f"agent returned {len(actions)} actions for {len(waiting)} prompts")
        return actions

    def _step(self, slot_action: tuple[int, Action]) -> tuple | BaseException:
        slot, action = slot_action
        try:
            return self.envs[slot].step(action.text)
        except Exception as exc:  # reported per episode by _record
            return exc

    def _record(self, slot: int, action: Action, outcome: tuple | BaseException) -> None:
        state = self.slots[slot]
        traj = state.traj
        if isinstance(outcome, BaseException):
            self._crashed(slot, outcome, f"step {traj.num_turns}")
            self._start(slot)
            return
        obs, reward, terminated, truncated, info = outcome
        role = info.get("obs_role", "user")
        traj.messages.append({"role": "assistant", "content": action.text})
        traj.messages.append({"role": role, "content": obs})
        turn = Turn(
            action=action.text, reward=float(reward), observation=obs, terminated=terminated,
            truncated=truncated, info=info, token_ids=action.token_ids, logprobs=action.logprobs,
        )
        if self.tokens:
            turn.obs_token_ids = self.renderer.observation_ids(
                {"role": role, "content": obs}, action_ended=self.renderer.ended(action.token_ids)
            )
        traj.turns.append(turn)
        state.info = info
        if terminated or truncated:
            self._finish(slot)
            self._start(slot)

    # ------------------------------------------------------------------ episodes
    def _start(self, slot: int) -> None:
        while self.queue:
            index, member, seed = self.queue.popleft()
            traj = Trajectory(env_id=self.env_id, seed=seed, task="",
                              group=index if self.group_size > 1 else None)
            self.slots[slot] = _Slot(key=(index, member), traj=traj)
            env = self.envs[slot]
            try:
                obs, info = env.reset(seed=seed)
            except Exception as exc:
                self._crashed(slot, exc, "reset")
                continue
            traj.task = str(info.get("task", ""))
            traj.messages = first_messages(getattr(env.unwrapped, "instructions", ""), obs)
            traj.reset_info = info
            if self.tokens:
                traj.prompt_token_ids = self.renderer.prompt_ids(traj.messages)
            self.slots[slot].info = info
            return
        self.slots[slot] = None

    def _finish(self, slot: int) -> None:
        state = self.slots[slot]
        self.results[state.key] = state.traj
        if self.on_episode_end is not None:
            self.on_episode_end(state.traj)

    def _drop_overlong(self, waiting: list[int]) -> list[int]:
        """End episodes whose next context would not fit (token policies only)."""
        if not (self.tokens and self.max_context_tokens):
            return waiting
        keep = []
        budget = self.max_context_tokens - self.agent.max_new_tokens
        for slot in waiting:
            traj = self.slots[slot].traj
            if len(context_ids(traj, traj.num_turns, self.mode)) <= budget:
                keep.append(slot)
                continue
            if traj.turns:
                traj.turns[-1].truncated = True  # out of context: bootstrap like a time limit
            else:
                traj.failed = f"prompt longer than max_context_tokens={self.max_context_tokens}"
            self._finish(slot)
            self._start(slot)
        return keep

    def _crashed(self, slot: int, exc: BaseException, where: str) -> None:
        """An env raised: mark the episode, replace the env, go on (or re-raise)."""
        if self.on_error == "raise":
            raise exc
        traj = self.slots[slot].traj
        traj.failed = f"{where}: {type(exc).__name__}: {exc}"
        warnings.warn(
            f"episode {traj.env_id or 'env'} seed {traj.seed} failed and is counted as "
            f"failed ({traj.failed}); the env was replaced\n"
            + "".join(traceback.format_exception(exc)[-3:]),
            RuntimeWarning, stacklevel=4,
        )
        try:
            self.envs[slot].close()
        except Exception:  # the env is already broken; closing is best effort
            pass
        self.envs[slot] = self.make_env()
        self._finish(slot)
