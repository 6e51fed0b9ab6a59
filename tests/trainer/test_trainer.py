"""The training loop on a tiny model: losses finite, every parameter moved, resume is
exact, suites are mixed with per-env metrics."""

import json

import pytest

torch = pytest.importorskip("torch")

from toy_envs import GuessNumber  # noqa: E402

import turnrl  # noqa: E402
from turnrl.envs.suites import SuiteEntry  # noqa: E402
from turnrl.errors import ConfigError  # noqa: E402
from turnrl.trainer import Trainer, load_config  # noqa: E402

turnrl.register("turnrl/GuessTrain-v0", GuessNumber, override=True, max_turns=3)
turnrl.register("turnrl/GuessWide-v0", GuessNumber, override=True, max_turns=3, high=20)


def config(tmp_path, model, *extra):
    return load_config(None, [
        f"model.name_or_path={model}", "env.id=turnrl/GuessTrain-v0",
        "rollout.episodes_per_update=8", "rollout.max_new_tokens=5", "rollout.num_envs=8",
        "total_updates=2", f"run_dir={tmp_path / 'run'}", "eval.episodes=4", "progress=false",
        "optim.lr=1e-3", "optim.critic_lr=1e-3", "optim.minibatch_size=4",
        "optim.micro_batch_size=2", "checkpoint_every=1", *extra,
    ])


def _params(module):
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def _moved(before, module):
    return [n for n, p in module.named_parameters() if p.requires_grad
            and not torch.equal(before[n], p.detach())]


@pytest.mark.parametrize("critic", ["separate", "shared"])
def test_ppo_update_moves_every_parameter(tmp_path, tiny_guess_model, critic):
    trainer = Trainer(config(tmp_path, tiny_guess_model, f"model.critic={critic}",
                             "algorithm.kl_coef=0.05", "algorithm.entropy_coef=0.01"))
    policy_before, critic_before = _params(trainer.model), _params(trainer.critic)
    metrics = trainer.rl_update()
    for key in ("policy_loss", "value_loss", "entropy", "kl_ref", "grad_norm"):
        assert torch.isfinite(torch.tensor(metrics[key])), key
    assert metrics["nan_skipped"] == 0.0
    assert set(_moved(policy_before, trainer.model)) == set(policy_before)
    assert set(_moved(critic_before, trainer.critic)) == set(critic_before)
    # rollout and trainer compute the same logprobs for the sampled tokens
    assert metrics["logprob/rollout_vs_train_max_abs"] < 1e-3


def test_sft_moves_every_parameter_and_lowers_loss(tmp_path, tiny_guess_model):
    trainer = Trainer(config(tmp_path, tiny_guess_model, "algorithm.name=sft",
                             "sft.episodes=8", "sft.epochs=4", "sft.lr=3e-3"))
    before = _params(trainer.model)
    out = trainer.train_sft()
    assert out["sft_samples"] == 8
    assert set(_moved(before, trainer.model)) == set(before)
    rows = [json.loads(x) for x in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["sft/sft_loss"] for r in rows if r["phase"] == "sft"]
    assert len(losses) == 4 and losses[-1] < losses[0]


def test_resume_gives_the_same_next_update(tmp_path, tiny_guess_model):
    straight = Trainer(config(tmp_path / "a", tiny_guess_model))
    straight.rl_update(); straight.update += 1  # noqa: E702
    expected = straight.rl_update()

    first = Trainer(config(tmp_path / "b", tiny_guess_model))
    first.rl_update(); first.update += 1  # noqa: E702
    first.save()
    first.close()  # frees the run directory for the resumed trainer
    resumed = Trainer(config(tmp_path / "b", tiny_guess_model), resume=True)
    assert resumed.update == 1
    got = resumed.rl_update()
    for key in ("rollout/return", "policy_loss", "value_loss", "entropy", "grad_norm"):
        assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-7), key


