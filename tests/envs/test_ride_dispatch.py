"""Ride dispatch: simulator invariants, the text envs, the PettingZoo env, baselines."""

from __future__ import annotations

import numpy as np
import pytest

import turnrl
from turnrl.envs.base import InvalidAction
from turnrl.envs.ride_dispatch.env import parse_assignments
from turnrl.envs.ride_dispatch.policies import POLICIES, run_policy
from turnrl.envs.ride_dispatch.sim import Simulator, get_config
from turnrl.errors import ConfigError

pytest.importorskip("scipy")


# ---------------------------------------------------------------- simulator
@pytest.mark.parametrize("config,settings,total", [
    ("mdpod", {}, 10_000), ("city", {}, 3_000), ("city", {"seats": 3}, 3_000)])
def test_invariants_under_random_play(config, settings, total):
    """10k rounds of the toy city; 3k of the larger one, with and without pooling."""
    cfg = get_config(config, **settings)
    sim = Simulator(cfg)
    rng = np.random.default_rng(0)
    rounds, seed = 0, 0
    while rounds < total:
        sim.reset(seed)
        served_fares = 0.0
        while not sim.done:
            cands = sim.candidates()
            # random pairs, plus deliberately infeasible ones (unknown, taken, far away)
            pairs = POLICIES["random"](cands, rng, drivers=sim.available_drivers(),
                                       orders=[o.id for o in sim.pending_orders()])
            pairs += [(cfg.drivers + 5, 0), (0, 10_000)] + pairs[:2]
            result = sim.dispatch(pairs)
            served_fares += sum(sim.orders[o].fare for _, o in result.accepted)
            assert len({d for d, _ in result.accepted}) == len(result.accepted)
            sim.check_invariants()  # one place per driver, one vehicle per order, ...
            sim.advance()
            rounds += 1
        m = sim.metrics()
        assert m["gmv"] == pytest.approx(served_fares)
        served = [o for o in sim.orders if o.assigned is not None]
        assert len(served) == len({o.id for o in served}) == m["served"]
        assert 0.0 <= m["answer_rate"] <= 1.0
        assert m["served"] + m["cancelled"] <= m["orders"]
        seed += 1


def test_mdpod_reproduces_the_toy_setting():
    cfg = get_config("mdpod")
    assert (cfg.grid, cfg.rounds, cfg.orders, cfg.patience, cfg.match_radius) == (9, 20, 100, (0, 5), 2)
    assert len(cfg.hotspots) == 2 and 25 <= cfg.drivers <= 75
    sim = Simulator(cfg)
    sim.reset(4)
    assert len(sim.orders) == 100 and all(o.fare == 1.0 for o in sim.orders)
    # trip time = 1 + pickup distance + trip distance: a driver is free again after that
    cand = next(c for c in sim.candidates() if c.pickup_distance == 2)
    order = sim.orders[cand.order]
    sim.dispatch([(cand.driver, cand.order)])
    busy = 1 + 2 + order.trip_distance
    for _ in range(busy):
        assert cand.driver not in sim.available_drivers()
        sim.advance()
    assert cand.driver in sim.available_drivers()
    assert tuple(sim.pos[cand.driver]) == order.dest


def test_orders_cancel_after_their_patience():
    sim = Simulator(get_config("mdpod", patience=(2, 2), drivers=1))
    sim.reset(0)
    first = sim.pending_orders()[0]
    for _ in range(3):  # dispatchable in its arrival round and the 2 after
        assert first.id in sim.pending
        sim.advance()
    assert first.id not in sim.pending and first.cancelled == first.arrival + 2


def test_city_rewards_follow_ospo_terms():
    cfg = get_config("city")
    sim = Simulator(cfg)
    sim.reset(0)
    c = sim.candidates()[0]
    order = sim.orders[c.order]
    km = order.trip_distance * 0.25
    pickup_hours = c.pickup_distance / 60  # one cell per 1-minute round
    assert order.fare == pytest.approx(3 + km, abs=0.01)
    assert c.reward == pytest.approx(order.fare - 3 * pickup_hours)


def test_bad_settings_are_named():
    with pytest.raises(ConfigError, match="unknown ride-dispatch settings \\['driverz'\\]"):
        get_config("mdpod", driverz=3)
    with pytest.raises(ConfigError, match="patience must be"):
        get_config("mdpod", patience=(4, 1))
    with pytest.raises(ConfigError, match="unknown ride-dispatch config 'manhattan'"):
        get_config("manhattan")


