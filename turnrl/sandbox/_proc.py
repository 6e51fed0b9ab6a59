"""Process plumbing shared by the subprocess-based backends (bubblewrap, process).

:func:`run_captured` starts a command, reads its stdout and stderr without ever blocking
past a deadline, keeps the first ``output_bytes`` of each and drops the rest, and kills
the whole process group on timeout. :data:`LAUNCHER` is the tiny program that applies the
rlimits inside the sandbox and then executes the real command.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = [
    "LAUNCHER", "LAUNCH_FAILED", "Captured", "run_captured", "memfd", "kill_group",
    "spawn_long_lived",
]

#: Exit status of :data:`LAUNCHER` when it could not apply the limits or exec the command
#: (an infrastructure fault, not the program's).
LAUNCH_FAILED = 125

#: Run as ``python3 -I -S -c LAUNCHER '<rlimits json>' PROGRAM ARGS...``: sets each
#: ``RLIMIT_*`` (soft limit; the CPU hard limit sits one second above so SIGXCPU, not
#: SIGKILL, marks a CPU timeout), then replaces itself with the program.
LAUNCHER = r"""
import os, sys, json, resource
try:
    for name, value in json.loads(sys.argv[1]).items():
        hard = value + 1 if name == "RLIMIT_CPU" else value
        resource.setrlimit(getattr(resource, name), (value, hard))
    os.execv(sys.argv[2], sys.argv[2:])
except BaseException as exc:
    os.write(2, ("turnrl-launch: %s: %s\n" % (type(exc).__name__, exc)).encode())
    os._exit(125)
"""


def launcher_argv(python: str, rlimits: dict[str, int], program: Sequence[str]) -> list[str]:
    return [python, "-I", "-S", "-c", LAUNCHER, json.dumps(rlimits), *program]


_spawner: concurrent.futures.ThreadPoolExecutor | None = None
_spawner_lock = threading.Lock()


def spawn_long_lived(factory: Callable[[], subprocess.Popen], timeout_s: float = 60.0) -> subprocess.Popen:
    """Start a process that must outlive the calling thread.

    ``bwrap --die-with-parent`` uses ``PR_SET_PDEATHSIG``, which fires when the *thread*
    that forked it exits, not the process. A session started from a short-lived worker
    thread would be killed when that thread ends, so sessions are forked from one
    dedicated thread that lives as long as the interpreter.
    """
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="turnrl-sandbox-spawner")
    return _spawner.submit(factory).result(timeout=timeout_s)


def memfd(name: str, data: bytes) -> int:
    """An anonymous in-memory file holding ``data``, positioned at 0 (caller closes it)."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group led by ``proc`` (started with ``start_new_session``)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()
    except (ProcessLookupError, OSError):
        pass


@dataclass
class Captured:
    """Raw outcome of :func:`run_captured`."""

    returncode: int | None  # shell convention: 128 + N for signal N; None if never reaped
    stdout: bytes
    stderr: bytes
    truncated: bool
    timed_out: bool
    duration_s: float
    spawn_error: str = ""


def run_captured(
    argv: Sequence[str],
    *,
    timeout_s: float,
    output_bytes: int,
    stdin_fd: int | None = None,
    pass_fds: Sequence[int] = (),
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    user: int | None = None,
    group: int | None = None,
    on_exit: Callable[[], None] | None = None,
) -> Captured:
    """Run ``argv`` with a wall-clock deadline and capped output capture.

    Never raises for the child's behaviour; a failure to spawn comes back as
    ``spawn_error``. ``on_exit`` runs when the child has exited (or was killed) and again
    at the end, e.g. to sweep background processes that left the process group.
    """
    start = time.monotonic()
    deadline = start + timeout_s
    kwargs: dict = {}
    if user is not None:
        kwargs.update(user=user, group=group, extra_groups=[])
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=stdin_fd if stdin_fd is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=tuple(pass_fds),
            env=env,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
            **kwargs,
        )
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        return Captured(None, b"", b"", False, False, time.monotonic() - start,
                        spawn_error=f"{type(exc).__name__}: {exc}")

    bufs = {"stdout": bytearray(), "stderr": bytearray()}
    truncated = False
    timed_out = False
    sel = selectors.DefaultSelector()
    assert proc.stdout is not None and proc.stderr is not None
    for name, stream in (("stdout", proc.stdout), ("stderr", proc.stderr)):
        os.set_blocking(stream.fileno(), False)
        sel.register(stream.fileno(), selectors.EVENT_READ, name)
    try:
        drain_until = None  # after a kill: read what is left, but not forever
        while sel.get_map():
            now = time.monotonic()
            if drain_until is None:
                if proc.poll() is not None:
                    # The program is done; whatever still holds its pipes is a leftover
                    # background process of its group: kill it, keep the buffered output.
                    kill_group(proc)
                    if on_exit is not None:
                        on_exit()
                    drain_until = now + 1.0
                elif now >= deadline:
                    timed_out = True
                    kill_group(proc)
                    drain_until = now + 2.0
            elif now >= drain_until:
                break
            limit = (drain_until if drain_until is not None else deadline) - now
            for key, _ in sel.select(timeout=max(0.0, min(limit, 0.1))):
                try:
                    chunk = os.read(key.fd, 1 << 16)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                buf = bufs[key.data]
                room = output_bytes - len(buf)
                if room > 0:
                    buf += chunk[:room]
                if len(chunk) > room:
                    truncated = True
        # Output closed: the program is done (or killed). Reap it, with a bound.
        remaining = max(0.1, deadline - time.monotonic()) if not timed_out else 2.0
        try:
            proc.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_group(proc)
            try:
                proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                pass
    finally:
        sel.close()
        for stream in (proc.stdout, proc.stderr):
            try:
                stream.close()
            except OSError:
                pass
        if proc.returncode is None:
            kill_group(proc)
        if on_exit is not None:
            on_exit()
    rc = proc.returncode
    if rc is not None and rc < 0:
        rc = 128 - rc
    return Captured(rc, bytes(bufs["stdout"]), bytes(bufs["stderr"]), truncated, timed_out,
                    time.monotonic() - start)


def decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")
