"""Market data for the stock-movement env: a seeded synthetic market, or the StockNet
(ACL18) dataset layout on disk.

Both give :class:`StockDay` samples: one ticker on one target day, with the price rows of
the trading days before it, the texts of the calendar days before it, and the label
(``Positive`` if the day's return > 0, else ``Negative``; optionally StockNet's
thresholds: <= -0.5% Negative, > 0.55% Positive, days in between dropped). Splits are
chronological per ticker: the first 80% of a ticker's days train, the rest test.

The synthetic market is **synthetic**: companies, events and posts are generated, not
real. Latent company events (earnings beat/miss, guidance raise/cut, product launch,
lawsuit, analyst up/downgrade) and market-wide macro shocks move the next trading day's
return, together with a market factor and noise; each event is talked about in posts
with varied wording, among irrelevant chatter and a share of misleading posts.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from turnrl.errors import ConfigError

__all__ = ["StockDay", "SyntheticMarket", "StockNetData", "label_of", "LEXICON_POS", "LEXICON_NEG"]

#: StockNet's movement thresholds (fractions): <= DOWN is Negative, > UP is Positive.
STOCKNET_DOWN, STOCKNET_UP = -0.005, 0.0055


@dataclass(frozen=True)
class StockDay:
    """One sample: predict ``ticker``'s move on ``date``."""

    ticker: str
    date: str
    #: (date, open, high, low, close, return) of the trading days before ``date``, oldest first.
    prices: tuple[tuple[str, float, float, float, float, float], ...]
    #: (date, [texts]) of the calendar days before ``date``, oldest first.
    texts: tuple[tuple[str, tuple[str, ...]], ...]
    #: The day's return (fraction) and label.
    ret: float
    label: str
    #: Synthetic data only: the events behind the move and their expected return.
    latent: dict[str, Any] | None = field(default=None, compare=False)


def label_of(ret: float, stocknet_thresholds: bool = False) -> str | None:
    """``Positive``/``Negative`` (SEP: return > 0); with StockNet's thresholds, None for
    moves in (-0.5%, 0.55%]."""
    if stocknet_thresholds:
        if ret <= STOCKNET_DOWN:
            return "Negative"
        if ret > STOCKNET_UP:
            return "Positive"
        return None
    return "Positive" if ret > 0 else "Negative"


# ---------------------------------------------------------------------------- synthetic
LEXICON_POS = ("beat", "beats", "strong", "surge", "surges", "upgrade", "upgraded", "bullish",
               "growth", "record", "soars", "gain", "gains", "outperform", "rally", "boost",
               "profit", "wins", "approval", "raises", "love", "buy", "moon", "great")
LEXICON_NEG = ("miss", "misses", "weak", "plunge", "plunges", "downgrade", "downgraded",
               "bearish", "decline", "loss", "lawsuit", "cuts", "fall", "falls", "underperform",
               "drop", "probe", "recall", "warning", "slump", "sell", "dump", "terrible", "bad")

#: event -> (sign, mean impact on the next trading day's return, post templates)
EVENTS: dict[str, tuple[int, float, tuple[str, ...]]] = {
    "earnings_beat": (+1, 0.030, (
        "${t} beats estimates, Q{q} EPS {a} vs {b} expected",
        "Record quarter for {n}: revenue growth strong across segments ${t}",
        "Huge earnings beat from ${t}, margins up, bullish into next quarter",
        "{n} posts profit well above consensus ${t}")),
    "earnings_miss": (-1, -0.032, (
        "${t} misses estimates, Q{q} EPS {a} vs {b} expected",
        "{n} quarterly profit falls short, revenue decline in core unit ${t}",
        "Ugly quarter for ${t}: weak margins, earnings miss",
        "${t} reports loss as sales slump")),
    "guidance_raise": (+1, 0.020, (
        "{n} raises full-year guidance ${t}", "${t} boosts outlook on strong demand",
        "Guidance up at ${t}, management sees growth ahead")),
    "guidance_cut": (-1, -0.022, (
        "{n} cuts full-year guidance ${t}", "${t} issues profit warning, outlook lowered",
        "Guidance cut at ${t} as demand weakens")),
    "product_launch": (+1, 0.014, (
        "{n} unveils new {p}, early reviews great ${t}", "${t} launches {p}, preorders surge",
        "Big launch day for ${t}: the new {p} is out")),
    "lawsuit": (-1, -0.020, (
        "{n} hit with class-action lawsuit over {p} ${t}", "Regulators open probe into ${t}",
        "${t} faces lawsuit, recall of {p} possible")),
    "analyst_upgrade": (+1, 0.015, (
        "{bank} upgrades ${t} to buy, target {a}", "${t} upgraded at {bank}, sees outperform",
        "Analyst at {bank} turns bullish on ${t}")),
    "analyst_downgrade": (-1, -0.016, (
        "{bank} downgrades ${t} to sell, target {a}", "${t} downgraded at {bank} to underperform",
        "Analyst at {bank} turns bearish on ${t}")),
}
MACRO = (0.015, (
    ("Fed signals rate cut, futures rally", "Strong jobs report lifts markets, stocks gain"),
    ("Fed hints at faster hikes, futures drop", "Weak factory data, markets slump on growth fears"),
))
MISLEADING = {
    +1: ("${t} is a dump, get out before it falls", "Heard ${t} is about to plunge, sell now",
         "${t} looks terrible here, bearish"),
    -1: ("${t} to the moon, buy the dip", "Loading up on ${t}, this will surge",
         "${t} great buy right now, bullish"),
}
CHATTER = ("Anyone holding ${t} over the weekend?", "${t} trading sideways again",
           "What is everyone's price target on ${t}?", "Watching ${t} closely today",
           "{n} annual meeting is next month ${t}", "Volume on ${t} light this morning",
           "Great coffee, terrible traffic, back to watching ${t}",
           "Loss of signal on the train, missed the ${t} open",
           "Record heat today, markets quiet, ${t} flat", "Buy or sell ${t}? Honestly no idea")
