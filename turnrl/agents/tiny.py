"""Tiny models for offline use: a BPE tokenizer trained on environment text and a small
Llama-style model built from a config, saved as a normal Hugging Face directory.

Nothing is downloaded. The demo, the tests and the benchmarks use these; real users pass
a Hugging Face id or a local directory of their own model instead.

Text from an environment's episodes comes from
:func:`turnrl.trainer.corpus.env_text_corpus`.

Example:
    >>> from turnrl.agents import tiny
    >>> from turnrl.trainer.corpus import env_text_corpus
    >>> texts = env_text_corpus("turnrl/TextWorld-v0", range(20), challenge="tw-coin_collector")
    >>> path = tiny.make_tiny_model("/tmp/tiny", texts, hidden_size=128, num_layers=4)
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "CHAT_TEMPLATE", "SPECIAL_TOKENS", "train_tokenizer", "build_model",
    "make_tiny_model",
]

#: ChatML, with a tool role: ``<|im_start|>ROLE\nCONTENT<|im_end|>\n``.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|unk|>", "<|im_start|>", "<|im_end|>"]


def train_tokenizer(texts: Iterable[str], *, vocab_size: int = 1024, min_frequency: int = 2) -> Any:
    """Train a small BPE tokenizer with a chat template.

    Tokens are whole characters and merges of them (never partial UTF-8 bytes), so any
    sequence of ids decodes to valid text and decoding is concatenative: decoding pieces
    and joining them equals decoding the whole. Characters never seen in ``texts`` nor in
    printable ASCII become ``<|unk|>``.

    Args:
        texts: training text (environment observations, instructions, commands).
        vocab_size: target vocabulary, special tokens included.
        min_frequency: least count for a merge.

    Returns:
        A ``transformers.PreTrainedTokenizerFast`` whose end-of-turn token ``<|im_end|>`` is
        its eos and ``<|pad|>`` its pad.
    """
    import string

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(texts)
    alphabet = sorted(set(string.printable) | {ch for t in texts for ch in t})
    if vocab_size < len(alphabet) + len(SPECIAL_TOKENS):
        raise ValueError(
            f"vocab_size must be at least the alphabet ({len(alphabet)} characters) plus "
            f"{len(SPECIAL_TOKENS)} special tokens, got {vocab_size}"
        )
    tok = Tokenizer(models.BPE(unk_token="<|unk|>"))
    # Words, single digits, runs of spaces, single other characters: all kept, so decoding
    # with Fuse (plain concatenation) gives the text back exactly.
    tok.pre_tokenizer = pre_tokenizers.Split(
        Regex(r" ?[A-Za-z]+| +|\d|\n|[^A-Za-z\d \n]"), behavior="isolated"
    )
    tok.decoder = decoders.Fuse()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=alphabet, limit_alphabet=len(alphabet), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|pad|>",
        bos_token="<|endoftext|>", unk_token="<|unk|>", clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def build_model(
    tokenizer: Any,
    *,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int | None = None,
    intermediate_size: int | None = None,
    max_positions: int = 4096,
    seed: int = 0,
) -> Any:
    """A small ``LlamaForCausalLM`` with random weights.

    ``head_dim`` is 64 (``num_heads = hidden_size // 64``) unless ``num_heads`` is given;
    vLLM's CPU attention rejects head dims below 64.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    num_heads = num_heads or max(1, hidden_size // 64)
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    if hidden_size // num_heads < 64:
        raise ValueError(
            f"head_dim = {hidden_size // num_heads} < 64: vLLM on CPU cannot load it; use "
            f"hidden_size >= 64 * num_heads"
        )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def make_tiny_model(
    out_dir: str | Path,
    texts: Iterable[str],
    *,
    vocab_size: int = 1024,
    hidden_size: int = 128,
    num_layers: int = 4,
    intermediate_size: int | None = None,
    max_positions: int = 4096,
    seed: int = 0,
) -> Path:
    """Train a tokenizer on ``texts``, build a model, save both to ``out_dir``.

    Returns:
        ``out_dir``, loadable with ``AutoModelForCausalLM.from_pretrained`` and
        ``AutoTokenizer.from_pretrained`` (and by vLLM).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    model = build_model(
        tokenizer, hidden_size=hidden_size, num_layers=num_layers,
        intermediate_size=intermediate_size, max_positions=max_positions, seed=seed,
    )
    tokenizer.save_pretrained(out)
    model.save_pretrained(out)
    return out
