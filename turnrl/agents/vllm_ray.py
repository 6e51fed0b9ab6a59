"""Data-parallel rollouts: several vLLM engines as Ray actors behind one policy.

:class:`RayVLLMPolicy` has the interface of :class:`~turnrl.agents.vllm.VLLMPolicy`
(``generate``, ``agenerate``, ``sync_weights``, a local ``renderer``), so the rollout
engine and the trainer use it unchanged (``rollout.vllm_engines: N`` with
``rollout.backend: vllm``):

- ``generate`` (lockstep) splits each turn's batch into N contiguous chunks, one per engine;
- ``agenerate`` (async) sends every turn of an episode to the same engine (chosen by the
  episode's seed position), so its history stays in that engine's prefix cache;
- ``sync_weights`` puts the trainer's weights (LoRA merged) in Ray's object store once and
  every engine loads them in place.

Each engine is a :class:`VLLMPolicy` inside an actor (``VLLM_ENABLE_V1_MULTIPROCESSING=0``
there too); on GPUs give each one a GPU with ``actor_options={"num_gpus": 1}``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from turnrl.agents.base import Action
from turnrl.agents.token_policy import TokenPolicyBase, eos_ids_of
from turnrl.agents.vllm import VLLMPolicy, merged_state_items
from turnrl.errors import ConfigError
from turnrl.trajectory import Message

__all__ = ["RayVLLMPolicy"]


class _Engine:
    """One vLLM engine in a Ray actor."""

    def __init__(self, model: str, kwargs: dict[str, Any]) -> None:
        self.policy = VLLMPolicy(model, **kwargs)

    def ready(self) -> int:
        return os.getpid()

    def generate(self, prompts: list[list[int]], greedy: bool) -> list[Action]:
        return self.policy.generate(prompts, greedy=greedy)

    async def agenerate(self, prompt: list[int], key: tuple[int, ...], greedy: bool) -> Action:
        return await self.policy.agenerate(prompt, key=key, greedy=greedy)

    def begin_collect(self) -> None:
        self.policy.begin_collect()

    def sleep(self) -> None:
        self.policy.sleep()

    def wake_up(self) -> None:
        self.policy.wake_up()

    def load_weights(self, items: list[tuple[str, Any]]) -> int:
        self.policy.load_weights(items)
        return self.policy.syncs


class RayVLLMPolicy(TokenPolicyBase):
    """Args:
        model: a Hugging Face id or local directory (what every engine loads).
        num_engines: engines (actors) to start.
        address: Ray to join when this process has not started one (``None``: a local
            Ray; ``"auto"`` / ``"ray://head:10001"``: a cluster).
        actor_options: Ray ``.options()`` for each engine actor (``num_gpus``, ``num_cpus``,
            ``resources``); default ``{"num_cpus": 1}``.
        seed: engine i samples with seed ``seed + i``.
        **policy_kwargs: for each :class:`~turnrl.agents.vllm.VLLMPolicy` (temperature,
            top_p, max_new_tokens, stop, max_model_len, dtype, engine_kwargs).
    """

    def __init__(self, model: str, *, num_engines: int = 2, address: str | None = None,
                 actor_options: dict[str, Any] | None = None, seed: int | None = 0,
                 **policy_kwargs: Any) -> None:
        if num_engines < 1:
            raise ConfigError(f"num_engines must be >= 1, got {num_engines}")
        try:
            import ray
        except ImportError as exc:
            raise ConfigError("several vLLM engines (rollout.vllm_engines > 1) run as Ray actors: "
                              "pip install 'turnrl[ray]'") from exc
        from transformers import AutoTokenizer, GenerationConfig

        self._ray = ray
        if not ray.is_initialized():
            ray.init(address=address, ignore_reinit_error=True, include_dashboard=False,
                     log_to_driver=False)
        front = {k: policy_kwargs[k] for k in ("temperature", "top_p", "max_new_tokens", "stop",
                                                "greedy", "template_kwargs") if k in policy_kwargs}
        try:  # the model's own end-of-sequence ids, as each engine reads them
            eos = eos_ids_of(GenerationConfig.from_pretrained(model))
        except OSError:
            eos = []
        super().__init__(AutoTokenizer.from_pretrained(model), stop_ids=eos, **front)
        env_vars = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0",
                    "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
        options = {"num_cpus": 1, **(actor_options or {})}
        options["runtime_env"] = {**options.get("runtime_env", {}),
                                  "env_vars": {**env_vars, **options.get("runtime_env", {}).get("env_vars", {})}}
        actor = ray.remote(_Engine)
        base = 0 if seed is None else int(seed)
        self.engines = [actor.options(**options).remote(model, {**policy_kwargs, "seed": base + i})
                        for i in range(num_engines)]
        #: Process id of each engine actor.
        self.pids = ray.get([e.ready.remote() for e in self.engines])
        self.syncs, self.last_sync_s = 0, 0.0

    # ------------------------------------------------------------------ sampling
    def generate(self, prompts: Sequence[Sequence[int]], *,
                 infos: Sequence[dict[str, Any]] | None = None,
                 greedy: bool | None = None) -> list[Action]:
        """One reply per prompt; the batch is split into contiguous chunks, one per engine."""
        if not prompts:
            return []
        greedy = self._decoding(greedy)
        n = len(self.engines)
        size = -(-len(prompts) // n)
        refs = [engine.generate.remote([list(p) for p in prompts[i * size:(i + 1) * size]], greedy)
                for i, engine in enumerate(self.engines) if prompts[i * size:(i + 1) * size]]
        return [action for chunk in self._ray.get(refs) for action in chunk]

    def begin_collect(self) -> None:
        self._ray.get([e.begin_collect.remote() for e in self.engines])

    async def agenerate(self, prompt: Sequence[int] | list[Message], *,
                        info: dict[str, Any] | None = None, key: Sequence[int] = (),
                        greedy: bool | None = None) -> Action:
        """One reply from the engine that owns this episode (``key[0]``: its seed position)."""
        if prompt and isinstance(prompt[0], dict):
            prompt = self.renderer.prompt_ids(prompt)
        greedy = self._decoding(greedy)
        engine = self.engines[(int(key[0]) if key else 0) % len(self.engines)]
        return await engine.agenerate.remote(list(prompt), tuple(int(k) for k in key), greedy)

    # ------------------------------------------------------------------ weights
    def sync_weights(self, model: Any) -> float:
        """Every engine loads ``model``'s weights (LoRA merged), shipped once via Ray's
        object store; seconds taken."""
        start = time.time()
        items = self._ray.put([(name, tensor.detach().cpu()) for name, tensor in merged_state_items(model)])
        self._ray.get([e.load_weights.remote(items) for e in self.engines])
        self.syncs += 1
        self.last_sync_s = time.time() - start
        return self.last_sync_s

    def sleep(self) -> None:
        """Every engine frees its accelerator memory (see ``VLLMPolicy.sleep``)."""
        self._ray.get([e.sleep.remote() for e in self.engines])

    def wake_up(self) -> None:
        """Every engine takes its memory back."""
        self._ray.get([e.wake_up.remote() for e in self.engines])

    def close(self) -> None:
        """Stop the engine actors."""
        for engine in self.engines:
            self._ray.kill(engine, no_restart=True)
        self.engines = []