def test_refuses_to_overwrite_a_run(tmp_path, tiny_guess_model):
    t = Trainer(config(tmp_path, tiny_guess_model))
    t.save()
    with pytest.raises(ConfigError, match="--resume"):
        Trainer(config(tmp_path, tiny_guess_model))


def test_suite_run_mixes_envs_with_per_env_metrics(tmp_path, tiny_guess_model):
    turnrl.register_suite("guess-mix", [
        SuiteEntry("turnrl/GuessTrain-v0", {}, range(0, 100), range(1000, 1010), name="small"),
        SuiteEntry("turnrl/GuessWide-v0", {}, range(0, 100), range(1000, 1010), name="wide"),
    ], override=True)
    cfg = load_config(None, [
        f"model.name_or_path={tiny_guess_model}", "env.suite=guess-mix",
        "env.weights={small: 1.0, wide: 1.0}", "rollout.episodes_per_update=16",
        "rollout.max_new_tokens=4", "total_updates=1", f"run_dir={tmp_path / 'run'}",
        "eval.episodes=3", "progress=false",
    ])
    trainer = Trainer(cfg)
    metrics = trainer.rl_update()
    small, wide = metrics["rollout/small/episodes"], metrics["rollout/wide/episodes"]
    assert small >= 1 and wide >= 1 and small + wide == 16
    ev = trainer.evaluate("check")
    assert ev["eval/small/episodes"] == 3 and ev["eval/wide/episodes"] == 3


def test_env_kwargs_apply_to_every_suite_entry(tmp_path, tiny_guess_model):
    turnrl.register_suite("guess-kw", [
        SuiteEntry("turnrl/GuessTrain-v0", {}, range(0, 100), range(1000, 1010), name="small"),
        SuiteEntry("turnrl/GuessWide-v0", {"high": 20}, range(0, 100), range(1000, 1010),
                   name="wide"),
    ], override=True)
    base = [f"model.name_or_path={tiny_guess_model}", "env.suite=guess-kw",
            "rollout.episodes_per_update=8", "rollout.max_new_tokens=4", "total_updates=1",
            f"run_dir={tmp_path / 'run'}", "eval.episodes=2", "progress=false"]
    trainer = Trainer(load_config(None, base + ["env.kwargs={max_turns: 1}"]))
    assert [e.kwargs for e in trainer.envs.entries] == [{"max_turns": 1},
                                                        {"high": 20, "max_turns": 1}]
    trajs = trainer.envs.collect_train(trainer.sampler, episodes=8, group_size=1, num_envs=8)
    assert {len(t.turns) for t in trajs} == {1}  # registered with max_turns=3
    trainer.close()
    with pytest.raises(ConfigError, match=r"\['high'\] are set per entry by suite 'guess-kw'"):
        Trainer(load_config(None, base + ["env.kwargs={high: 5}", f"run_dir={tmp_path / 'r2'}"]))


def test_config_errors_are_reported_together(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["env.id=turnrl/GuessTrain-v0", "rollout.episodes_per_update=6",
                           "rollout.group_size=4", "algorithm.name=ppo", "optim.minibatch_size=3",
                           "optim.micro_batch_size=2", "env.eval_seeds=[5, 20]",
                           "env.train_seeds=[0, 10]"])
    msg = str(exc.value)
    for fragment in ("model.name_or_path", "group_size", "micro_batch_size", "overlap"):
        assert fragment in msg
    with pytest.raises(ConfigError, match="Did you mean 'lr'"):
        load_config(None, ["optim.lrr=1"])


