"""Env pools: where the environments of a rollout live.

The rollout engine (:func:`turnrl.rollout.collect`) plays episodes in *slots* ``0 .. size-1``
and talks to them only through an :class:`EnvPool`, so it does not care whether the envs
run in this process, in worker processes or on a Ray cluster:

- :class:`LocalPool` (``"local"``, the default): the envs are objects in this process;
  ``step_many`` steps them from ``threads`` threads.
- :class:`SubprocessPool` (``"subprocess"``): ``ceil(size / envs_per_worker)`` worker
  processes, each holding ``envs_per_worker`` envs, driven over pipes. A batch of steps goes
  to every worker at once, so CPU-bound engines (TextWorld, ALFWorld) use several cores.
- :class:`RayPool` (``"ray"``): the same workers as Ray actors, on a local Ray (started on
  demand) or a cluster (``address``).

A worker that dies (segfault, OOM kill, lost node) is restarted with fresh envs; every
episode that was in flight on it gets :class:`WorkerLost` on its next call, and the rollout
engine plays that episode again from its reset (``Trajectory.restarts`` counts how often;
after ``max_restarts`` it is kept as failed). An env that *raises* is a different thing: the
exception comes back as itself, and the episode is marked failed as with local envs.

Env factories travel to workers with cloudpickle; use :func:`turnrl.envs.registry.factory`
(``factory("turnrl/TextWorld-v0", challenge=...)``) so that envs you registered at run time
exist in the workers too.
"""

from __future__ import annotations

import math
import threading
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, runtime_checkable

from turnrl.errors import ConfigError

__all__ = ["EnvPool", "LocalPool", "SubprocessPool", "RayPool", "WorkerLost", "make_pool",
           "POOL_KINDS"]

POOL_KINDS = ("local", "subprocess", "ray")
Outcome = Any  # a step's (obs, reward, terminated, truncated, info), or the exception it raised


class WorkerLost(RuntimeError):
    """The worker process holding this slot's env died; the env was replaced by a fresh one
    and the episode it was playing is gone (play it again from its reset)."""


@runtime_checkable
class EnvPool(Protocol):
    """Envs in slots ``0 .. size-1``. Calls on different slots may come from different
    threads at once (the async rollout mode does that)."""

    size: int

    def reset(self, slot: int, seed: int) -> tuple[str, dict[str, Any]]:
        """``env.reset(seed=seed)`` in the slot; raises what the env raised, or WorkerLost."""
        ...

    def step(self, slot: int, action: str) -> tuple:
        """``env.step(action)`` in the slot; raises what the env raised, or WorkerLost."""
        ...

    def step_many(self, requests: Sequence[tuple[int, str]]) -> list[Outcome]:
        """Step several slots, concurrently where the pool can; one outcome per request,
        an exception instance where that step raised (never raises itself)."""
        ...

    def instructions(self, slot: int) -> str:
        """The slot's env's ``instructions`` (system prompt), ``""`` if it has none."""
        ...

    def replace(self, slot: int) -> None:
        """Close the slot's env (it raised) and make a fresh one."""
        ...

    def close(self) -> None: ...


def make_pool(kind: str, make_env: Callable[[], Any], size: int, *, envs_per_worker: int = 1,
              threads: int = 1, ray_address: str | None = None) -> EnvPool:
    """Build a pool of ``size`` envs of the kind named in config (``rollout.env_pool``)."""
    if kind not in POOL_KINDS:
        raise ConfigError(f"env pool must be one of {', '.join(POOL_KINDS)}, got {kind!r}")
    if size < 1:
        raise ConfigError(f"env pool size must be >= 1, got {size}")
    if envs_per_worker < 1:
        raise ConfigError(f"envs_per_worker must be >= 1, got {envs_per_worker}")
    if kind == "local":
        return LocalPool(make_env, size, threads=threads)
    if kind == "subprocess":
        return SubprocessPool(make_env, size, envs_per_worker=envs_per_worker)
    return RayPool(make_env, size, envs_per_worker=envs_per_worker, address=ray_address)


def _instructions(env: Any) -> str:
    return str(getattr(getattr(env, "unwrapped", env), "instructions", "") or "")


def _call(fn: Callable[..., Any], *args: Any) -> Outcome:
    try:
        return fn(*args)
    except Exception as exc:  # handed back as the outcome
        return exc


