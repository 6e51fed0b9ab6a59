"""Text envs over the dispatch simulator.

``turnrl/RideDispatch-v0``: one dispatcher; a turn is a dispatch round. The observation
lists idle drivers, pending orders and the candidate pairs within the match radius (pickup
distance and fare, as the DiDi KDD Cup 2020 dispatch API gives them); the reply is one
``D3 -> O7`` per line (or the JSON ``[{"driver": 3, "order": 7}]``, or ``wait``).

``turnrl/RideDispatchDriver-v0``: a turn is one driver's decision (``O7`` or ``wait``);
drivers with an order in reach decide one after another within a round, each seeing the
orders the ones before left, so one shared driver policy is trained turn by turn.
``info["turn_group"]`` is the round: the ``ospo`` preset compares the decisions of a round.
"""

from __future__ import annotations

import json
import re
from typing import Any

from turnrl.envs.base import InvalidAction, TextEnv
from turnrl.envs.ride_dispatch.policies import POLICIES, format_pairs
from turnrl.envs.ride_dispatch.sim import Candidate, DispatchResult, Simulator, get_config

__all__ = ["RideDispatchEnv", "RideDispatchDriverEnv", "parse_assignments"]

_PAIR = re.compile(r"\bD\s*(\d+)\s*(?:->|=>|→|:|\bto\b|-)\s*O\s*(\d+)\b", re.IGNORECASE)
_WAIT = re.compile(r"^\W*(wait|none|pass|no assignments?|nothing)\W*$", re.IGNORECASE)
_ORDER = re.compile(r"\bO\s*(\d+)\b", re.IGNORECASE)
#: A reply that is only a list number ("2", "#2", "2."): the driver view's ``numbered`` mode.
_NUMBER = re.compile(r"^\W*#?\s*(\d+)\W*$")
#: Prefix of the command for an unreadable reply: the env answers it as "wait" (the
#: clock does not stop for a confused dispatcher) and flags it invalid.
_UNREADABLE = "\x00unreadable:"


def parse_assignments(reply: str) -> list[tuple[int, int]]:
    """``D3 -> O7`` lines (also ``D3 => O7``, ``D3: O7``, ``D3 to O7``), a JSON list of
    ``{"driver": 3, "order": 7}`` (ids as numbers or ``"D3"``/``"O7"``), or ``wait``.

    Raises:
        InvalidAction: the reply holds neither pairs nor ``wait``.
    """
    text = reply.strip()
    start, end = text.find("["), text.rfind("]")
    if start != -1 and end > start:
        try:
            data = json.loads(text[start:end + 1])
        except (json.JSONDecodeError, RecursionError):
            data = None
        if isinstance(data, list):
            pairs = []
            for item in data:
                if not isinstance(item, dict) or "driver" not in item or "order" not in item:
                    raise InvalidAction(f"JSON items need 'driver' and 'order', got {item!r:.60}")
                pairs.append((_id(item["driver"], "D"), _id(item["order"], "O")))
            return pairs
    pairs = [(int(d), int(o)) for d, o in _PAIR.findall(text)]
    if pairs:
        return pairs
    if _WAIT.match(text):
        return []
    raise InvalidAction("Reply with one assignment per line, like 'D3 -> O7', or 'wait' to "
                        "assign nothing this round.")


def _id(value: Any, prefix: str) -> int:
    if isinstance(value, bool):
        raise InvalidAction(f"ids are numbers like 3 or '{prefix}3', got {value!r}")
    if isinstance(value, int):
        return value
    match = re.fullmatch(rf"\s*{prefix}?\s*(\d+)\s*", str(value), re.IGNORECASE)
    if not match:
        raise InvalidAction(f"ids are numbers like 3 or '{prefix}3', got {value!r:.30}")
    return int(match.group(1))


def _candidate_dicts(cands: list[Candidate]) -> list[dict[str, Any]]:
    return [{"driver": c.driver, "order": c.order, "pickup_distance": c.pickup_distance,
             "fare": c.fare, "reward": round(c.reward, 4)} for c in cands]