def test_baselines_order_random_greedy_matching():
    seeds = range(100_000, 100_020)  # 20 eval seeds
    for config in ("mdpod", "city"):
        means = {p: {k: np.mean([m[k] for m in run_policy(config, p, seeds)])
                     for k in ("gmv", "answer_rate")} for p in POLICIES}
        for key in ("gmv", "answer_rate"):
            assert means["random"][key] < means["greedy"][key] <= means["matching"][key], (config, means)


# ---------------------------------------------------------------- dispatcher env
def test_parse_assignments_formats():
    assert parse_assignments("D3 -> O7\nd12 => o8\nD1: O2") == [(3, 7), (12, 8), (1, 2)]
    assert parse_assignments('Sure: [{"driver": 3, "order": 7}, {"driver": "D4", "order": "O9"}]') == [
        (3, 7), (4, 9)]
    assert parse_assignments("wait") == [] and parse_assignments(" none. ") == []
    for bad in ("", "assign everyone", '[{"driver": 3}]', '[{"driver": true, "order": 1}]'):
        with pytest.raises(InvalidAction):
            parse_assignments(bad)


def test_infeasible_parts_are_ignored_with_precise_feedback():
    env = turnrl.make("turnrl/RideDispatch-v0")
    obs, info = env.reset(seed=11)
    cand = info["candidates"][0]
    far = next(d for d in info["available_drivers"]
               if all(c["driver"] != d or c["order"] != cand["order"] for c in info["candidates"]))
    reply = (f"D{cand['driver']} -> O{cand['order']}\nD{cand['driver']} -> O{cand['order']}\n"
             f"D{far} -> O{cand['order']}\nD999 -> O1\nD{far} -> O9999")
    obs, reward, terminated, truncated, info = env.step(reply)
    assert reward == pytest.approx(cand["reward"]) and not info["invalid_action"]
    assert f"Assigned D{cand['driver']} -> O{cand['order']}" in obs
    assert f"D{cand['driver']} already got an order this round" in obs
    assert f"O{cand['order']} is already taken" in obs
    assert "there is no driver D999" in obs and "there is no pending order O9999" in obs


def test_dispatcher_episode_with_the_expert_matches_the_simulator():
    env = turnrl.make("turnrl/RideDispatch-v0", expert=True)
    obs, info = env.reset(seed=5)
    total, turns, done = 0.0, 0, False
    while not done:
        obs, reward, terminated, truncated, info = env.step(info["expert_action"])
        total += reward
        turns += 1
        done = terminated or truncated
    assert terminated and turns == 20 and "The day is over" in obs
    expected = run_policy("mdpod", "matching", [5])[0]
    assert info["metrics"]["gmv"] == pytest.approx(expected["gmv"]) == pytest.approx(total)
    assert info["won"] == (expected["answer_rate"] >= 0.75)


def test_eval_cli_with_dispatch_agents(tmp_path, capsys):
    from turnrl.cli import main

    out = tmp_path / "r.json"
    assert main(["eval", "turnrl/RideDispatch-v0", "--agent", "dispatch_greedy", "--episodes", "2",
                 "--env-arg", "settings={drivers: 20}", "--json", str(out), "--quiet"]) == 0
    import json

    row = json.loads(out.read_text())[0]
    assert row["episodes"] == 2 and row["mean_turns"] == 20 and row["mean_return"] > 0


# ---------------------------------------------------------------- driver view
def test_driver_view_turns_are_single_decisions_grouped_by_round():
    env = turnrl.make("turnrl/RideDispatchDriver-v0", settings={"drivers": 12}, expert=True)
    obs, info = env.reset(seed=2)
    assert "You are D" in obs and info["driver"] is not None
    seen_rounds, taken_in_round = [], {}
    done = False
    while not done:
        driver, group = info["driver"], info["round"]
        offered = {c["order"] for c in info["candidates"]}
        assert not offered & taken_in_round.get(group, set())  # taken orders are gone
        reply = info["expert_action"]
        obs, reward, terminated, truncated, info = env.step(reply)
        done = terminated or truncated
        assert info["turn_group"] == group  # the round of the decision just made
        if reply != "wait":
            assert reward > 0 and f"D{driver} took {reply}" in obs
            taken_in_round.setdefault(group, set()).add(int(reply[1:]))
        seen_rounds.append(group)
    assert terminated and seen_rounds == sorted(seen_rounds) and len(set(seen_rounds)) > 5
    assert 0 < info["metrics"]["answer_rate"] <= 1


