"""A pool of warm interpreter sessions.

Starting a session costs a sandbox start-up (tens of milliseconds for bubblewrap,
seconds for docker). A :class:`SessionPool` keeps sessions running: :meth:`acquire`
hands out an idle one (or starts one, up to ``max_size``), :meth:`release` gives it a new
sandbox (:meth:`Session.reset`) and keeps it, already started, for the next user. Nothing
the previous user did -- variables, modules, patched builtins, environment, rlimits, files,
permissions, threads, processes -- can reach the next one, because nothing of its sandbox
is reused. A session whose new sandbox does not start is closed instead.

Example:
    >>> pool = SessionPool(make_sandbox(), max_size=8)
    >>> with pool.session() as s:
    ...     s.run("print(1)").stdout
    '1\\n'
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from turnrl.errors import ConfigError
from turnrl.sandbox.base import Limits, Sandbox
from turnrl.sandbox.session import Session

__all__ = ["SessionPool", "PoolExhausted"]


class PoolExhausted(TimeoutError):
    """No session became free within the acquire timeout."""


class SessionPool:
    """Reuses warm :class:`Session` objects of one sandbox.

    Args:
        sandbox: the backend the sessions run in.
        max_size: most sessions alive at once (idle + in use).
        warm: sessions started right away, in the background.
        limits: session limits (default: the sandbox's).

    Thread-safe.
    """

    def __init__(self, sandbox: Sandbox, *, max_size: int = 8, warm: int = 0,
                 limits: Limits | None = None) -> None:
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
            raise ConfigError(f"max_size must be an int >= 1, got {max_size!r}")
        if isinstance(warm, bool) or not isinstance(warm, int) or not 0 <= warm <= max_size:
            raise ConfigError(f"warm must be an int in [0, max_size={max_size}], got {warm!r}")
        self.sandbox = sandbox
        self.max_size = max_size
        self.limits = limits
        self._idle: list[Session] = []
        self._in_use: set[int] = set()
        self._count = 0
        self._cond = threading.Condition()
        self._closed = False
        #: Sessions handed out again, each with a new, already started sandbox.
        self.reused = 0
        #: Sessions started.
        self.started = 0
        for _ in range(warm):
            threading.Thread(target=self._warm_one, daemon=True).start()

    def _new(self) -> Session:
        session = self.sandbox.session(limits=self.limits)
        session.start()
        with self._cond:
            self.started += 1
        return session

    def _warm_one(self) -> None:
        with self._cond:
            if self._closed or self._count >= self.max_size:
                return
            self._count += 1
        session = self._new()
        with self._cond:
            if self._closed:
                session.close()
                self._count -= 1
                return
            self._idle.append(session)
            self._cond.notify()

    def acquire(self, timeout_s: float = 60.0) -> Session:
        """An idle session, or a new one if the pool has room.

        Raises:
            PoolExhausted: all ``max_size`` sessions stayed in use for ``timeout_s``.
            RuntimeError: the pool is closed.
        """
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                if self._closed:
                    raise RuntimeError("the session pool is closed")
                if self._idle:
                    session = self._idle.pop()
                    self._in_use.add(id(session))
                    self.reused += 1
                    return session
                if self._count < self.max_size:
                    self._count += 1
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PoolExhausted(
                        f"all {self.max_size} sessions stayed busy for {timeout_s:g}s; raise "
                        "max_size or release sessions after use"
                    )
                self._cond.wait(left)
        try:
            session = self._new()
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            raise
        with self._cond:
            self._in_use.add(id(session))
        return session

    def release(self, session: Session) -> None:
        """Give a session back: it gets a new sandbox and is kept, or closed if the new
        sandbox does not start."""
        with self._cond:
            self._in_use.discard(id(session))
            closed = self._closed
        session.reset()
        healthy = not closed and session.start() is None
        with self._cond:
            if healthy and not self._closed:
                self._idle.append(session)
            else:
                self._count -= 1
            self._cond.notify()
        if not healthy:
            session.close()

    @contextlib.contextmanager
    def session(self, timeout_s: float = 60.0) -> Iterator[Session]:
        """``with pool.session() as s:`` -- acquire, then release on exit."""
        s = self.acquire(timeout_s)
        try:
            yield s
        finally:
            self.release(s)

    def close(self) -> None:
        """Close idle sessions; sessions in use are closed when released."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._count -= len(idle)
            self._cond.notify_all()
        for s in idle:
            s.close()

    def __enter__(self) -> SessionPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
