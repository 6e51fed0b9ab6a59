"""The rollout engine: agents on environment pools, recorded as :class:`Trajectory`.

:func:`collect` plays episodes on ``num_envs`` environments in one of two modes:

- ``lockstep`` (default; any agent): each tick it gathers every env waiting on a reply,
  asks the agent once for the whole batch, then steps those envs (concurrently with
  ``step_workers`` threads) -- one batch barrier per turn.
- ``async`` (agents with ``agenerate``, i.e. the vLLM policy): each env's episode is its own
  asyncio task; the agent's engine batches all requests in flight continuously, and an env
  steps as soon as its own reply is done, so a long reply or a slow env step holds up
  nobody else.

Finished envs take the next (seed, group member) from the queue until every episode has
been played; results come back in (seed, member) order in both modes.

Token-level policies (:class:`~turnrl.agents.hf.HFPolicy`) are driven by token ids: the
engine builds each context with :func:`~turnrl.trajectory.context_ids` -- the prompt, the
policy's own sampled ids and the incrementally rendered observations -- and the trainer
later trains on exactly those ids. Other agents get chat messages.
"""

from __future__ import annotations

import asyncio
import threading
import traceback
import warnings
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

from turnrl.agents.base import Action, Agent, AsyncAgent, CollectAware, TokenPolicy, UsesOracle
from turnrl.envs.pool import EnvPool, LocalPool, WorkerLost, make_pool
from turnrl.envs.registry import accepts_kwarg
from turnrl.errors import ConfigError
from turnrl.trajectory import Message, Trajectory, Turn, context_ids, parse_context, state_key

__all__ = ["collect", "first_messages", "is_token_policy", "env_kwargs_for", "ROLLOUT_MODES",
           "REASONING_HISTORY"]


def first_messages(instructions: str, observation: str) -> list[Message]:
    """The conversation an agent sees at the start of an episode."""
    messages: list[Message] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    messages.append({"role": "user", "content": observation})
    return messages


def is_token_policy(agent: Any) -> bool:
    """Whether ``agent`` generates from token ids and reports the ids it sampled (a
    :class:`~turnrl.agents.base.TokenPolicy`)."""
    return isinstance(agent, TokenPolicy)


