"""Stateful interpreter sessions: a Python process that lives inside a sandbox across an
agent's turns, so variables, imports and files survive from one code call to the next.

A :class:`Session` is made by :meth:`Sandbox.session`. Each :meth:`Session.run` executes
one cell (notebook style: a final expression's value is printed) and returns an
:class:`~turnrl.sandbox.base.ExecResult`. Limits apply per cell (wall and CPU time) and
per session (memory, processes, file size).

Inside the sandbox a supervisor holds the channel to the host and runs each cell in an
interpreter process of its own (see ``_server.py``), so nothing a cell does can write to,
read or forge that channel, and every status other than ``ok``/``runtime_error``/
``memory`` is decided by the supervisor or the host, never by the cell. A timeout
interrupts the cell and keeps the state; if the interpreter does not stop in time, or
crashes (``os._exit``, a segfault, killing itself), the supervisor keeps the output so far,
reports it, and the next cell runs in a fresh interpreter -- the result says so in
``message``. Between cells the interpreter is stopped, so threads a cell left running use
no CPU while the session is idle.

:meth:`Session.reset` (and a :class:`~turnrl.sandbox.pool.SessionPool` hand-back) replaces
the whole sandbox with a new one: nothing a cell did -- variables, modules, patched
builtins, environment, rlimits, files, permissions, threads, processes -- reaches the next
user.

Sessions are not shared between threads: each holds a lock so concurrent calls queue.
"""

from __future__ import annotations

import base64
import json
import os
import select
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from turnrl.errors import ConfigError
from turnrl.sandbox._proc import Child
from turnrl.sandbox.base import STATUSES, ExecResult, Limits, check_files, check_timeout, reject_nul

__all__ = ["Session", "Channel", "PipeChannel", "SERVER_SOURCE", "session_config"]

#: Source of the in-sandbox supervisor and interpreter (see ``_server.py``).
SERVER_SOURCE = (Path(__file__).with_name("_server.py")).read_text(encoding="utf-8")

#: Seconds the supervisor waits after interrupting a cell before it kills the interpreter.
SUPERVISOR_GRACE_S = 1.0
#: Seconds the host waits past a cell's time limit before it kills the whole sandbox
#: (the supervisor itself did not answer: it was stopped or killed by the cell).
GRACE_S = 3.0
#: Seconds allowed for a session's sandbox to start and say it is ready.
STARTUP_TIMEOUT_S = 30.0


def session_config(limits: Limits, *, scratch: str, private_pids: bool) -> dict[str, Any]:
    """The supervisor's settings, less the channel's fd numbers (the backend adds
    ``req_fd`` and ``rep_fd``)."""
    return {
        "scratch": scratch, "private_pids": private_pids, "output_bytes": limits.output_bytes,
        "grace_s": SUPERVISOR_GRACE_S,
        "rlimits": {k: v for k, v in limits.rlimits().items() if k != "RLIMIT_CPU"},
    }


class Channel:
    """The host's line-based link to one session supervisor."""

    def send(self, data: bytes, deadline: float) -> None:
        """Write all of ``data`` before ``deadline`` (monotonic) or raise ``OSError``."""
        raise NotImplementedError

    def readline(self, deadline: float) -> bytes | None:
        """Next line; ``None`` at the deadline, ``b""`` when the supervisor is gone."""
        raise NotImplementedError

    def close(self) -> None:
        """Kill the supervisor and everything in its sandbox. Idempotent, never blocks long."""
        raise NotImplementedError

    def exit_code(self) -> int | None:
        """Exit status once dead (``128 + N`` for signal N), else ``None``."""
        raise NotImplementedError

    def diagnostics(self) -> str:
        """The tail of the sandbox's own stderr (start-up errors)."""
        return ""