class _DispatchBase(TextEnv):
    def __init__(self, *, config: str = "mdpod", settings: dict[str, Any] | None = None,
                 expert: bool = False, expert_policy: str = "matching",
                 target_answer_rate: float = 0.75, max_turns: int | None = None,
                 invalid_penalty: float = 0.0, instructions: str | None = None,
                 render_mode: str | None = None) -> None:
        self.city = get_config(config, **dict(settings or {}))
        if expert_policy not in POLICIES:
            raise ValueError(f"expert_policy must be one of {sorted(POLICIES)}, got {expert_policy!r}")
        if not 0 <= target_answer_rate <= 1:
            raise ValueError(f"target_answer_rate must be in [0, 1], got {target_answer_rate}")
        super().__init__(max_turns=max_turns or self._default_turns(), invalid_penalty=invalid_penalty,
                         max_obs_chars=32_768, instructions=instructions, render_mode=render_mode)
        self.sim = Simulator(self.city)
        self.expert = expert
        self.expert_policy = expert_policy
        self.target_answer_rate = target_answer_rate

    def _default_turns(self) -> int:
        raise NotImplementedError

    def _final_info(self, info: dict[str, Any]) -> dict[str, Any]:
        metrics = self.sim.metrics()
        info["metrics"] = metrics
        if self.sim.done:
            info["won"] = metrics["answer_rate"] >= self.target_answer_rate
        return info

    def _summary(self) -> str:
        m = self.sim.metrics()
        return (f"The day is over. Served {int(m['served'])} of {int(m['orders'])} orders "
                f"(answer rate {m['answer_rate']:.0%}), GMV {m['gmv']:.2f}, mean pickup "
                f"distance {m['mean_pickup_distance']:.2f} cells, {int(m['cancelled'])} cancelled.")


