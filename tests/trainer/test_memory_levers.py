"""The memory levers of the update (issue 19): chunked logprobs and entropy, gradient
checkpointing, precision, token-budget micro-batches. Each must give what the plain
computation gives: values and gradients within float rounding."""

from __future__ import annotations

import copy
import random

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from turnrl.errors import UnsupportedSettingsError  # noqa: E402
from turnrl.trainer import builders  # noqa: E402
from turnrl.trainer.batching import _LinearHeadLogprobs, pack_by_tokens, token_logprobs  # noqa: E402
from turnrl.trainer.critic import ValueHead, ValueModel  # noqa: E402
from turnrl.trainer.distributed import Distributed  # noqa: E402
from turnrl.trainer.estimators import TurnAdvantages  # noqa: E402
from turnrl.trainer.learner import BatchSettings, Learner, LossSettings  # noqa: E402
from turnrl.trajectory import Sample  # noqa: E402

VOCAB = 301  # differs from the hidden size, so vocabulary-sized tensors are recognisable


def _qwen2_config(**kw):
    base = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=96, vocab_size=VOCAB, tie_word_embeddings=True,
                max_position_embeddings=256)
    return transformers.Qwen2Config(**{**base, **kw})


def _qwen2(seed: int = 0, **kw):
    torch.manual_seed(seed)
    return transformers.Qwen2ForCausalLM(_qwen2_config(**kw)).train()


def _ids(batch: int = 3, length: int = 20, seed: int = 0):
    """``[B, S]`` random ids, right-padded: row 1 has 12 real tokens, row 2 has 5."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (batch, length), generator=gen)
    mask = torch.ones_like(ids)
    for row, n in ((1, 12), (2, 5)):
        if row < batch:
            ids[row, n:], mask[row, n:] = 0, 0
    return ids, mask


def _forward_backward(model, ids, mask, **kw):
    """token_logprobs, then backward through a loss that reads logprobs, entropy and the
    hidden state; returns the outputs and every parameter's gradient."""
    model.zero_grad(set_to_none=True)
    out = token_logprobs(model, ids, mask, with_entropy=True, with_hidden=True, **kw)
    valid = mask[:, 1:] > 0
    weights = torch.linspace(-1.0, 1.0, int(valid.sum()))
    loss = ((out["logprobs"][:, 1:][valid] * weights).sum() + 0.3 * out["entropy"][:, 1:][valid].sum()
            + out["hidden"].float().pow(2).mean())
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


def _assert_close(plain, chunked, mask, grads_plain, grads_chunked, tol=1e-5):
    valid = mask[:, 1:] > 0
    for key in ("logprobs", "entropy"):
        diff = (plain[key][:, 1:][valid] - chunked[key][:, 1:][valid]).detach().abs().max()
        assert chunked[key].dtype == torch.float32
        assert float(diff) <= tol, (key, float(diff))
        assert float(chunked[key][:, 0].detach().abs().max()) == 0.0  # no context at position 0
    assert torch.equal(plain["hidden"], chunked["hidden"])
    assert grads_plain.keys() == grads_chunked.keys() and grads_plain
    for name, g in grads_plain.items():
        diff = float((g - grads_chunked[name]).abs().max())
        assert diff <= tol * max(1.0, float(g.abs().max())), (name, diff)


# ---------------------------------------------------------------- chunked logprobs
@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("chunk,temperature", [(1, 1.0), (5, 0.7), (1000, 1.3)])
def test_chunked_logprobs_entropy_and_gradients_match_full_logits(tied, chunk, temperature):
    model = _qwen2(tie_word_embeddings=tied)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    ids, mask = _ids()
    plain, g_plain = _forward_backward(model, ids, mask, temperature=temperature)
    chunked, g_chunked = _forward_backward(model, ids, mask, temperature=temperature,
                                           chunk_tokens=chunk)
    _assert_close(plain, chunked, mask, g_plain, g_chunked)
    head = "model.embed_tokens.weight" if tied else "lm_head.weight"  # tied: one parameter
    assert float(g_chunked[head].abs().max()) > 0  # the head is trained through the chunks
    # padding positions are 0 in the chunked path (the plain one computes something there)
    assert float(chunked["logprobs"][2, 5:].detach().abs().max()) == 0.0


def test_chunked_logprobs_without_grad_match_and_keep_no_graph():
    model = _qwen2().eval()
    ids, mask = _ids()
    with torch.no_grad():
        plain = token_logprobs(model, ids, mask, with_entropy=True)
        chunked = token_logprobs(model, ids, mask, with_entropy=True, chunk_tokens=4)
    valid = mask[:, 1:] > 0
    assert not chunked["logprobs"].requires_grad
    assert float((plain["logprobs"][:, 1:][valid] - chunked["logprobs"][:, 1:][valid]).abs().max()) <= 1e-5