# ------------------------------------------------------------------------- local
class LocalPool:
    """The envs as objects in this process (``threads`` > 1: ``step_many`` uses threads)."""

    def __init__(self, make_env: Callable[[], Any], size: int, *, threads: int = 1) -> None:
        self.make_env = make_env
        self.size = size
        self.envs = [make_env() for _ in range(size)]
        self._threads = ThreadPoolExecutor(threads) if threads > 1 else None

    def reset(self, slot: int, seed: int) -> tuple[str, dict[str, Any]]:
        return self.envs[slot].reset(seed=seed)

    def step(self, slot: int, action: str) -> tuple:
        return self.envs[slot].step(action)

    def step_many(self, requests: Sequence[tuple[int, str]]) -> list[Outcome]:
        def one(request: tuple[int, str]) -> Outcome:
            return _call(self.step, *request)

        if self._threads is None or len(requests) < 2:
            return [one(r) for r in requests]
        return list(self._threads.map(one, requests))

    def instructions(self, slot: int) -> str:
        return _instructions(self.envs[slot])

    def replace(self, slot: int) -> None:
        _close_quietly(self.envs[slot])
        self.envs[slot] = self.make_env()

    def close(self) -> None:
        if self._threads is not None:
            self._threads.shutdown()
        for env in self.envs:
            _close_quietly(env)


def _close_quietly(env: Any) -> None:
    try:
        env.close()
    except Exception:  # an env that crashed may not close cleanly; best effort
        pass


# ------------------------------------------------------------------------- worker side
class _EnvHost:
    """The envs of one worker (a process or a Ray actor), addressed by local index."""

    def __init__(self, make_env_bytes: bytes, count: int) -> None:
        import cloudpickle

        self.make_env = cloudpickle.loads(make_env_bytes)
        self.envs = [self.make_env() for _ in range(count)]

    def handle(self, command: str, payload: Any) -> Any:
        if command == "step_many":
            return [_portable(_call(self.envs[i].step, action)) for i, action in payload]
        if command == "reset":
            i, seed = payload
            return _portable(_call(lambda: self.envs[i].reset(seed=seed)))
        if command == "instructions":
            return [_instructions(env) for env in self.envs]
        if command == "replace":
            _close_quietly(self.envs[payload])
            self.envs[payload] = self.make_env()
            return None
        if command == "pid":
            import os

            return os.getpid()
        raise ValueError(f"unknown worker command {command!r}")

    def close(self) -> None:
        for env in self.envs:
            _close_quietly(env)


def _portable(outcome: Outcome) -> Outcome:
    """An exception that survives pickling (its own class if it can, else a RuntimeError
    that keeps the type name, the message and the worker's traceback)."""
    if not isinstance(outcome, BaseException):
        return outcome
    import pickle

    text = "".join(traceback.format_exception(outcome)[-6:])
    try:
        pickle.loads(pickle.dumps(outcome))
        outcome.add_note(f"in the env worker:\n{text}")
        return outcome
    except Exception:
        return RuntimeError(f"{type(outcome).__name__}: {outcome}\nin the env worker:\n{text}")


def _worker_main(conn: Any) -> None:
    """Subprocess worker: receive the env factory, build the envs, then answer
    (command, payload) until 'close' or until the pool's end of the socket closes."""
    try:
        make_env_bytes, count = conn.recv()
        host = _EnvHost(make_env_bytes, count)
        conn.send(("ok", None))
    except Exception as exc:
        conn.send(("error", _portable(exc)))
        return
    try:
        while True:
            try:
                command, payload = conn.recv()
            except (EOFError, OSError):
                break
            if command == "close":
                break
            try:
                conn.send(("ok", host.handle(command, payload)))
            except Exception as exc:
                conn.send(("error", _portable(exc)))
    finally:
        host.close()


