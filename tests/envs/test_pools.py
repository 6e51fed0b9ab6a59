"""Env pools: local, subprocess and Ray (a local Ray cluster started here) give the same
episodes; a worker killed mid-episode is restarted, the episode is played again and
counted; env exceptions come back as themselves."""

from __future__ import annotations

import os
import signal
import sys
import warnings
from pathlib import Path

import pytest
from toy_envs import GuessNumber

import turnrl
from turnrl.agents import ExpertAgent, RandomAgent
from turnrl.envs.pool import LocalPool, RayPool, SubprocessPool, WorkerLost, make_pool
from turnrl.envs.registry import factory
from turnrl.errors import ConfigError
from turnrl.rollout import collect

TESTS = Path(__file__).resolve().parents[1]
turnrl.register("turnrl/GuessPool-v0", GuessNumber, override=True, max_turns=4)


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster for this module; its workers can import the test envs."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        path = os.pathsep.join([str(TESTS), *sys.path])
        # 4 logical CPUs on 2 cores: each env worker (actor) reserves one
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield ray
    ray.shutdown()


def _pool_kwargs(kind):
    return {"env_pool": kind, "envs_per_worker": 2}


def _episodes(trajs):
    return [(t.seed, [(turn.action, turn.observation, turn.reward, turn.terminated) for turn in t.turns],
             t.messages[0]["content"], t.failed, t.restarts) for t in trajs]


@pytest.mark.parametrize("kind", ["subprocess", "ray"])
def test_same_seeds_same_trajectories_in_every_pool(kind, request):
    if kind == "ray":
        request.getfixturevalue("ray_cluster")
    make = factory("turnrl/TextWorld-v0", challenge="tw-coin_collector", settings={"level": 2},
                   max_turns=5)
    seeds = [3, 1, 4, 1, 5]
    local = collect(make, RandomAgent(seed=7), seeds, num_envs=4)
    other = collect(make, RandomAgent(seed=7), seeds, num_envs=4, **_pool_kwargs(kind))
    assert _episodes(other) == _episodes(local)
    assert sum(t.num_turns for t in local) > len(seeds)  # real multi-turn episodes


class SelfDestruct(GuessNumber):
    """Seed 2's worker process dies at its second step, once (the marker file remembers)."""

    def __init__(self, *, marker: str, **kwargs):
        super().__init__(**kwargs)
        self.marker = marker

    def _step_action(self, command):
        if self.episode_seed == 2 and self._turn == 1 and not os.path.exists(self.marker):
            Path(self.marker).write_text("died once")
            os._exit(1)  # like a segfault or an OOM kill: no exception, no cleanup
        return super()._step_action(command)


turnrl.register("turnrl/SelfDestruct-v0", SelfDestruct, override=True, max_turns=6)


@pytest.mark.parametrize("kind", ["subprocess", "ray"])
def test_worker_dying_mid_episode_reruns_the_episode(kind, request, tmp_path):
    if kind == "ray":
        request.getfixturevalue("ray_cluster")
    marker = tmp_path / "died"
    make = factory("turnrl/SelfDestruct-v0", marker=str(marker))
    # guesses 1, 2, ... in order: seed 2 (number 3) needs three steps, so the crash at its
    # second step is mid-episode; seeds 0-1 on the same worker are in flight too
    agent = _Counting()
    with pytest.warns(RuntimeWarning, match="died .*playing it again"):
        trajs = collect(make, agent, [0, 1, 2, 3, 4, 5], num_envs=6, **_pool_kwargs(kind))
    assert marker.exists()
    assert [t.seed for t in trajs] == [0, 1, 2, 3, 4, 5] and not any(t.failed for t in trajs)
    assert all(t.won for t in trajs)  # every episode ran to the end, the lost ones again
    by_seed = {t.seed: t for t in trajs}
    assert by_seed[2].restarts == 1 and by_seed[2].num_turns == 3
    # the worker held 2 envs (envs_per_worker=2): its other episode was lost too
    assert sum(t.restarts for t in trajs) == 2
    from turnrl.evaluate import EnvResult

    assert EnvResult.from_trajectories("sd", trajs).to_dict()["restarts"] == 2


class _Counting:
    """Guesses 1, 2, 3, ... within each episode (a conversation opens with system + task)."""

    def act(self, conversations, infos=None):
        from turnrl.agents.base import Action

        return [Action(text=f"guess {(len(c) - 2) // 2 + 1}") for c in conversations]


def test_killing_a_worker_from_outside_and_the_pool_living_across_collects():
    pool = SubprocessPool(factory("turnrl/GuessPool-v0"), 4, envs_per_worker=2)
    try:
        first = collect(pool, ExpertAgent(), [0, 1, 2, 3], num_envs=4)
        assert all(t.won for t in first)
        victim = pool.worker_pid(3)

        class Killer(_Counting):
            calls = 0

            def act(self, conversations, infos=None):
                Killer.calls += 1
                if Killer.calls == 2:  # mid-episode: every env has taken one step
                    os.kill(victim, signal.SIGKILL)
                return super().act(conversations, infos)

        with pytest.warns(RuntimeWarning, match="playing it again"):
            trajs = collect(pool, Killer(), [4, 5, 6, 7], num_envs=4)
        assert [t.restarts for t in trajs] == [0, 0, 1, 1] and pool.restarts == 1
        assert all(t.num_turns >= 1 and not t.failed for t in trajs)
        assert pool.worker_pid(3) != victim
    finally:
        pool.close()