def test_driver_view_rejects_orders_out_of_reach():
    env = turnrl.make("turnrl/RideDispatchDriver-v0")
    obs, info = env.reset(seed=0)
    obs, reward, *_, info = env.step("O9999")
    assert reward == 0.0 and info["invalid_action"] and "Ignored" in obs
    obs, info = env.reset(seed=0)
    obs, reward, *_, info = env.step("O1 or O2")
    assert info["invalid_action"] and "single id" in obs


# ---------------------------------------------------------------- multi-agent
def test_pettingzoo_parallel_api_and_conflicts():
    pytest.importorskip("pettingzoo")
    from pettingzoo.test import parallel_api_test

    from turnrl.envs.ride_dispatch.parallel import RideDispatchParallelEnv

    parallel_api_test(RideDispatchParallelEnv(settings={"drivers": 8}), num_cycles=30)

    env = RideDispatchParallelEnv(settings={"drivers": 30})
    observations, infos = env.reset(seed=3)
    # every driver in reach of the first contested order claims it: the closest wins
    order = next(o for o in range(200) if sum(
        any(c["order"] == o for c in infos[a]["candidates"]) for a in env.agents) >= 2)
    claimants = [(c["pickup_distance"], int(a.split("_")[1])) for a in env.agents
                 for c in infos[a]["candidates"] if c["order"] == order]
    winner = min(claimants)[1]
    actions = {a: "wait" for a in env.agents}
    for _, d in claimants:
        actions[f"driver_{d}"] = f"O{order}"
    observations, rewards, terms, truncs, infos = env.step(actions)
    assert rewards[f"driver_{winner}"] > 0
    for _, d in claimants:
        if d != winner:
            assert rewards[f"driver_{d}"] == 0
            assert f"went to D{winner}" in observations[f"driver_{d}"]
    while env.agents:
        observations, rewards, terms, truncs, infos = env.step({a: "wait" for a in env.agents})
    assert all(terms.values()) and "metrics" in next(iter(infos.values()))


def test_driver_view_numbered_orders():
    """numbered=True lists the orders in reach as 1., 2., ...; a bare number takes that
    order (exactly as its id would), ids still work, and a number out of range is an
    invalid turn naming the allowed range. The expert and admissible actions are numbers."""
    plain = turnrl.make("turnrl/RideDispatchDriver-v0", config="mdpod", expert=True)
    numbered = turnrl.make("turnrl/RideDispatchDriver-v0", config="mdpod", expert=True, numbered=True)
    obs_p, info_p = plain.reset(seed=3)
    obs_n, info_n = numbered.reset(seed=3)
    ids = info_p["admissible_actions"][1:]
    assert len(ids) >= 2
    assert info_n["admissible_actions"] == ["wait"] + [str(k) for k in range(1, len(ids) + 1)]
    for k, order in enumerate(ids, 1):
        assert f"\n{k}. {order} pickup" in obs_n
    # the expert names the same order, by number
    assert ids[int(info_n["expert_action"]) - 1] == info_p["expert_action"]
    assert "number of the order" in numbered.unwrapped.instructions
    # the second listed order, by number and by id: the same step
    after_n = numbered.step("2")
    after_p = plain.step(ids[1])
    assert after_n[0].replace("1. ", "").split("\n")[0] == after_p[0].split("\n")[0]
    assert after_n[1] == after_p[1] == 1.0
    assert not after_n[4].get("invalid_action")
    # an out-of-range number is invalid (the error names the range) and the driver waits
    numbered.reset(seed=3)
    obs, reward, _, _, info = numbered.step(f"{len(ids) + 1}")
    assert info["invalid_action"] and reward == 0.0
    assert f"from 1 to {len(ids)}" in obs
    # ids are still accepted
    numbered.reset(seed=3)
    obs, reward, _, _, info = numbered.step(ids[0])
    assert reward == 1.0 and not info.get("invalid_action") and f"took {ids[0]}" in obs