# ------------------------------------------------------------------------- remote pools
class _RemotePool:
    """Slots spread over workers, ``envs_per_worker`` each; restart and staleness logic."""

    def __init__(self, make_env: Callable[[], Any], size: int, envs_per_worker: int) -> None:
        import cloudpickle

        try:
            self._make_env_bytes = cloudpickle.dumps(make_env)
        except Exception as exc:
            raise ConfigError(f"the env factory cannot be sent to worker processes ({exc}); pass "
                              "turnrl.envs.registry.factory(env_id, **kwargs)") from exc
        self.size = size
        self.envs_per_worker = envs_per_worker
        self.num_workers = math.ceil(size / envs_per_worker)
        #: Workers restarted after they died.
        self.restarts = 0
        self._stale = [False] * size  # env replaced under an episode in flight
        self._locks = [threading.Lock() for _ in range(self.num_workers)]
        self._instructions: list[str] = [""] * size
        self._workers: list[Any] = [None] * self.num_workers
        try:
            for w in range(self.num_workers):
                self._start(w)
        except BaseException:
            self.close()
            raise

    # subclasses: _spawn(w) -> worker handle; _request(w, command, payload) -> result, raising
    # _Dead when the worker is gone; _stop(w)
    def _count(self, w: int) -> int:
        return min(self.envs_per_worker, self.size - w * self.envs_per_worker)

    def _where(self, slot: int) -> tuple[int, int]:
        if not 0 <= slot < self.size:
            raise IndexError(f"slot {slot} out of range for a pool of {self.size}")
        return divmod(slot, self.envs_per_worker)

    def _start(self, w: int) -> None:
        self._workers[w] = self._spawn(w)
        names = self._request(w, "instructions", None)
        base = w * self.envs_per_worker
        self._instructions[base:base + len(names)] = names

    def _restart(self, w: int) -> None:
        self._stop(w)
        self.restarts += 1
        base = w * self.envs_per_worker
        for slot in range(base, base + self._count(w)):
            self._stale[slot] = True
        self._start(w)

    def _checked(self, slot: int, command: str, payload: Any) -> Any:
        w, _ = self._where(slot)
        with self._locks[w]:
            if self._stale[slot] and command != "reset":
                raise WorkerLost(f"env slot {slot}: its worker died and was restarted")
            try:
                result = self._request(w, command, payload)
            except _Dead as dead:
                self._restart(w)
                raise WorkerLost(f"env slot {slot}: worker {w} died ({dead}); restarted") from None
            if command == "reset":
                self._stale[slot] = False
            return result

    def reset(self, slot: int, seed: int) -> tuple[str, dict[str, Any]]:
        outcome = self._checked(slot, "reset", (self._where(slot)[1], int(seed)))
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def step(self, slot: int, action: str) -> tuple:
        (outcome,) = self._checked(slot, "step_many", [(self._where(slot)[1], action)])
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def step_many(self, requests: Sequence[tuple[int, str]]) -> list[Outcome]:
        by_worker: dict[int, list[int]] = {}
        for n, (slot, _) in enumerate(requests):
            by_worker.setdefault(self._where(slot)[0], []).append(n)
        outcomes: list[Outcome] = [None] * len(requests)
        sent = []
        for w in sorted(by_worker):  # one order: no deadlock with another caller
            self._locks[w].acquire()
            live = []
            for n in by_worker[w]:
                slot = requests[n][0]
                if self._stale[slot]:
                    outcomes[n] = WorkerLost(f"env slot {slot}: its worker died and was restarted")
                else:
                    live.append(n)
            if not live:
                self._locks[w].release()
                continue
            payload = [(self._where(requests[n][0])[1], requests[n][1]) for n in live]
            try:
                sent.append((w, live, self._send(w, "step_many", payload)))
            except _Dead as dead:
                self._lost(w, live, requests, outcomes, dead)
                self._locks[w].release()
        for w, live, pending in sent:  # every worker is busy now: collect in turn
            try:
                results = self._receive(w, pending)
                for n, result in zip(live, results, strict=True):
                    outcomes[n] = result
            except _Dead as dead:
                self._lost(w, live, requests, outcomes, dead)
            except Exception as exc:  # the worker failed outside any env: every step failed
                for n in live:
                    outcomes[n] = exc
            finally:
                self._locks[w].release()
        return outcomes

    def _lost(self, w: int, live: list[int], requests: Sequence[tuple[int, str]],
              outcomes: list[Outcome], dead: _Dead) -> None:
        self._restart(w)
        for n in live:
            outcomes[n] = WorkerLost(f"env slot {requests[n][0]}: worker {w} died ({dead}); restarted")

    def instructions(self, slot: int) -> str:
        self._where(slot)
        return self._instructions[slot]

    def replace(self, slot: int) -> None:
        w, i = self._where(slot)
        with self._locks[w]:
            try:
                self._request(w, "replace", i)
            except _Dead:
                self._restart(w)
            self._stale[slot] = False

    def worker_pid(self, slot: int) -> int:
        """Process id of the worker holding the slot (fault tests kill it)."""
        w, _ = self._where(slot)
        with self._locks[w]:
            return self._request(w, "pid", None)

    def close(self) -> None:
        for w in range(self.num_workers):
            if self._workers[w] is not None:
                self._stop(w)
                self._workers[w] = None

    def _request(self, w: int, command: str, payload: Any) -> Any:
        return self._receive(w, self._send(w, command, payload))

    def __enter__(self) -> _RemotePool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Dead(Exception):
    """The worker is gone (raised inside the pool only)."""