BANKS = ("Morgan Stanley", "Goldman", "JPMorgan", "Barclays", "UBS", "Citi")
PRODUCTS = ("phone", "chip", "drug", "platform", "SUV", "console", "cloud service")


@dataclass(frozen=True)
class MarketConfig:
    """Knobs of the synthetic market."""

    tickers: int = 20
    start: str = "2014-01-02"
    end: str = "2015-12-31"
    #: Chance that a ticker has a company event on a trading day.
    event_rate: float = 0.35
    #: Chance of a market-wide macro shock on a trading day.
    macro_rate: float = 0.08
    #: Std of the idiosyncratic daily noise (fraction).
    noise: float = 0.012
    #: Exposure to the market factor.
    beta: float = 1.0
    #: Share of each event's posts that say the opposite.
    misleading_share: float = 0.25
    #: Posts per event, and chatter posts per ticker per calendar day (Poisson means).
    posts_per_event: float = 3.0
    chatter_per_day: float = 2.0

    def validate(self) -> None:
        errors = []
        if self.tickers < 1:
            errors.append(f"tickers must be >= 1, got {self.tickers}")
        for name in ("event_rate", "macro_rate", "misleading_share"):
            if not 0 <= getattr(self, name) <= 1:
                errors.append(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("noise", "posts_per_event", "chatter_per_day"):
            if getattr(self, name) < 0:
                errors.append(f"{name} must be >= 0, got {getattr(self, name)}")
        try:
            if dt.date.fromisoformat(self.start) >= dt.date.fromisoformat(self.end):
                errors.append(f"start {self.start} must be before end {self.end}")
        except ValueError as exc:
            errors.append(f"start/end must be YYYY-MM-DD: {exc}")
        if errors:
            raise ConfigError("synthetic market: " + "; ".join(errors))


def _rng(*key: Any) -> np.random.Generator:
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


class SyntheticMarket:
    """A seeded synthetic market; everything is a function of ``(seed, config)``.

    Returns and events are generated up front (cheap arrays); the posts of a (ticker, day)
    are generated on demand from a generator keyed on it, so any day is O(1) to read.
    """

    def __init__(self, config: MarketConfig | None = None, seed: int = 0) -> None:
        self.cfg = config or MarketConfig()
        self.cfg.validate()
        self.seed = seed
        rng = np.random.default_rng(seed)
        start, end = dt.date.fromisoformat(self.cfg.start), dt.date.fromisoformat(self.cfg.end)
        days = [start + dt.timedelta(i) for i in range((end - start).days + 1)]
        self.calendar = [d.isoformat() for d in days]
        self.trading = [d.isoformat() for d in days if d.weekday() < 5]
        self._trading_index = {d: i for i, d in enumerate(self.trading)}
        n_t, n_d = self.cfg.tickers, len(self.trading)
        self.tickers = self._names(rng, n_t)
        names = list(EVENTS)
        # events announced on trading day i move the return of day i + 1 (and 30% on i + 2)
        has_event = rng.random((n_t, n_d)) < self.cfg.event_rate
        kind = rng.integers(len(names), size=(n_t, n_d))
        scale = rng.uniform(0.6, 1.4, size=(n_t, n_d))
        self.events = [[names[kind[t, i]] if has_event[t, i] else None for i in range(n_d)]
                       for t in range(n_t)]
        impact = np.where(has_event, np.array([EVENTS[k][1] for k in names])[kind] * scale, 0.0)
        macro = np.where(rng.random(n_d) < self.cfg.macro_rate,
                         rng.choice([-1.0, 1.0], size=n_d) * MACRO[0] * rng.uniform(0.6, 1.4, n_d), 0.0)
        self.macro = macro
        market = np.zeros(n_d)
        market[1:] += macro[:-1]
        market += rng.normal(0, 0.004, n_d)
        expected = np.zeros((n_t, n_d))
        expected[:, 1:] += impact[:, :-1]
        expected[:, 2:] += 0.3 * impact[:, :-2]
        expected += self.cfg.beta * market
        self.expected = expected
        self.returns = expected + rng.normal(0, self.cfg.noise, (n_t, n_d))
        self.returns[:, 0] = 0.0
        base = rng.uniform(20, 200, n_t)
        self.close = base[:, None] * np.cumprod(1 + self.returns, axis=1)

    @staticmethod
    def _names(rng: np.random.Generator, n: int) -> list[tuple[str, str]]:
        stems = ("Acme", "Borealis", "Cobalt", "Dynamo", "Ember", "Fathom", "Granite", "Helix",
                 "Ion", "Juniper", "Kestrel", "Lumen", "Meridian", "Nimbus", "Onyx", "Pioneer",
                 "Quasar", "Radiant", "Summit", "Tundra", "Umbra", "Vertex", "Willow", "Xenon",
                 "Yonder", "Zephyr")
        kinds = ("Systems", "Pharma", "Motors", "Energy", "Foods", "Networks", "Capital", "Labs")
        out, seen = [], set()
        while len(out) < n:
            stem = stems[len(out) % len(stems)]
            name = f"{stem} {kinds[int(rng.integers(len(kinds)))]}"
            ticker = (stem[:3] + "XYZ"[len(out) // len(stems) % 3] * (len(out) >= len(stems))).upper()
            if ticker not in seen:
                seen.add(ticker)
                out.append((ticker, name))
        return out

    # -------------------------------------------------------------------- samples
    def days(self, stocknet_thresholds: bool = False) -> list[tuple[int, int]]:
        """(ticker index, trading-day index) pairs with a label, in date order per ticker.
        The first 10 trading days are skipped (no history)."""
        out = []
        for t in range(len(self.tickers)):
            for i in range(10, len(self.trading)):
                if label_of(float(self.returns[t, i]), stocknet_thresholds) is not None:
                    out.append((t, i))
        return out

    def sample(self, t: int, i: int, *, price_days: int, text_days: int,
               stocknet_thresholds: bool = False) -> StockDay:
        ticker, _ = self.tickers[t]
        date = self.trading[i]
        prices = []
        for j in range(max(0, i - price_days), i):
            close = float(self.close[t, j])
            prev = float(self.close[t, j - 1]) if j else close
            r = _rng(self.seed, "ohlc", t, j)
            high = max(prev, close) * (1 + abs(r.normal(0, 0.004)))
            low = min(prev, close) * (1 - abs(r.normal(0, 0.004)))
            prices.append((self.trading[j], round(prev, 2), round(high, 2), round(low, 2),
                           round(close, 2), float(self.returns[t, j])))
        day = dt.date.fromisoformat(date)
        texts = []
        for k in range(text_days, 0, -1):
            d = (day - dt.timedelta(k)).isoformat()
            if d >= self.calendar[0]:
                texts.append((d, tuple(self.posts(t, d))))
        ret = float(self.returns[t, i])
        announced = [(self.trading[j], self.events[t][j]) for j in (i - 2, i - 1)
                     if j >= 0 and self.events[t][j]]
        macro = [(self.trading[j], "macro_up" if self.macro[j] > 0 else "macro_down")
                 for j in (i - 1,) if j >= 0 and self.macro[j] != 0]
        latent = {"events": announced + macro, "expected_return": float(self.expected[t, i])}
        return StockDay(ticker, date, tuple(prices), tuple(texts), ret,
                        label_of(ret, stocknet_thresholds) or "", latent)

    def posts(self, t: int, date: str) -> list[str]:
        """The posts about ticker ``t`` written on calendar day ``date``."""
        ticker, name = self.tickers[t]
        r = _rng(self.seed, "posts", t, date)
        fill = {"t": ticker, "n": name, "q": int(r.integers(1, 5)), "bank": str(r.choice(BANKS)),
                "p": str(r.choice(PRODUCTS)), "a": f"{r.uniform(0.5, 3):.2f}",
                "b": f"{r.uniform(0.5, 3):.2f}"}
        posts = []
        i = self._trading_index.get(date)
        if i is not None and self.events[t][i]:
            sign, _, templates = EVENTS[self.events[t][i]]
            for _ in range(max(1, int(r.poisson(self.cfg.posts_per_event)))):
                if r.random() < self.cfg.misleading_share:
                    posts.append(str(r.choice(MISLEADING[sign])).format(**fill))
                else:
                    posts.append(str(r.choice(templates)).format(**fill))
        if i is not None and self.macro[i] != 0 and r.random() < 0.5:
            posts.append(str(r.choice(MACRO[1][0 if self.macro[i] > 0 else 1])) + f" ${ticker}")
        for _ in range(int(r.poisson(self.cfg.chatter_per_day))):
            posts.append(str(r.choice(CHATTER)).format(**fill))
        order = r.permutation(len(posts))
        return [posts[k] for k in order]


# ---------------------------------------------------------------------------- StockNet
class StockNetData:
    """The StockNet (ACL18) layout: ``price/preprocessed/<TICKER>.txt`` (tab-separated,
    newest first: date, return, open, high, low, close, volume) and
    ``tweet/raw/<TICKER>/<YYYY-MM-DD>`` (JSON lines with ``text``; token lists, as in
    ``tweet/preprocessed``, are joined).

    A day is a sample when it has a price row, a label, ``price_days`` earlier rows and at
    least one post in the ``text_days`` calendar days before it.
    """

    def __init__(self, root: str | Path, tickers: Sequence[str] | None = None) -> None:
        self.root = Path(root).expanduser()
        price_dir = self.root / "price" / "preprocessed"
        if not price_dir.is_dir():
            raise ConfigError(f"{self.root} is not a StockNet root: {price_dir} does not exist "
                              "(expected price/preprocessed/<TICKER>.txt and tweet/raw/<TICKER>/<date>)")
        available = sorted(p.stem for p in price_dir.glob("*.txt"))
        if tickers is not None:
            missing = sorted(set(tickers) - set(available))
            if missing:
                raise ConfigError(f"tickers {missing} have no price file in {price_dir}; "
                                  f"available: {', '.join(available[:20])}")
            available = list(tickers)
        if not available:
            raise ConfigError(f"no price files in {price_dir}")
        self.tickers = available
        self.rows: dict[str, list[tuple[str, float, float, float, float, float]]] = {}
        for ticker in self.tickers:
            rows = []
            for n, line in enumerate((price_dir / f"{ticker}.txt").read_text().splitlines(), 1):
                parts = line.split("\t")
                if not line.strip():
                    continue
                if len(parts) < 6:
                    raise ConfigError(f"{price_dir / ticker}.txt line {n}: expected date, return, "
                                      f"open, high, low, close[, volume]; got {line!r:.80}")
                date, ret, o, h, lo, c = parts[:6]
                rows.append((date, float(o), float(h), float(lo), float(c), float(ret)))
            self.rows[ticker] = sorted(rows)  # oldest first

    def posts(self, ticker: str, date: str) -> list[str]:
        path = self.root / "tweet" / "raw" / ticker / date
        if not path.exists():
            path = self.root / "tweet" / "preprocessed" / ticker / date
            if not path.exists():
                return []
        out = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                text = json.loads(line).get("text", "")
                out.append(" ".join(text) if isinstance(text, list) else str(text))
        return out

    def samples(self, *, price_days: int, text_days: int, stocknet_thresholds: bool = False
                ) -> dict[str, list[StockDay]]:
        """Every usable day of every ticker, oldest first."""
        out: dict[str, list[StockDay]] = {}
        for ticker in self.tickers:
            rows = self.rows[ticker]
            days = []
            for i in range(price_days, len(rows)):
                date, ret = rows[i][0], rows[i][5]
                label = label_of(ret, stocknet_thresholds)
                if label is None:
                    continue
                day = dt.date.fromisoformat(date)
                texts = []
                for k in range(text_days, 0, -1):
                    d = (day - dt.timedelta(k)).isoformat()
                    texts.append((d, tuple(self.posts(ticker, d))))
                if not any(posts for _, posts in texts):
                    continue
                days.append(StockDay(ticker, date, tuple(rows[i - price_days:i]), tuple(texts),
                                     ret, label))
            out[ticker] = days
        return out
