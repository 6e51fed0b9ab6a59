"""The env-text corpus a tiny model's tokenizer is trained on."""

import hashlib

import turnrl
from turnrl.trainer.corpus import env_text_corpus

STOCK = "turnrl/StockExplanation-v0"


def test_corpus_is_instructions_then_episode_text():
    texts = env_text_corpus(STOCK, range(2), random_episodes=False)
    assert texts[0] == turnrl.make(STOCK).unwrapped.instructions
    assert all(isinstance(t, str) and t for t in texts)
    more = env_text_corpus(STOCK, range(2))  # random episodes add their text after the expert's
    assert more[:len(texts)] == texts and len(more) > len(texts)
    assert env_text_corpus(STOCK, range(2)) == more  # deterministic


def test_corpus_is_unchanged_by_the_move_out_of_agents_tiny():
    # sha1 of the texts joined by NUL, computed with turnrl.agents.tiny.corpus_from_env at
    # 410b8bc (before the move): the tokenizer trained on it, and so every tiny-model run,
    # must not change. Recompute only when the stock env's own text changes on purpose.
    texts = env_text_corpus(STOCK, range(4))
    digest = hashlib.sha1("\x00".join(texts).encode()).hexdigest()
    assert digest == "9dd5bab6e1bb9782ddf001cc4713d157b7a54878"
