import json

import pytest
from toy_envs import GuessNumber

import turnrl
from turnrl.agents import ExpertAgent, RandomAgent, make_agent
from turnrl.errors import ConfigError, UnknownEnvError
from turnrl.evaluate import EnvResult, evaluate, wilson_interval
from turnrl.rollout import collect
from turnrl.trajectory import Trajectory, load_jsonl, save_jsonl

turnrl.register("turnrl/GuessEval-v0", GuessNumber, override=True)


def test_wilson_hand_computed():
    # p = 5/10, z = 1.96: centre = (0.5 + 1.9208/10) / 1.38415 = 0.5,
    # half = 1.96 * sqrt(0.025 + 0.0096040) / 1.38415 = 0.26340 -> [0.2366, 0.7634]
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.236593, abs=1e-5) and high == pytest.approx(0.763407, abs=1e-5)
    # all successes: upper bound exactly 1, lower = n / (n + z^2) = 10 / 13.8415 = 0.72247
    low, high = wilson_interval(10, 10)
    assert high == pytest.approx(1.0) and low == pytest.approx(0.722467, abs=1e-5)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_collect_plays_every_seed_in_order_with_fewer_envs_than_seeds():
    seeds = list(range(7))
    trajs = collect(lambda: GuessNumber(), ExpertAgent(), seeds, env_id="g", num_envs=3)
    assert [t.seed for t in trajs] == seeds
    assert all(t.won and t.num_turns == 1 for t in trajs)
    t = trajs[0]
    assert [m["role"] for m in t.messages] == ["system", "user", "assistant", "user"]
    assert t.messages[2]["content"] == t.turns[0].action


def test_collect_groups():
    trajs = collect(lambda: GuessNumber(), RandomAgent(seed=0), [5, 6], num_envs=4, group_size=3)
    assert [t.group for t in trajs] == [0, 0, 0, 1, 1, 1]
    assert [t.seed for t in trajs] == [5, 5, 5, 6, 6, 6]


def test_evaluate_env_id_expert_and_random():
    expert = evaluate("turnrl/GuessEval-v0", ExpertAgent(), episodes=8)
    assert len(expert) == 1 and expert[0].success_rate == 1.0 and expert[0].mean_turns == 1.0
    rand = evaluate("turnrl/GuessEval-v0", RandomAgent(seed=1), episodes=30,
                    env_kwargs={"max_turns": 2})
    r = rand[0]
    assert 0.0 < r.success_rate < 1.0  # 2 random guesses of 10: about 20% win
    low, high = r.success_ci95
    assert low < r.success_rate < high
    assert r.episodes == 30 and r.invalid_rate == 0.0


def test_results_schema_is_stable():
    result = evaluate("turnrl/GuessEval-v0", ExpertAgent(), episodes=2)[0]
    d = result.to_dict()
    assert list(d) == ["env", "episodes", "success_rate", "success_ci95", "mean_return",
                       "mean_turns", "invalid_rate", "failed", "restarts", "seeds",
                       "samples_per_seed", "pass_at_k", "episode_results"]
    assert d["episode_results"] == [
        {"seed": s, "sample": 0, "won": True, "return": 1.0, "turns": 1, "failed": False}
        for s in (0, 1)]
    json.dumps(d)


def test_invalid_rate_counts_turns():
    class Bad:
        def act(self, conversations, infos=None):
            return [turnrl.agents.Action(text="") for _ in conversations]

    r = evaluate("turnrl/GuessEval-v0", Bad(), episodes=2, env_kwargs={"max_turns": 3})[0]
    assert r.invalid_rate == 1.0 and r.success_rate == 0.0 and r.mean_turns == 3
    assert r.mean_return == pytest.approx(-0.3)


def test_unknown_target_and_bad_episodes():
    with pytest.raises(UnknownEnvError, match="textworld"):
        evaluate("textwrld", ExpertAgent())
    with pytest.raises(ConfigError):
        evaluate("turnrl/GuessEval-v0", ExpertAgent(), episodes=0)
    with pytest.raises(ConfigError, match="eval seeds"):
        evaluate("textworld", ExpertAgent(), episodes=10_000)


def test_make_agent():
    assert isinstance(make_agent("random", seed=1), RandomAgent)
    with pytest.raises(ConfigError, match="expert"):
        make_agent("expret")


def test_expert_without_oracle_is_a_clear_error():
    with pytest.raises(ConfigError, match="expert_action"):
        ExpertAgent().act([[]], [{"admissible_actions": []}])


def test_trajectory_jsonl_round_trip(tmp_path):
    trajs = collect(lambda: GuessNumber(), RandomAgent(seed=3), [1, 2], env_id="g")
    path = tmp_path / "t.jsonl"
    save_jsonl(trajs, path)
    back = list(load_jsonl(path))
    assert [t.to_dict() for t in back] == [t.to_dict() for t in trajs]
    assert isinstance(back[0], Trajectory)
    assert EnvResult.from_trajectories("g", back).episodes == 2


class Flaky(GuessNumber):
    """Raises on seed 2 at the first step, like an engine that crashed."""

    def _step_action(self, command):
        if self.episode_seed == 2:
            raise OSError("engine died")
        return super()._step_action(command)


def test_crashed_env_marks_episode_and_continues():
    with pytest.warns(RuntimeWarning, match="engine died"):
        trajs = collect(lambda: Flaky(), ExpertAgent(), [1, 2, 3], num_envs=2)
    assert [t.seed for t in trajs] == [1, 2, 3]
    assert trajs[1].failed.startswith("step 0: OSError") and not trajs[1].won
    assert trajs[0].won and trajs[2].won
    assert EnvResult.from_trajectories("f", trajs).failed == 1
    with pytest.raises(OSError):
        collect(lambda: Flaky(), ExpertAgent(), [2], on_error="raise")


def test_expert_switch_is_turned_on_only_for_agents_that_need_it():
    from turnrl.rollout import env_kwargs_for

    chosen = {"task_types": ["x"]}
    assert env_kwargs_for(ExpertAgent(), "turnrl/ALFWorld-v0", chosen) == {
        "task_types": ["x"], "expert": True}
    assert chosen == {"task_types": ["x"]}  # the caller's dict is left alone
    assert env_kwargs_for(RandomAgent(), "turnrl/ALFWorld-v0", {}) == {}
    assert env_kwargs_for(ExpertAgent(), "turnrl/ALFWorld-v0", {"expert": False}) == {
        "expert": False}  # an explicit choice wins
    assert env_kwargs_for(ExpertAgent(), "turnrl/GuessEval-v0", {}) == {}  # no switch


def test_env_kwargs_go_to_every_entry_of_a_suite_except_the_ones_entries_set():
    from turnrl.evaluate import resolve_target

    pairs = resolve_target("textworld", episodes=2, seed=0, env_kwargs={"max_turns": 7})
    assert [e.kwargs["max_turns"] for e, _ in pairs] == [7, 7, 7, 7]
    assert pairs[1][0].kwargs["challenge"] == "tw-coin_collector" and pairs[1][1] == [100_000, 100_001]
    with pytest.raises(ConfigError, match=r"\['challenge'\] are set per entry by suite 'textworld'"):
        resolve_target("textworld", episodes=2, seed=0, env_kwargs={"challenge": "tw-simple"})
    with pytest.raises(ConfigError, match="max_turn"):  # a keyword the envs do not take
        resolve_target("textworld", episodes=2, seed=0, env_kwargs={"max_turn": 7})