def test_train_and_plot_cli(tmp_path, tiny_guess_model):
    from turnrl.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"model: {{name_or_path: {tiny_guess_model}}}\n"
        "env: {id: turnrl/GuessTrain-v0}\n"
        "rollout: {episodes_per_update: 4, max_new_tokens: 4, num_envs: 4}\n"
        f"total_updates: 2\nrun_dir: {tmp_path / 'run'}\n"
        "eval: {episodes: 2}\nprogress: false\n"
    )
    assert main(["train", str(cfg)]) == 0
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "samples.jsonl", "results.json"):
        assert (run / name).exists(), name
    assert list((run / "tensorboard").iterdir())
    assert (run / "plots" / "success.png").exists()
    assert main(["train", "--resume", str(run), "total_updates=3"]) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows if r["phase"] == "train") == 2


# ---------------------------------------------------------------- resume and run directories
def _rows(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_does_not_log_replayed_updates_twice(tmp_path, tiny_guess_model):
    first = Trainer(config(tmp_path, tiny_guess_model))
    first.rl_update(); first.update += 1  # noqa: E702
    first.save()  # checkpoint after update 0
    first.rl_update()  # update 1 is logged, then the run "dies" before its checkpoint
    first.close()
    assert [r["step"] for r in _rows(tmp_path / "run") if r["phase"] == "train"] == [0, 1]
    resumed = Trainer(config(tmp_path, tiny_guess_model), resume=True)
    resumed.rl_update()  # update 1 again
    steps = [r["step"] for r in _rows(tmp_path / "run") if r["phase"] == "train"]
    assert steps == [0, 1]
    episodes = [json.loads(x)["step"] for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert episodes.count(1) == resumed.cfg.log_episodes  # the replayed update's, once


def _checkpointed_run(tmp_path, model):
    trainer = Trainer(config(tmp_path, model))
    trainer.rl_update(); trainer.update += 1  # noqa: E702
    path = trainer.save()
    trainer.close()
    return path


@pytest.mark.parametrize("damage", ["state", "weights", "missing_state"])
def test_a_damaged_checkpoint_is_a_one_line_error_naming_the_file(tmp_path, tiny_guess_model,
                                                                   damage, capsys):
    from turnrl.cli import main

    path = _checkpointed_run(tmp_path, tiny_guess_model)
    if damage == "state":
        (path / "state.pt").write_bytes((path / "state.pt").read_bytes()[:200])
        named = path / "state.pt"
    elif damage == "weights":
        (path / "model" / "model.safetensors").write_bytes(b"not a safetensors file")
        named = path / "model"
    else:
        (path / "state.pt").unlink()
        named = path / "state.pt"
    assert main(["train", "--resume", str(tmp_path / "run"), "progress=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("turnrl: error:") and str(named) in err[0], err
    if damage == "missing_state":  # never a silent fall back to an older checkpoint
        assert "incomplete" in err[0]


def test_a_second_trainer_on_a_busy_run_dir_is_refused(tmp_path, tiny_guess_model):
    from turnrl.errors import CheckpointError

    first = Trainer(config(tmp_path, tiny_guess_model))
    with pytest.raises(CheckpointError, match=r"in use by another trainer \(pid \d+\)"):
        Trainer(config(tmp_path, tiny_guess_model))
    first.close()
    Trainer(config(tmp_path, tiny_guess_model)).close()  # free again


def test_long_phases_report_progress(tmp_path, tiny_guess_model, capsys):
    trainer = Trainer(config(tmp_path, tiny_guess_model, "progress=true", "sft.episodes=2",
                             "sft.epochs=1", "eval.episodes=2"))
    trainer.train_sft()
    trainer.evaluate("check")
    trainer.close()
    err = capsys.readouterr().err
    assert "preparing episodes" in err and "done in" in err
    assert "sft data" in err and "eval check" in err


def test_eval_before_false_skips_the_first_evaluation(tmp_path, tiny_guess_model):
    trainer = Trainer(config(tmp_path, tiny_guess_model, "algorithm.name=grpo",
                             "rollout.group_size=4", "total_updates=1", "eval.before=false"))
    results = trainer.fit()
    assert list(results) == ["after_rl"]
    phases = [json.loads(x)["phase"] for x in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert "eval:before" not in phases and "eval:after_rl" in phases