class Raises(GuessNumber):
    def _step_action(self, command):
        if self.episode_seed == 1:
            raise OSError("engine said no")
        return super()._step_action(command)


def test_env_exceptions_in_workers_are_marked_like_local_ones():
    turnrl.register("turnrl/RaisesPool-v0", Raises, override=True)
    with pytest.warns(RuntimeWarning, match="engine said no"):
        trajs = collect(factory("turnrl/RaisesPool-v0"), ExpertAgent(), [0, 1, 2], num_envs=3,
                        env_pool="subprocess", envs_per_worker=3)
    assert trajs[1].failed.startswith("step 0: OSError: engine said no")
    assert trajs[0].won and trajs[2].won and trajs[1].restarts == 0


def test_episodes_that_keep_killing_workers_end_as_failed(tmp_path):
    class AlwaysDies(GuessNumber):
        def _step_action(self, command):
            os._exit(3)

    turnrl.register("turnrl/AlwaysDies-v0", AlwaysDies, override=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        trajs = collect(factory("turnrl/AlwaysDies-v0"), ExpertAgent(), [0], env_pool="subprocess",
                        max_restarts=2)
    assert trajs[0].restarts == 2 and trajs[0].failed.startswith("env worker lost 3 times")


def test_stale_slot_and_bad_settings():
    pool = SubprocessPool(factory("turnrl/GuessPool-v0"), 2, envs_per_worker=2)
    try:
        pool.reset(0, 0)
        pool.reset(1, 1)
        os.kill(pool.worker_pid(0), signal.SIGKILL)
        with pytest.raises(WorkerLost, match="worker 0 died"):
            pool.step(0, "guess 1")
        with pytest.raises(WorkerLost, match="slot 1: its worker died"):
            pool.step(1, "guess 1")  # the same worker's other env was lost too
        obs, _ = pool.reset(1, 1)
        assert "between 1 and 10" in obs and pool.step(1, "guess 2")[2]  # seed 1's number is 2
        assert pool.instructions(0) == GuessNumber.instructions
    finally:
        pool.close()
    with pytest.raises(ConfigError, match="env pool must be one of local, subprocess, ray, got 'gpu'"):
        make_pool("gpu", GuessNumber, 2)
    with pytest.raises(ConfigError, match="envs_per_worker must be >= 1, got 0"):
        make_pool("subprocess", GuessNumber, 2, envs_per_worker=0)
    assert isinstance(make_pool("local", GuessNumber, 1), LocalPool)


def test_ray_pool_names_the_fix_when_workers_do_not_fit(ray_cluster):
    with pytest.raises(RuntimeError, match="did not start env worker 0 within 3 s.*envs_per_worker"):
        RayPool(factory("turnrl/GuessPool-v0"), 1, actor_options={"num_cpus": 64}, start_timeout_s=3)


def test_ray_pool_restarts_a_killed_actor(ray_cluster):
    pool = RayPool(factory("turnrl/GuessPool-v0"), 2, envs_per_worker=1)
    try:
        pool.reset(1, 3)
        ray_cluster.kill(pool._workers[1], no_restart=True)
        with pytest.raises(WorkerLost, match="worker 1 died"):
            pool.step(1, "guess 1")
        assert pool.restarts == 1 and pool.reset(1, 3)[0]
    finally:
        pool.close()


@pytest.mark.parametrize("kind", ["subprocess", "ray"])
def test_training_on_worker_pools(kind, request, tiny_guess_model, tmp_path):
    """Two PPO updates with the envs in worker processes / Ray actors: the same rollouts as
    local envs would give, pools kept across updates and stopped at the end."""
    pytest.importorskip("torch")
    if kind == "ray":
        request.getfixturevalue("ray_cluster")
    from turnrl.trainer import Trainer, load_config

    def run(pool, name):
        cfg = load_config(None, [
            f"model.name_or_path={tiny_guess_model}", "env.id=turnrl/GuessPool-v0",
            "rollout.episodes_per_update=8", "rollout.max_new_tokens=5", "rollout.num_envs=4",
            f"rollout.env_pool={pool}", "rollout.envs_per_worker=2", "total_updates=2",
            f"run_dir={tmp_path / name}", "eval.episodes=4", "progress=false", "optim.lr=1e-3",
            "optim.minibatch_size=4", "optim.micro_batch_size=4",
        ])
        trainer = Trainer(cfg)
        trainer.fit()
        assert not trainer.envs._pools  # stopped
        return [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    import json

    remote, local = run(kind, "remote"), run("local", "local")
    keys = ("rollout/success", "rollout/return", "rollout/turns", "policy_loss")
    assert [[row.get(k) for k in keys] for row in remote] == [[row.get(k) for k in keys] for row in local]
    train = [row for row in remote if row["phase"] == "train"]
    assert len(train) == 2 and all(row["rollout/restarts"] == 0 for row in train)
