"""PPO raises held-out success on a small TextWorld family (slow: a few minutes)."""

from pathlib import Path

import pytest

pytest.importorskip("torch")

from turnrl.trainer import Trainer, load_config  # noqa: E402

CONFIG = Path(__file__).parents[2] / "configs" / "quickstart.yaml"


@pytest.mark.slow
def test_ppo_raises_held_out_success_after_sft(tmp_path):
    cfg = load_config(CONFIG, [f"run_dir={tmp_path / 'run'}", "progress=false",
                               "total_updates=40", "eval.episodes=40"])
    results = Trainer(cfg).fit()
    before = results["before"]["eval/success"]
    sft = results["after_sft"]["eval/success"]
    rl = results["after_rl"]["eval/success"]
    # SFT on 8 demonstrations teaches the format; PPO on undemonstrated games adds to it.
    assert before == 0.0
    assert rl >= sft + 0.1, results
    assert results["after_rl"]["eval/invalid_rate"] < results["after_sft"]["eval/invalid_rate"]
