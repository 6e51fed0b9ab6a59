"""Importance-sampling masks (rollout engine vs trainer): which tokens and samples are left
out, worked by hand; and that what is left out counts nowhere -- not in the loss, not in
its normaliser -- and is logged."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from turnrl.errors import ConfigError  # noqa: E402
from turnrl.trainer import load_config  # noqa: E402
from turnrl.trainer.distributed import Distributed  # noqa: E402
from turnrl.trainer.estimators import TurnAdvantages  # noqa: E402
from turnrl.trainer.learner import BatchSettings, Learner, LossSettings  # noqa: E402
from turnrl.trainer.losses import aggregate, importance_mask  # noqa: E402
from turnrl.trajectory import Sample  # noqa: E402

LN = math.log
NAN = float("nan")


def _mask(log_ratios: list[list[float]], mask: list[list[int]], **kwargs: Any) -> list[list[float]]:
    """importance_mask of rows given as trainer - rollout log-ratios (rollout logprobs 0)."""
    trainer = torch.tensor(log_ratios)
    return importance_mask(trainer, torch.zeros_like(trainer), torch.tensor(mask, dtype=torch.float),
                           **kwargs).tolist()


def test_token_level_by_hand():
    # band [0.5, 2]: ratios 3 (out), 0.4 (out), 1 (in), 1.5 (in), 0.6 (in), 2 and 0.5
    # (the bounds: in); the last column is off the loss mask, huge or NaN there: ignored
    ratios = [[3.0, 0.4, 1.0, 1.5, 1e30], [0.6, 2.0, 0.5, 2.01, NAN]]
    mask = [[1, 1, 1, 1, 0], [1, 1, 1, 1, 0]]
    log_ratios = [[LN(r) if r == r else r for r in row] for row in ratios]
    assert _mask(log_ratios, mask, level="token") == [[0, 0, 1, 1, 0], [1, 1, 1, 0, 0]]
    # a NaN on a counted token is outside every band
    assert _mask([[NAN, 0.0]], [[1, 1]], level="token") == [[0, 1]]
    # none: the loss mask as it is
    assert _mask(log_ratios, mask, level="none") == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 0]]


def test_sequence_level_product_and_geometric_by_hand():
    # row 0: ratios 1.5, 1.5 -> product 2.25 (> 2: dropped), geometric mean 1.5 (kept)
    # row 1: ratios 3, 1/3   -> product 1 and geometric 1: kept whole, although token
    #        masking would drop both of its tokens
    # row 2: ratios 0.9 x 3  -> product 0.729, geometric 0.9: kept in [0.5, 2]; with the
    #        band [0.95, 1.05] the geometric mean is out: dropped
    # row 3: one NaN among its tokens: dropped whole; padding (mask 0) never counts
    log_ratios = [[LN(1.5), LN(1.5), 0.0], [LN(3), -LN(3), 7.0], [LN(0.9)] * 3, [0.0, NAN, 0.0]]
    mask = [[1, 1, 0], [1, 1, 0], [1, 1, 1], [1, 1, 1]]
    assert _mask(log_ratios, mask, level="sequence", mode="product") == [
        [0, 0, 0], [1, 1, 0], [1, 1, 1], [0, 0, 0]]
    assert _mask(log_ratios, mask, level="sequence", mode="geometric") == [
        [1, 1, 0], [1, 1, 0], [1, 1, 1], [0, 0, 0]]
    assert _mask(log_ratios, mask, level="sequence", mode="geometric", low=0.95, high=1.05) == [
        [0, 0, 0], [1, 1, 0], [0, 0, 0], [0, 0, 0]]
    assert _mask(log_ratios, mask, level="token") == [[1, 1, 0], [0, 0, 0], [1, 1, 1], [1, 0, 1]]
    # low = 0: no lower bound
    assert _mask([[LN(1e-9)]], [[1]], level="token", low=0.0) == [[1]]


def test_bad_settings_are_named():
    for kwargs, match in (({"level": "tokens"}, "level must be one of"),
                          ({"level": "token", "mode": "mean"}, "mode must be one of"),
                          ({"level": "token", "low": 1.2, "high": 2.0}, "0 <= low < 1 < high")):
        with pytest.raises(ValueError, match=match):
            _mask([[0.0]], [[1]], **kwargs)
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["model.name_or_path=x", "env.id=turnrl/TextWorld-v0",
                           "algorithm.is_mask=seq", "algorithm.is_mask_mode=mean",
                           "algorithm.is_mask_low=1", "algorithm.is_mask_high=0.9"])
    msg = str(exc.value)
    assert "algorithm.is_mask must be one of none, token, sequence, got 'seq'" in msg
    assert "algorithm.is_mask_mode must be one of product, geometric, got 'mean'" in msg
    assert "is_mask_low and is_mask_high must satisfy 0 <= low < 1 < high" in msg


def test_the_token_mean_divides_by_the_kept_tokens():
    # loss 1 2 3 4 on one row, token 2 dropped: token-mean = (1 + 3 + 4) / 3 = 8/3, not /4
    loss = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 0.0, 0.0]])
    keep = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    assert aggregate(loss, keep).item() == pytest.approx(8 / 3)
    # seq-mean-token-mean: row 0's mean 8/3; row 1 has no kept token: out of the row count
    assert aggregate(loss, keep, "seq-mean-token-mean").item() == pytest.approx(8 / 3)


# ------------------------------------------------------------------ through the learner
class TableLM(torch.nn.Module):
    """Next-token logits from the current token only (a learnt table): a tiny causal LM."""

    def __init__(self, vocab: int = 8) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(0)))

    def forward(self, input_ids: torch.Tensor, attention_mask: Any = None, **_: Any) -> Any:
        return SimpleNamespace(logits=self.table[input_ids])


def _samples(loss_masks: list[list[int]]) -> list[Sample]:
    """One-turn samples: token 0 is the prompt, then the action's tokens."""
    out = []
    for i, mask in enumerate(loss_masks):
        ids = [(3 * i + j) % 8 for j in range(len(mask))]
        out.append(Sample(ids, list(mask), [0 if m else -1 for m in mask], [0.0] * len(mask),
                          value_turns=[0, 1], value_positions=[0, len(mask) - 1], trajectory=i))
    return out