class RideDispatchEnv(_DispatchBase):
    """One dispatcher assigns drivers to orders, one round per turn.

    Args:
        config: ``mdpod`` or ``city`` (see :mod:`turnrl.envs.ride_dispatch.sim`).
        settings: overrides of the config's fields, e.g. ``{"drivers": 25, "seats": 2}``.
        max_candidates: candidate drivers listed per order (nearest first).
        expert: compute ``info["expert_action"]`` with ``expert_policy`` (SFT, baselines).
        expert_policy: ``matching`` (default), ``greedy`` or ``random``.
        target_answer_rate: ``info["won"]`` at the end of the day: answer rate >= this.
        max_turns: turn budget (default: the rounds). An unreadable reply is flagged
            invalid and the round passes with no assignment: the clock does not wait.
        instructions: replaces the system prompt (``""``: none, e.g. for a model trained
            from scratch that need not read it every turn).

    Reward per round: the fares matched minus the pickup cost of the config.
    """

    instructions = (
        "You dispatch a ride-hailing fleet on a city grid. Each turn is one round: you see "
        "the idle drivers, the pending orders and, for each order, the drivers close enough "
        "to take it with their pickup distance in cells. Assign drivers to orders, one per "
        "line, like:\n"
        "D3 -> O7\n"
        "D12 -> O8\n"
        'JSON also works: [{"driver": 3, "order": 7}]. Reply "wait" to assign nothing. A '
        "driver takes one order per round; orders wait a few rounds, then cancel. Each "
        "served order earns its fare, minus a cost for the pickup distance."
    )

    def __init__(self, *, max_candidates: int = 5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if max_candidates < 1:
            raise ValueError(f"max_candidates must be >= 1, got {max_candidates}")
        self.max_candidates = max_candidates

    def _default_turns(self) -> int:
        return self.city.rounds

    def _reset_episode(self, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        self.sim.reset(self.episode_seed)
        c = self.city
        task = (f"Dispatch {c.drivers} drivers on a {c.grid}x{c.grid} grid for {c.rounds} "
                f"rounds of {c.minutes_per_round:g} min; orders match within "
                f"{c.match_radius} cells.")
        return task + "\n" + self._view(), self._info({"task": task})

    def parse_action(self, reply: str) -> str:
        try:
            return format_pairs(parse_assignments(reply))
        except InvalidAction as exc:
            return _UNREADABLE + str(exc)

    def _step_action(self, command: str) -> tuple[str, float, bool, dict[str, Any]]:
        info: dict[str, Any] = {}
        if command.startswith(_UNREADABLE):  # the clock does not wait: the round passes
            feedback = command[len(_UNREADABLE):] + " No assignment this round."
            result = self.sim.dispatch([])
            info["invalid_action"] = True
        else:
            result = self.sim.dispatch(parse_assignments(command))
            feedback = _feedback(result)
        self.sim.advance()
        if self.sim.done:
            return feedback + "\n" + self._summary(), result.reward, True, self._info(info)
        return feedback + "\n" + self._view(), result.reward, False, self._info(info)

    def _invalid_info(self) -> dict[str, Any]:
        return self._info({})  # a reply over the length limit: the state did not change

    def _info(self, info: dict[str, Any]) -> dict[str, Any]:
        cands = [] if self.sim.done else self.sim.candidates()
        info["candidates"] = _candidate_dicts(cands)
        info["available_drivers"] = [] if self.sim.done else self.sim.available_drivers()
        info["pending_orders"] = [o.id for o in self.sim.pending_orders()] if not self.sim.done else []
        info["admissible_actions"] = ["wait"] + [f"D{c.driver} -> O{c.order}" for c in cands]
        if self.expert and not self.sim.done:
            info["expert_action"] = format_pairs(POLICIES[self.expert_policy](cands, self.np_random))
        return self._final_info(info)

    def _view(self) -> str:
        sim, c = self.sim, self.city
        drivers = [d for d in sim.available_drivers() if sim.load[d] == 0]
        orders = sim.pending_orders()
        lines = [f"Round {sim.round + 1}/{c.rounds}."]
        lines.append(f"Idle drivers ({len(drivers)}): "
                     + (" ".join(f"D{d}({sim.pos[d, 0]},{sim.pos[d, 1]})" for d in drivers) or "none"))
        if c.seats > 1:
            pooled = [d for d in sim.available_drivers() if sim.load[d] > 0]
            lines.append(f"Drivers with a free seat ({len(pooled)}): "
                         + (" ".join(f"D{d}({sim.pos[d, 0]},{sim.pos[d, 1]})" for d in pooled) or "none"))
        lines.append(f"Pending orders ({len(orders)}):" + ("" if orders else " none"))
        by_order: dict[int, list[Candidate]] = {}
        for cand in sim.candidates():
            by_order.setdefault(cand.order, []).append(cand)
        for o in orders:
            near = by_order.get(o.id, [])[: self.max_candidates]
            reach = ", ".join(f"D{x.driver} {x.pickup_distance}" for x in near) or "no driver in reach"
            left = o.arrival + o.patience - sim.round
            lines.append(f"O{o.id} {o.origin}->{o.dest} fare {o.fare:.2f}, cancels in "
                         f"{left + 1} round(s); drivers: {reach}")
        return "\n".join(lines)


def _feedback(result: DispatchResult) -> str:
    parts = []
    if result.accepted:
        parts.append("Assigned " + ", ".join(f"D{d} -> O{o}" for d, o in result.accepted)
                     + f" (+{result.reward:.2f}).")
    else:
        parts.append("No assignment this round.")
    if result.rejected:
        parts.append("Ignored: " + "; ".join(f"D{d} -> O{o}: {why}" for d, o, why in result.rejected) + ".")
    return " ".join(parts)


class RideDispatchDriverEnv(_DispatchBase):
    """One driver's decision per turn; all drivers share the policy.

    In each round the drivers with at least one order in reach decide one after another
    (by id, at most ``decisions_per_round``), each seeing only the orders still free; the
    others stay where they are. The turn's reward is that driver's match reward (0 for
    waiting). The info of a step has ``turn_group``: the round of the decision just made;
    ``driver`` and ``round`` describe the decision asked for next.

    Args:
        config, settings, expert, expert_policy, target_answer_rate, max_turns, instructions: as for
            :class:`RideDispatchEnv` (the expert follows the policy's round plan for the
            orders still free).
        decisions_per_round: cap on decisions per round (None: every driver in reach).
        fairness_coef: weight ``beta`` of the income-fairness term (0: off). A driver that
            takes an order then earns ``r - beta * (I_d - I_mean)`` instead of ``r``, where
            ``I_d`` is its income so far today and ``I_mean`` the fleet's mean income so far
            (both before this order): drivers behind the fleet earn a bonus, drivers ahead
            a penalty, so a shared policy learns to leave orders to those behind. Waiting
            earns 0 either way. The observation then shows ``I_d`` and ``I_mean``. The
            metrics (GMV, ``income_sd``, ``income_gini``) count the plain rewards.
        numbered: number the orders in reach ("1. O12 pickup ...") and accept the number
            as the reply ("1"), as well as the id. The expert's action and the admissible
            actions are then numbers. For small models trained from scratch: choosing a
            list position is a class, while naming an id means copying its digits from
            the observation (a tiny model's SFT on ids stayed at the marginal).
    """

    _INSTRUCTIONS = (
        "You are a ride-hailing driver on a city grid. Each turn you see your position and "
        "the open orders you can reach, with the pickup distance in cells and the fare. "
        "Reply with {reply}\n"
        'Or reply "wait" to stay idle this round. Each order you take earns its fare, minus '
        "a cost for the pickup distance; other drivers decide too, so orders go fast."
    )
    instructions = _INSTRUCTIONS.format(reply="the order to take, like: O7")

    def __init__(self, *, decisions_per_round: int | None = None, fairness_coef: float = 0.0,
                 numbered: bool = False, **kwargs: Any) -> None:
        if decisions_per_round is not None and decisions_per_round < 1:
            raise ValueError(f"decisions_per_round must be >= 1 or None, got {decisions_per_round}")
        if not fairness_coef >= 0:
            raise ValueError(f"fairness_coef must be >= 0 (0: off), got {fairness_coef}")
        self.decisions_per_round = decisions_per_round
        self.fairness_coef = float(fairness_coef)
        self.numbered = bool(numbered)
        if numbered and kwargs.get("instructions") is None:
            kwargs["instructions"] = self._INSTRUCTIONS.format(
                reply="the number of the order to take in the list, like: 1")
        super().__init__(**kwargs)

    def _default_turns(self) -> int:
        per_round = min(self.decisions_per_round or self.city.drivers, self.city.drivers)
        return self.city.rounds * per_round

    def _reset_episode(self, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        self.sim.reset(self.episode_seed)
        self._queue: list[int] = []
        self._round_open = False
        self._next_decision()
        c = self.city
        task = (f"Drive for {c.rounds} rounds of {c.minutes_per_round:g} min on a {c.grid}x{c.grid} "
                f"grid with {c.drivers - 1} other drivers; take orders within {c.match_radius} cells.")
        return task + "\n" + self._view(), self._info({"task": task})

    def parse_action(self, reply: str) -> str:
        text = reply.strip()
        if _WAIT.match(text):
            return "wait"
        number = _NUMBER.match(text) if self.numbered else None
        if number:
            mine, k = self._mine(), int(number.group(1))
            if not 1 <= k <= len(mine):
                return (_UNREADABLE + f"There is no order number {k}: reply with a number from "
                        f"1 to {len(mine)}, an id like 'O7', or 'wait'.")
            return f"O{mine[k - 1].order}"
        orders = set(_ORDER.findall(text))
        if len(orders) == 1:
            return f"O{int(orders.pop())}"
        if orders:
            return _UNREADABLE + "Take one order: reply with a single id like 'O7', or 'wait'."
        return _UNREADABLE + "Reply with the order to take, like 'O7', or 'wait'."

    def _step_action(self, command: str) -> tuple[str, float, bool, dict[str, Any]]:
        driver = self._queue.pop(0)
        decision_round = self.sim.round
        reward, feedback = 0.0, f"D{driver} waits."
        info: dict[str, Any] = {}
        if command.startswith(_UNREADABLE):  # the turn passes: this driver waits
            feedback = command[len(_UNREADABLE):] + f" D{driver} waits."
            info["invalid_action"] = True
        elif command != "wait":
            ahead = self._income_gap(driver)  # before this order
            result = self.sim.dispatch([(driver, int(command[1:]))])
            if result.accepted:
                reward = result.reward - self.fairness_coef * ahead
                feedback = f"D{driver} took {command} ({reward:+.2f})."
            else:
                feedback = f"Ignored: {result.rejected[0][2]}; D{driver} waits."
                info["invalid_action"] = True
        self._next_decision()
        info["turn_group"] = decision_round
        if self.sim.done:
            return feedback + "\n" + self._summary(), reward, True, self._info(info)
        return feedback + "\n" + self._view(), reward, False, self._info(info)

    def _next_decision(self) -> None:
        """Drop drivers with nothing left in reach; when a round has no decisions left,
        advance the clock until one does or the day ends."""
        while not self.sim.done:
            reach = {c.driver for c in self.sim.candidates()}
            self._queue = [d for d in self._queue if d in reach]
            if self._queue:
                return
            if not self._round_open:  # this round's deciders are not chosen yet
                self._round_open = True
                self._queue = sorted(reach)[: self.decisions_per_round or len(reach)]
                if self._queue:
                    return
            self.sim.advance()
            self._round_open = False

    def _income_gap(self, driver: int) -> float:
        """The driver's income so far minus the fleet's mean income so far."""
        return float(self.sim.income[driver] - self.sim.income.mean())

    def _invalid_info(self) -> dict[str, Any]:
        # an unreadable reply is still this driver's turn in this round (it is asked again)
        return self._info({"turn_group": self.sim.round})

    def _mine(self) -> list[Candidate]:
        driver = self._queue[0]
        return [c for c in self.sim.candidates() if c.driver == driver]

    def _info(self, info: dict[str, Any]) -> dict[str, Any]:
        if self.sim.done:
            info.update(candidates=[], admissible_actions=["wait"])
            return self._final_info(info)
        driver = self._queue[0]
        mine = self._mine()
        info["driver"] = driver
        info["round"] = self.sim.round  # of the decision asked for now
        info["candidates"] = _candidate_dicts(mine)
        names = {c.order: (str(k) if self.numbered else f"O{c.order}") for k, c in enumerate(mine, 1)}
        info["admissible_actions"] = ["wait", *names.values()]
        if self.expert:
            plan = POLICIES[self.expert_policy](self.sim.candidates(), self.np_random)
            taken = [o for d, o in plan if d == driver]
            info["expert_action"] = names[taken[0]] if taken else "wait"
        return self._final_info(info)

    def _view(self) -> str:
        sim = self.sim
        driver = self._queue[0]
        head = (f"Round {sim.round + 1}/{self.city.rounds}. You are D{driver} at "
                f"({sim.pos[driver, 0]},{sim.pos[driver, 1]}).")
        if self.fairness_coef:
            head += (f" Your income today {sim.income[driver]:.2f}, fleet mean "
                     f"{sim.income.mean():.2f}.")
        lines = [head + " Orders in reach:"]
        for k, c in enumerate(self._mine(), 1):
            o = sim.orders[c.order]
            number = f"{k}. " if self.numbered else ""
            lines.append(f"{number}O{o.id} pickup {c.pickup_distance} cells, trip {o.trip_distance} "
                         f"cells, fare {o.fare:.2f}")
        return "\n".join(lines)
