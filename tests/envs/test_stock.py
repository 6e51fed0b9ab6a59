"""Stock-movement explanation: reflection loop, data (synthetic and StockNet layout),
baselines."""

from __future__ import annotations

import json

import pytest

import turnrl
from turnrl.agents import make_agent
from turnrl.envs.stock.data import MarketConfig, SyntheticMarket, label_of
from turnrl.envs.stock.env import matthews_corrcoef, parse_prediction
from turnrl.errors import ConfigError


def _answer(move: str, why: str = "the posts say so") -> str:
    return f"Price Movement: {move}\nExplanation: {why}"


def _other(move: str) -> str:
    return "Negative" if move == "Positive" else "Positive"


def test_reflection_loop_discounts_a_later_right_answer(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    env = turnrl.make("turnrl/StockExplanation-v0", attempt_discount=0.5, pairs_path=str(pairs))
    obs, info = env.reset(seed=3)
    label = env.unwrapped.day.label
    wrong = _answer(_other(label), "misread the chatter")
    obs, reward, terminated, truncated, info = env.step(wrong)
    assert (reward, terminated) == (0.0, False)
    assert f"the price moved {label}" in obs and "Reflect" in obs and "2 attempt(s) left" in obs
    right = _answer(label, "the guidance cut outweighs the chatter")
    obs, reward, terminated, truncated, info = env.step(right)
    assert reward == pytest.approx(0.5) and terminated and obs.startswith("Correct")
    assert info["metrics"] == {"attempts": 2.0, "first_correct": 0.0, "final_correct": 1.0}
    assert info["won"] is False and info["first_prediction"] == _other(label)
    # the (wrong, corrected) pair is kept for a pairwise reward model
    (pair,) = env.unwrapped.reflection_pairs
    assert (pair["chosen"], pair["rejected"], pair["label"]) == (right, wrong, label)
    assert json.loads(pairs.read_text()) == pair


def test_right_first_answer_wins_and_attempts_run_out():
    env = turnrl.make("turnrl/StockExplanation-v0", max_attempts=2)
    obs, info = env.reset(seed=5)
    label = env.unwrapped.day.label
    _, reward, terminated, _, info = env.step(_answer(label))
    assert (reward, terminated, info["won"]) == (1.0, True, True)
    env.reset(seed=5)
    env.step(_answer(_other(label)))
    obs, reward, terminated, _, info = env.step(_answer(_other(label)))
    assert (reward, terminated, info["metrics"]["attempts"]) == (0.0, True, 2.0)
    assert "No attempts left" in obs and not env.unwrapped.reflection_pairs


def test_format_errors_get_feedback_and_cost_no_attempt():
    env = turnrl.make("turnrl/StockExplanation-v0")
    env.reset(seed=1)
    obs, reward, terminated, _, info = env.step("It will go up.")
    assert info["invalid_action"] and "Price Movement: Positive" in obs and not terminated
    obs, *_ , info = env.step("Price Movement: Positive\nPrice Movement: Negative\nExplanation: hedge")
    assert info["invalid_action"] and "not both" in obs
    obs, *_ , info = env.step("Price Movement: Positive")
    assert info["invalid_action"] and "Explanation:" in obs
    assert info["metrics"]["attempts"] == 0.0
    assert parse_prediction("**Price Movement:** negative\nExplanation: weak guidance")[0] == "Negative"


def test_explanation_scorer_is_added_by_weight():
    def scorer(day, reply):
        return 1.0 if "guidance" in reply else 0.0

    env = turnrl.make("turnrl/StockExplanation-v0", explanation_scorer=scorer, explanation_weight=0.25)
    env.reset(seed=2)
    label = env.unwrapped.day.label
    _, reward, *_ = env.step(_answer(label, "guidance was raised"))
    assert reward == pytest.approx(1.25)
    env = turnrl.make("turnrl/StockExplanation-v0", explanation_scorer="math:fabs",
                      explanation_weight=0.1)
    assert env.unwrapped.scorer is __import__("math").fabs
    with pytest.raises(ValueError, match="cannot load explanation_scorer"):
        turnrl.make("turnrl/StockExplanation-v0", explanation_scorer="nope.mod:f", explanation_weight=1)


def test_summarize_then_explain_is_one_episode():
    env = turnrl.make("turnrl/StockExplanation-v0", summarize=True)
    obs, info = env.reset(seed=4)
    assert "First summarise" in obs and "Prices of" not in obs
    obs, reward, terminated, _, info = env.step("no summary here")
    assert info["invalid_action"]
    obs, reward, terminated, _, info = env.step(info["expert_action"])
    assert (reward, terminated) == (0.0, False)
    assert "Your summaries:" in obs and "Prices of" in obs and "Posts about" not in obs
    label = env.unwrapped.day.label
    _, reward, terminated, _, info = env.step(_answer(label))
    assert reward == 1.0 and terminated and info["won"]


def test_synthetic_market_is_seeded_and_split_chronologically():
    a, b = SyntheticMarket(seed=1), SyntheticMarket(seed=1)
    assert (a.returns == b.returns).all() and a.posts(0, "2014-03-04") == b.posts(0, "2014-03-04")
    assert not (SyntheticMarket(seed=2).returns == a.returns).all()
    train = turnrl.make("turnrl/StockExplanation-v0", split="train").unwrapped
    test = turnrl.make("turnrl/StockExplanation-v0", split="test").unwrapped
    last_train = {}
    for t, i in train._refs:
        last_train[t] = max(last_train.get(t, 0), i)
    assert all(i > last_train[t] for t, i in test._refs)  # test days come after, per ticker
    n = train.num_days + test.num_days
    assert test.num_days == pytest.approx(0.2 * n, rel=0.02)
    with pytest.raises(ConfigError, match="misleading_share must be in"):
        SyntheticMarket(MarketConfig(misleading_share=2.0))


def test_by_seed_split_plays_train_days_below_the_test_seeds_and_test_days_from_them():
    env = turnrl.make("turnrl/StockExplanation-v0", split="by_seed", test_seed_start=1000)
    train = turnrl.make("turnrl/StockExplanation-v0", split="train")
    test = turnrl.make("turnrl/StockExplanation-v0", split="test")
    assert (env.unwrapped.num_days, env.unwrapped.num_test_days) == (train.unwrapped.num_days,
                                                                     test.unwrapped.num_days)
    for seed in (0, 7, 999):  # train seeds: the train split's days, in its order
        assert env.reset(seed=seed)[0] == train.reset(seed=seed)[0]
    for k in (0, 5, test.unwrapped.num_days + 3):  # test seeds: seed k of the test split
        assert env.reset(seed=1000 + k)[0] == test.reset(seed=k)[0]
    assert turnrl.make("turnrl/StockExplanation-v0", instructions="").unwrapped.instructions == ""
    with pytest.raises(ValueError, match="split must be one of"):
        turnrl.make("turnrl/StockExplanation-v0", split="validation")
    with pytest.raises(ValueError, match="test_seed_start must be >= 1"):
        turnrl.make("turnrl/StockExplanation-v0", split="by_seed", test_seed_start=0)


def test_labels_follow_sep_and_stocknet_thresholds():
    assert label_of(0.0001) == "Positive" and label_of(0.0) == "Negative"
    assert label_of(0.004, stocknet_thresholds=True) is None
    assert label_of(-0.005, stocknet_thresholds=True) == "Negative"
    assert label_of(0.0056, stocknet_thresholds=True) == "Positive"


def _write_stocknet(root):
    """Two tickers in the StockNet layout: prices newest first, tweets as JSON lines."""
    import datetime as dt

    rets = {"AAPL": [0.01, -0.02, 0.003, 0.02, -0.004, -0.01, 0.015, 0.007, -0.03, 0.012],
            "XOM": [-0.01, 0.006, 0.0, -0.02, 0.011, 0.004, -0.006, 0.02, 0.001, -0.015]}
    (root / "price" / "preprocessed").mkdir(parents=True)
    for ticker, values in rets.items():
        day, lines = dt.date(2015, 1, 5), []
        for r in values:
            while day.weekday() >= 5:
                day += dt.timedelta(1)
            lines.append(f"{day.isoformat()}\t{r:.6f}\t10.0\t10.5\t9.5\t10.2\t1000.0")
            day += dt.timedelta(1)
        (root / "price" / "preprocessed" / f"{ticker}.txt").write_text("\n".join(reversed(lines)) + "\n")
        tweets = root / "tweet" / "raw" / ticker
        tweets.mkdir(parents=True)
        for k in range(3, 20):
            d = (dt.date(2015, 1, 1) + dt.timedelta(k)).isoformat()
            post = {"text": f"${ticker} post on {d}", "id": k, "author_id": 7,
                    "created_at": f"{d}T12:00:00Z"}
            (tweets / d).write_text(json.dumps(post) + "\n")
    return rets


def test_stocknet_layout_loads_and_labels(tmp_path):
    rets = _write_stocknet(tmp_path)
    env = turnrl.make("turnrl/StockExplanation-v0", data=str(tmp_path), split="all", price_days=3)
    days = [env.unwrapped._refs[i] for i in range(env.unwrapped.num_days)]
    aapl = [d for d in days if d.ticker == "AAPL"]
    assert len(aapl) == 10 - 3  # the first 3 days only give history
    for d in aapl:
        i = [round(r, 6) for r in rets["AAPL"]].index(round(d.ret, 6))
        assert d.label == ("Positive" if rets["AAPL"][i] > 0 else "Negative")
        assert all(p[0] < d.date for p in d.prices) and len(d.prices) == 3
        assert [t[0] for t in d.texts][-1] < d.date and len(d.texts) == 5  # 5 calendar days before
        assert all(post.startswith("$AAPL post on") for _, posts in d.texts for post in posts)
    obs, info = env.reset(seed=0)
    assert "Prices of $" in obs and "post on" in obs and "latent" not in info
    strict = turnrl.make("turnrl/StockExplanation-v0", data=str(tmp_path), split="all",
                         price_days=3, stocknet_thresholds=True).unwrapped
    kept = [d.ret for d in strict._refs]
    assert kept and all(r <= -0.005 or r > 0.0055 for r in kept)
    train = turnrl.make("turnrl/StockExplanation-v0", data=str(tmp_path), price_days=3).unwrapped
    assert [d.date for d in train._refs if d.ticker == "AAPL"] == [d.date for d in aapl][:6]
    with pytest.raises(ConfigError, match="not a StockNet root"):
        turnrl.make("turnrl/StockExplanation-v0", data=str(tmp_path / "nope"))


def test_baselines_order_majority_lexicon_oracle():
    """Over 600 eval days: majority < lexicon < oracle on accuracy and MCC."""
    env = turnrl.make("turnrl/StockExplanation-v0", split="test")
    scores = {}
    for name in ("stock_majority", "stock_lexicon", "expert"):
        agent = make_agent(name)
        preds, labels = [], []
        for seed in range(100_000, 100_600):
            obs, info = env.reset(seed=seed)
            messages = [{"role": "user", "content": obs}]
            env.step(agent.act([messages], [info])[0].text)
            preds.append(env.unwrapped.history[0][0])
            labels.append(env.unwrapped.day.label)
        accuracy = sum(p == y for p, y in zip(preds, labels, strict=True)) / len(labels)
        scores[name] = (accuracy, matthews_corrcoef(preds, labels))
    (acc_m, mcc_m), (acc_l, mcc_l), (acc_o, mcc_o) = scores.values()
    assert acc_m < acc_l < acc_o and mcc_m < mcc_l < mcc_o, scores
    assert acc_o < 0.95  # noise and the market keep even the oracle from certainty