def _learner(agg: str, micro: int, **losses: Any) -> Learner:
    model = TableLM()
    return Learner(model, torch.optim.SGD(model.parameters(), lr=0.1), critic=None,
                   critic_optimizer=None, reference=None, reference_is_base=False,
                   dist=Distributed(None), pad_id=0, temperature=1.0,
                   losses=LossSettings(loss_agg=agg, entropy_coef=0.01, **losses),
                   batches=BatchSettings(epochs=1, minibatch_size=4, micro_batch_size=micro,
                                         max_grad_norm=1e9))


# Four samples (prompt token, then 4, 3, 4 and 4 action tokens: 15 in all) and, per token,
# the log-ratio trainer - rollout the test sets (0: the engines agree).
MASKS = [[0, 1, 1, 1, 1], [0, 1, 1, 1, 0], [0, 1, 1, 1, 1], [0, 1, 1, 1, 1]]
OFFSETS = [[0, 0.0, LN(3), 0.0, 0.0], [0, LN(1.5), LN(1.5), 0.0, 0], [0, LN(3), 0.0, LN(0.25), 0.0],
           [0, 0.0, 0.1, -0.1, 0.0]]
# The (sample, position) pairs dropped with the band [0.5, 2]:
# token: ratios 3 (0, 2), 3 (2, 1) and 0.25 (2, 3); the rest are 1, 1.5, e^+-0.1: kept.
# sequence (product): sample 0's ratio is 3 and sample 1's 1.5 x 1.5 = 2.25: both dropped
# whole; sample 2's 3 x 0.25 = 0.75 and sample 3's e^0.1 x e^-0.1 = 1 are kept whole.
EXPECTED = {"token": [(0, 2), (2, 1), (2, 3)],
            "sequence": [(0, 1), (0, 2), (0, 3), (0, 4), (1, 1), (1, 2), (1, 3)]}


def _batch() -> tuple[list[Sample], TurnAdvantages]:
    samples = _samples(MASKS)
    adv = TurnAdvantages(advantages=torch.tensor([[1.0], [-0.5], [2.0], [-1.0]]),
                         returns=torch.zeros(4, 1), values=torch.zeros(4, 2),
                         turn_mask=torch.ones(4, 1), num_turns=[1] * 4)
    return samples, adv


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_masked_tokens_count_nowhere_and_the_fraction_is_logged(agg, level):
    """An update with the mask equals an update without it on samples whose loss mask
    already leaves those tokens out (loss, normaliser, entropy: same weights after the
    step), and micro-batches add up to the same; ``is_masked_frac`` is the share of action
    tokens dropped."""
    samples, adv = _batch()
    masked = _learner(agg, micro=1, is_mask=level)
    scored = masked.score(samples)
    for s, old, offsets in zip(samples, scored.old_logp, OFFSETS, strict=True):
        s.rollout_logprobs = [float(o) - d if m else 0.0
                              for o, d, m in zip(old.tolist(), offsets, s.loss_mask, strict=True)]
    scored = masked.score(samples)
    stats = masked.update(samples, scored, adv)
    assert stats["is_masked_frac"] == pytest.approx(len(EXPECTED[level]) / 15)

    pruned, _ = _batch()
    for i, t in EXPECTED[level]:
        pruned[i].loss_mask[t] = 0
    plain = _learner(agg, micro=4)
    plain_stats = plain.update(pruned, plain.score(pruned), adv)
    assert "is_masked_frac" not in plain_stats
    assert torch.allclose(masked.model.table, plain.model.table, atol=1e-6)
    assert stats["policy_loss"] == pytest.approx(plain_stats["policy_loss"], abs=1e-6)
    assert not torch.equal(plain.model.table, TableLM().table)  # the step did move it
