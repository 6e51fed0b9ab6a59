"""Running agents on environments and recording :class:`Trajectory` objects.

:func:`collect` keeps ``num_envs`` environments in flight: each tick it gathers every env
waiting on a reply, asks the agent once for the whole batch, then steps those envs.
Finished envs take the next seed from the queue until every seed has been played.
"""

from __future__ import annotations

import traceback
import warnings
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
    on_error: str = "mark",
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
        on_error: when an env raises in reset or step: ``"mark"`` records the episode
            with ``failed`` set (it counts as not won), warns, replaces the env and goes
            on; ``"raise"`` re-raises.

    Returns:
        Trajectories ordered by (seed position, group member).
    """
    if num_envs < 1:
        raise ConfigError(f"num_envs must be >= 1, got {num_envs}")
    if group_size < 1:
        raise ConfigError(f"group_size must be >= 1, got {group_size}")
    if on_error not in ("mark", "raise"):
        raise ConfigError(f"on_error must be 'mark' or 'raise', got {on_error!r}")
    queue = deque((i, g, int(s)) for i, s in enumerate(seeds) for g in range(group_size))
    n_envs = min(num_envs, len(queue))
    envs = [make_env() for _ in range(n_envs)]
    slots: list[dict[str, Any] | None] = [None] * n_envs
    results: dict[tuple[int, int], Trajectory] = {}

    def finish(slot: int, traj: Trajectory) -> None:
        results[slots[slot]["key"]] = traj
        if on_episode_end is not None:
            on_episode_end(traj)

    def crashed(slot: int, traj: Trajectory, exc: BaseException, where: str) -> None:
        """An env raised: mark the episode, replace the env, go on (or re-raise)."""
        if on_error == "raise":
            raise exc
        traj.failed = f"{where}: {type(exc).__name__}: {exc}"
        warnings.warn(
            f"episode {traj.env_id or 'env'} seed {traj.seed} failed and is counted as "
            f"failed ({traj.failed}); the env was replaced\n"
            + "".join(traceback.format_exception(exc)[-3:]),
            RuntimeWarning, stacklevel=3,
        )
        try:
            envs[slot].close()
        except Exception:  # the env is already broken; closing is best effort
            pass
        envs[slot] = make_env()
        finish(slot, traj)

    def start(slot: int) -> None:
        while queue:
            index, member, seed = queue.popleft()
            env = envs[slot]
            slots[slot] = {"key": (index, member), "info": {}}
            traj = Trajectory(env_id=env_id, seed=seed, task="",
                              group=index if group_size > 1 else None)
            try:
                obs, info = env.reset(seed=seed)
            except Exception as exc:
                crashed(slot, traj, exc, "reset")
                continue
            instructions = getattr(env.unwrapped, "instructions", "")
            traj.task = str(info.get("task", ""))
            traj.messages = first_messages(instructions, obs)
            traj.reset_info = info
            slots[slot] = {"key": (index, member), "traj": traj, "info": info}
            return
        slots[slot] = None

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
                try:
                    obs, reward, terminated, truncated, info = envs[slot].step(action.text)
                except Exception as exc:
                    crashed(slot, traj, exc, f"step {traj.num_turns}")
                    start(slot)
                    continue
                traj.messages.append({"role": "assistant", "content": action.text})
                traj.messages.append({"role": info.get("obs_role", "user"), "content": obs})
                traj.turns.append(Turn(
                    action=action.text, reward=float(reward), observation=obs,
                    terminated=terminated, truncated=truncated, info=info,
                    token_ids=action.token_ids, logprobs=action.logprobs,
                ))
                state["info"] = info
                if terminated or truncated:
                    finish(slot, traj)
                    start(slot)
    finally:
        for env in envs:
            env.close()
    return [results[k] for k in sorted(results)]
