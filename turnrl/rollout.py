"""Running agents on environments and recording :class:`Trajectory` objects.

:func:`collect` keeps ``num_envs`` environments in flight: each tick it gathers every env
waiting on a reply, asks the agent once for the whole batch, then steps those envs.
Finished envs take the next seed from the queue until every seed has been played.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym

from turnrl.agents.base import Agent
from turnrl.errors import ConfigError
from turnrl.trajectory import Message, Trajectory, Turn

__all__ = ["collect", "first_messages"]


def first_messages(instructions: str, observation: str) -> list[Message]:
    """The conversation an agent sees at the start of an episode."""
    messages: list[Message] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    messages.append({"role": "user", "content": observation})
    return messages


def collect(
    make_env: Callable[[], gym.Env],
    agent: Agent,
    seeds: Sequence[int],
    *,
    env_id: str = "",
    num_envs: int = 8,
    group_size: int = 1,
    on_episode_end: Callable[[Trajectory], Any] | None = None,
) -> list[Trajectory]:
    """Play one episode per seed (``group_size`` per seed for grouped estimators).

    Args:
        make_env: builds one environment (called up to ``num_envs`` times).
        agent: answers batches of conversations.
        seeds: reset seeds, one episode group each.
        env_id: recorded in each trajectory.
        num_envs: environments in flight at once.
        group_size: episodes per seed (RLOO/GRPO groups); group index is recorded.
        on_episode_end: called with each finished trajectory (progress bars, logging).

    Returns:
        Trajectories ordered by (seed position, group member).
    """
    if num_envs < 1:
        raise ConfigError(f"num_envs must be >= 1, got {num_envs}")
    if group_size < 1:
        raise ConfigError(f"group_size must be >= 1, got {group_size}")
    queue = deque((i, g, int(s)) for i, s in enumerate(seeds) for g in range(group_size))
    n_envs = min(num_envs, len(queue))
    envs = [make_env() for _ in range(n_envs)]
    slots: list[dict[str, Any] | None] = [None] * n_envs
    results: dict[tuple[int, int], Trajectory] = {}

    def start(slot: int) -> None:
        if not queue:
            slots[slot] = None
            return
        index, member, seed = queue.popleft()
        env = envs[slot]
        obs, info = env.reset(seed=seed)
        instructions = getattr(env.unwrapped, "instructions", "")
        traj = Trajectory(
            env_id=env_id, seed=seed, task=str(info.get("task", "")),
            messages=first_messages(instructions, obs), reset_info=info,
            group=index if group_size > 1 else None,
        )
        slots[slot] = {"key": (index, member), "traj": traj, "info": info}

    try:
        for slot in range(n_envs):
            start(slot)
        while any(s is not None for s in slots):
            waiting = [i for i, s in enumerate(slots) if s is not None]
            actions = agent.act(
                [slots[i]["traj"].messages for i in waiting],
                [slots[i]["info"] for i in waiting],
            )
            if len(actions) != len(waiting):
                raise RuntimeError(
                    f"agent returned {len(actions)} actions for {len(waiting)} conversations"
                )
            for slot, action in zip(waiting, actions, strict=True):
                state = slots[slot]
                traj: Trajectory = state["traj"]
                obs, reward, terminated, truncated, info = envs[slot].step(action.text)
                traj.messages.append({"role": "assistant", "content": action.text})
                traj.messages.append({"role": info.get("obs_role", "user"), "content": obs})
                traj.turns.append(Turn(
                    action=action.text, reward=float(reward), observation=obs,
                    terminated=terminated, truncated=truncated, info=info,
                    token_ids=action.token_ids, logprobs=action.logprobs,
                ))
                state["info"] = info
                if terminated or truncated:
                    results[state["key"]] = traj
                    if on_episode_end is not None:
                        on_episode_end(traj)
                    start(slot)
    finally:
        for env in envs:
            env.close()
    return [results[k] for k in sorted(results)]
