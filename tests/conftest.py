import os
import sys
import tempfile
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))  # tests/toy_envs.py

# One game cache for the whole test session: hermetic (never the user's cache), but shared
# between tests so each TextWorld game is generated once.
if "TURNRL_CACHE" not in os.environ:
    os.environ["TURNRL_CACHE"] = tempfile.mkdtemp(prefix="turnrl-test-cache-")


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return Path(os.environ["TURNRL_CACHE"])


@pytest.fixture(scope="session")
def tiny_guess_model(tmp_path_factory) -> Path:
    """A tiny Llama (hidden 64, 2 layers) with a tokenizer trained on GuessNumber text."""
    pytest.importorskip("torch")
    from toy_envs import GuessNumber

    from turnrl.agents import tiny

    texts = [GuessNumber.instructions, "Find the number between 1 and 10.", "Correct!",
             "No, go higher.", "No, go lower.", "Reply with 'guess N', e.g. 'guess 3'."]
    texts += [f"guess {n}" for n in range(1, 11)]
    path = tmp_path_factory.mktemp("tiny_guess")
    return tiny.make_tiny_model(path, texts * 5, vocab_size=300, hidden_size=64, num_layers=2)
