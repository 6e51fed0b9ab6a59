"""The vldac, rloo and grpo presets, the reference-model KL, and LoRA, on a tiny model."""

from __future__ import annotations

import json
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

import turnrl  # noqa: E402
from turnrl.envs.base import TextEnv  # noqa: E402
from turnrl.errors import ConfigError  # noqa: E402
from turnrl.trainer import Trainer, load_config  # noqa: E402
from turnrl.trainer.batching import collate, token_logprobs  # noqa: E402
from turnrl.trajectory import build_samples  # noqa: E402


class WordCount(TextEnv):
    """Two turns; each reply earns 0.1 per word. An untrained model's replies differ in
    length, so episodes of a group get different returns and every preset has signal."""

    instructions = "Reply with some words."

    def __init__(self, *, max_turns: int = 2, render_mode: str | None = None) -> None:
        super().__init__(max_turns=max_turns, render_mode=render_mode)

    def _reset_episode(self, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return "Say something.", {"task": "Say something.", "expert_action": "guess 3"}

    def parse_action(self, reply: str) -> str:
        return reply

    def _step_action(self, command: str) -> tuple[str, float, bool, dict[str, Any]]:
        return "Again.", 0.1 * len(command.split()), False, {"expert_action": "guess 3"}


turnrl.register("turnrl/WordCount-v0", WordCount, override=True)


def config(tmp_path, model, *extra):
    return load_config(None, [
        f"model.name_or_path={model}", "env.id=turnrl/WordCount-v0",
        "rollout.episodes_per_update=8", "rollout.group_size=4", "rollout.max_new_tokens=6",
        "rollout.num_envs=8", "total_updates=2", f"run_dir={tmp_path / 'run'}",
        "eval.episodes=2", "progress=false", "optim.lr=1e-3", "optim.critic_lr=1e-3",
        "optim.minibatch_size=4", "optim.micro_batch_size=2", "checkpoint_every=1", *extra,
    ])


def _params(module):
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def _moved(before, module):
    return {n for n, p in module.named_parameters() if p.requires_grad
            and not torch.equal(before[n], p.detach())}


# ---------------------------------------------------------------- config
def test_preset_defaults_fill_only_what_is_left_null(tmp_path):
    base = ["model.name_or_path=x", "env.id=turnrl/WordCount-v0", "rollout.group_size=4"]
    v = load_config(None, [*base, "algorithm.name=vldac"])
    assert (v.algorithm.clip_ratio, v.algorithm.kl_coef, v.algorithm.ratio_guard) == (0.1, 0.04, 10.0)
    assert v.model.critic == "head" and v.algorithm.critic_warmup_updates == 2
    g = load_config(None, [*base, "algorithm.name=grpo", "algorithm.clip_ratio=0.3"])
    assert g.algorithm.clip_ratio == 0.3 and g.model.critic == "none"
    assert g.algorithm.normalize_advantages is False
    p = load_config(None, [*base, "algorithm.name=ppo"])
    assert p.model.critic == "separate" and p.algorithm.kl_coef == 0.0


@pytest.mark.parametrize("name", ["rloo", "grpo"])
def test_group_relative_presets_need_groups(name):
    with pytest.raises(ConfigError, match=r"group_size >= 2, got 1: set e.g. rollout.group_size=4"):
        load_config(None, ["model.name_or_path=x", "env.id=turnrl/WordCount-v0",
                           f"algorithm.name={name}"])


def test_bad_preset_settings_are_named():
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["model.name_or_path=x", "env.id=turnrl/WordCount-v0",
                           "algorithm.name=vldac", "model.critic=separate",
                           "model.lora={r: 4, alhpa: 8}", "algorithm.loss_agg=seq-mean",
                           "algorithm.ratio_guard=0.5"])
    msg = str(exc.value)
    assert "model.critic 'separate' does not go with algorithm vldac: use 'head'" in msg
    assert "model.lora has unknown keys ['alhpa']" in msg
    assert "loss_agg must be one of token-mean, seq-mean-token-mean, got 'seq-mean'" in msg
    assert "ratio_guard must be > 1" in msg


# ---------------------------------------------------------------- one update per preset
@pytest.mark.parametrize("name,agg", [("ppo", "token-mean"), ("vldac", "seq-mean-token-mean"),
                                      ("rloo", "token-mean"), ("grpo", "seq-mean-token-mean")])
def test_each_preset_update_is_finite_and_moves_the_policy(tmp_path, tiny_guess_model, name, agg):
    trainer = Trainer(config(tmp_path, tiny_guess_model, f"algorithm.name={name}",
                             f"algorithm.loss_agg={agg}", "algorithm.critic_warmup_updates=0"))
    assert (trainer.critic is None) == (name in ("rloo", "grpo"))
    before = _params(trainer.model)
    critic_before = _params(trainer.critic) if trainer.critic is not None else None
    metrics = trainer.rl_update()
    for key in ("policy_loss", "grad_norm", "entropy"):
        assert torch.isfinite(torch.tensor(metrics[key])), key
    assert metrics["nan_skipped"] == 0.0
    assert metrics["adv/abs_mean"] > 0
    assert _moved(before, trainer.model) == set(before)
    if critic_before is not None:
        assert _moved(critic_before, trainer.critic) == set(critic_before)
        assert torch.isfinite(torch.tensor(metrics["value_loss"]))
    if name == "vldac":  # KL to the reference is on by default
        assert torch.isfinite(torch.tensor(metrics["kl_ref"]))
        assert "guard_frac" in metrics


