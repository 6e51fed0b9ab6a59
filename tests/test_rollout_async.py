"""The rollout engine's async mode, with an asyncio agent standing in for the vLLM engine
(tests/agents/test_vllm.py runs it on the real engine): same trajectories as lockstep, no
batch barrier, a cap on episodes in flight, crashes handled as in lockstep."""

from __future__ import annotations

import asyncio
import time

import pytest
from toy_envs import GuessNumber

from turnrl.agents.base import Action
from turnrl.errors import ConfigError
from turnrl.rollout import collect


class Counting:
    """Guesses 1, 2, 3, ... in order (deterministic); ``agenerate`` answers after
    ``delay_s`` and records how many requests were in flight at once."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.in_flight = self.max_in_flight = 0
        self.keys: list[tuple[int, ...]] = []

    def act(self, conversations, infos=None):
        return [Action(text=f"guess {len(c) // 2 + 1}") for c in conversations]

    async def agenerate(self, prompt, *, info=None, key=()):
        self.keys.append(tuple(key))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
            return self.act([prompt])[0]
        finally:
            self.in_flight -= 1


class SlowSeed(GuessNumber):
    """Each step of seed 0 takes ``SLOW_S`` (a slow sandbox or engine); others are instant."""

    SLOW_S = 1.0

    def _step_action(self, command):
        if self.episode_seed == 0:
            time.sleep(self.SLOW_S)
        return super()._step_action(command)


class Flaky(GuessNumber):
    def _step_action(self, command):
        if self.episode_seed == 2:
            raise OSError("engine died")
        return super()._step_action(command)


def _summary(trajs):
    return [(t.seed, t.group, [turn.action for turn in t.turns], [turn.reward for turn in t.turns],
             t.won) for t in trajs]


def test_async_plays_the_same_episodes_as_lockstep_in_the_same_order():
    seeds = [7, 3, 9, 0, 4, 5]
    lock = collect(lambda: GuessNumber(), Counting(), seeds, env_id="g", num_envs=3, group_size=2)
    agent = Counting(delay_s=0.001)
    asyn = collect(lambda: GuessNumber(), agent, seeds, env_id="g", num_envs=3, group_size=2,
                   mode="async")
    assert _summary(asyn) == _summary(lock)
    assert [t.seed for t in asyn] == [s for s in seeds for _ in range(2)]
    # each request names its episode and turn: (seed position, group member, turn)
    assert (0, 0, 0) in agent.keys and (5, 1, 0) in agent.keys
    # seed 9's number is 10: guesses 1..6 miss it and the episode hits max_turns=6
    assert not asyn[4].won and len(asyn[4].turns) == 6 and asyn[4].turns[-1].truncated


def test_no_batch_barrier_a_slow_env_holds_up_nobody_else():
    ended: dict[int, float] = {}

    def run(mode):
        ended.clear()
        start = time.perf_counter()
        collect(lambda: SlowSeed(), Counting(delay_s=0.001), [0, 3, 4, 5], num_envs=4, step_workers=4,
                mode=mode, on_episode_end=lambda t: ended.setdefault(t.seed, time.perf_counter() - start))
        return dict(ended)

    # seeds 3, 4, 5 need 4, 5, 6 turns of instant steps; seed 0 needs one 1-second step
    asyn = run("async")
    assert max(asyn[s] for s in (3, 4, 5)) < 0.6 * SlowSeed.SLOW_S < asyn[0]
    # lockstep waits for the slow step every turn it is in the batch
    lock = run("lockstep")
    assert min(lock[s] for s in (3, 4, 5)) >= SlowSeed.SLOW_S


def test_episodes_in_flight_are_capped_by_num_envs():
    agent = Counting(delay_s=0.005)
    trajs = collect(lambda: GuessNumber(), agent, range(12), num_envs=4, mode="async")
    assert len(trajs) == 12 and agent.max_in_flight == 4
    agent = Counting(delay_s=0.005)
    collect(lambda: GuessNumber(), agent, range(2), num_envs=8, mode="async")
    assert agent.max_in_flight == 2  # never more envs than episodes


def test_crashed_env_is_marked_and_the_rest_goes_on():
    with pytest.warns(RuntimeWarning, match="engine died"):
        trajs = collect(lambda: Flaky(), Counting(), [1, 2, 3], num_envs=2, mode="async")
    assert [t.seed for t in trajs] == [1, 2, 3]
    assert trajs[1].failed.startswith("step 0: OSError") and not trajs[1].won
    assert not trajs[0].failed and not trajs[2].failed
    with pytest.raises(OSError, match="engine died"):
        collect(lambda: Flaky(), Counting(), [1, 2, 3], num_envs=3, mode="async", on_error="raise")


def test_runs_inside_a_running_event_loop():
    async def notebook_cell():
        return collect(lambda: GuessNumber(), Counting(), [1, 2], mode="async")

    assert [t.seed for t in asyncio.run(notebook_cell())] == [1, 2]


def test_bad_mode_and_agents_without_agenerate_are_named():
    class Plain:
        def act(self, conversations, infos=None):
            return [Action(text="guess 1") for _ in conversations]

    with pytest.raises(ConfigError, match="mode must be one of lockstep, async, got 'fast'"):
        collect(lambda: GuessNumber(), Plain(), [1], mode="fast")
    with pytest.raises(ConfigError, match="Plain has no agenerate: use mode 'lockstep'"):
        collect(lambda: GuessNumber(), Plain(), [1], mode="async")


def test_trainer_config_async_needs_the_vllm_backend():
    pytest.importorskip("torch")
    from turnrl.trainer import load_config

    with pytest.raises(ConfigError, match="rollout.mode=async needs rollout.backend=vllm"):
        load_config(None, ["rollout.mode=async"])
    with pytest.raises(ConfigError, match="rollout.mode must be one of lockstep, async, got 'batch'"):
        load_config(None, ["rollout.mode=batch"])
