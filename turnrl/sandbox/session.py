"""Stateful interpreter sessions: a Python process that lives inside a sandbox across an
agent's turns, so variables, imports and files survive from one code call to the next.

A :class:`Session` is made by :meth:`Sandbox.session`. Each :meth:`Session.run` executes
one cell (notebook style: a final expression's value is printed) and returns an
:class:`~turnrl.sandbox.base.ExecResult`. Limits apply per cell (wall and CPU time) and
per session (memory, processes, file size). A timeout interrupts the cell and keeps the
state; if the interpreter does not come back in time, or crashes (``os._exit``, a
segfault, killing itself), the session is torn down and restarts with a fresh state on
the next call -- the result says so in ``message``.

Sessions are not shared between threads: each holds a lock so concurrent calls queue.
"""

from __future__ import annotations

import base64
import collections
import json
import os
import queue
import secrets
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from turnrl.errors import ConfigError
from turnrl.sandbox._proc import kill_group
from turnrl.sandbox.base import ExecResult, Limits, check_files, check_timeout

__all__ = ["Session", "Channel", "SubprocessChannel", "SERVER_SOURCE"]

#: Source of the in-sandbox interpreter (see ``_server.py``).
SERVER_SOURCE = (Path(__file__).with_name("_server.py")).read_text(encoding="utf-8")

#: Seconds the host waits past a cell's own time limit before it kills the sandbox.
GRACE_S = 2.0
#: Seconds allowed for a session's interpreter to start and say it is ready.
STARTUP_TIMEOUT_S = 30.0


class Channel:
    """The host's line-based link to a session server (one per server process)."""

    def send(self, data: bytes, deadline: float) -> None:
        """Write all of ``data`` before ``deadline`` (monotonic) or raise ``OSError``."""
        raise NotImplementedError

    def readline(self, deadline: float) -> bytes | None:
        """Next line; ``None`` at the deadline, ``b""`` when the server is gone."""
        raise NotImplementedError

    def close(self) -> None:
        """Kill the server and everything in its sandbox. Idempotent, never blocks long."""
        raise NotImplementedError

    def exit_code(self) -> int | None:
        """Exit status once dead (``128 + N`` for signal N), else ``None``."""
        raise NotImplementedError

    def diagnostics(self) -> str:
        """The tail of the server's own stderr (sandbox start-up errors)."""
        return ""


class SubprocessChannel(Channel):
    """A :class:`Channel` over the stdin/stdout pipes of a local process."""

    def __init__(self, proc: subprocess.Popen, *, max_line_bytes: int,
                 cleanup: Callable[[], None] | None = None) -> None:
        self.proc = proc
        self._lines: queue.Queue[bytes] = queue.Queue()
        self._stderr: collections.deque[bytes] = collections.deque(maxlen=64)
        self._cleanup = cleanup
        self._closed = False
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        os.set_blocking(proc.stdin.fileno(), False)
        threading.Thread(target=self._read_stdout, args=(max_line_bytes,), daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self, max_line_bytes: int) -> None:
        stream = self.proc.stdout
        try:
            while True:
                line = stream.readline(max_line_bytes)
                if not line:
                    break
                if not line.endswith(b"\n"):  # over-long or cut: the protocol is broken
                    self._stderr.append(b"session answer exceeded the size limit\n")
                    break
                self._lines.put(line)
        except (OSError, ValueError):
            pass
        finally:
            self._lines.put(b"")
            try:
                stream.close()
            except OSError:
                pass

    def _read_stderr(self) -> None:
        try:
            for line in self.proc.stderr:
                self._stderr.append(line[:2000])
        except (OSError, ValueError):
            pass
        finally:
            try:
                self.proc.stderr.close()
            except OSError:
                pass

    def send(self, data: bytes, deadline: float) -> None:
        fd = self.proc.stdin.fileno()
        view = memoryview(data)
        while view:
            left = deadline - time.monotonic()
            if left <= 0:
                raise OSError("timed out writing to the session")
            _, writable, _ = select.select([], [fd], [], min(left, 1.0))
            if writable:
                try:
                    view = view[os.write(fd, view):]
                except BlockingIOError:
                    continue

    def readline(self, deadline: float) -> bytes | None:
        try:
            return self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        kill_group(self.proc)
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        # stdout/stderr are closed by their reader threads when they see EOF: closing a
        # stream another thread is reading from can abort the interpreter at shutdown.
        try:
            self.proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            pass
        if self._cleanup is not None:
            self._cleanup()

    def exit_code(self) -> int | None:
        rc = self.proc.poll()
        if rc is None:
            try:
                rc = self.proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                return None
        return 128 - rc if rc < 0 else rc

    def diagnostics(self) -> str:
        return b"".join(self._stderr).decode("utf-8", errors="replace")[-2000:]


#: Builds a started server: ``launch(config_json) -> Channel``. Raises ``OSError`` (or
#: returns a channel whose first line never comes) when the sandbox cannot start.
Launcher = Callable[[str], Channel]