class _VocabRows(TorchDispatchMode):
    """Records the most rows any vocabulary-wide tensor (last dim == VOCAB) had, leaving
    out the head's weight seen transposed (``[H, V]``)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if (isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-1] == VOCAB
                    and tuple(t.shape[:-1]) != (64,)):
                self.rows = max(self.rows, t.numel() // VOCAB)
        return out


def test_chunked_path_peak_grows_with_the_chunk_not_the_sequence():
    """No [tokens, vocab] tensor in forward or backward: the widest is one chunk (or the
    ``[B, 1, V]`` head output the model's own forward still makes)."""
    model = _qwen2()
    ids, mask = _ids(batch=3, length=40)
    seen = {}
    for chunk in (0, 4, 16):
        with _VocabRows() as mode:
            _forward_backward(model, ids, mask, chunk_tokens=chunk)
        seen[chunk] = mode.rows
    assert seen[0] >= 3 * 39  # the plain path holds every position's logits
    assert seen[4] == 4 and seen[16] == 16


def test_linear_head_function_with_bias_and_a_logit_multiplier():
    """The custom backward (softmax gradients written out) against autograd, with a bias,
    a multiplier and a temperature, in float64."""
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(23, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(40, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(40, generator=gen, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 40, (23,), generator=gen)
    a, b = torch.randn(23, generator=gen, dtype=torch.float64), torch.randn(23, generator=gen, dtype=torch.float64)

    logits = (hidden @ weight.t() + bias) * 0.25 / 0.8
    logp_all = torch.log_softmax(logits, -1)
    ref_lp = logp_all.gather(-1, targets[:, None]).squeeze(-1)
    ref_ent = -(logp_all.exp() * logp_all).sum(-1)
    ref_grads = torch.autograd.grad((ref_lp * a).sum() + (ref_ent * b).sum(), (hidden, weight, bias),
                                    retain_graph=True)

    lp, ent = _LinearHeadLogprobs.apply(hidden, weight, bias, targets, 0.25, 0.8, 6, True)
    grads = torch.autograd.grad((lp * a).sum() + (ent * b).sum(), (hidden, weight, bias))
    assert lp.dtype == ent.dtype == torch.float64
    assert torch.allclose(lp, ref_lp, atol=1e-12) and torch.allclose(ent, ref_ent, atol=1e-12)
    for got, want in zip(grads, ref_grads, strict=True):
        assert torch.allclose(got, want, atol=1e-10), float((got - want).abs().max())
    # logprobs only: the entropy output takes no gradient
    lp, _ = _LinearHeadLogprobs.apply(hidden, weight, bias, targets, 0.25, 0.8, 6, False)
    got = torch.autograd.grad((lp * a).sum(), hidden)[0]
    want = torch.autograd.grad((ref_lp * a).sum(), hidden)[0]
    assert torch.allclose(got, want, atol=1e-10)


@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`")
@pytest.mark.parametrize("targets", ["all-linear", ["q_proj", "v_proj", "lm_head"]])
def test_chunked_logprobs_with_peft_adapters(targets):
    """LoRA on the body (the head is a plain Linear) and on the head itself (a peft module:
    the checkpointed path); with adapters on and switched off."""
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(_qwen2(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets,
                                                           init_lora_weights=False))
    ids, mask = _ids()
    plain, g_plain = _forward_backward(model, ids, mask)
    chunked, g_chunked = _forward_backward(model, ids, mask, chunk_tokens=3)
    _assert_close(plain, chunked, mask, g_plain, g_chunked)
    assert any("lora" in name for name in g_chunked)
    with model.disable_adapter(), torch.no_grad():
        base = token_logprobs(model, ids, mask, chunk_tokens=3)["logprobs"]
        base_plain = token_logprobs(model, ids, mask)["logprobs"]
    valid = mask[:, 1:] > 0
    assert float((base[:, 1:][valid] - base_plain[:, 1:][valid]).abs().max()) <= 1e-5
    assert float((base[:, 1:][valid] - chunked["logprobs"][:, 1:][valid]).detach().abs().max()) > 1e-3


def _tiny(config_cls, model_cls, **kw):
    torch.manual_seed(0)
    cfg = config_cls(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     intermediate_size=96, vocab_size=VOCAB, max_position_embeddings=256, **kw)
    return model_cls(cfg).eval()


@pytest.mark.parametrize("family", ["cohere", "granite"])
def test_models_that_scale_their_logits(family):
    """Cohere multiplies the head's output by logit_scale, Granite divides it by
    logits_scaling: the chunked path does the same."""
    if family == "cohere":
        model = _tiny(transformers.CohereConfig, transformers.CohereForCausalLM, logit_scale=0.3)
    else:
        model = _tiny(transformers.GraniteConfig, transformers.GraniteForCausalLM, logits_scaling=4.0)
    ids, mask = _ids()
    plain, g_plain = _forward_backward(model, ids, mask, temperature=0.9)
    chunked, g_chunked = _forward_backward(model, ids, mask, temperature=0.9, chunk_tokens=7)
    _assert_close(plain, chunked, mask, g_plain, g_chunked)


def test_softcapped_logits_are_refused_clearly():
    model = _tiny(transformers.Gemma2Config, transformers.Gemma2ForCausalLM, head_dim=16,
                  final_logit_softcapping=30.0)
    ids, mask = _ids()
    with pytest.raises(UnsupportedSettingsError, match=r"final_logit_softcapping=30.0.*"
                                                       r"model.logprob_chunk_tokens=0"):
        token_logprobs(model, ids, mask, chunk_tokens=8)


# ---------------------------------------------------------------- gradient checkpointing
class _CountCalls:
    """Counts calls of a module's forward (forward hooks do not see the recomputation)."""

    def __init__(self, module) -> None:
        self.calls = 0
        forward = module.forward

        def counted(*args, **kwargs):
            self.calls += 1
            return forward(*args, **kwargs)

        module.forward = counted


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path):
    """Policy and a separate critic's backbone; the layers really run again in backward."""
    plain, lean = _qwen2(), _qwen2()
    builders.enable_gradient_checkpointing(lean)
    ids, mask = _ids()
    _, g_plain = _forward_backward(plain, ids, mask)
    counter = _CountCalls(lean.model.layers[0])
    _, g_lean = _forward_backward(lean, ids, mask, chunk_tokens=4)
    assert counter.calls == 2  # forward, then the recomputation in backward
    for name, g in g_plain.items():
        assert float((g - g_lean[name]).abs().max()) <= 1e-5 * max(1.0, float(g.abs().max())), name

    _qwen2(seed=3).save_pretrained(tmp_path / "m")
    critics = [builders.build_critic("separate", str(tmp_path / "m"), 64, "cpu",
                                     gradient_checkpointing=on) for on in (False, True)]
    counter = _CountCalls(critics[1].backbone.layers[1])
    grads = []
    for critic in critics:
        critic.train()
        critic(ids, mask).pow(2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in critic.named_parameters() if p.grad is not None})
    assert counter.calls == 2
    for name, g in grads[0].items():
        assert float((g - grads[1][name]).abs().max()) <= 1e-6 * max(1.0, float(g.abs().max())), name


# ---------------------------------------------------------------- precision
def test_bfloat16_weights_give_float32_logprobs_values_and_losses(tmp_path):
    model = _qwen2().to(torch.bfloat16)
    ids, mask = _ids()
    valid = mask[:, 1:] > 0
    plain, _ = _forward_backward(model, ids, mask)
    chunked, grads = _forward_backward(model, ids, mask, chunk_tokens=6)
    for out in (plain, chunked):
        assert out["logprobs"].dtype == out["entropy"].dtype == torch.float32
    diff = (plain["logprobs"][:, 1:][valid] - chunked["logprobs"][:, 1:][valid]).detach().abs().max()
    assert float(diff) < 0.05  # bfloat16 hidden states: the last bits differ
    assert grads["model.embed_tokens.weight"].dtype == torch.bfloat16  # the (tied) head
    # a separate critic follows the policy's dtype; its value head stays float32
    _qwen2(seed=3).save_pretrained(tmp_path / "m")
    critic = builders.build_critic("separate", str(tmp_path / "m"), 64, "cpu", dtype=torch.bfloat16)
    assert critic.backbone.dtype == torch.bfloat16 and critic.head.net.weight.dtype == torch.float32
    assert critic(ids, mask).dtype == torch.float32
    # an update's losses and statistics are float32 math
    samples = _samples(6, seed=2)
    learner = _learner(model, critic=ValueHead(64), chunk=6)
    assert learner.critic.net.weight.dtype == torch.float32
    scored = learner.score(samples)
    assert all(x.dtype == torch.float32 for x in scored.old_logp + scored.values)
    stats = learner.update(samples, scored, _advantages(samples))
    assert stats["nan_skipped"] == 0.0 and all(map(lambda v: v == v, stats.values()))


# ---------------------------------------------------------------- token-budget micro-batches
def test_pack_by_tokens_sorts_and_fills_greedily():
    assert pack_by_tokens([3, 9, 4, 2, 4], budget=10) == [[1], [2, 4], [0, 3]]
    assert pack_by_tokens([50, 5], budget=10) == [[0], [1]]  # too long: alone
    assert pack_by_tokens([], budget=10) == []
    rng = random.Random(0)
    for _ in range(50):
        lengths = [rng.randint(1, 40) for _ in range(rng.randint(1, 30))]
        budget = rng.randint(1, 120)
        groups = pack_by_tokens(lengths, budget)
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
        for g in groups:
            assert len(g) == 1 or len(g) * max(lengths[i] for i in g) <= budget
            assert lengths[g[0]] == max(lengths[i] for i in g)


def _samples(n: int, seed: int = 0, lo: int = 6, hi: int = 30) -> list[Sample]:
    """Two-turn samples of varied length: prompt, action 1, observation, action 2."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = rng.randint(lo, hi)
        a1, a2 = 1 + length // 3, 2 * length // 3 + 1
        mask = [0] * length
        turn = [-1] * length
        for pos in range(a1, min(a1 + 3, length)):
            mask[pos], turn[pos] = 1, 0
        for pos in range(a2, length):
            mask[pos], turn[pos] = 1, 1
        logps = [-rng.uniform(0.1, 3.0) if m else 0.0 for m in mask]
        out.append(Sample([rng.randint(1, VOCAB - 1) for _ in range(length)], mask, turn, logps,
                          value_turns=[0, 1, 2], value_positions=[a1 - 1, a2 - 1, length - 1],
                          trajectory=i))
    return out


def _advantages(samples: list[Sample], seed: int = 0) -> TurnAdvantages:
    gen = torch.Generator().manual_seed(seed)
    n = len(samples)
    return TurnAdvantages(advantages=torch.randn(n, 2, generator=gen),
                          returns=torch.randn(n, 2, generator=gen), values=torch.zeros(n, 3),
                          turn_mask=torch.ones(n, 2), num_turns=[2] * n)


def _learner(model, *, critic=None, kl=False, agg="token-mean", budget=0, micro=2, chunk=0,
             minibatch=8, dist=None):
    critic_opt = torch.optim.AdamW(critic.parameters(), lr=1e-3) if critic is not None else None
    return Learner(
        model, torch.optim.AdamW(model.parameters(), lr=1e-3), critic=critic,
        critic_optimizer=critic_opt, reference=builders.frozen_copy(model) if kl else None,
        reference_is_base=False, dist=dist or Distributed(None), pad_id=0, temperature=1.0,
        losses=LossSettings(kl_coef=0.1 if kl else 0.0, entropy_coef=0.01, loss_agg=agg,
                            dual_clip=3.0),
        batches=BatchSettings(epochs=1, minibatch_size=minibatch, micro_batch_size=micro,
                              max_grad_norm=1e9, max_tokens_per_micro_batch=budget),
        logprob_chunk_tokens=chunk)


def test_token_micro_batches_run_as_many_passes_on_every_rank():
    samples = _samples(9, seed=4, lo=3, hi=60)
    idx = [8, 0, 3, 5, 1, 7, 2]  # rank 0 takes 4 samples, rank 1 takes 3
    per_rank = []
    for rank in range(2):
        dist = Distributed(None)
        dist.rank, dist.world_size = rank, 2
        learner = _learner(_qwen2(), budget=64, dist=dist)
        per_rank.append(learner.micro_batches(idx, samples))
    assert len(per_rank[0]) == len(per_rank[1])
    real = [i for part in per_rank for mb, dummy in part if not dummy for i in mb]
    assert sorted(real) == sorted(idx)
    assert any(dummy for part in per_rank for _, dummy in part)  # the lengths make them differ
    shortest = min(idx, key=lambda i: len(samples[i]))
    for part in per_rank:
        for mb, dummy in part:
            assert (mb == [shortest]) if dummy else (len(mb) == 1 or len(mb) * max(len(samples[i]) for i in mb) <= 64)


CASES = {
    # (critic, kl, aggregation)
    "separate-critic-kl": ("separate", True, "token-mean"),
    "seq-mean-token-mean-kl": (None, True, "seq-mean-token-mean"),
    "shared-head": ("shared", False, "token-mean"),
}


def _critic(kind):
    if kind == "separate":
        torch.manual_seed(5)
        return ValueModel(transformers.Qwen2Model(_qwen2_config()))
    return ValueHead(64) if kind == "shared" else None


def _one_minibatch(learner, samples, scored, adv):
    stats = learner._minibatch(list(range(len(samples))), samples, scored, adv, True)
    modules = {"policy": learner.model, "critic": learner.critic}
    grads = {f"{k}.{n}": p.grad.clone() for k, m in modules.items() if m is not None
             for n, p in m.named_parameters() if p.grad is not None}
    return stats, grads


@pytest.mark.parametrize("case", list(CASES))
def test_token_budget_gives_the_sample_micro_batch_update(case):
    """Same loss, statistics and gradients as sample-count micro-batches (and all levers
    together: chunked logprobs, checkpointing and the budget)."""
    kind, kl, agg = CASES[case]
    samples = _samples(8, seed=1)
    adv = _advantages(samples)
    base_model, base_critic = _qwen2(), _critic(kind)
    runs = {}
    for name, budget, chunk, ckpt in (("samples", 0, 0, False), ("tokens", 45, 0, False),
                                      ("all-levers", 45, 5, True)):
        model, critic = copy.deepcopy(base_model), copy.deepcopy(base_critic)
        if ckpt:
            builders.enable_gradient_checkpointing(model)
        learner = _learner(model, critic=critic, kl=kl, agg=agg, budget=budget, chunk=chunk)
        scored = learner.score(samples)
        for lp in scored.old_logp:  # off-policy enough to clip some tokens
            lp += 0.3 * torch.sin(torch.arange(len(lp), dtype=torch.float32))
        runs[name] = (scored, *_one_minibatch(learner, samples, scored, adv))
        if budget:
            sizes = [len(mb) for mb, _ in learner.micro_batches(list(range(8)), samples)]
            assert len(sizes) > 1 and len(set(sizes)) > 1  # packed unevenly
    ref_scored, ref_stats, ref_grads = runs["samples"]
    assert ref_stats["clipfrac"] > 0 and ("kl_ref" in ref_stats) == kl
    for name, tol in (("tokens", 1e-6), ("all-levers", 1e-5)):
        scored, stats, grads = runs[name]
        for a, b in zip(ref_scored.old_logp + ref_scored.values, scored.old_logp + scored.values, strict=True):
            assert float((a - b).abs().max()) <= 10 * tol
        assert stats.keys() == ref_stats.keys()
        for key, value in ref_stats.items():
            assert stats[key] == pytest.approx(value, rel=tol, abs=tol), (name, key)
        assert grads.keys() == ref_grads.keys()
        for key, g in ref_grads.items():
            rel = float((g - grads[key]).norm() / g.norm().clamp(min=1e-12))
            assert rel <= tol, (name, key, rel)


def test_token_budget_sft_step_matches_sample_micro_batches():
    samples = _samples(7, seed=6)
    base = _qwen2()
    losses, grads = [], []
    for budget in (0, 40):
        learner = _learner(copy.deepcopy(base), budget=budget, agg="seq-mean-token-mean")
        optimizer = torch.optim.SGD(learner.model.parameters(), lr=0.0)
        losses.append(learner.sft_step(list(range(7)), samples, optimizer))
        grads.append({n: p.grad.clone() for n, p in learner.model.named_parameters()})
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
    for name, g in grads[0].items():
        assert float((g - grads[1][name]).norm() / g.norm().clamp(min=1e-12)) <= 1e-6, name


def test_memory_settings_are_checked():
    from turnrl.errors import ConfigError
    from turnrl.trainer import load_config

    base = ["model.name_or_path=x", "env.id=turnrl/Anything-v0"]
    with pytest.raises(ConfigError) as info:
        load_config(None, [*base, "model.logprob_chunk_tokens=-1",
                           "optim.max_tokens_per_micro_batch=-5", "model.gradient_checkpointing=maybe"])
    assert info.value.errors == [
        "model.gradient_checkpointing must be bool, got 'maybe'",
        "model.logprob_chunk_tokens must be >= 0 (0: full logits), got -1",
        "optim.max_tokens_per_micro_batch must be >= 0 (0 or null: off), got -5"]
    # with a token budget, micro_batch_size does not divide the minibatch (it is not used)
    cfg = load_config(None, [*base, "optim.minibatch_size=7", "optim.max_tokens_per_micro_batch=4096"])
    assert cfg.optim.max_tokens_per_micro_batch == 4096
    with pytest.raises(ConfigError, match=r"minibatch_size \(7\) must be a multiple"):
        load_config(None, [*base, "optim.minibatch_size=7", "optim.max_tokens_per_micro_batch=0"])
