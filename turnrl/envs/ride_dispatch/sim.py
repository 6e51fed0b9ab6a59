"""Ride-hailing order dispatch on a city grid: pure Python + numpy, seeded.

Each episode runs ``rounds`` dispatch rounds. In a round:

1. orders arriving this round join the pending pool;
2. the dispatcher assigns (driver, order) pairs (:meth:`Simulator.dispatch`);
3. time advances one round (:meth:`Simulator.advance`): drivers move ``speed`` cells along
   a Manhattan path (x first, then y) toward their next stop, pick up, drop off and
   become available again at the drop-off cell; pending orders that waited past their
   patience are cancelled.

An order is *served* when it is assigned; its fare counts in the GMV then. Two
configurations ship: ``mdpod`` (the toy simulator of Xu et al., KDD'18, reproduced) and
``city`` (a larger city in 1-minute rounds with OSPO-style reward terms and optional
pooling). Distances are Manhattan distances in cells.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from turnrl.errors import ConfigError

__all__ = ["Hotspot", "CityConfig", "CONFIGS", "get_config", "Order", "Candidate", "Simulator",
           "DispatchResult", "gini"]


@dataclass(frozen=True)
class Hotspot:
    """One component of the demand mixture.

    The centre moves linearly from ``start`` (first round) to ``end`` (last round); the
    component's orders arrive around round ``peak * (rounds - 1)`` with spread
    ``spread * rounds`` (use a large spread for all-day demand).
    """

    start: tuple[float, float]
    end: tuple[float, float]
    sigma: float = 1.0
    weight: float = 1.0
    peak: float = 0.5
    spread: float = 10.0


@dataclass(frozen=True)
class CityConfig:
    """A city: grid, fleet, demand and the reward terms.

    Times are in rounds; ``minutes_per_round`` converts them for the metrics.
    """

    name: str
    grid: int = 9
    drivers: int = 50
    rounds: int = 20
    minutes_per_round: float = 1.0
    #: Orders per episode: exactly this many, or a Poisson draw with this mean.
    orders: int = 100
    poisson_orders: bool = False
    hotspots: tuple[Hotspot, ...] = ()
    #: Destinations: drawn from these hotspots (at the order's round), else uniform.
    dest_hotspots: tuple[Hotspot, ...] = ()
    dest_uniform_frac: float = 1.0
    #: Rounds an order waits before it is cancelled: uniform integer in [low, high].
    patience: tuple[int, int] = (0, 5)
    #: Only pairs within this pickup distance can be matched.
    match_radius: int = 2
    #: Cells a driver moves per round, and rounds spent at a pickup (boarding).
    speed: int = 1
    service_rounds: int = 1
    #: Passengers a vehicle carries at once (> 1: pooling).
    seats: int = 1
    #: Fare = fare_base + fare_per_km * trip_km; reward of a match = fare - pickup cost.
    cell_km: float = 1.0
    fare_base: float = 1.0
    fare_per_km: float = 0.0
    pickup_cost_per_km: float = 0.0
    pickup_cost_per_hour: float = 0.0

    def validate(self) -> None:
        errors = []
        for name in ("grid", "drivers", "rounds", "speed", "seats"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                errors.append(f"{name} must be an integer >= 1, got {value!r}")
        if self.orders < 0:
            errors.append(f"orders must be >= 0, got {self.orders}")
        low, high = self.patience
        if not 0 <= low <= high:
            errors.append(f"patience must be (low, high) with 0 <= low <= high, got {self.patience}")
        if self.match_radius < 0:
            errors.append(f"match_radius must be >= 0, got {self.match_radius}")
        if self.service_rounds < 0:
            errors.append(f"service_rounds must be >= 0, got {self.service_rounds}")
        if not self.hotspots:
            errors.append("hotspots must name at least one demand component")
        if not 0 <= self.dest_uniform_frac <= 1:
            errors.append(f"dest_uniform_frac must be in [0, 1], got {self.dest_uniform_frac}")
        if self.dest_uniform_frac < 1 and not self.dest_hotspots:
            errors.append("dest_uniform_frac < 1 needs dest_hotspots")
        if errors:
            raise ConfigError(f"ride-dispatch config {self.name!r}: " + "; ".join(errors))


#: MDPOD (Xu et al., KDD'18): 9x9 grid, 20 rounds, 100 orders from a 2-component Gaussian
#: mixture in (x, y, t), patience uniform in [0, 5], matches within distance 2, trip time
#: 1 + pickup distance + trip distance (speed 1, one boarding round), reward 1 per served
#: order. 50 drivers is the middle of the paper's 25-75.
MDPOD = CityConfig(
    name="mdpod", grid=9, drivers=50, rounds=20, orders=100,
    hotspots=(Hotspot((2.0, 2.0), (2.0, 2.0), sigma=1.5, peak=0.3, spread=0.25),
              Hotspot((6.0, 6.0), (6.0, 6.0), sigma=1.5, peak=0.7, spread=0.25)),
    patience=(0, 5), match_radius=2, speed=1, service_rounds=1, fare_base=1.0,
)

#: A larger city in the spirit of OSPO's Manhattan setting: 1-minute rounds, 30 per
#: episode, orders lost after 5 minutes unassigned, reward per order
#: 3 + 1 * trip_km - 3 * pickup_hours. Cells are 0.25 km; vehicles move one cell (15 km/h)
#: per minute. Three hotspots drift across the day (home -> centre); set seats > 1 to pool.
CITY = CityConfig(
    name="city", grid=20, drivers=120, rounds=30, orders=300, poisson_orders=True,
    hotspots=(Hotspot((4.0, 4.0), (9.0, 10.0), sigma=2.0, weight=2.0, peak=0.4, spread=0.5),
              Hotspot((15.0, 4.0), (11.0, 9.0), sigma=2.0, weight=1.5, peak=0.5, spread=0.5),
              Hotspot((10.0, 16.0), (10.0, 16.0), sigma=3.0, weight=1.0, peak=0.5, spread=10.0)),
    dest_hotspots=(Hotspot((10.0, 10.0), (10.0, 10.0), sigma=2.5),),
    dest_uniform_frac=0.5, patience=(5, 5), match_radius=6, speed=1, service_rounds=1,
    seats=1, cell_km=0.25, fare_base=3.0, fare_per_km=1.0, pickup_cost_per_hour=3.0,
)

CONFIGS: dict[str, CityConfig] = {"mdpod": MDPOD, "city": CITY}


def get_config(config: str | CityConfig, **overrides: Any) -> CityConfig:
    """A named configuration (``mdpod`` or ``city``) with field overrides, validated."""
    if isinstance(config, CityConfig):
        base = config
    else:
        if config not in CONFIGS:
            raise ConfigError(f"unknown ride-dispatch config {config!r}; available: "
                              f"{', '.join(CONFIGS)} (or pass a CityConfig)")
        base = CONFIGS[config]
    names = {f.name for f in dataclasses.fields(CityConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(f"unknown ride-dispatch settings {unknown}; valid: {', '.join(sorted(names))}")
    if "patience" in overrides:
        overrides["patience"] = tuple(overrides["patience"])
    cfg = dataclasses.replace(base, **overrides)
    cfg.validate()
    return cfg


@dataclass
class Order:
    id: int
    arrival: int
    origin: tuple[int, int]
    dest: tuple[int, int]
    patience: int
    fare: float
    #: Filled as the order moves on.
    driver: int | None = None
    assigned: int | None = None
    pickup_distance: int | None = None
    picked: int | None = None
    delivered: int | None = None
    cancelled: int | None = None

    @property
    def trip_distance(self) -> int:
        return _dist(self.origin, self.dest)


@dataclass(frozen=True)
class Candidate:
    """A feasible (driver, order) pair: pickup distance, fare and the reward of matching."""

    driver: int
    order: int
    pickup_distance: int
    fare: float
    reward: float


@dataclass
class DispatchResult:
    #: (driver, order) pairs carried out.
    accepted: list[tuple[int, int]] = field(default_factory=list)
    #: (driver, order, reason) for each pair that was ignored.
    rejected: list[tuple[int, int, str]] = field(default_factory=list)
    #: Sum of the accepted pairs' rewards.
    reward: float = 0.0
    #: Reward of each accepted pair, in order.
    rewards: list[float] = field(default_factory=list)


def gini(values: np.ndarray) -> float:
    """Gini coefficient of non-negative values: the mean absolute difference over all
    ordered pairs divided by twice the mean (0: all equal; (n - 1) / n: one holds all).
    0 when the total is 0.

    >>> gini(np.array([0.0, 0.0, 0.0, 4.0]))   # pairs differ by 4 in 6 of 16: 1.5 / (2 * 1)
    0.75
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0 or x.sum() <= 0:
        return 0.0
    return float(np.abs(x[:, None] - x[None, :]).mean() / (2 * x.mean()))


