"""Dispatch baselines over the candidate pairs of a round, and agents that play them
through the text envs.

``random``: orders in random order, each to a random available driver (near or not).
``greedy``: orders by arrival, each to the nearest free driver (ties: lower id).
``matching``: the assignment that maximises the round's total reward (fare minus pickup
cost; fewer pickup cells break ties), by ``scipy.optimize.linear_sum_assignment``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from turnrl.envs.ride_dispatch.sim import Candidate, Simulator, get_config
from turnrl.errors import ConfigError
from turnrl.trajectory import Action

__all__ = ["random_dispatch", "greedy_dispatch", "matching_dispatch", "POLICIES", "run_policy",
           "format_pairs", "DispatchAgent", "candidates_from_info"]


def random_dispatch(cands: Sequence[Candidate], rng: np.random.Generator, *,
                    drivers: Sequence[int] | None = None, orders: Sequence[int] | None = None
                    ) -> list[tuple[int, int]]:
    """Each pending order, in random order, to a random available driver, near or not
    (a pair out of reach is then rejected by the simulator). Without ``drivers`` and
    ``orders``, only candidate pairs are drawn from."""
    if drivers is None or orders is None:
        drivers = sorted({c.driver for c in cands})
        orders = sorted({c.order for c in cands})
    free = list(drivers)
    pairs = []
    for order in rng.permutation(np.asarray(orders, dtype=np.int64)):
        if not free:
            break
        driver = free.pop(int(rng.integers(len(free))))
        pairs.append((driver, int(order)))
    return pairs


def greedy_dispatch(cands: Sequence[Candidate], rng: Any = None) -> list[tuple[int, int]]:
    by_order: dict[int, list[Candidate]] = {}
    for c in cands:
        by_order.setdefault(c.order, []).append(c)
    used: set[int] = set()
    pairs = []
    for order in sorted(by_order):
        free = [c for c in by_order[order] if c.driver not in used]
        if free:
            best = min(free, key=lambda c: (c.pickup_distance, c.driver))
            used.add(best.driver)
            pairs.append((best.driver, best.order))
    return pairs


def matching_dispatch(cands: Sequence[Candidate], rng: Any = None) -> list[tuple[int, int]]:
    if not cands:
        return []
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError as exc:  # pragma: no cover - scipy is in the ride extra
        raise ConfigError("the matching dispatcher needs scipy: pip install 'turnrl[ride]'") from exc
    drivers = sorted({c.driver for c in cands})
    orders = sorted({c.order for c in cands})
    row = {d: i for i, d in enumerate(drivers)}
    col = {o: j for j, o in enumerate(orders)}
    big = 1e9
    cost = np.full((len(drivers), len(orders)), big)
    for c in cands:
        cost[row[c.driver], col[c.order]] = -c.reward + 1e-4 * c.pickup_distance
    rows, cols = linear_sum_assignment(cost)
    pairs = [(drivers[i], orders[j]) for i, j in zip(rows, cols, strict=True)
             if cost[i, j] < big and cost[i, j] < 0]
    return sorted(pairs, key=lambda p: p[1])


POLICIES = {"random": random_dispatch, "greedy": greedy_dispatch, "matching": matching_dispatch}


def _plan(policy: str, cands: Sequence[Candidate], rng: np.random.Generator,
          drivers: Sequence[int] | None, orders: Sequence[int] | None) -> list[tuple[int, int]]:
    if policy == "random":
        return random_dispatch(cands, rng, drivers=drivers, orders=orders)
    return POLICIES[policy](cands, rng)


def format_pairs(pairs: Sequence[tuple[int, int]]) -> str:
    """The reply format of the dispatcher env: one ``D3 -> O7`` per line, or ``wait``."""
    return "\n".join(f"D{d} -> O{o}" for d, o in pairs) if pairs else "wait"


def candidates_from_info(info: dict[str, Any]) -> list[Candidate]:
    """The candidate pairs an env put in ``info["candidates"]`` (KDD Cup style dicts)."""
    rows = info.get("candidates")
    if rows is None:
        raise ConfigError("this env's info has no 'candidates'; dispatch agents play "
                          "turnrl/RideDispatch-v0 and turnrl/RideDispatchDriver-v0")
    return [Candidate(r["driver"], r["order"], r["pickup_distance"], r["fare"], r["reward"])
            for r in rows]


class DispatchAgent:
    """Plays a dispatch baseline through the text envs.

    On ``turnrl/RideDispatch-v0`` it replies with the round's pairs; on the driver view
    (``info["driver"]`` set) with the order the policy gives that driver, or ``wait``.

    Args:
        policy: ``random``, ``greedy`` or ``matching``.
        seed: seeds the random policy.
    """

    def __init__(self, policy: str = "greedy", seed: int | None = None) -> None:
        if policy not in POLICIES:
            raise ConfigError(f"unknown dispatch policy {policy!r}; available: {', '.join(POLICIES)}")
        self.policy = policy
        self.name = f"dispatch_{policy}"
        self.rng = np.random.default_rng(seed)

    def act(self, conversations: Sequence[Any], infos: Sequence[dict[str, Any]] | None = None
            ) -> list[Action]:
        if infos is None or len(infos) != len(conversations):
            raise ConfigError(f"the {self.name} agent reads each env's info; pass infos=")
        out = []
        for info in infos:
            pairs = _plan(self.policy, candidates_from_info(info), self.rng,
                          info.get("available_drivers"), info.get("pending_orders"))
            driver = info.get("driver")
            if driver is None:
                out.append(Action(text=format_pairs(pairs)))
            else:
                mine = [o for d, o in pairs if d == driver]
                out.append(Action(text=f"O{mine[0]}" if mine else "wait"))
        return out


def run_policy(config: Any, policy: str, seeds: Sequence[int], *, policy_seed: int = 0
               ) -> list[dict[str, float]]:
    """Play ``policy`` straight on the simulator for each seed; the end-of-day metrics."""
    sim = Simulator(get_config(config) if isinstance(config, str) else config)
    rng = np.random.default_rng(policy_seed)
    out = []
    for seed in seeds:
        sim.reset(seed)
        while not sim.done:
            drivers = sim.available_drivers()
            orders = [o.id for o in sim.pending_orders()]
            sim.dispatch(_plan(policy, sim.candidates(), rng, drivers, orders))
            sim.advance()
        out.append(sim.metrics())
    return out
