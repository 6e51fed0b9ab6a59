"""``turnrl/StockExplanation-v0``: explain and predict a stock's next move, reflect when
wrong (SEP's loop, as an environment).

One episode is one stock on one day. The observation holds the last trading days' prices
and the posts of the days before; the reply is::

    Price Movement: Positive
    Explanation: <why>

A right first answer earns 1 and ends the episode (``won``). A wrong one is answered with
the actual move and a request to reflect (diagnose the miss, then answer again), up to
``max_attempts`` answers; a later right answer earns ``attempt_discount ** (attempt - 1)``.
Each (wrong, corrected) reply pair is kept in :attr:`StockExplanationEnv.reflection_pairs`
(and appended to ``pairs_path`` as JSONL) to train a pairwise reward model, as SEP does.

With ``summarize=True`` the first turn asks for a one-line summary per day of the posts,
and the prediction turn shows the prices and the agent's own summaries instead of the
posts (SEP's summarise -> explain chain as one episode).
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from turnrl.envs.base import InvalidAction, TextEnv
from turnrl.envs.stock.data import MarketConfig, StockDay, StockNetData, SyntheticMarket

__all__ = ["StockExplanationEnv", "parse_prediction", "matthews_corrcoef", "SPLITS"]

#: ``split`` values: a part of every ticker's days, or the part chosen by the reset seed.
SPLITS = ("train", "test", "all", "by_seed")

_MOVE = re.compile(r"price\s*movement\s*[:\-]\s*\**\s*(positive|negative)\b", re.IGNORECASE)
_EXPLANATION = re.compile(r"explanation\s*[:\-]\s*(.+)", re.IGNORECASE | re.DOTALL)

#: Scorer of an explanation: (the StockDay, the whole reply) -> a score in [0, 1].
ExplanationScorer = Callable[[StockDay, str], float]


def parse_prediction(reply: str, *, require_explanation: bool = True) -> tuple[str, str]:
    """``(movement, explanation)`` from a reply in SEP's format.

    Raises:
        InvalidAction: no ``Price Movement: Positive|Negative`` line, two different
            movements, or (when required) no explanation.
    """
    moves = {m.capitalize() for m in _MOVE.findall(reply)}
    if not moves:
        raise InvalidAction("Answer in this format:\nPrice Movement: Positive (or Negative)\n"
                            "Explanation: <your reasoning>")
    if len(moves) > 1:
        raise InvalidAction("Give one prediction: 'Price Movement: Positive' or "
                            "'Price Movement: Negative', not both.")
    match = _EXPLANATION.search(reply)
    explanation = match.group(1).strip() if match else ""
    if require_explanation and len(explanation) < 3:
        raise InvalidAction("Add your reasoning on a line starting 'Explanation:'.")
    return moves.pop(), explanation


def matthews_corrcoef(predictions: list[str], labels: list[str]) -> float:
    """MCC of Positive/Negative predictions (0 when undefined, e.g. a constant predictor)."""
    p = np.array([x == "Positive" for x in predictions])
    y = np.array([x == "Positive" for x in labels])
    tp, tn = float(np.sum(p & y)), float(np.sum(~p & ~y))
    fp, fn = float(np.sum(p & ~y)), float(np.sum(~p & y))
    denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / denom) if denom else 0.0


@lru_cache(maxsize=8)
def _market(seed: int, settings: tuple) -> SyntheticMarket:
    return SyntheticMarket(MarketConfig(**dict(settings)), seed=seed)


@lru_cache(maxsize=4)
def _stocknet(root: str, tickers: tuple | None, price_days: int, text_days: int,
              thresholds: bool) -> tuple[StockNetData, dict[str, list[StockDay]]]:
    data = StockNetData(root, tickers)
    return data, data.samples(price_days=price_days, text_days=text_days,
                              stocknet_thresholds=thresholds)


class StockExplanationEnv(TextEnv):
    """Args:
        data: ``"synthetic"`` (default) or the path of a StockNet-layout dataset.
        market: synthetic-market settings (:class:`~turnrl.envs.stock.data.MarketConfig`
            fields: ``tickers``, ``noise``, ``misleading_share``, ``posts_per_event``,
            ``chatter_per_day``, ``event_rate``, ...).
        market_seed: seed of the synthetic market (the seed of ``reset`` picks the day).
        tickers: StockNet tickers to use (default: all).
        split: ``train`` (each ticker's first 80% of days), ``test`` (the rest), ``all``, or
            ``by_seed``: reset seeds below ``test_seed_start`` play train days, seeds from it
            on play test days (``seed - test_seed_start`` indexes them), so one env serves a
            training run's train seeds and its held-out eval seeds.
        test_seed_start: the first test seed of ``split="by_seed"``.
        price_days: trading days of prices shown; text_days: calendar days of posts shown
            (SEP: 5).
        stocknet_thresholds: label with StockNet's thresholds and drop the days between.
        max_attempts: answers allowed (SEP: 1 + 2 reflections).
        attempt_discount: reward of a right answer at attempt k is ``discount ** (k - 1)``.
        summarize: first turn summarises the posts; the prediction reads the summaries.
        explanation_scorer: a callable ``(StockDay, reply) -> [0, 1]`` or ``"module:fn"``;
            its score times ``explanation_weight`` is added on every prediction turn.
        pairs_path: append (wrong, corrected) reply pairs here as JSONL.
        require_explanation: a prediction without ``Explanation:`` is a format error.
        max_posts_per_day: posts shown per day (the rest are counted, not shown).
        instructions: replaces the system prompt (``""``: none, e.g. for a model trained
            from scratch on this env alone).
    """

    instructions = (
        "You are a financial analyst. You get a stock's recent prices and the posts about "
        "it from the days before the target day. Predict whether the stock's price rises "
        "(Positive) or falls (Negative) on the target day, and explain why from the "
        "evidence. Answer exactly in this format:\n"
        "Price Movement: Positive\n"
        "Explanation: Earnings beat estimates and two analysts upgraded the stock; the "
        "negative posts are unsupported chatter.\n"
        "If your prediction is wrong you will be told the actual move: reflect on what you "
        "missed, then answer again in the same format."
    )

    def __init__(self, *, data: str = "synthetic", market: dict[str, Any] | None = None,
                 market_seed: int = 0, tickers: list[str] | None = None, split: str = "train",
                 test_seed_start: int = 100_000,
                 price_days: int = 5, text_days: int = 5, stocknet_thresholds: bool = False,
                 max_attempts: int = 3, attempt_discount: float = 0.5, summarize: bool = False,
                 explanation_scorer: ExplanationScorer | str | None = None,
                 explanation_weight: float = 0.0, pairs_path: str | None = None,
                 require_explanation: bool = True, max_posts_per_day: int = 12,
                 invalid_penalty: float = 0.0, instructions: str | None = None,
                 render_mode: str | None = None) -> None:
        errors = []
        if split not in SPLITS:
            errors.append(f"split must be one of {', '.join(map(repr, SPLITS))}, got {split!r}")
        if test_seed_start < 1:
            errors.append(f"test_seed_start must be >= 1, got {test_seed_start}")
        if max_attempts < 1:
            errors.append(f"max_attempts must be >= 1, got {max_attempts}")
        if not 0 <= attempt_discount <= 1:
            errors.append(f"attempt_discount must be in [0, 1], got {attempt_discount}")
        if price_days < 1 or text_days < 1:
            errors.append(f"price_days and text_days must be >= 1, got {price_days}, {text_days}")
        if explanation_weight and explanation_scorer is None:
            errors.append("explanation_weight is set but explanation_scorer is None")
        if errors:
            raise ValueError("; ".join(errors))
        # turns: [summary] + answers, each answer may be preceded by format errors
        super().__init__(max_turns=int(summarize) + 3 * max_attempts, invalid_penalty=invalid_penalty,
                         instructions=instructions, render_mode=render_mode)
        self.split, self.price_days, self.text_days = split, price_days, text_days
        self.max_attempts, self.attempt_discount = max_attempts, float(attempt_discount)
        self.summarize, self.require_explanation = summarize, require_explanation
        self.max_posts_per_day = max_posts_per_day
        self.explanation_weight = float(explanation_weight)
        self.scorer = _load_scorer(explanation_scorer)
        self.pairs_path = Path(pairs_path) if pairs_path else None
        self.reflection_pairs: list[dict[str, Any]] = []
        self.synthetic = data == "synthetic"
        if self.synthetic:
            self.market = _market(int(market_seed), tuple(sorted((market or {}).items())))
            refs = self.market.days(stocknet_thresholds)
            by_ticker: dict[int, list] = {}
            for t, i in refs:
                by_ticker.setdefault(t, []).append((t, i))
        else:
            if market:
                raise ValueError("market settings apply to the synthetic data only")
            _, days = _stocknet(str(data), tuple(tickers) if tickers else None, price_days,
                                text_days, stocknet_thresholds)
            by_ticker = {k: list(v) for k, v in days.items()}
        self.stocknet_thresholds = stocknet_thresholds
        self._refs = _split(by_ticker, "train" if split == "by_seed" else split)
        self._test_refs = _split(by_ticker, "test") if split == "by_seed" else []
        self.test_seed_start = int(test_seed_start)
        if not self._refs or (split == "by_seed" and not self._test_refs):
            raise ValueError(f"no usable days in split {split!r} of {data!r}")
        labels = [self._label(r) for r in _split(by_ticker, "train")] or ["Positive"]
        #: The train split's majority label (the majority baseline answers it).
        self.majority_label = max(("Positive", "Negative"), key=labels.count)
        self._order = np.random.default_rng(int(market_seed)).permutation(len(self._refs))
        self._test_order = np.random.default_rng(int(market_seed)).permutation(len(self._test_refs))

    # ------------------------------------------------------------------ episode
    @property
    def num_days(self) -> int:
        """Days in the split (``by_seed``: the train days); reset seeds index them (modulo
        this number)."""
        return len(self._refs)

    @property
    def num_test_days(self) -> int:
        """``split="by_seed"``: the test days, played by seeds ``test_seed_start + k``."""
        return len(self._test_refs)

    def _ref_for(self, seed: int) -> Any:
        if self.split == "by_seed" and seed >= self.test_seed_start:
            k = (seed - self.test_seed_start) % len(self._test_refs)
            return self._test_refs[int(self._test_order[k])]
        return self._refs[int(self._order[seed % len(self._refs)])]

    def _label(self, ref: Any) -> str:
        if isinstance(ref, StockDay):
            return ref.label
        return "Positive" if self.market.returns[ref[0], ref[1]] > 0 else "Negative"

    def _day(self, ref: Any) -> StockDay:
        if isinstance(ref, StockDay):
            return ref
        t, i = ref
        return self.market.sample(t, i, price_days=self.price_days, text_days=self.text_days,
                                  stocknet_thresholds=self.stocknet_thresholds)

    def _reset_episode(self, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        self.day = self._day(self._ref_for(self.episode_seed))
        self.attempt = 0
        self.history: list[tuple[str, str]] = []  # (movement, reply) of each answer
        self.summarized = not self.summarize
        self.summary = ""
        task = f"Predict the price movement of ${self.day.ticker} on {self.day.date}."
        if self.summarize:
            obs = (f"{task}\n\n{self._posts_text()}\n\nFirst summarise the posts of each day in "
                   "one line, as 'YYYY-MM-DD: summary' (write 'no posts' for an empty day).")
        else:
            obs = f"{task}\n\n{self._prices_text()}\n\n{self._posts_text()}"
        return obs, self._info({"task": task})

    def parse_action(self, reply: str) -> str:
        if not self.summarized:
            lines = [ln for ln in reply.splitlines() if re.match(r"\s*\d{4}-\d{2}-\d{2}\s*:", ln)]
            if not lines:
                raise InvalidAction("Summarise each day on its own line, as 'YYYY-MM-DD: summary'.")
            return "SUMMARY\n" + "\n".join(ln.strip() for ln in lines)
        move, _ = parse_prediction(reply, require_explanation=self.require_explanation)
        return f"{move}\n{reply}"  # the reply rides along: pairs and scorers need it

    def _step_action(self, command: str) -> tuple[str, float, bool, dict[str, Any]]:
        if command.startswith("SUMMARY\n"):
            self.summarized = True
            self.summary = command.split("\n", 1)[1]
            obs = (f"{self._prices_text()}\n\nYour summaries:\n{self.summary}\n\nNow predict "
                   "the price movement and explain it, in the answer format.")
            return obs, 0.0, False, self._info({})
        command, reply = command.split("\n", 1)
        self.attempt += 1
        self.history.append((command, reply))
        correct = command == self.day.label
        reward = self.explanation_weight * float(self.scorer(self.day, reply)) if self.scorer else 0.0
        info: dict[str, Any] = {}
        if correct:
            reward += self.attempt_discount ** (self.attempt - 1)
            self._record_pairs(reply)
            obs = f"Correct: the price moved {self.day.label} ({self.day.ret:+.2%})."
            return obs, reward, True, self._info(info, done=True)
        if self.attempt >= self.max_attempts:
            obs = (f"Wrong: the price moved {self.day.label} ({self.day.ret:+.2%}). No attempts "
                   "left.")
            return obs, reward, True, self._info(info, done=True)
        obs = (f"Wrong: the price moved {self.day.label} ({self.day.ret:+.2%}), not "
               f"{command}. Reflect: which evidence did you over- or under-weight, which posts "
               "were misleading, and what will you weigh differently? Then answer again in "
               f"the answer format ({self.max_attempts - self.attempt} attempt(s) left).")
        return obs, reward, False, self._info(info)

    def _record_pairs(self, chosen: str) -> None:
        for _, rejected in self.history[:-1]:
            pair = {"ticker": self.day.ticker, "date": self.day.date, "label": self.day.label,
                    "prompt": self._prices_text() + "\n\n" + self._posts_text(),
                    "chosen": chosen, "rejected": rejected}
            self.reflection_pairs.append(pair)
            if self.pairs_path is not None:
                self.pairs_path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.pairs_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(pair) + "\n")

    def _info(self, info: dict[str, Any], *, done: bool = False) -> dict[str, Any]:
        first = self.history[0][0] if self.history else None
        info["won"] = bool(first == self.day.label)
        info["metrics"] = {
            "attempts": float(self.attempt),
            "first_correct": float(first == self.day.label) if first else 0.0,
            "final_correct": float(bool(self.history) and self.history[-1][0] == self.day.label),
        }
        info["label"] = self.day.label if done else None
        info["first_prediction"] = first
        info["majority_label"] = self.majority_label
        if self.day.latent is not None:
            info["latent"] = self.day.latent
        info["expert_action"] = self._oracle() if self.summarized else self._expert_summary()
        return info

    def _oracle(self) -> str | None:
        """Synthetic data only: the answer from the latent events (an upper bound, not the
        label: noise and the market still move the price)."""
        latent = self.day.latent
        if latent is None:
            return None
        if self.history and self.history[-1][0] != self.day.label:
            move = self.day.label  # after a miss the move is known
        else:
            move = "Positive" if latent["expected_return"] > 0 else "Negative"
        events = ", ".join(f"{kind.replace('_', ' ')} on {date}" for date, kind in latent["events"])
        why = (f"the posts report {events}" if events else
               "no company news in the posts, so the move follows the market and noise")
        return f"Price Movement: {move}\nExplanation: {why}."

    def _expert_summary(self) -> str:
        lines = []
        for date, posts in self.day.texts:
            lines.append(f"{date}: " + ("; ".join(posts[:3]) if posts else "no posts"))
        return "\n".join(lines)

    # ------------------------------------------------------------------ text
    def _prices_text(self) -> str:
        rows = ["date        close    return"]
        for date, _o, _h, _l, close, ret in self.day.prices[-self.price_days:]:
            rows.append(f"{date}  {close:>7.2f}  {ret:+.2%}")
        return f"Prices of ${self.day.ticker} (last {len(rows) - 1} trading days):\n" + "\n".join(rows)

    def _posts_text(self) -> str:
        lines = [f"Posts about ${self.day.ticker}:"]
        for date, posts in self.day.texts:
            if not posts:
                lines.append(f"{date}: no posts")
                continue
            shown = posts[: self.max_posts_per_day]
            more = f" (+{len(posts) - len(shown)} more)" if len(posts) > len(shown) else ""
            lines.append(f"{date}{more}:")
            lines.extend(f"- {p}" for p in shown)
        return "\n".join(lines)


def _split(by_ticker: dict[Any, list], split: str) -> list:
    out = []
    for key in sorted(by_ticker, key=str):
        days = by_ticker[key]
        cut = int(round(0.8 * len(days)))
        out.extend(days if split == "all" else days[:cut] if split == "train" else days[cut:])
    return out


def _load_scorer(scorer: ExplanationScorer | str | None) -> ExplanationScorer | None:
    if scorer is None or callable(scorer):
        return scorer
    module, _, name = str(scorer).partition(":")
    if not name:
        raise ValueError(f"explanation_scorer must be a callable or 'module:function', got {scorer!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load explanation_scorer {scorer!r}: {exc}") from None