def env_kwargs_for(agent: Agent, env_id: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Env kwargs adjusted for an agent: agents with ``needs_expert = True`` (the expert
    baseline, SFT data collection) switch on ``expert=True`` where the env has that switch
    and the caller did not set it, so oracles cost nothing in ordinary rollouts.

    Args:
        agent: the agent that will play.
        env_id: a registered env id.
        kwargs: the env kwargs the caller chose (not modified).

    Returns:
        A new dict: ``kwargs``, plus ``expert=True`` where that applies.
    """
    out = dict(kwargs)
    if isinstance(agent, UsesOracle) and agent.needs_expert and "expert" not in out:
        if accepts_kwarg(env_id, "expert"):
            out["expert"] = True
    return out


@dataclass
class _Slot:
    key: tuple[int, int]
    traj: Trajectory
    info: dict[str, Any] = field(default_factory=dict)
    #: The next turn's own context ids (history re-rendered by the template), if any.
    context: list[int] | None = None


def collect(
    make_env: Callable[[], gym.Env] | EnvPool,
    agent: Agent,
    seeds: Sequence[int],
    *,
    env_id: str = "",
    entry: str = "",
    num_envs: int = 8,
    group_size: int = 1,
    context: str = "full",
    max_context_tokens: int | None = None,
    step_workers: int = 1,
    mode: str = "lockstep",
    env_pool: str = "local",
    envs_per_worker: int = 1,
    ray_address: str | None = None,
    max_restarts: int = 3,
    on_episode_end: Callable[[Trajectory], Any] | None = None,
    on_error: str = "mark",
    greedy: bool | None = None,
    reasoning_history: str | None = None,
) -> list[Trajectory]:
    """Play one episode per seed (``group_size`` per seed for grouped estimators).

    Args:
        make_env: builds one environment (called up to ``num_envs`` times, in this process
            or in env workers: see ``env_pool``); or an :class:`~turnrl.envs.pool.EnvPool`
            that lives across calls (then ``env_pool`` and ``envs_per_worker`` are ignored,
            and the pool is left open).
        agent: answers batches of conversations (or token ids, for token policies).
        seeds: reset seeds, one episode group each.
        env_id: recorded in each trajectory.
        entry: the suite entry played, recorded in each trajectory (default: ``env_id``).
        num_envs: environments in flight at once (in ``async`` mode: the cap on episodes
            in flight).
        group_size: episodes per seed (RLOO/GRPO groups); the group index is recorded.
        context: ``"full"`` or ``"window(k)"`` -- what a token policy sees each turn.
        max_context_tokens: a token policy's episode is truncated (``truncated=True`` on
            its last turn) when the next context plus the reply budget would exceed it.
        step_workers: threads stepping envs at once (a tick's batch in ``lockstep``; any
            envs whose replies are done in ``async``).
        mode: ``"lockstep"`` -- every env waiting on a reply is answered in one batch, then
            all are stepped (a batch barrier each turn); ``"async"`` -- each episode is its
            own task: its env steps as soon as its own reply is done while other replies
            are still being generated. ``async`` needs an agent with ``agenerate`` (the
            vLLM policy, whose engine batches the requests in flight continuously).
        env_pool: where the envs live: ``"local"`` (this process), ``"subprocess"``
            (worker processes) or ``"ray"`` (Ray actors); see :mod:`turnrl.envs.pool`.
        envs_per_worker: envs per worker process / actor (non-local pools).
        ray_address: Ray to join for ``env_pool="ray"`` (``None``: the running one, else a
            local one).
        max_restarts: an episode whose env worker died is played again from its reset up
            to this many times (``Trajectory.restarts``), then kept as failed.
        on_episode_end: called with each finished trajectory (progress bars, logging).
        on_error: when an env raises in reset or step: ``"mark"`` records the episode
            with ``failed`` set (it counts as not won), warns, replaces the env and goes
            on; ``"raise"`` re-raises.
        greedy: token policies and async agents: decode greedily (True), sample (False),
            or the agent's own default (None).
        reasoning_history: token policies whose chat template renders earlier assistant
            turns differently from how they were generated (e.g. Qwen3 drops earlier
            ``<think>`` reasoning): ``"keep"`` appends every turn as generated (one sample
            per episode; warns once about the mismatch), ``"strip"`` gives each turn the
            history (or, with ``window(k)``, its window) as the template renders it, so a
            turn whose context is not an extension of the previous one starts a new sample.
            None: what the template does (``strip`` if it rewrites history, else ``keep``).

    Returns:
        Trajectories ordered by (seed position, group member), whatever the mode.
    """
    errors = []
    if num_envs < 1:
        errors.append(f"num_envs must be >= 1, got {num_envs}")
    if group_size < 1:
        errors.append(f"group_size must be >= 1, got {group_size}")
    if step_workers < 1:
        errors.append(f"step_workers must be >= 1, got {step_workers}")
    if reasoning_history not in REASONING_HISTORY + (None,):
        errors.append(f"reasoning_history must be one of {', '.join(REASONING_HISTORY)} or None, "
                      f"got {reasoning_history!r}")
    if on_error not in ("mark", "raise"):
        errors.append(f"on_error must be 'mark' or 'raise', got {on_error!r}")
    if max_restarts < 0:
        errors.append(f"max_restarts must be >= 0, got {max_restarts}")
    if mode not in ROLLOUT_MODES:
        errors.append(f"mode must be one of {', '.join(ROLLOUT_MODES)}, got {mode!r}")
    elif mode == "async" and not isinstance(agent, AsyncAgent):
        errors.append(f"mode 'async' needs an agent that generates asynchronously (the vLLM "
                      f"policy: rollout.backend=vllm); {type(agent).__name__} has no agenerate: "
                      f"use mode 'lockstep'")
    if errors:
        raise ConfigError("; ".join(errors))
    queue = deque((i, g, int(s), 0) for i, s in enumerate(seeds) for g in range(group_size))
    if not queue:
        return []
    if isinstance(make_env, EnvPool):
        pool, owned = make_env, False
        num_envs = min(num_envs, pool.size)
    else:
        num_envs = min(num_envs, len(queue))
        pool = make_pool(env_pool, make_env, num_envs, envs_per_worker=envs_per_worker,
                         threads=step_workers if mode == "lockstep" else 1, ray_address=ray_address)
        owned = True
    engine_cls = _Async if mode == "async" else _Lockstep
    engine = engine_cls(
        pool, agent, env_id=env_id, entry=entry or env_id, group_size=group_size,
        context=context, max_context_tokens=max_context_tokens, on_episode_end=on_episode_end,
        on_error=on_error, max_restarts=max_restarts, greedy=greedy,
        reasoning_history=reasoning_history,
    )
    try:
        return engine.run(queue, num_envs=num_envs, step_workers=step_workers)
    finally:
        if owned:
            pool.close()


ROLLOUT_MODES = ("lockstep", "async")
#: What a token policy's context holds of earlier turns when the template rewrites them.
REASONING_HISTORY = ("keep", "strip")


def _strips_history(renderer: Any, choice: str | None) -> bool:
    """Whether contexts are re-rendered by the template each turn (see ``collect``)."""
    strip = choice == "strip" or (choice is None and renderer.history_rewrite is not None)
    if not strip:
        renderer.warn_if_history_differs()
    return strip


class _Lockstep:
    """State of one :func:`collect` call: episodes played in slots, one env per slot."""

    def __init__(self, pool: EnvPool, agent: Any, *, env_id: str, entry: str, group_size: int,
                 context: str, max_context_tokens: int | None,
                 on_episode_end: Callable[[Trajectory], Any] | None, on_error: str,
                 max_restarts: int, greedy: bool | None, reasoning_history: str | None) -> None:
        self.pool = pool
        self.max_restarts = max_restarts
        self.agent = agent
        self.env_id = env_id
        self.entry = entry
        # the caller's choice of decoding, passed on only when made (agents keep theirs)
        self._decoding = {} if greedy is None else {"greedy": greedy}
        self.group_size = group_size
        self.mode = parse_context(context)
        self.max_context_tokens = max_context_tokens
        self.on_episode_end = on_episode_end
        self.on_error = on_error
        self.tokens = is_token_policy(agent)
        self.renderer = agent.renderer if self.tokens else None
        self.strip = self.tokens and _strips_history(self.renderer, reasoning_history)
        self.results: dict[tuple[int, int], Trajectory] = {}

    # ------------------------------------------------------------------ main loop
    def run(self, queue: deque, *, num_envs: int, step_workers: int) -> list[Trajectory]:
        self.queue = queue
        self.slots: list[_Slot | None] = [None] * num_envs
        if isinstance(self.agent, CollectAware):
            self.agent.begin_collect()
        for slot in range(num_envs):
            self._start(slot)
        while any(s is not None for s in self.slots):
            waiting, prompts = [], []
            for slot, state in enumerate(self.slots):
                if state is None:
                    continue
                prompt = self._prompt(slot)
                if prompt is None:  # out of context: the episode ended
                    self._start(slot)
                else:
                    waiting.append(slot)
                    prompts.append(prompt)
            if not waiting:
                continue
            actions = self._act(waiting, prompts)
            outcomes = self.pool.step_many([(slot, a.text) for slot, a in zip(waiting, actions,
                                                                               strict=True)])
            for slot, action, outcome in zip(waiting, actions, outcomes, strict=True):
                if self._record(slot, action, outcome):
                    self._start(slot)
        return [self.results[k] for k in sorted(self.results)]

    def _act(self, waiting: list[int], prompts: list) -> list[Action]:
        infos = [self.slots[i].info for i in waiting]
        if self.tokens:
            actions = self.agent.generate(prompts, infos=infos, **self._decoding)
        else:
            actions = self.agent.act(prompts, infos)
        if len(actions) != len(waiting):
            raise RuntimeError(f"agent returned {len(actions)} actions for {len(waiting)} prompts")
        return actions

    def _step(self, slot: int, action: Action) -> tuple | BaseException:
        try:
            return self.pool.step(slot, action.text)
        except Exception as exc:  # reported per episode by _record
            return exc

    def _record(self, slot: int, action: Action, outcome: tuple | BaseException) -> bool:
        """Append the turn; True when the slot's episode is over (finished or crashed)."""
        state = self.slots[slot]
        traj = state.traj
        if isinstance(outcome, WorkerLost):
            self._lost(slot, outcome)
            return True
        if isinstance(outcome, BaseException):
            self._crashed(slot, outcome, f"step {traj.num_turns}")
            return True
        obs, reward, terminated, truncated, info = outcome
        role = info.get("obs_role", "user")
        # The state acted on: the last message is the observation the action answered.
        acted_on = state_key(traj.messages[-1]["content"], state.info)
        traj.messages.append({"role": "assistant", "content": action.text})
        traj.messages.append({"role": role, "content": obs})
        turn = Turn(
            action=action.text, reward=float(reward), observation=obs, terminated=terminated,
            truncated=truncated, info=info, token_ids=action.token_ids, logprobs=action.logprobs,
            state_key=acted_on,
        )
        if self.tokens:
            turn.obs_token_ids = self.renderer.observation_ids(
                {"role": role, "content": obs}, action_ids=action.token_ids or [])
        turn.context_ids, state.context = state.context, None
        traj.turns.append(turn)
        state.info = info
        if terminated or truncated:
            self._finish(slot)
            return True
        return False

    # ------------------------------------------------------------------ episodes
    def _start(self, slot: int) -> bool:
        """Reset the slot's env on the next queued episode; False when the queue is empty."""
        while self._take(slot):
            if self._reset_done(slot, self._reset(slot)):
                return True
        return False

    def _take(self, slot: int) -> bool:
        """Give the slot the next queued (seed, member); False (slot emptied) if none."""
        if not self.queue:
            self.slots[slot] = None
            return False
        index, member, seed, restarts = self.queue.popleft()
        traj = Trajectory(env_id=self.env_id, seed=seed, task="", entry=self.entry,
                          group=index if self.group_size > 1 else None, restarts=restarts)
        self.slots[slot] = _Slot(key=(index, member), traj=traj)
        return True

    def _reset(self, slot: int) -> tuple | BaseException:
        try:
            return self.pool.reset(slot, self.slots[slot].traj.seed)
        except Exception as exc:  # reported by _reset_done
            return exc

    def _reset_done(self, slot: int, outcome: tuple | BaseException) -> bool:
        """Set the episode up from the reset's outcome; False if the reset raised."""
        if isinstance(outcome, WorkerLost):
            self._lost(slot, outcome)
            return False
        if isinstance(outcome, BaseException):
            self._crashed(slot, outcome, "reset")
            return False
        obs, info = outcome
        traj = self.slots[slot].traj
        traj.task = str(info.get("task", ""))
        traj.messages = first_messages(self.pool.instructions(slot), obs)
        traj.reset_info = info
        if self.tokens:  # an env with native tools lists them in info["tools"]
            traj.prompt_token_ids = self.renderer.prompt_ids(traj.messages, tools=info.get("tools"))
        self.slots[slot].info = info
        return True

    def _finish(self, slot: int) -> None:
        state = self.slots[slot]
        self.results[state.key] = state.traj
        if self.on_episode_end is not None:
            self.on_episode_end(state.traj)

    def _prompt(self, slot: int) -> list[int] | list[Message] | None:
        """What the agent answers next in the slot: token ids (token policies) or the
        conversation. None when the ids would not fit ``max_context_tokens``: the episode
        is then ended (truncated, or failed if even its prompt is too long)."""
        traj = self.slots[slot].traj
        if not self.tokens:
            return traj.messages
        ids = context_ids(traj, traj.num_turns, self.mode)
        if self.strip and traj.turns:  # the context as the template renders the history
            messages = traj.messages  # window(k): the opening messages and the last k exchanges
            if self.mode.kind == "window":
                opening = len(messages) - 2 * traj.num_turns  # system (if any) and the task
                kept = opening + 2 * max(0, traj.num_turns - self.mode.k)
                messages = messages[:opening] + messages[kept:]
            rendered = self.renderer.prompt_ids(messages, tools=traj.reset_info.get("tools"))
            if rendered != ids:
                ids = rendered
                self.slots[slot].context = rendered  # this turn starts a new sample
        if not self.max_context_tokens or len(ids) <= self.max_context_tokens - self.agent.max_new_tokens:
            return ids
        if traj.turns:
            traj.turns[-1].truncated = True  # out of context: bootstrap like a time limit
        else:
            traj.failed = f"prompt longer than max_context_tokens={self.max_context_tokens}"
        self._finish(slot)
        return None

    def _crashed(self, slot: int, exc: BaseException, where: str) -> None:
        """An env raised: mark the episode, replace the env, go on (or re-raise)."""
        if self.on_error == "raise":
            raise exc
        traj = self.slots[slot].traj
        traj.failed = f"{where}: {type(exc).__name__}: {exc}"
        warnings.warn(
            f"episode {traj.env_id or 'env'} seed {traj.seed} failed and is counted as "
            f"failed ({traj.failed}); the env was replaced\n"
            + "".join(traceback.format_exception(exc)[-3:]),
            RuntimeWarning, stacklevel=4,
        )
        self.pool.replace(slot)
        self._finish(slot)

    def _lost(self, slot: int, exc: WorkerLost) -> None:
        """The env's worker died under the episode: play the episode again from its reset
        (a fresh env is in the slot), up to ``max_restarts`` times; then keep it as failed."""
        state = self.slots[slot]
        traj = state.traj
        if traj.restarts < self.max_restarts:
            warnings.warn(f"episode {traj.env_id or 'env'} seed {traj.seed}: {exc}; playing it "
                          f"again (restart {traj.restarts + 1} of at most {self.max_restarts})",
                          RuntimeWarning, stacklevel=4)
            index, member = state.key
            self.queue.appendleft((index, member, traj.seed, traj.restarts + 1))
            return
        if self.on_error == "raise":
            raise exc
        traj.failed = f"env worker lost {traj.restarts + 1} times: {exc}"
        warnings.warn(f"episode {traj.env_id or 'env'} seed {traj.seed} failed ({traj.failed})",
                      RuntimeWarning, stacklevel=4)
        self._finish(slot)


