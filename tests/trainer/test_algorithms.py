"""The algorithm table: config validation, defaults and listings read it, and a new
algorithm is one estimator function plus one row."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from toy_envs import GuessNumber  # noqa: E402

import turnrl  # noqa: E402
from turnrl.errors import ConfigError  # noqa: E402
from turnrl.trainer import Trainer, algorithms, load_config  # noqa: E402
from turnrl.trainer.algorithms import Algorithm, register_algorithm  # noqa: E402

turnrl.register("turnrl/GuessAlgo-v0", GuessNumber, override=True, max_turns=3)


def first_turn_only(turns, *, gamma):
    """A toy estimator: the first turn of every episode gets its episode's return, the
    others 0; the returns are the turn rewards."""
    adv = torch.zeros_like(turns.rewards)
    adv[:, 0] = (turns.rewards * turns.turn_mask * gamma).sum(dim=1)
    return adv, turns.rewards * turns.turn_mask


@pytest.fixture
def toy_row():
    row = register_algorithm(Algorithm(
        "first_turn", first_turn_only, params=("gamma",), min_group_size=2,
        defaults={"clip_ratio": 0.3}, description="toy: credit the first turn only"))
    yield row
    algorithms._TABLE.pop("first_turn")


def test_a_new_estimator_is_one_function_and_one_row(tmp_path, tiny_guess_model, toy_row):
    cfg = load_config(None, [
        f"model.name_or_path={tiny_guess_model}", "env.id=turnrl/GuessAlgo-v0",
        "algorithm.name=first_turn", "algorithm.gamma=0.5", "rollout.group_size=2",
        "rollout.episodes_per_update=4", "rollout.max_new_tokens=4", "rollout.num_envs=4",
        "total_updates=1", f"run_dir={tmp_path / 'run'}", "eval.episodes=1", "progress=false",
        "optim.lr=1e-3", "optim.minibatch_size=4", "optim.micro_batch_size=2",
    ])
    # the row's defaults and critic fill the config
    assert cfg.algorithm.clip_ratio == 0.3 and cfg.model.critic == "none"
    trainer = Trainer(cfg)
    assert trainer.critic is None
    trajs = [t for t in trainer.rollout()]
    for i, traj in enumerate(trajs):  # distinct returns so the estimator has signal
        for turn in traj.turns:
            turn.reward = float(i + 1)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    metrics = trainer.rl_update(trajs)
    # advantages as the toy function computes them: 0.5 x the return on turn 0 only
    expected = [0.5 * (i + 1) * t.num_turns for i, t in enumerate(trajs)]
    n_turns = sum(t.num_turns for t in trajs)
    assert metrics["adv/mean"] == pytest.approx(sum(expected) / n_turns)
    assert all(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())


def test_validation_reads_the_row(toy_row):
    base = ["model.name_or_path=x", "env.id=turnrl/GuessAlgo-v0", "algorithm.name=first_turn"]
    with pytest.raises(ConfigError, match="first_turn compares episodes .* rollout.group_size >= 2, got 1"):
        load_config(None, base)
    with pytest.raises(ConfigError, match="model.critic 'separate' does not go with algorithm "
                                          "first_turn: use 'none'"):
        load_config(None, [*base, "rollout.group_size=2", "model.critic=separate"])
    assert "first_turn" in algorithms.describe()


def test_unknown_algorithm_lists_the_table():
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["model.name_or_path=x", "env.id=turnrl/GuessAlgo-v0",
                           "algorithm.name=gpro"])
    msg = str(exc.value)
    assert "Did you mean 'grpo'" in msg
    assert all(name in msg for name in algorithms.names())


def test_off_is_spelled_zero_everywhere():
    cfg = load_config(None, ["model.name_or_path=x", "env.id=turnrl/GuessAlgo-v0"])
    a = cfg.algorithm
    assert (a.kl_coef, a.ratio_guard, a.dual_clip, a.tis_cap) == (0.0, 0.0, 0.0, 0.0)
    assert a.value_clip == 0.2  # null means "the algorithm's value", never "off"
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["model.name_or_path=x", "env.id=turnrl/GuessAlgo-v0",
                           "algorithm.tis_cap=-1", "algorithm.dual_clip=0.5",
                           "algorithm.value_clip=-0.1"])
    msg = str(exc.value)
    assert "tis_cap must be > 0 (or 0 to disable), got -1.0" in msg
    assert "dual_clip must be > 1 (or 0 to disable), got 0.5" in msg
    assert "value_clip must be >= 0 (0 disables), got -0.1" in msg


def test_rows_are_checked_when_built():
    with pytest.raises(ConfigError) as exc:
        Algorithm("bad", "no_colon", critics=("value",), defaults={"lr": 1}, needs=("anchors",))
    msg = str(exc.value)
    for fragment in ("critics must be", "defaults has unknown keys ['lr']",
                     "needs has unknown fields ['anchors']", "'module:function'"):
        assert fragment in msg
    with pytest.raises(ConfigError, match="already registered"):
        register_algorithm(Algorithm("ppo", "x:y"))
