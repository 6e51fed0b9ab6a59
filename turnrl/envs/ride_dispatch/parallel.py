"""Multi-agent dispatch as a PettingZoo ``ParallelEnv``: every driver is an agent.

Each round every driver gets a text observation (its position and the pending orders in
reach, or that it is busy) and replies at once with an order id (``O7``) or ``wait``.
When several drivers claim one order, the closest wins (ties: the lower driver id); the
others get nothing this round and are told who took it. A driver's reward is the reward
of the order it won. All agents terminate together when the day ends.

    >>> from turnrl.envs.ride_dispatch.parallel import RideDispatchParallelEnv
    >>> env = RideDispatchParallelEnv(config="mdpod", settings={"drivers": 10})
    >>> observations, infos = env.reset(seed=0)
    >>> actions = {agent: "wait" for agent in env.agents}
    >>> observations, rewards, terminations, truncations, infos = env.step(actions)
"""

from __future__ import annotations

from typing import Any

from gymnasium import spaces

from turnrl.envs.base import TEXT_CHARSET
from turnrl.envs.ride_dispatch.sim import Simulator, get_config

__all__ = ["RideDispatchParallelEnv", "parallel_env"]

try:  # PettingZoo is optional (the ``ride`` extra); without it the class is still usable
    from pettingzoo import ParallelEnv as _Base
except ImportError:  # pragma: no cover
    _Base = object


class RideDispatchParallelEnv(_Base):
    """Args:
        config: ``mdpod`` or ``city``.
        settings: overrides of the config's fields.
        max_obs_chars: length bound of the Text observation space.
    """

    metadata = {"name": "ride_dispatch_v0", "render_modes": ["ansi"], "is_parallelizable": True}

    def __init__(self, config: str = "mdpod", settings: dict[str, Any] | None = None,
                 max_obs_chars: int = 4096, render_mode: str | None = None) -> None:
        self.city = get_config(config, **dict(settings or {}))
        self.sim = Simulator(self.city)
        self.possible_agents = [f"driver_{d}" for d in range(self.city.drivers)]
        self.agents: list[str] = []
        self.max_obs_chars = max_obs_chars
        self.render_mode = render_mode
        self._last = ""
        self._obs_spaces = {a: spaces.Text(max_length=max_obs_chars, min_length=0, charset=TEXT_CHARSET)
                            for a in self.possible_agents}
        self._act_spaces = {a: spaces.Text(max_length=64, min_length=0, charset=TEXT_CHARSET)
                            for a in self.possible_agents}

    def observation_space(self, agent: str) -> spaces.Text:
        return self._obs_spaces[agent]

    def action_space(self, agent: str) -> spaces.Text:
        return self._act_spaces[agent]

    def reset(self, seed: int | None = None, options: dict | None = None):
        self.sim.reset(0 if seed is None else int(seed))
        self.agents = list(self.possible_agents)
        self._feedback = {a: "" for a in self.agents}
        return self._observe()

    def step(self, actions: dict[str, str]):
        sim = self.sim
        reach = {(c.driver, c.order): c for c in sim.candidates()}
        claims: dict[int, list[tuple[int, int]]] = {}
        feedback = {a: "" for a in self.agents}
        for agent, reply in actions.items():
            if agent not in self.agents:
                raise KeyError(f"unknown agent {agent!r}; agents are driver_0..driver_{len(self.possible_agents) - 1}")
            driver = int(agent.split("_")[1])
            order = _order_of(str(reply))
            if order is None:
                continue
            cand = reach.get((driver, order))
            if cand is None:
                feedback[agent] = f"O{order} is not in your reach."
                continue
            claims.setdefault(order, []).append((cand.pickup_distance, driver))
        pairs = []
        for order, who in sorted(claims.items()):
            who.sort()
            winner = who[0][1]
            pairs.append((winner, order))
            for _, loser in who[1:]:
                feedback[f"driver_{loser}"] = f"O{order} went to D{winner}, who was closer."
        result = sim.dispatch(pairs)
        rewards = {a: 0.0 for a in self.agents}
        for (driver, order), reward in zip(result.accepted, result.rewards, strict=True):
            rewards[f"driver_{driver}"] = reward
            feedback[f"driver_{driver}"] = f"You took O{order} (+{reward:.2f})."
        sim.advance()
        self._feedback = feedback
        observations, infos = self._observe()
        done = sim.done
        terminations = {a: done for a in self.agents}
        truncations = {a: False for a in self.agents}
        if done:
            metrics = sim.metrics()
            for a in self.agents:
                infos[a]["metrics"] = metrics
            self.agents = []
        return observations, rewards, terminations, truncations, infos

    def _observe(self) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
        sim = self.sim
        by_driver: dict[int, list] = {}
        if not sim.done:
            for c in sim.candidates():
                by_driver.setdefault(c.driver, []).append(c)
        obs, infos = {}, {}
        for agent in self.possible_agents if self.agents else []:
            d = int(agent.split("_")[1])
            head = (self._feedback.get(agent, "") + "\n").lstrip("\n")
            where = f"({sim.pos[d, 0]},{sim.pos[d, 1]})"
            if sim.done:
                text = head + "The day is over."
            elif sim.load[d] >= self.city.seats:
                text = head + f"Round {sim.round + 1}: you are at {where}, busy with a passenger."
            else:
                mine = by_driver.get(d, [])
                lines = [f"Round {sim.round + 1}: you are at {where}. Orders in reach:"
                         + ("" if mine else " none (reply wait)")]
                lines += [f"O{c.order} pickup {c.pickup_distance} cells, fare {c.fare:.2f}" for c in mine]
                text = head + "\n".join(lines)
            obs[agent] = text[: self.max_obs_chars]
            infos[agent] = {"candidates": [
                {"driver": c.driver, "order": c.order, "pickup_distance": c.pickup_distance,
                 "fare": c.fare, "reward": c.reward} for c in by_driver.get(d, [])]}
        self._last = "\n".join(f"{a}: {o}" for a, o in obs.items())
        return obs, infos

    def render(self) -> str | None:
        return self._last if self.render_mode == "ansi" else None

    def close(self) -> None:
        pass


def _order_of(reply: str) -> int | None:
    import re

    ids = set(re.findall(r"\bO\s*(\d+)\b", reply, re.IGNORECASE))
    return int(ids.pop()) if len(ids) == 1 else None


def parallel_env(**kwargs: Any) -> RideDispatchParallelEnv:
    """PettingZoo-style constructor."""
    return RideDispatchParallelEnv(**kwargs)
