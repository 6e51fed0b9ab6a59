"""Mixed precision (model.compute_dtype): float32 weights keep the small updates that
bfloat16 weights round away; the backbone runs in bfloat16 under autocast, the LM head and
so the logprobs in float32, in every caller and in copies of the model."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")

from turnrl.agents.hf import HFPolicy, load_model_and_tokenizer  # noqa: E402
from turnrl.agents.precision import compute_dtype_of, enable_autocast  # noqa: E402
from turnrl.errors import ConfigError  # noqa: E402
from turnrl.trainer import load_config  # noqa: E402
from turnrl.trainer.batching import token_logprobs  # noqa: E402


def _batch(tokenizer):
    ids = tokenizer("guess 3 No, go higher. guess 7 Correct!")["input_ids"]
    return torch.tensor([ids, ids[::-1]]), torch.ones(2, len(ids), dtype=torch.long)


def _adamw_step(model, ids, mask, lr):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    before = {n: p.detach().float().clone() for n, p in model.named_parameters()}
    loss = -token_logprobs(model, ids, mask)["logprobs"].mean()
    loss.backward()
    opt.step()
    moved = sum(int((p.detach().float() != before[n]).sum()) for n, p in model.named_parameters())
    return moved / sum(p.numel() for p in model.parameters())


def test_bfloat16_weights_lose_small_updates_that_mixed_precision_keeps(tiny_guess_model):
    torch.manual_seed(0)
    bf16, tok = load_model_and_tokenizer(str(tiny_guess_model), device="cpu", dtype="bfloat16")
    mixed, _ = load_model_and_tokenizer(str(tiny_guess_model), device="cpu", compute_dtype="bfloat16")
    assert next(mixed.parameters()).dtype == torch.float32 and compute_dtype_of(mixed) == "bfloat16"
    ids, mask = _batch(tok)
    # AdamW moves every weight by about lr = 1e-6 on its first step; a bfloat16 weight of
    # size ~0.02 moves in steps of ~1e-4, so nearly all of those updates round to nothing.
    assert _adamw_step(bf16, ids, mask, 1e-6) < 0.05
    assert _adamw_step(mixed, ids, mask, 1e-6) > 0.95


def test_backbone_in_bfloat16_head_and_logprobs_in_float32(tiny_guess_model):
    full, tok = load_model_and_tokenizer(str(tiny_guess_model), device="cpu")
    mixed = enable_autocast(copy.deepcopy(full), "bfloat16")
    seen = {}

    def record(module, args, out):
        seen["q_proj"] = out.dtype

    mixed.model.layers[0].self_attn.q_proj.register_forward_hook(record)
    ids, mask = _batch(tok)
    out = mixed(input_ids=ids, attention_mask=mask)
    assert seen["q_proj"] == torch.bfloat16 and out.logits.dtype == torch.float32
    assert not torch.is_autocast_enabled("cpu")  # nothing leaks out of the forward
    ref = token_logprobs(full, ids, mask)["logprobs"]
    plain = token_logprobs(mixed, ids, mask)["logprobs"]
    chunked = token_logprobs(mixed, ids, mask, chunk_tokens=5)["logprobs"]
    assert 0 < (plain - ref).abs().max() < 0.05  # bfloat16 rounding in the backbone only
    assert (chunked - plain).abs().max() < 1e-5  # the same float32 head either way


def test_a_copy_runs_mixed_precision_on_its_own_weights(tiny_guess_model):
    mixed, tok = load_model_and_tokenizer(str(tiny_guess_model), device="cpu", compute_dtype="bfloat16")
    reference = copy.deepcopy(mixed)  # e.g. the frozen KL reference
    ids, mask = _batch(tok)
    before = token_logprobs(reference, ids, mask)["logprobs"]
    with torch.no_grad():
        for p in mixed.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert torch.equal(token_logprobs(reference, ids, mask)["logprobs"], before)
    assert not torch.equal(token_logprobs(mixed, ids, mask)["logprobs"], before)


def test_sampled_logprobs_match_the_trainers_under_mixed_precision(tiny_guess_model):
    policy = HFPolicy(str(tiny_guess_model), max_new_tokens=6, device="cpu", seed=0,
                      compute_dtype="bfloat16")
    prompt = policy.tokenizer("guess 3 No, go higher.")["input_ids"]
    action = policy.generate([prompt])[0]
    ids = torch.tensor([prompt + list(action.token_ids)])
    scored = token_logprobs(policy.model, ids, torch.ones_like(ids))["logprobs"][0, len(prompt):]
    assert (scored - torch.tensor(action.logprobs)).abs().max() < 2e-2  # bf16 backbone, fp32 head


@pytest.mark.parametrize("overrides, message", [
    (["model.compute_dtype=float16"], "compute_dtype must be one of float32, bfloat16"),
    (["model.compute_dtype=bfloat16", "model.dtype=bfloat16"], "set model.dtype to float32 or null"),
    (["model.dtype=bf16"], "model.dtype must be one of float32, bfloat16, float16"),
])
def test_precision_settings_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["model.name_or_path=x", "env.id=turnrl/TextWorld-v0", *overrides])


def test_autocast_over_low_precision_weights_is_refused(tiny_guess_model):
    bf16, _ = load_model_and_tokenizer(str(tiny_guess_model), device="cpu", dtype="bfloat16")
    with pytest.raises(ConfigError, match="weights are bfloat16: set model.dtype=float32"):
        enable_autocast(bf16, "bfloat16")


def test_a_training_run_in_mixed_precision(tmp_path, tiny_guess_model):
    """PPO with a separate critic and a KL reference: float32 weights throughout, every
    part running the bfloat16 backbone, and the sampler's logprobs close to the trainer's."""
    from toy_envs import GuessNumber

    import turnrl
    from turnrl.trainer import Trainer

    turnrl.register("turnrl/GuessMixed-v0", GuessNumber, override=True, max_turns=3)
    trainer = Trainer(load_config(None, [
        f"model.name_or_path={tiny_guess_model}", "env.id=turnrl/GuessMixed-v0",
        "model.compute_dtype=bfloat16", "algorithm.name=ppo", "algorithm.kl_coef=0.1",
        "rollout.episodes_per_update=8", "rollout.max_new_tokens=5", "rollout.num_envs=8",
        "total_updates=1", f"run_dir={tmp_path / 'run'}", "eval.episodes=2", "progress=false",
        "optim.minibatch_size=4", "optim.micro_batch_size=2"]))
    learner = trainer.learner
    for part in (learner.model, learner.critic.backbone, learner.reference):
        assert compute_dtype_of(part) == "bfloat16"
        assert {p.dtype for p in part.parameters()} == {torch.float32}
    metrics = trainer.rl_update()
    assert metrics["logprob/rollout_vs_train_max_abs"] < 2e-2
    assert metrics["kl_ref"] > 0  # the reference is a copy, not the trained model itself
    trainer.close()
