"""Hugging Face transformers policy: batched sampling that returns token ids and logprobs.

:class:`HFPolicy` samples with a KV cache over a left-padded batch. The logprob of each
sampled token is ``log_softmax(logits / temperature)`` -- the distribution the trainer
evaluates -- so importance ratios start at 1. ``top_p`` narrows what is sampled, not the
reported logprob.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from turnrl.agents.base import Action
from turnrl.agents.precision import enable_autocast
from turnrl.agents.token_policy import TokenPolicyBase, check_sampling, eos_ids_of
from turnrl.errors import ConfigError

__all__ = ["HFPolicy", "load_model_and_tokenizer"]


def load_model_and_tokenizer(
    name_or_path: str, *, device: str | None = None, dtype: str | None = None,
    trust_remote_code: bool = False, compute_dtype: str | None = None,
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer from a Hugging Face id or a local directory.

    ``dtype`` (the weights) defaults to bfloat16 on CUDA and float32 on CPU, and to float32
    with a ``compute_dtype`` other than float32: mixed precision, see
    :func:`turnrl.agents.precision.enable_autocast`.
    """
    from pathlib import Path

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = Path(name_or_path).expanduser()
    if local.exists() and not (local / "config.json").exists():
        raise ConfigError(f"{name_or_path!r} is a local path without a config.json: not a "
                          "saved Hugging Face model directory")
    if not local.exists() and (name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1):
        raise ConfigError(f"model directory {name_or_path!r} does not exist (and it is not "
                          "a Hugging Face id of the form 'org/name')")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype is None:
        mixed = compute_dtype not in (None, "float32")
        torch_dtype = torch.bfloat16 if device.startswith("cuda") and not mixed else torch.float32
    else:
        try:
            torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                           "float16": torch.float16}[dtype]
        except KeyError:
            raise ConfigError(
                f"dtype must be float32, bfloat16 or float16, got {dtype!r}") from None
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        name_or_path, dtype=torch_dtype, trust_remote_code=trust_remote_code
    ).to(device)
    return enable_autocast(model, compute_dtype), tokenizer


