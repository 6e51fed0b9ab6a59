"""Ride dispatch: the drivers' income spread (metrics) and the driver view's OSPO fairness
term, checked against numbers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

import turnrl
from turnrl.envs.ride_dispatch.sim import Simulator, get_config, gini

pytest.importorskip("scipy")


def test_gini_by_hand():
    assert gini(np.array([2.0, 2.0, 2.0])) == 0.0  # all equal
    assert gini(np.zeros(4)) == 0.0  # nobody earned anything: no spread
    # [0, 0, 0, 4]: 6 of the 16 ordered pairs differ by 4 -> mean |diff| 1.5; mean 1;
    # 1.5 / (2 * 1) = 0.75 = (n - 1) / n, one driver holds everything
    assert gini(np.array([0.0, 0.0, 0.0, 4.0])) == pytest.approx(0.75)
    # [1, 3]: |diff| 2 in 2 of 4 pairs -> 1; mean 2; 1 / 4 = 0.25
    assert gini(np.array([1.0, 3.0])) == pytest.approx(0.25)


def test_income_metrics_count_each_drivers_matches():
    sim = Simulator(get_config("city", drivers=20, orders=60))
    sim.reset(3)
    earned = np.zeros(20)
    while not sim.done:
        result = sim.dispatch([(c.driver, c.order) for c in sim.candidates()])
        for (driver, _), reward in zip(result.accepted, result.rewards, strict=True):
            earned[driver] += reward
        sim.advance()
    m = sim.metrics()
    assert earned.sum() > 0
    assert m["income_sd"] == pytest.approx(float(np.std(earned)))
    assert m["income_gini"] == pytest.approx(gini(earned))


def _play(env, replies=None, seed=5):
    """Play the greedy expert's decisions (or ``replies``); (driver, reply, reward) per turn."""
    obs, info = env.reset(seed=seed)
    out, done, i = [], False, 0
    while not done:
        reply = info["expert_action"] if replies is None else replies[i]
        driver = info["driver"]
        obs, reward, terminated, truncated, info = env.step(reply)
        out.append((driver, reply, reward, obs))
        done, i = terminated or truncated, i + 1
    return out, info


def test_fairness_term_by_hand():
    """Four drivers, reward 1 per order (mdpod), beta = 0.5, the greedy expert's day on
    seed 5. Its first five matches, incomes (D0..D3) before each:

    D3 [0, 0, 0, 0]  mean 0     -> 1 - 0.5 * (0 - 0)    = 1
    D2 [0, 0, 0, 1]  mean 0.25  -> 1 - 0.5 * (0 - 0.25) = 1.125
    D0 [0, 0, 1, 1]  mean 0.5   -> 1 - 0.5 * (0 - 0.5)  = 1.25
    D3 [1, 0, 1, 1]  mean 0.75  -> 1 - 0.5 * (1 - 0.75) = 0.875
    D3 [1, 0, 1, 2]  mean 1     -> 1 - 0.5 * (2 - 1)    = 0.5
    """
    kwargs = dict(config="mdpod", settings={"drivers": 4, "orders": 40}, expert=True,
                  expert_policy="greedy")
    plain, plain_info = _play(turnrl.make("turnrl/RideDispatchDriver-v0", **kwargs))
    fair, fair_info = _play(turnrl.make("turnrl/RideDispatchDriver-v0", fairness_coef=0.5, **kwargs),
                            replies=[r for _, r, _, _ in plain])
    income = np.zeros(4)
    gaps = set()
    for (driver, reply, r_plain, _), (_, _, r_fair, _obs) in zip(plain, fair, strict=True):
        if reply == "wait":
            assert r_plain == r_fair == 0.0  # waiting earns 0 either way
            continue
        assert r_plain == 1.0
        gap = income[driver] - income.mean()
        assert r_fair == pytest.approx(1.0 - 0.5 * gap)
        gaps.add(round(gap, 4))
        income[driver] += 1.0
    takers = [(d, r) for d, reply, r, _ in fair if reply != "wait"]
    assert takers[:5] == [(3, 1.0), (2, 1.125), (0, 1.25), (3, 0.875), (3, 0.5)]
    assert min(gaps) < 0 < max(gaps)
    # the metrics count the plain rewards: same day, same GMV and spread
    assert fair_info["metrics"] == plain_info["metrics"]
    assert fair_info["metrics"]["income_sd"] == pytest.approx(float(np.std(income)))


def test_fairness_shows_income_and_is_checked():
    env = turnrl.make("turnrl/RideDispatchDriver-v0", fairness_coef=0.2)
    obs, _ = env.reset(seed=0)
    assert "Your income today 0.00, fleet mean 0.00." in obs
    plain, _ = turnrl.make("turnrl/RideDispatchDriver-v0").reset(seed=0)
    assert "income" not in plain  # off by default: the observation is unchanged
    with pytest.raises(ValueError, match="fairness_coef"):
        turnrl.make("turnrl/RideDispatchDriver-v0", fairness_coef=-1.0)