class PipeChannel(Channel):
    """A :class:`Channel` over two pipes of a local process (the sandbox's ``bwrap`` or the
    supervisor itself), read in the calling thread.

    Args:
        child: the started process (its kill takes the whole sandbox).
        req_w: write end of the request pipe (the supervisor's ``req_fd``).
        rep_r: read end of the answer pipe (the supervisor's ``rep_fd``).
        diag_r: read end of the sandbox's stdout/stderr, for start-up errors.
        max_line_bytes: longest answer accepted; a longer one breaks the channel.
        cleanup: called once after the kill.
    """

    def __init__(self, child: Child, *, req_w: int, rep_r: int, diag_r: int,
                 max_line_bytes: int, cleanup: Callable[[], None] | None = None) -> None:
        self.child = child
        self._req_w, self._rep_r, self._diag_r = req_w, rep_r, diag_r
        for fd in (req_w, rep_r, diag_r):
            os.set_blocking(fd, False)
        self._max = max_line_bytes
        self._buf = bytearray()
        self._diag = bytearray()
        self._eof = False
        self._diag_eof = False
        self._cleanup = cleanup
        self._closed = False

    def send(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            left = deadline - time.monotonic()
            if left <= 0:
                raise OSError("timed out writing to the session")
            _, writable, _ = select.select([], [self._req_w], [], min(left, 1.0))
            if writable:
                try:
                    view = view[os.write(self._req_w, view):]
                except BlockingIOError:
                    continue

    def readline(self, deadline: float) -> bytes | None:
        while True:
            idx = self._buf.find(b"\n")
            if idx >= 0:
                line = bytes(self._buf[:idx + 1])
                del self._buf[:idx + 1]
                return line
            if self._eof or len(self._buf) > self._max:
                if len(self._buf) > self._max:
                    self._diag += b"session answer exceeded the size limit\n"
                return b""
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            watched = [self._rep_r] if self._diag_eof else [self._rep_r, self._diag_r]
            readable, _, _ = select.select(watched, [], [], left)
            if self._diag_r in readable:
                self._read_diag()
            if self._rep_r in readable:
                try:
                    chunk = os.read(self._rep_r, 1 << 20)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    self._eof = True
                self._buf += chunk

    def _read_diag(self) -> None:
        try:
            while True:
                chunk = os.read(self._diag_r, 65536)
                if not chunk:  # the sandbox closed it (exited): stop watching it
                    self._diag_eof = True
                    return
                self._diag = (self._diag + chunk)[-4000:]
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.child.kill()
        self.child.wait(5.0)
        for fd in (self._req_w, self._rep_r, self._diag_r):
            try:
                os.close(fd)
            except OSError:
                pass
        if self._cleanup is not None:
            self._cleanup()

    def exit_code(self) -> int | None:
        return self.child.wait(1.0)

    def diagnostics(self) -> str:
        if not self._closed and not self._diag_eof:
            self._read_diag()
        return bytes(self._diag).decode("utf-8", errors="replace")[-2000:]


#: Builds a started supervisor: ``launch(config) -> Channel``, where ``config`` comes from
#: :func:`session_config`. Raises ``OSError`` (or returns a channel whose first line never
#: comes) when the sandbox cannot start.
Launcher = Callable[[dict[str, Any]], Channel]


class Session:
    """A stateful Python interpreter inside a sandbox.

    Args:
        launch: starts a supervisor in a fresh sandbox (given by the backend).
        limits: the session's limits; ``wall_time_s`` and ``cpu_time_s`` apply per cell.
        backend: backend name, for messages.
        config: the supervisor's settings (see :func:`session_config`).

    Example:
        >>> with make_sandbox().session() as s:
        ...     s.run("import math; r = math.sqrt(2)")
        ...     s.run("round(r, 3)").stdout
        '1.414\\n'
    """

    def __init__(self, launch: Launcher, limits: Limits, *, backend: str,
                 config: Mapping[str, Any]) -> None:
        self._launch = launch
        self.limits = limits
        self.backend = backend
        self._config = dict(config)
        self._chan: Channel | None = None
        self._next_id = 0
        self._lock = threading.Lock()
        self._closed = False
        #: Times the interpreter was restarted after a crash or a hard timeout.
        self.restarts = 0
        #: Cells run so far (across restarts).
        self.calls = 0
        #: Sandboxes started (the first, one per :meth:`reset`, one after each loss).
        self.sandboxes_started = 0

    # ------------------------------------------------------------------ lifecycle
    @property
    def alive(self) -> bool:
        """Whether a sandbox is running now (it starts on first use)."""
        return self._chan is not None

    def start(self) -> ExecResult | None:
        """Start the sandbox now instead of on first use (warm-up).

        Returns:
            ``None`` when ready, else an ``infra_error`` result saying why.
        """
        with self._lock:
            return self._ensure_started()

    def _ensure_started(self) -> ExecResult | None:
        if self._closed:
            return _infra("the session is closed; make a new one with sandbox.session()")
        if self._chan is not None:
            return None
        t0 = time.monotonic()
        try:
            chan = self._launch(dict(self._config))
        except (OSError, ValueError, RuntimeError) as exc:
            return _infra(f"could not start a {self.backend} session: {type(exc).__name__}: {exc}",
                          t0)
        reply = self._read_reply(chan, time.monotonic() + STARTUP_TIMEOUT_S, None)
        if not isinstance(reply, dict) or not reply.get("ready"):
            diag = chan.diagnostics()
            chan.close()
            why = "did not start in time" if reply is None else "exited during start-up"
            return _infra(f"the {self.backend} session interpreter {why}"
                          + (f": {diag.strip()}" if diag.strip() else ""), t0)
        self._chan = chan
        self.sandboxes_started += 1
        return None

    @staticmethod
    def _read_reply(chan: Channel, deadline: float, want_id: int | None
                    ) -> dict[str, Any] | bytes | None:
        """The next answer (with id ``want_id``, if given): a dict, ``b""`` on EOF,
        ``None`` on timeout."""
        while True:
            line = chan.readline(deadline)
            if not line:
                return line
            try:
                reply = json.loads(line)
            except ValueError:
                continue
            if isinstance(reply, dict) and (want_id is None or reply.get("id") == want_id):
                return reply

    def _kill(self) -> None:
        if self._chan is not None:
            self._chan.close()
            self._chan = None

    def close(self) -> None:
        """Stop the interpreter and free its sandbox. Idempotent."""
        with self._lock:
            self._closed = True
            chan, self._chan = self._chan, None
        if chan is not None:
            try:
                chan.send(b'{"op": "exit"}\n', time.monotonic() + 0.5)
            except OSError:
                pass
            chan.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Last resort for a session nobody closed: kill its sandbox (not at interpreter
        # shutdown, when the spawner reaps everything anyway).
        chan = getattr(self, "_chan", None)
        if chan is not None and not sys.is_finalizing():
            try:
                chan.close()
            except Exception:
                pass

    # ------------------------------------------------------------------ cells
    def run(self, code: str, *, timeout_s: float | None = None,
            files: Mapping[str, str | bytes] | None = None) -> ExecResult:
        """Run one cell of Python in the session.

        Args:
            code: Python source; if its last statement is an expression, its ``repr`` is
                printed (unless ``None``), as in a notebook.
            timeout_s: wall-clock limit of this cell (default ``limits.wall_time_s``). The
                CPU limit is ``min(limits.cpu_time_s, timeout_s)``.
            files: files written into the scratch directory before the cell runs.

        Returns:
            An :class:`ExecResult`. A crash or hard timeout says in ``message`` that the
            interpreter's state was lost; the next call runs in a fresh interpreter.
        """
        if not isinstance(code, str):
            raise ConfigError(f"code must be a str, got {type(code).__name__}")
        timeout = check_timeout(timeout_s, self.limits.wall_time_s)
        encoded = {k: base64.b64encode(v).decode("ascii") for k, v in check_files(files).items()}
        rejected = reject_nul(code)
        if rejected is not None:
            return rejected
        with self._lock:
            return self._run_locked(code, timeout, encoded)

    def _run_locked(self, code: str, timeout: float, files: dict[str, str]) -> ExecResult:
        t0 = time.monotonic()
        note = ""
        if self._chan is None and self.calls > 0 and not self._closed:
            note = "(the sandbox was restarted before this call; earlier state is lost) "
        failed = self._ensure_started()
        if failed is not None:
            return failed
        self.calls += 1
        self._next_id += 1
        ident = self._next_id
        cpu = min(float(self.limits.cpu_time_s), timeout)
        request = json.dumps({"op": "run", "id": ident, "code": code, "timeout_s": timeout,
                              "cpu_s": cpu, "files": files}).encode() + b"\n"
        chan = self._chan
        assert chan is not None
        try:
            chan.send(request, time.monotonic() + 10.0)
        except OSError:
            # The sandbox died between calls: an infrastructure fault, so retry once on
            # a fresh one.
            self._kill()
            self.restarts += 1
            note = "(the sandbox had died and was restarted; earlier state is lost) "
            failed = self._ensure_started()
            if failed is not None:
                return failed
            chan = self._chan
            assert chan is not None
            try:
                chan.send(request, time.monotonic() + 10.0)
            except OSError as exc:
                self._kill()
                return _infra(f"could not send the cell to the session: {exc}", t0)
        reply = self._read_reply(chan, time.monotonic() + timeout + GRACE_S, ident)
        duration = time.monotonic() - t0
        if reply is None:
            self._kill()
            self.restarts += 1
            return ExecResult(
                "", "", None, "timeout", False, duration,
                note + f"wall time limit of {timeout:g}s exceeded and the session did not "
                "answer; its sandbox was killed and restarts with a fresh state",
            )
        if not isinstance(reply, dict):  # EOF: the supervisor died during the cell
            exit_code = chan.exit_code()
            diag = chan.diagnostics().strip()
            self._kill()
            self.restarts += 1
            if exit_code is None:  # not even bwrap's status: the sandbox was lost
                return _infra(note + "the session's sandbox was lost during the cell "
                              f"(its spawner died?): {diag[-500:]}", t0)
            return ExecResult(
                "", diag[-2000:], exit_code, "runtime_error", False, duration,
                note + "the session's sandbox exited during the cell (the code killed its "
                "supervisor?); it restarts with a fresh state on the next call",
            )
        if reply.get("restarted"):
            self.restarts += 1
        status = reply.get("status")
        if status not in STATUSES:
            status = "infra_error"
        exit_code = reply.get("exit_code")
        return ExecResult(
            stdout=str(reply.get("stdout", "")),
            stderr=str(reply.get("stderr", "")),
            exit_code=exit_code if isinstance(exit_code, int) else None,
            status=status,
            output_truncated=bool(reply.get("truncated", False)),
            duration_s=duration,
            message=note + str(reply.get("message", "")),
        )

    def reset(self) -> None:
        """Forget everything: the sandbox is closed, and the next :meth:`run` (or
        :meth:`start`) starts a new one -- tens of milliseconds with bubblewrap -- so
        nothing a cell did survives: variables, modules, patched builtins, environment,
        rlimits, files, permissions, threads, processes."""
        with self._lock:
            self._kill()


def _infra(message: str, t0: float | None = None) -> ExecResult:
    duration = time.monotonic() - t0 if t0 is not None else 0.0
    return ExecResult("", "", None, "infra_error", False, duration, message)
