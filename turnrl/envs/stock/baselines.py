"""Baselines for ``turnrl/StockExplanation-v0``: the train split's majority label, and a
lexicon-sentiment reader. (The oracle that sees the latent events is the env's expert:
``--agent expert``.)"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from turnrl.envs.stock.data import LEXICON_NEG, LEXICON_POS
from turnrl.errors import ConfigError
from turnrl.trajectory import Action

__all__ = ["StockAgent", "lexicon_score"]

_POS, _NEG = frozenset(LEXICON_POS), frozenset(LEXICON_NEG)
_MOVED = re.compile(r"price moved (Positive|Negative)")


def lexicon_score(text: str) -> int:
    """Positive minus negative lexicon words in ``text``."""
    words = re.findall(r"[a-z]+", text.lower())
    return sum(w in _POS for w in words) - sum(w in _NEG for w in words)


class StockAgent:
    """``majority``: always the train split's majority label. ``lexicon``: the sign of
    the positive-minus-negative word count of the posts (ties: the majority label).
    After a miss both answer the revealed move."""

    def __init__(self, policy: str = "lexicon") -> None:
        if policy not in ("majority", "lexicon"):
            raise ConfigError(f"unknown stock baseline {policy!r}; available: majority, lexicon")
        self.policy = policy
        self.name = f"stock_{policy}"

    def act(self, conversations: Sequence[Sequence[dict[str, Any]]],
            infos: Sequence[dict[str, Any]] | None = None) -> list[Action]:
        if infos is None or len(infos) != len(conversations):
            raise ConfigError(f"the {self.name} agent reads each env's info; pass infos=")
        out = []
        for messages, info in zip(conversations, infos, strict=True):
            last = next((m["content"] for m in reversed(messages) if m["role"] != "assistant"), "")
            if "Summarise the posts" in last or "First summarise" in last:
                lines = [ln.split(":", 1)[0] + ": see posts" for ln in last.splitlines()
                         if re.match(r"\d{4}-\d{2}-\d{2}", ln)]
                out.append(Action(text="\n".join(lines) or "2000-01-01: no posts"))
                continue
            moved = _MOVED.search(last)
            majority = info.get("majority_label", "Positive")
            if moved:
                move, why = moved.group(1), "the actual move was revealed"
            elif self.policy == "majority":
                move, why = majority, "the majority class"
            else:
                text = "\n".join(m["content"] for m in messages if m["role"] != "assistant")
                score = lexicon_score(text.split("Posts about", 1)[-1])
                move = majority if score == 0 else ("Positive" if score > 0 else "Negative")
                why = f"lexicon score {score:+d}"
            out.append(Action(text=f"Price Movement: {move}\nExplanation: {why}."))
        return out