class SubprocessPool(_RemotePool):
    """Envs in worker processes (``envs_per_worker`` each), driven over socket pairs.

    Each worker is a fresh interpreter (``python -m turnrl.envs._pool_worker``) with this
    process's ``sys.path``: safe next to torch or vLLM threads (nothing is forked), and,
    unlike multiprocessing's spawn, it never re-runs your ``__main__``. Workers take about
    a second to start and live as long as the pool.
    """

    def __init__(self, make_env: Callable[[], Any], size: int, *, envs_per_worker: int = 1,
                 start_timeout_s: float = 300.0) -> None:
        self._start_timeout_s = start_timeout_s
        super().__init__(make_env, size, envs_per_worker)

    def _spawn(self, w: int) -> Any:
        import os
        import socket
        import subprocess
        import sys
        from multiprocessing.connection import Connection

        ours, theirs = socket.socketpair()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "turnrl.envs._pool_worker", str(theirs.fileno())],
                pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        conn = Connection(ours.detach())
        conn.send((self._make_env_bytes, self._count(w)))
        if not conn.poll(self._start_timeout_s):
            proc.kill()
            raise RuntimeError(f"env worker {w} did not start within {self._start_timeout_s:.0f} s")
        try:
            status, value = conn.recv()
        except (EOFError, OSError):
            raise RuntimeError(f"env worker {w} died while building its envs "
                               f"(exit code {proc.wait(10)})") from None
        if status != "ok":
            proc.wait(10)
            raise value
        return (proc, conn)

    @staticmethod
    def _exit_code(proc: Any) -> Any:
        try:
            return proc.wait(5)
        except Exception:  # still running: it only closed its end
            return "still running"

    def _send(self, w: int, command: str, payload: Any) -> Any:
        proc, conn = self._workers[w]
        try:
            conn.send((command, payload))
        except OSError as exc:
            raise _Dead(f"{type(exc).__name__}, exit code {self._exit_code(proc)}") from None
        return None

    def _receive(self, w: int, pending: Any) -> Any:
        proc, conn = self._workers[w]
        try:
            status, value = conn.recv()
        except (EOFError, OSError):
            raise _Dead(f"exit code {self._exit_code(proc)}") from None
        if status != "ok":
            raise value
        return value

    def _stop(self, w: int) -> None:
        handle = self._workers[w]
        if handle is None:
            return
        proc, conn = handle
        try:
            conn.send(("close", None))
        except OSError:
            pass
        try:
            proc.wait(10)
        except Exception:  # did not exit in time
            proc.kill()
            proc.wait(5)
        conn.close()


class RayPool(_RemotePool):
    """Envs in Ray actors (``envs_per_worker`` each). Uses the running Ray if there is one,
    else ``ray.init(address=address)`` (``None``: start a local one; ``"auto"`` or
    ``"ray://host:10001"``: join a cluster). ``actor_options`` go to ``.options()`` (e.g.
    ``{"num_cpus": 1}``, the default)."""

    def __init__(self, make_env: Callable[[], Any], size: int, *, envs_per_worker: int = 1,
                 address: str | None = None, actor_options: dict[str, Any] | None = None,
                 start_timeout_s: float = 120.0) -> None:
        self._start_timeout_s = start_timeout_s
        try:
            import ray
        except ImportError as exc:
            raise ConfigError("env pool 'ray' needs Ray: pip install 'turnrl[ray]'") from exc
        self._ray = ray
        if not ray.is_initialized():
            ray.init(address=address, ignore_reinit_error=True, include_dashboard=False,
                     log_to_driver=False)
        self._actor_cls = ray.remote(_EnvHost)
        self._actor_options = {"num_cpus": 1, "max_restarts": 0, **(actor_options or {})}
        super().__init__(make_env, size, envs_per_worker)

    def _spawn(self, w: int) -> Any:
        ray = self._ray
        actor = self._actor_cls.options(**self._actor_options).remote(self._make_env_bytes, self._count(w))
        try:
            ray.get(actor.handle.remote("pid", None), timeout=self._start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            ray.kill(actor, no_restart=True)
            free = ray.available_resources().get("CPU", 0)
            raise RuntimeError(
                f"Ray did not start env worker {w} within {self._start_timeout_s:.0f} s; the cluster "
                f"has {free:g} CPUs free and each worker asks for {self._actor_options['num_cpus']} "
                f"(actor_options): put more envs on each worker (envs_per_worker), or add CPUs"
            ) from None
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as exc:
            raise RuntimeError(f"env worker {w} failed while building its envs: {exc}") from None
        return actor

    def _send(self, w: int, command: str, payload: Any) -> Any:
        return self._workers[w].handle.remote(command, payload)

    def _receive(self, w: int, pending: Any) -> Any:
        ray = self._ray
        try:
            return ray.get(pending)
        except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                ray.exceptions.NodeDiedError) as exc:
            raise _Dead(type(exc).__name__) from None
        except ray.exceptions.RayTaskError as exc:  # the worker itself raised (not an env)
            raise exc.as_instanceof_cause() from None

    def _stop(self, w: int) -> None:
        handle = self._workers[w]
        if handle is None:
            return
        try:
            self._ray.get(handle.close.remote(), timeout=10)
        except Exception:  # a dead actor cannot close; kill below is enough
            pass
        self._ray.kill(handle, no_restart=True)