class _Async(_Lockstep):
    """Each slot is an asyncio task playing episodes back to back: ask the agent for this
    episode's reply alone (``await agent.agenerate``), step the env in a worker thread, go
    on. No slot waits for another's reply; the agent batches whatever is in flight."""

    def run(self, queue: deque, *, num_envs: int, step_workers: int) -> list[Trajectory]:
        self.queue = queue
        self.slots = [None] * num_envs
        # in-process engines are not all thread-safe to load (see _serial_reset)
        self._reset_lock = threading.Lock() if isinstance(self.pool, LocalPool) else nullcontext()
        if isinstance(self.agent, CollectAware):
            self.agent.begin_collect()
        threads = ThreadPoolExecutor(max(step_workers, num_envs if not isinstance(self.pool, LocalPool)
                                         else step_workers))
        try:
            _run_coroutine(self._all(threads))
        finally:
            threads.shutdown()
        return [self.results[k] for k in sorted(self.results)]

    def _serial_reset(self, slot: int) -> tuple | BaseException:
        # Resets run one at a time (off the event loop, so generation goes on): loading a
        # game is not thread-safe in every engine (TextWorld's grammar parser is not);
        # lockstep mode resets on the main thread too. Steps run concurrently in both.
        with self._reset_lock:
            return self._reset(slot)

    async def _all(self, pool: ThreadPoolExecutor) -> None:
        tasks = [asyncio.ensure_future(self._play(slot, pool)) for slot in range(len(self.slots))]
        try:
            await asyncio.gather(*tasks)
        finally:  # one task raised: stop the others before the envs are closed
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _play(self, slot: int, pool: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        while self._take(slot):
            outcome = await loop.run_in_executor(pool, self._serial_reset, slot)
            if not self._reset_done(slot, outcome):
                continue
            while (prompt := self._prompt(slot)) is not None:
                state = self.slots[slot]
                key = (*state.key, state.traj.num_turns)
                action = await self.agent.agenerate(prompt, info=state.info, key=key,
                                                    **self._decoding)
                outcome = await loop.run_in_executor(pool, self._step, slot, action)
                if self._record(slot, action, outcome):
                    break


def _run_coroutine(coro: Any) -> Any:
    """``asyncio.run``, also from a thread that already runs an event loop (notebooks)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1) as runner:
        return runner.submit(asyncio.run, coro).result()