def test_vldac_value_loss_sends_no_gradient_to_the_policy(tmp_path, tiny_guess_model):
    trainer = Trainer(config(tmp_path, tiny_guess_model, "algorithm.name=vldac"))
    trajs = trainer.rollout()
    samples = build_samples(trajs, "full")
    scored = trainer.learner.score(samples)
    adv = trainer.advantages(trajs, samples, scored)
    batch = collate(samples[:2], trainer.policy.pad_id, [0, 1])
    out = token_logprobs(trainer.model, batch.input_ids, batch.attention_mask, with_hidden=True)
    trainer.model.zero_grad(set_to_none=True)
    v_loss = trainer.learner.value_loss(batch, out["hidden"], samples[:2], scored.values[:2], adv)
    assert v_loss.item() > 0
    v_loss.backward()
    assert all(p.grad is None for p in trainer.model.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.critic.parameters())


def test_vldac_trains_the_value_head_alone_first(tmp_path, tiny_guess_model):
    trainer = Trainer(config(tmp_path, tiny_guess_model, "algorithm.name=vldac",
                             "algorithm.critic_warmup_updates=1"))
    policy, head = _params(trainer.model), _params(trainer.critic)
    trainer.rl_update()
    assert not _moved(policy, trainer.model)  # warm-up: the policy stays
    assert _moved(head, trainer.critic) == set(head)
    trainer.update += 1
    trainer.rl_update()
    assert _moved(policy, trainer.model) == set(policy)


# ---------------------------------------------------------------- reference and LoRA
def _unique_param_bytes(*modules) -> int:
    seen: dict[int, int] = {}
    for module in modules:
        if module is None:
            continue
        for t in list(module.parameters()) + list(module.buffers()):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def test_lora_reference_is_the_base_and_memory_holds_one_copy(tmp_path, tiny_guess_model):
    from transformers import AutoModelForCausalLM

    lora = Trainer(config(tmp_path / "lora", tiny_guess_model, "algorithm.name=grpo",
                          "algorithm.kl_coef=0.1", "model.lora={r: 4, alpha: 8}"))
    full = Trainer(config(tmp_path / "full", tiny_guess_model, "algorithm.name=grpo",
                          "algorithm.kl_coef=0.1"))
    base = AutoModelForCausalLM.from_pretrained(tiny_guess_model)
    base_bytes = _unique_param_bytes(base)
    adapters = {n: p for n, p in lora.model.named_parameters() if p.requires_grad}
    assert adapters and all("lora_" in n for n in adapters)
    adapter_bytes = sum(p.numel() * p.element_size() for p in adapters.values())
    # LoRA: one base plus adapters; without LoRA the frozen reference is a second copy
    assert lora.ref_model is None
    assert _unique_param_bytes(lora.model, lora.ref_model) == base_bytes + adapter_bytes
    assert _unique_param_bytes(full.model, full.ref_model) == 2 * base_bytes

    before = _params(lora.model)
    metrics = lora.rl_update()
    assert _moved(before, lora.model) == set(before)  # the adapters (only) trained
    assert metrics["kl_ref"] >= 0
    samples = build_samples(lora.rollout(), "full")
    batch = collate(samples[:4], lora.policy.pad_id)
    lora.model.eval()
    with torch.no_grad():
        ref = lora.learner.reference_logprobs(batch)
        expected = token_logprobs(base, batch.input_ids, batch.attention_mask)["logprobs"]
        policy = token_logprobs(lora.model, batch.input_ids, batch.attention_mask)["logprobs"]
    mask = batch.attention_mask > 0
    assert torch.allclose(ref[mask], expected[mask], atol=1e-5)
    assert not torch.allclose(policy[mask], expected[mask], atol=1e-4)  # the adapters act

    # merged export: a plain HF model that computes what the adapted policy computed
    path = lora.export()
    merged = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        got = token_logprobs(merged, batch.input_ids, batch.attention_mask)["logprobs"]
    assert torch.allclose(got[mask], policy[mask], atol=1e-4)
    assert not any("lora" in k for k in merged.state_dict())
    # ... which `turnrl eval --agent hf:DIR` plays
    from turnrl.cli import main

    out = tmp_path / "eval.json"
    assert main(["eval", "turnrl/WordCount-v0", "--agent", f"hf:{path}", "--episodes", "3",
                 "--json", str(out), "--quiet"]) == 0
    row = json.loads(out.read_text())[0]
    assert row["env"] == "turnrl/WordCount-v0" and row["episodes"] == 3
    assert row["mean_turns"] == 2  # WordCount always runs its two turns