class HFPolicy(TokenPolicyBase):
    """A trainable policy backed by a transformers causal LM.

    Args:
        model: a Hugging Face id, a local directory, or a loaded model.
        tokenizer: needed when ``model`` is a loaded model.
        temperature: sampling temperature (> 0); the trainer uses the same one.
        top_p: nucleus sampling threshold in (0, 1].
        max_new_tokens: reply budget; a reply cut by it has no end-of-turn token.
        stop: strings that end a reply (the tokens that produced them are kept).
        max_batch_size: prompts per forward pass; larger batches are split.
        device: ``"cpu"``, ``"cuda"``, ... (default: CUDA if available).
        seed: seeds the sampler.
        greedy: decode by argmax unless a call says otherwise (evaluation).
        template_kwargs: extra chat-template variables (e.g. ``{"enable_thinking": False}``).
        kv_reuse: keep each episode's key/value states between turns and prefill only the
            new observation tokens (contexts are append-only; a rebuilt context, e.g.
            ``window(k)`` or ``reasoning_history: strip``, is prefilled whole).
        compute_dtype: ``"bfloat16"``: mixed precision over float32 weights (see
            :func:`~turnrl.agents.precision.enable_autocast`); for a model loaded here.

    A reply ends at the tokenizer's eos, the template's end-of-turn token, or any id of the
    model's ``generation_config.eos_token_id``.

    Example:
        >>> policy = HFPolicy("/tmp/tiny", max_new_tokens=16)
        >>> actions = policy.act([[{"role": "user", "content": "Hello"}]])
        >>> actions[0].text, actions[0].token_ids, actions[0].logprobs
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 64,
        stop: Sequence[str] = (),
        max_batch_size: int = 64,
        device: str | None = None,
        dtype: str | None = None,
        seed: int | None = None,
        greedy: bool = False,
        template_kwargs: dict[str, Any] | None = None,
        kv_reuse: bool = False,
        compute_dtype: str | None = None,
    ) -> None:
        import torch

        check_sampling(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
        if max_batch_size < 1:
            raise ConfigError(f"max_batch_size must be >= 1, got {max_batch_size!r}")
        if isinstance(model, str):
            model, tokenizer = load_model_and_tokenizer(model, device=device, dtype=dtype,
                                                        compute_dtype=compute_dtype)
        elif tokenizer is None:
            raise ConfigError("pass tokenizer= together with a loaded model")
        super().__init__(tokenizer, temperature=temperature, top_p=top_p,
                         max_new_tokens=max_new_tokens, stop=stop, greedy=greedy,
                         template_kwargs=template_kwargs,
                         stop_ids=eos_ids_of(getattr(model, "generation_config", None)))
        self.model = model
        self.max_batch_size = int(max_batch_size)
        self.device = next(model.parameters()).device
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(0 if seed is None else int(seed))
        self.max_positions = getattr(model.config, "max_position_embeddings", None)
        #: Keep each live episode's key/value states between turns (see :meth:`generate`).
        self.kv_reuse = bool(kv_reuse)
        self._kv: dict[tuple[int, ...], list[tuple[Any, Any]]] = {}
        self._kv_version = 0

    # ------------------------------------------------------------------ sampling
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        infos: Sequence[dict[str, Any]] | None = None,
        greedy: bool | None = None,
    ) -> list[Action]:
        """Sample one reply per prompt (token ids in, :class:`Action` with ids out).

        ``infos`` is accepted for the rollout engine's sake and ignored; ``greedy``
        defaults to the policy's :attr:`greedy` (argmax decoding, for evaluation). With
        ``kv_reuse``, a prompt that extends an earlier prompt and its reply (the next turn
        of a live episode) reuses that reply's key/value states and prefills only the new
        tokens; states are kept for the latest call's replies only.
        """
        greedy = self._decoding(greedy)
        version = self._weights_version() if self.kv_reuse else 0
        if version != self._kv_version:  # the model changed: its cached states are stale
            self._kv, self._kv_version = {}, version
        kept: dict[tuple[int, ...], list[tuple[Any, Any]]] = {}
        actions: list[Action] = []
        for start in range(0, len(prompts), self.max_batch_size):
            actions.extend(self._generate_batch(prompts[start:start + self.max_batch_size], greedy, kept))
        if self.kv_reuse:
            self._kv = kept  # the episodes still running continue from these
        return actions

    def begin_collect(self) -> None:
        """Forget cached key/value states (a new collect starts new episodes)."""
        self._kv = {}

    def _generate_batch(self, prompts: Sequence[Sequence[int]], greedy: bool,
                        kept: dict[tuple[int, ...], list[tuple[Any, Any]]]) -> list[Action]:
        import torch

        if not prompts:
            return []
        if any(len(p) == 0 for p in prompts):
            raise ValueError("empty prompt")
        batch = len(prompts)
        eos = torch.tensor(sorted(self.renderer.stop_ids), device=self.device)
        sampled = [[] for _ in range(batch)]
        logprobs = [[] for _ in range(batch)]
        finished = torch.zeros(batch, dtype=torch.bool, device=self.device)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                out, cache, attention, positions = self._prefill(prompts)
                for _ in range(self.max_new_tokens):
                    logits = out.logits[:, -1, :].float() / self.temperature
                    logp = torch.log_softmax(logits, dim=-1)
                    token = logits.argmax(-1) if greedy else self._sample(logp)
                    token_logp = logp.gather(-1, token[:, None]).squeeze(-1)
                    for row in (~finished).nonzero().flatten().tolist():
                        sampled[row].append(int(token[row]))
                        logprobs[row].append(float(token_logp[row]))
                    finished |= torch.isin(token, eos)
                    if self.stop:
                        finished |= self._hit_stop(sampled, finished)
                    if bool(finished.all()):
                        break
                    attention = torch.cat([attention, attention.new_ones((batch, 1))], dim=-1)
                    positions = positions[:, -1:] + 1
                    out = self.model(input_ids=token[:, None], attention_mask=attention,
                                     position_ids=positions, past_key_values=cache, use_cache=True)
                if self.kv_reuse:
                    self._keep_states(prompts, sampled, cache, attention, kept)
        finally:
            self.model.train(was_training)
        return [
            Action(text=self.renderer.action_text(ids), token_ids=ids, logprobs=lps)
            for ids, lps in zip(sampled, logprobs, strict=True)
        ]

    def _prefill(self, prompts: Sequence[Sequence[int]]) -> tuple[Any, Any, Any, Any]:
        """Run the prompts through the model: all of each prompt, or (``kv_reuse``) only
        what follows its longest cached prefix. Returns the model output, the cache, the
        attention mask and the position ids of the last column.

        Layout of a row when reusing: ``[pad][cached prefix][pad][new tokens]``; pads are
        masked, positions count real tokens only."""
        import torch
        from transformers import DynamicCache

        found = [self._cached_prefix(p) for p in prompts] if self._kv else [None] * len(prompts)
        if not any(found):  # no reuse: the whole prompts, left-padded
            batch, width = len(prompts), max(len(p) for p in prompts)
            input_ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
            attention = torch.zeros((batch, width), dtype=torch.long)
            for row, prompt in enumerate(prompts):
                input_ids[row, width - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
                attention[row, width - len(prompt):] = 1
            input_ids, attention = input_ids.to(self.device), attention.to(self.device)
            positions = (attention.cumsum(-1) - 1).clamp(min=0)
            cache = DynamicCache()
            out = self.model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                             past_key_values=cache, use_cache=True)
            return out, cache, attention, positions
        lengths = [len(key) if key else 0 for key in found]
        prefix_width = max(lengths)
        new_width = max(len(p) - n for p, n in zip(prompts, lengths, strict=True))
        batch = len(prompts)
        states = [self._kv[key] if key else None for key in found]
        layers = []
        for layer, (k0, v0) in enumerate(next(s for s in states if s is not None)):
            keys = k0.new_zeros((batch, k0.shape[0], prefix_width, k0.shape[-1]))
            values = v0.new_zeros((batch, v0.shape[0], prefix_width, v0.shape[-1]))
            for row, state in enumerate(states):
                if state is not None:
                    keys[row, :, prefix_width - lengths[row]:] = state[layer][0]
                    values[row, :, prefix_width - lengths[row]:] = state[layer][1]
            layers.append((keys, values))
        input_ids = torch.full((batch, new_width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((batch, prefix_width + new_width), dtype=torch.long)
        positions = torch.zeros((batch, new_width), dtype=torch.long)
        for row, (prompt, n) in enumerate(zip(prompts, lengths, strict=True)):
            rest = list(prompt[n:])
            input_ids[row, new_width - len(rest):] = torch.tensor(rest, dtype=torch.long)
            attention[row, prefix_width - n: prefix_width] = 1
            attention[row, prefix_width + new_width - len(rest):] = 1
            positions[row, new_width - len(rest):] = torch.arange(n, n + len(rest))
        input_ids, attention, positions = (x.to(self.device) for x in (input_ids, attention, positions))
        cache = DynamicCache(layers)
        out = self.model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                         past_key_values=cache, use_cache=True, logits_to_keep=1)
        return out, cache, attention, positions

    def _cached_prefix(self, prompt: Sequence[int]) -> tuple[int, ...] | None:
        """The longest cached sequence that ``prompt`` extends (by at least one token)."""
        for length in sorted({len(k) for k in self._kv}, reverse=True):
            if length < len(prompt):
                key = tuple(prompt[:length])
                if key in self._kv:
                    return key
        return None

    def _keep_states(self, prompts: Sequence[Sequence[int]], sampled: list[list[int]], cache: Any,
                     attention: Any, kept: dict[tuple[int, ...], list[tuple[Any, Any]]]) -> None:
        """Keep each row's key/value states of its prompt and reply (all but the reply's last
        token, which was never fed), keyed by those ids."""
        for row, (prompt, ids) in enumerate(zip(prompts, sampled, strict=True)):
            covered = list(prompt) + ids[:-1]
            real = attention[row].nonzero().flatten()[: len(covered)]
            kept[tuple(covered)] = [(layer.keys[row][:, real].clone(), layer.values[row][:, real].clone())
                                    for layer in cache.layers]

    def _weights_version(self) -> int:
        """Changes whenever any parameter is modified in place (an optimizer step)."""
        return sum(p._version for p in self.model.parameters())

    def _sample(self, logp: Any) -> Any:
        import torch

        probs = logp.exp()
        if self.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < self.top_p  # always keeps the top token
            sorted_p = sorted_p * keep
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)

    def _hit_stop(self, sampled: list[list[int]], finished: Any) -> Any:
        import torch

        hits = torch.zeros_like(finished)
        for row, ids in enumerate(sampled):
            if finished[row]:
                continue
            tail = self.tokenizer.decode(ids[-16:], skip_special_tokens=False)
            if any(s in tail for s in self.stop):
                hits[row] = True
        return hits