def _dist(a: tuple[int, int], b: tuple[int, int]) -> int:
    return abs(a[0] - b[0]) + abs(a[1] - b[1])


class Simulator:
    """The dispatch simulation for one :class:`CityConfig`.

    Example:
        >>> sim = Simulator(get_config("mdpod"))
        >>> sim.reset(seed=0)
        >>> while not sim.done:
        ...     sim.dispatch([(c.driver, c.order) for c in sim.candidates()[:1]])
        ...     sim.advance()
        >>> sim.metrics()["answer_rate"]
    """

    def __init__(self, config: CityConfig) -> None:
        config.validate()
        self.cfg = config
        self.round = 0
        self.orders: list[Order] = []
        self.pos = np.zeros((config.drivers, 2), dtype=np.int64)
        self.routes: list[list[tuple[str, int]]] = [[] for _ in range(config.drivers)]
        self.dwell = np.zeros(config.drivers, dtype=np.int64)
        self.load = np.zeros(config.drivers, dtype=np.int64)  # orders assigned, not dropped
        #: Each driver's income so far: the sum of its matches' rewards.
        self.income = np.zeros(config.drivers, dtype=np.float64)

    # ------------------------------------------------------------------ episode
    def reset(self, seed: int) -> None:
        cfg = self.cfg
        rng = np.random.default_rng(seed)
        self.round = 0
        self.pos = rng.integers(0, cfg.grid, size=(cfg.drivers, 2))
        self.routes = [[] for _ in range(cfg.drivers)]
        self.dwell = np.zeros(cfg.drivers, dtype=np.int64)
        self.load = np.zeros(cfg.drivers, dtype=np.int64)
        self.income = np.zeros(cfg.drivers, dtype=np.float64)
        self.orders = self._generate_orders(rng)
        self._by_round: dict[int, list[Order]] = {}
        for order in self.orders:
            self._by_round.setdefault(order.arrival, []).append(order)
        self.pending: dict[int, Order] = {o.id: o for o in self._by_round.get(0, [])}

    @property
    def done(self) -> bool:
        return self.round >= self.cfg.rounds

    def _generate_orders(self, rng: np.random.Generator) -> list[Order]:
        cfg = self.cfg
        n = int(rng.poisson(cfg.orders)) if cfg.poisson_orders else cfg.orders
        weights = np.array([h.weight for h in cfg.hotspots], dtype=float)
        comp = rng.choice(len(cfg.hotspots), size=n, p=weights / weights.sum())
        drafts = []
        for k in comp:
            h = cfg.hotspots[k]
            t = int(np.clip(round(rng.normal(h.peak * (cfg.rounds - 1), h.spread * cfg.rounds)),
                            0, cfg.rounds - 1))
            origin = self._sample_cell(rng, h, t)
            if rng.random() < cfg.dest_uniform_frac:
                dest = (int(rng.integers(cfg.grid)), int(rng.integers(cfg.grid)))
            else:
                dh = cfg.dest_hotspots[int(rng.integers(len(cfg.dest_hotspots)))]
                dest = self._sample_cell(rng, dh, t)
            patience = int(rng.integers(cfg.patience[0], cfg.patience[1] + 1))
            drafts.append((t, origin, dest, patience))
        drafts.sort(key=lambda d: d[0])  # ids follow arrival
        orders = []
        for i, (t, origin, dest, patience) in enumerate(drafts):
            km = _dist(origin, dest) * cfg.cell_km
            fare = round(cfg.fare_base + cfg.fare_per_km * km, 2)
            orders.append(Order(i, t, origin, dest, patience, fare))
        return orders

    def _sample_cell(self, rng: np.random.Generator, h: Hotspot, t: int) -> tuple[int, int]:
        frac = t / max(self.cfg.rounds - 1, 1)
        cx = h.start[0] + (h.end[0] - h.start[0]) * frac
        cy = h.start[1] + (h.end[1] - h.start[1]) * frac
        x = int(np.clip(round(rng.normal(cx, h.sigma)), 0, self.cfg.grid - 1))
        y = int(np.clip(round(rng.normal(cy, h.sigma)), 0, self.cfg.grid - 1))
        return x, y

    # ------------------------------------------------------------------ state
    def available_drivers(self) -> list[int]:
        """Drivers that can take an order now: a free seat (idle when seats = 1)."""
        return [d for d in range(self.cfg.drivers) if self.load[d] < self.cfg.seats]

    def pending_orders(self) -> list[Order]:
        return sorted(self.pending.values(), key=lambda o: o.id)

    def pickup_distance(self, driver: int, order: Order) -> int:
        return _dist((int(self.pos[driver, 0]), int(self.pos[driver, 1])), order.origin)

    def match_reward(self, order: Order, pickup_distance: int) -> float:
        cfg = self.cfg
        km = pickup_distance * cfg.cell_km
        hours = (pickup_distance / cfg.speed) * cfg.minutes_per_round / 60.0
        return order.fare - cfg.pickup_cost_per_km * km - cfg.pickup_cost_per_hour * hours

    def candidates(self) -> list[Candidate]:
        """Every feasible pair within the match radius, by order then pickup distance."""
        drivers = self.available_drivers()
        if not drivers or not self.pending:
            return []
        pos = self.pos[drivers]
        out = []
        for order in self.pending_orders():
            dist = np.abs(pos - np.array(order.origin)).sum(axis=1)
            for j in np.argsort(dist, kind="stable"):
                if dist[j] > self.cfg.match_radius:
                    break
                d = int(dist[j])
                out.append(Candidate(drivers[j], order.id, d, order.fare, self.match_reward(order, d)))
        return out

    # ------------------------------------------------------------------ a round
    def dispatch(self, pairs: list[tuple[int, int]]) -> DispatchResult:
        """Carry out the feasible pairs, in the order given; the rest are rejected with
        the reason."""
        result = DispatchResult()
        used_drivers: set[int] = set()
        for driver, order_id in pairs:
            reason = self._infeasible(driver, order_id, used_drivers)
            if reason:
                result.rejected.append((driver, order_id, reason))
                continue
            order = self.pending.pop(order_id)
            distance = self.pickup_distance(driver, order)
            order.driver, order.assigned, order.pickup_distance = driver, self.round, distance
            self.load[driver] += 1
            # the new pickup comes first (a pooled vehicle detours), its drop-off last
            self.routes[driver] = [("pickup", order_id)] + self.routes[driver] + [("dropoff", order_id)]
            used_drivers.add(driver)
            reward = self.match_reward(order, distance)
            self.income[driver] += reward
            result.accepted.append((driver, order_id))
            result.rewards.append(reward)
            result.reward += reward
        return result

    def _infeasible(self, driver: int, order_id: int, used: set[int]) -> str:
        if not 0 <= driver < self.cfg.drivers:
            return f"there is no driver D{driver}"
        if driver in used:
            return f"D{driver} already got an order this round"
        if order_id not in self.pending:
            order = self.orders[order_id] if 0 <= order_id < len(self.orders) else None
            if order is None or order.arrival > self.round:
                return f"there is no pending order O{order_id}"
            if order.assigned is not None:
                return f"O{order_id} is already taken"
            return f"O{order_id} was cancelled"
        if self.load[driver] >= self.cfg.seats:
            return f"D{driver} is busy"
        distance = self.pickup_distance(driver, self.pending[order_id])
        if distance > self.cfg.match_radius:
            return (f"D{driver} is {distance} cells from O{order_id}'s pickup; the match "
                    f"radius is {self.cfg.match_radius}")
        return ""

    def advance(self) -> None:
        """Move every vehicle one round, cancel orders past their patience, end the round
        and let the next round's orders arrive."""
        if self.done:
            raise RuntimeError("the episode is over: reset() first")
        for d in range(self.cfg.drivers):
            self._move(d)
        for order in list(self.pending.values()):
            if self.round - order.arrival >= order.patience:
                order.cancelled = self.round
                del self.pending[order.id]
        self.round += 1
        if not self.done:
            for order in self._by_round.get(self.round, []):
                self.pending[order.id] = order

    def _move(self, d: int) -> None:
        budget = self.cfg.speed
        while self.routes[d]:
            if self.dwell[d] > 0:  # boarding takes the rest of this round (or the next)
                if budget > 0:
                    self.dwell[d] -= 1
                return
            kind, order_id = self.routes[d][0]
            order = self.orders[order_id]
            target = order.origin if kind == "pickup" else order.dest
            x, y = int(self.pos[d, 0]), int(self.pos[d, 1])
            if (x, y) != target:
                if budget == 0:
                    return
                steps = min(budget, _dist((x, y), target))
                dx = max(-steps, min(steps, target[0] - x))
                rest = steps - abs(dx)
                dy = max(-rest, min(rest, target[1] - y))
                self.pos[d] = (x + dx, y + dy)
                budget -= abs(dx) + abs(dy)
                if (int(self.pos[d, 0]), int(self.pos[d, 1])) != target:
                    return
            self.routes[d].pop(0)
            if kind == "pickup":
                order.picked = self.round
                self.dwell[d] = self.cfg.service_rounds
            else:
                order.delivered = self.round
                self.load[d] -= 1

    # ------------------------------------------------------------------ metrics
    def metrics(self) -> dict[str, float]:
        """GMV (fares served), answer rate (served / arrived), mean pickup distance, mean
        confirmation time (minutes from arrival to assignment), cancellations, deliveries,
        mean delivery time, with pooling, mean detour (minutes beyond the direct trip), and
        the spread of the drivers' incomes (sums of their matches' rewards): standard
        deviation over the fleet (``income_sd``) and Gini coefficient (``income_gini``)."""
        cfg = self.cfg
        arrived = [o for o in self.orders if o.arrival <= min(self.round, cfg.rounds - 1)]
        served = [o for o in arrived if o.assigned is not None]
        delivered = [o for o in served if o.delivered is not None]
        minutes = cfg.minutes_per_round

        def mean(values):
            return float(np.mean(values)) if values else 0.0

        direct = [(o.delivered - o.picked) - cfg.service_rounds - o.trip_distance / cfg.speed
                  for o in delivered]
        return {
            "gmv": round(sum(o.fare for o in served), 6),
            "orders": float(len(arrived)),
            "served": float(len(served)),
            "answer_rate": len(served) / len(arrived) if arrived else 0.0,
            "mean_pickup_distance": mean([o.pickup_distance for o in served]),
            "mean_confirmation_min": mean([(o.assigned - o.arrival) * minutes for o in served]),
            "cancelled": float(sum(o.cancelled is not None for o in arrived)),
            "delivered": float(len(delivered)),
            "mean_delivery_min": mean([(o.delivered - o.assigned) * minutes for o in delivered]),
            # a single-seat vehicle drives straight to the drop-off: no detour
            "mean_detour_min": mean([max(x, 0.0) * minutes for x in direct]) if cfg.seats > 1 else 0.0,
            "income_sd": float(np.std(self.income)),
            "income_gini": gini(self.income),
        }

    def check_invariants(self) -> None:
        """Raise AssertionError if the state is inconsistent (used by the tests)."""
        cfg = self.cfg
        assert ((self.pos >= 0) & (self.pos < cfg.grid)).all(), "a driver left the grid"
        assert self.pos.shape == (cfg.drivers, 2), "a driver is in two places"
        holders: dict[int, int] = {}
        for d, route in enumerate(self.routes):
            for kind, order_id in route:
                if kind == "dropoff":
                    assert order_id not in holders, f"O{order_id} is on two vehicles"
                    holders[order_id] = d
            assert self.load[d] == sum(k == "dropoff" for k, _ in route), f"D{d} load mismatch"
            assert 0 <= self.load[d] <= cfg.seats, f"D{d} over capacity"
        for order in self.orders:
            states = [order.assigned is not None, order.cancelled is not None,
                      order.id in self.pending]
            assert sum(states) <= 1, f"O{order.id} is in {sum(states)} states at once"
            if order.delivered is not None:
                assert order.picked is not None and order.assigned is not None
                assert order.id not in holders
