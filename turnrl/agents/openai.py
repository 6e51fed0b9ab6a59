"""An agent behind any OpenAI-compatible chat-completions server (``vllm serve``, SGLang,
llama.cpp's server, hosted APIs), for evaluation.

Requests run concurrently (up to ``concurrency`` at once); a 429 or 5xx answer, a
connection error or a timeout is retried with exponential backoff and jitter (a
``Retry-After`` header is honoured); any other error is raised with the server's message.
Only the standard library is used.

    >>> agent = OpenAIAgent("my-model", base_url="http://127.0.0.1:8000/v1")
    >>> agent.act([[{"role": "user", "content": "Say hi"}]])[0].text
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from turnrl.agents.base import Action
from turnrl.errors import ConfigError
from turnrl.trajectory import Message

__all__ = ["OpenAIAgent", "OpenAIError"]

_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class OpenAIError(RuntimeError):
    """The server refused a request for good (or kept failing past the retries)."""


class OpenAIAgent:
    """Args:
        model: the model name the server expects.
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1`` (default: the
            ``OPENAI_BASE_URL`` variable, else ``https://api.openai.com/v1``).
        api_key_env: the environment variable holding the key (may be unset for local
            servers that need none).
        temperature, top_p, max_tokens, stop: sampling settings sent with each request.
        concurrency: requests in flight at once.
        timeout_s: per-request timeout.
        max_retries: retries of a retryable failure; backoff_s: the first wait (doubles).
        seed: sent to servers that accept it, and seeds the backoff jitter.
        extra_body: more fields for each request (server-specific).
    """

    name = "openai"

    def __init__(self, model: str, *, base_url: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", temperature: float = 0.0,
                 top_p: float = 1.0, max_tokens: int = 256, stop: Sequence[str] | None = None,
                 concurrency: int = 8, timeout_s: float = 60.0, max_retries: int = 5,
                 backoff_s: float = 1.0, seed: int | None = None,
                 extra_body: dict[str, Any] | None = None) -> None:
        errors = []
        if not model:
            errors.append("model is empty: give the model name the server serves")
        if concurrency < 1:
            errors.append(f"concurrency must be >= 1, got {concurrency}")
        if timeout_s <= 0:
            errors.append(f"timeout_s must be > 0, got {timeout_s}")
        if max_retries < 0:
            errors.append(f"max_retries must be >= 0, got {max_retries}")
        if max_tokens < 1:
            errors.append(f"max_tokens must be >= 1, got {max_tokens}")
        base = base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        if not base.startswith(("http://", "https://")):
            errors.append(f"base_url must start with http:// or https://, got {base!r}")
        if errors:
            raise ConfigError("; ".join(errors))
        self.model = model
        self.url = base.rstrip("/") + "/chat/completions"
        self.api_key = os.environ.get(api_key_env, "")
        self.body = {"model": model, "temperature": temperature, "top_p": top_p,
                     "max_tokens": max_tokens, **({"stop": list(stop)} if stop else {}),
                     **({"seed": seed} if seed is not None else {}), **(extra_body or {})}
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.rng = random.Random(seed)
        #: Requests sent, retries made, and tokens used as the server reports them.
        self.stats = {"requests": 0, "retries": 0, "prompt_tokens": 0, "completion_tokens": 0}
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    def _count(self, **added: int) -> None:
        with self._lock:
            for key, n in added.items():
                self.stats[key] += n

    def act(self, conversations: Sequence[list[Message]],
            infos: Sequence[dict[str, Any]] | None = None) -> list[Action]:
        if len(conversations) <= 1:
            return [self._complete(c) for c in conversations]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(conversations))) as pool:
            return list(pool.map(self._complete, conversations))

    async def agenerate(self, prompt: list[Message], *, info: dict[str, Any] | None = None,
                        key: Sequence[int] = (), greedy: bool | None = None) -> Action:
        """One reply, for the rollout engine's ``async`` mode (no batch barrier): the
        request runs in a worker thread, at most ``concurrency`` at once. The server's
        sampling settings (``temperature`` in the request body) apply; ``greedy`` and
        ``key`` are not sent."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="turnrl-openai")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._complete, prompt)

    # ------------------------------------------------------------------ one request
    def _complete(self, conversation: list[Message]) -> Action:
        # Tool outputs go as user messages: a "tool" message needs a tool_call_id that
        # free-text agents never produce.
        messages = [{"role": "user" if m["role"] == "tool" else m["role"], "content": m["content"]}
                    for m in conversation]
        data = json.dumps({**self.body, "messages": messages}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        for attempt in range(self.max_retries + 1):
            self._count(requests=1)
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    payload = json.loads(response.read().decode())
                return self._action(payload)
            except urllib.error.HTTPError as exc:
                body = exc.read().decode(errors="replace")[:500]
                if exc.code not in _RETRY_STATUS:
                    raise OpenAIError(f"{self.url} answered {exc.code}: {body}") from None
                failure, wait_hint = f"{exc.code}: {body}", exc.headers.get("Retry-After")
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                failure, wait_hint = f"{type(exc).__name__}: {exc}", None
            if attempt == self.max_retries:
                raise OpenAIError(f"{self.url} still failing after {self.max_retries} retries; "
                                  f"last: {failure}")
            self._count(retries=1)
            time.sleep(self._wait(attempt, wait_hint))
        raise AssertionError("unreachable")

    def _wait(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(float(retry_after), 60.0)
            except ValueError:
                pass
        base = self.backoff_s * 2**attempt
        with self._lock:
            jitter = 0.5 + self.rng.random()
        return min(base * jitter, 60.0)

    def _action(self, payload: dict[str, Any]) -> Action:
        try:
            text = payload["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise OpenAIError(f"{self.url} answered without choices[0].message.content: "
                              f"{json.dumps(payload)[:300]}") from None
        usage = payload.get("usage") or {}
        self._count(prompt_tokens=int(usage.get("prompt_tokens", 0)),
                    completion_tokens=int(usage.get("completion_tokens", 0)))
        return Action(text=text)