def test_lora_sft_warm_start_becomes_the_reference(tmp_path, tiny_guess_model):
    trainer = Trainer(config(tmp_path, tiny_guess_model, "algorithm.name=rloo",
                             "algorithm.kl_coef=0.1", "model.lora={r: 4}", "sft.episodes=4",
                             "sft.epochs=2", "sft.batch_size=4"))
    trainer.train_sft()
    # SFT adapters are folded into the base; RL starts from fresh (zero-effect) adapters,
    # so policy == reference at the start of RL, as without LoRA
    assert (trainer.run_dir / "sft_model" / "config.json").exists()
    samples = build_samples(trainer.rollout(), "full")
    scored = trainer.learner.score(samples)
    for old, ref in zip(scored.old_logp, scored.ref_logp, strict=True):
        assert torch.allclose(old, ref, atol=1e-6)
    sft_policy = token_logprobs(trainer.model, *_ids(samples, trainer))["logprobs"]
    trainer.rl_update()
    after = token_logprobs(trainer.model, *_ids(samples, trainer))["logprobs"]
    assert not torch.allclose(sft_policy, after, atol=1e-5)  # RL moved the fresh adapters
    assert all("lora_" in n for n, p in trainer.model.named_parameters() if p.requires_grad)


def test_lora_resume_gives_the_same_next_update(tmp_path, tiny_guess_model):
    extra = ("algorithm.name=grpo", "algorithm.kl_coef=0.1", "model.lora={r: 4}")
    straight = Trainer(config(tmp_path / "a", tiny_guess_model, *extra))
    straight.rl_update(); straight.update += 1  # noqa: E702
    expected = straight.rl_update()

    first = Trainer(config(tmp_path / "b", tiny_guess_model, *extra))
    first.rl_update(); first.update += 1  # noqa: E702
    first.save()
    first.close()
    resumed = Trainer(config(tmp_path / "b", tiny_guess_model, *extra), resume=True)
    got = resumed.rl_update()
    for key in ("rollout/return", "policy_loss", "kl_ref", "grad_norm"):
        assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-7), key


def test_resumed_run_keeps_its_kl_reference(tmp_path, tiny_guess_model):
    trainer = Trainer(config(tmp_path, tiny_guess_model, "algorithm.name=rloo",
                             "algorithm.kl_coef=0.1", "total_updates=1"))
    trainer.train_rl()  # builds the reference (saved to run_dir/reference), one update
    trainer.save()
    trainer.close()
    reference = _params_all(trainer.ref_model)
    resumed = Trainer(config(tmp_path, tiny_guess_model, "algorithm.name=rloo",
                             "algorithm.kl_coef=0.1", "total_updates=2"), resume=True)
    got = _params_all(resumed.ref_model)
    assert all(torch.equal(reference[n], got[n]) for n in reference)
    policy = _params_all(resumed.model)
    assert any(not torch.equal(reference[n], policy[n]) for n in reference)


def _ids(samples, trainer):
    batch = collate(samples[:2], trainer.policy.pad_id)
    return batch.input_ids, batch.attention_mask


def _params_all(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


# ---------------------------------------------------------------- ospo on the driver view
def test_ospo_smoke_on_the_dispatch_driver_view(tmp_path):
    pytest.importorskip("scipy")
    settings = "{grid: 5, drivers: 4, rounds: 4, orders: 16}"
    cfg = load_config(None, [
        "model.tiny={hidden_size: 64, num_layers: 2, vocab_size: 300, corpus_seeds: 4}",
        "env.id=turnrl/RideDispatchDriver-v0",
        f"env.kwargs={{settings: {settings}, decisions_per_round: 2}}",
        "algorithm.name=ospo", "rollout.episodes_per_update=4", "rollout.max_new_tokens=4",
        "rollout.num_envs=4", "total_updates=1", f"run_dir={tmp_path / 'run'}",
        "eval.episodes=2", "progress=false", "optim.lr=1e-3", "optim.minibatch_size=2",
        "optim.micro_batch_size=2", "sft.episodes=4", "sft.epochs=30", "sft.lr=3e-3",
    ])
    trainer = Trainer(cfg)
    assert trainer.critic is None
    trainer.train_sft()  # enough to reply "O3" / "wait" sometimes: rewards then differ
    trajs = trainer.rollout()
    assert all("turn_group" in turn.info for t in trajs for turn in t.turns)
    before = _params(trainer.model)
    metrics = trainer.rl_update()
    assert torch.isfinite(torch.tensor(metrics["policy_loss"]))
    assert metrics["adv/abs_mean"] > 0
    assert _moved(before, trainer.model) == set(before)


def test_ospo_needs_turn_groups(tmp_path, tiny_guess_model):
    trainer = Trainer(config(tmp_path, tiny_guess_model, "algorithm.name=ospo",
                             "rollout.group_size=1"))
    with pytest.raises(ConfigError, match="info\\['turn_group'\\].*RideDispatchDriver"):
        trainer.rl_update()