class Session:
    """A stateful Python interpreter inside a sandbox.

    Args:
        launch: starts a server process in a fresh sandbox (given by the backend).
        limits: the session's limits; ``wall_time_s`` and ``cpu_time_s`` apply per cell.
        backend: backend name, for messages.
        config: extra server settings (scratch dir, whether the pid namespace is private).

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
        self._token = ""
        self._lock = threading.Lock()
        self._closed = False
        #: Times the interpreter was restarted after a crash or a hard timeout.
        self.restarts = 0
        #: Cells run so far (across restarts).
        self.calls = 0

    # ------------------------------------------------------------------ lifecycle
    @property
    def alive(self) -> bool:
        """Whether an interpreter is running now (it starts on first use)."""
        return self._chan is not None

    def start(self) -> ExecResult | None:
        """Start the interpreter now instead of on first use (warm-up).

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
        self._token = secrets.token_hex(8)
        config = {
            **self._config,
            "token": self._token,
            "output_bytes": self.limits.output_bytes,
            "rlimits": {k: v for k, v in self.limits.rlimits().items() if k != "RLIMIT_CPU"},
        }
        try:
            chan = self._launch(json.dumps(config))
        except (OSError, ValueError, RuntimeError) as exc:
            return _infra(f"could not start a {self.backend} session: {type(exc).__name__}: {exc}",
                          t0)
        reply = self._read_reply(chan, time.monotonic() + STARTUP_TIMEOUT_S)
        if not isinstance(reply, dict) or not reply.get("ready"):
            diag = chan.diagnostics()
            chan.close()
            why = "did not start in time" if reply is None else "exited during start-up"
            return _infra(f"the {self.backend} session interpreter {why}"
                          + (f": {diag.strip()}" if diag.strip() else ""), t0)
        self._chan = chan
        return None

    def _read_reply(self, chan: Channel, deadline: float) -> dict[str, Any] | bytes | None:
        """The next answer carrying our token: a dict, ``b""`` on EOF, ``None`` on timeout.
        Lines without the token (a cell writing to the protocol fd) are skipped."""
        prefix = self._token.encode() + b" "
        while True:
            line = chan.readline(deadline)
            if not line:
                return line
            if line.startswith(prefix):
                try:
                    reply = json.loads(line[len(prefix):])
                except ValueError:
                    continue
                if isinstance(reply, dict):
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
        # Last resort for a session nobody closed: kill its sandbox, nothing more (this
        # may run at interpreter shutdown).
        chan = getattr(self, "_chan", None)
        proc = getattr(chan, "proc", None)
        if proc is not None:
            kill_group(proc)
        elif chan is not None and not sys.is_finalizing():
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
            state was lost; the next call starts a fresh interpreter.
        """
        if not isinstance(code, str):
            raise ConfigError(f"code must be a str, got {type(code).__name__}")
        timeout = check_timeout(timeout_s, self.limits.wall_time_s)
        encoded = {k: base64.b64encode(v).decode("ascii") for k, v in check_files(files).items()}
        with self._lock:
            return self._run_locked(code, timeout, encoded)

    def _run_locked(self, code: str, timeout: float, files: dict[str, str]) -> ExecResult:
        t0 = time.monotonic()
        note = ""
        if self._chan is None and self.calls > 0 and not self._closed:
            note = "(the interpreter was restarted before this call; earlier state is lost) "
        failed = self._ensure_started()
        if failed is not None:
            return failed
        self.calls += 1
        cpu = min(float(self.limits.cpu_time_s), timeout)
        request = json.dumps({"op": "run", "code": code, "timeout_s": timeout, "cpu_s": cpu,
                              "files": files}).encode() + b"\n"
        chan = self._chan
        assert chan is not None
        try:
            chan.send(request, time.monotonic() + 10.0)
        except OSError:
            # The interpreter died between calls (a background thread exiting it, say):
            # an infrastructure fault, so retry once on a fresh one.
            self._kill()
            self.restarts += 1
            note = "(the interpreter had died and was restarted; earlier state is lost) "
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
        reply = self._read_reply(chan, time.monotonic() + timeout + GRACE_S)
        duration = time.monotonic() - t0
        if reply is None:
            self._kill()
            self.restarts += 1
            return ExecResult(
                "", "", None, "timeout", False, duration,
                note + f"wall time limit of {timeout:g}s exceeded and the cell could not be "
                "interrupted; the interpreter was killed and restarts with a fresh state",
            )
        if not isinstance(reply, dict):  # EOF: the interpreter died during the cell
            exit_code = chan.exit_code()
            diag = chan.diagnostics().strip()
            self._kill()
            self.restarts += 1
            how = f"exit status {exit_code}" if exit_code is not None else "no exit status"
            status = "memory" if "MemoryError" in diag else "runtime_error"
            return ExecResult(
                "", diag[-2000:], exit_code, status, False, duration,
                note + f"the interpreter crashed ({how}); it restarts with a fresh state "
                "on the next call",
            )
        status = reply.get("status", "infra_error")
        if status not in ("ok", "timeout", "memory", "runtime_error", "infra_error"):
            status = "infra_error"
        return ExecResult(
            stdout=str(reply.get("stdout", "")),
            stderr=str(reply.get("stderr", "")),
            exit_code=reply.get("exit_code"),
            status=status,
            output_truncated=bool(reply.get("truncated", False)),
            duration_s=duration,
            message=note + str(reply.get("message", "")),
        )

    def reset(self) -> bool:
        """Forget all state: variables, imported scratch modules, scratch files, stray
        processes. Cheaper than a new session. Returns ``False`` if the interpreter had
        to be (or could not be) restarted instead."""
        with self._lock:
            if self._chan is None:
                return self._ensure_started() is None
            chan = self._chan
            try:
                chan.send(b'{"op": "reset"}\n', time.monotonic() + 5.0)
                reply = self._read_reply(chan, time.monotonic() + 10.0)
            except OSError:
                reply = None
            if isinstance(reply, dict) and reply.get("ok"):
                return True
            self._kill()
            return self._ensure_started() is None and False


def _infra(message: str, t0: float | None = None) -> ExecResult:
    duration = time.monotonic() - t0 if t0 is not None else 0.0
    return ExecResult("", "", None, "infra_error", False, duration, message)
