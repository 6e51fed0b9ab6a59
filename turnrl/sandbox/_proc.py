"""Process plumbing shared by the subprocess-based backends (bubblewrap, process).

:func:`run_captured` starts a program, reads its stdout and stderr without ever blocking
past a deadline, keeps the first ``output_bytes`` of each and drops the rest, and kills the
whole process group on timeout. :data:`MONITOR` is the small trusted program that runs
first inside the sandbox: it applies the rlimits, starts the real program as its child
and reports how that child ended on a file descriptor the child never has.
:func:`read_report` and :func:`judge` turn that report into a status the program cannot
forge.
"""

from __future__ import annotations

import json
import math
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from turnrl.sandbox.base import ExecResult, classify

__all__ = [
    "MONITOR", "Captured", "Child", "PopenChild", "Report", "decode", "judge", "kill_group",
    "memfd", "monitor_argv", "near_cpu_limit", "read_report", "run_captured",
]

#: Run as ``python3 -I -S -c MONITOR '<config json>' PROGRAM ARGS...`` with the config
#: ``{"rlimits": {name: value}, "report_fd": int, "secret_fd": int | None}``.
#:
#: The monitor makes itself non-dumpable (so a program of the same uid can neither read nor
#: write it, nor reach its file descriptors, through ``/proc``) and blocks every signal it
#: can. It sets each ``RLIMIT_*`` on itself (soft limit; the CPU hard limit sits one second
#: above so SIGXCPU comes first) so that the program inherits them, and starts the program
#: with ``posix_spawn`` (no copy of this process is made): stdio as they are, the secret
#: input, if any, as fd 3, every other descriptor closed. It waits for the program and
#: writes one JSON line to ``report_fd``: ``{"exit", "signal", "cpu_s"}`` (``cpu_s``: the
#: program's own CPU seconds, read from ``/proc`` before it is reaped) or
#: ``{"launch_error"}``. Only the monitor ever holds ``report_fd``.
MONITOR = r"""
import json, os, resource, signal, sys
cfg = json.loads(sys.argv[1])
REPORT, SECRET = cfg["report_fd"], cfg.get("secret_fd")

def report(obj):
    try:
        os.write(REPORT, (json.dumps(obj) + "\n").encode())
    except OSError:
        pass

def prctl_function():
    # Straight from _ctypes: importing ctypes costs more CPU than the rest of the monitor.
    try:
        import _ctypes

        class Int(_ctypes._SimpleCData):
            _type_ = "i"

        class Libc:
            _handle = _ctypes.dlopen(None, 2)

        class Function(_ctypes.CFuncPtr):
            _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
            _restype_ = Int

        return Function(("prctl", Libc())), _ctypes.get_errno
    except (ImportError, AttributeError, TypeError):
        import ctypes
        return ctypes.CDLL(None, use_errno=True).prctl, ctypes.get_errno

try:
    prctl, get_errno = prctl_function()
    if prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE
        raise OSError(get_errno(), "prctl(PR_SET_DUMPABLE) failed")
    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    for fd in [int(fd) for fd in os.listdir("/proc/self/fd")]:
        if fd > 2 and fd != SECRET:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass
    actions = []
    if SECRET is not None and SECRET != 3:
        actions = [(os.POSIX_SPAWN_DUP2, SECRET, 3), (os.POSIX_SPAWN_CLOSE, SECRET)]
    for name, value in cfg["rlimits"].items():
        hard = value + 1 if name == "RLIMIT_CPU" else value
        resource.setrlimit(getattr(resource, name), (value, hard))
    try:
        pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ, file_actions=actions,
                             setsigmask=(), setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))
    except OSError as exc:
        report({"launch_error": "%s: %s" % (type(exc).__name__, exc)})
        os._exit(0)
    if SECRET is not None:
        os.close(SECRET)  # the program has its copy
    for sig in signal.valid_signals():
        if sig not in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD):
            try:
                signal.signal(sig, signal.SIG_IGN)
            except (OSError, ValueError):
                pass
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        cpu = None
    _, status = os.waitpid(pid, 0)
    report({"exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None, "cpu_s": cpu})
    os._exit(0)
except BaseException as exc:
    report({"launch_error": "monitor: %s: %s" % (type(exc).__name__, exc)})
    os._exit(0)
"""


def monitor_argv(python: str, rlimits: dict[str, int], program: Sequence[str], *,
                 report_fd: int, secret_fd: int | None = None) -> list[str]:
    config = {"rlimits": rlimits, "report_fd": report_fd, "secret_fd": secret_fd}
    return [python, "-I", "-S", "-c", MONITOR, json.dumps(config), *program]


@dataclass(frozen=True)
class Report:
    """What the monitor saw: the program's exit status or signal and its CPU seconds, or
    why it could not start it."""

    exit: int | None = None
    signal: int | None = None
    cpu_s: float | None = None
    launch_error: str = ""

    @property
    def exit_code(self) -> int | None:
        """Shell convention: ``128 + N`` for death by signal N."""
        return 128 + self.signal if self.signal is not None else self.exit


def read_report(fd: int) -> Report | None:
    """The monitor's report from the read end of its pipe, or ``None`` if it wrote none
    (it was killed before it could). Reads what is there without blocking."""
    os.set_blocking(fd, False)
    data = b""
    try:
        while len(data) < 1 << 16:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    except (BlockingIOError, OSError):
        pass
    for line in data.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if not isinstance(doc, dict):
            continue
        if doc.get("launch_error"):
            return Report(launch_error=str(doc["launch_error"]))
        cpu = doc.get("cpu_s")
        return Report(exit=_int_or_none(doc.get("exit")), signal=_int_or_none(doc.get("signal")),
                      cpu_s=float(cpu) if isinstance(cpu, (int, float)) else None)
    return None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def judge(cap: Captured, report: Report | None, *, timeout_s: float, cpu_limit_s: float,
          fallback_exit_code: int | None) -> ExecResult:
    """The :class:`ExecResult` of a monitored run, from what only the host and the monitor
    observed: the host's clock (wall timeout), the monitor's report (exit status, signal,
    CPU time). The program's own exit status cannot fake a timeout or an infra error."""
    stdout, stderr = decode(cap.stdout), decode(cap.stderr)
    if cap.timed_out:
        status, message = classify(None, stderr, timed_out=True, timeout_s=timeout_s)
        return ExecResult(stdout, stderr, None, status, cap.truncated, cap.duration_s, message)
    if report is None:
        return ExecResult(stdout, stderr, fallback_exit_code, "runtime_error", cap.truncated,
                          cap.duration_s, "the program killed the sandbox's monitor, so how it "
                          "ended is unknown")
    if report.launch_error:
        return ExecResult(stdout, stderr, None, "infra_error", cap.truncated, cap.duration_s,
                          f"the sandbox could not start the program: {report.launch_error}")
    rlimit_cpu = max(1, math.ceil(cpu_limit_s))  # RLIMIT_CPU is whole seconds
    cpu_exceeded = (report.signal in (signal.SIGXCPU, signal.SIGKILL)
                    and report.cpu_s is not None and near_cpu_limit(report.cpu_s, rlimit_cpu))
    status, message = classify(report.exit_code, stderr, killed_by=report.signal,
                               cpu_exceeded=cpu_exceeded, cpu_limit_s=cpu_limit_s)
    return ExecResult(stdout, stderr, report.exit_code, status, cap.truncated, cap.duration_s,
                      message)


def near_cpu_limit(used_s: float, limit_s: float) -> bool:
    """Whether a process killed by SIGXCPU (or SIGKILL) had used about its CPU limit.

    The kernel charges CPU time in clock ticks and sends SIGXCPU when that count reaches
    the limit; ``/proc`` reports the precise run time, which on a loaded machine can be
    several percent lower. A program cannot get this close without spending the time, so
    dying of the signal this close to the limit is a CPU timeout; dying of it earlier (it
    sent the signal itself) is not.
    """
    return used_s >= 0.9 * limit_s - 0.1


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


class Child(Protocol):
    """A started program as :func:`run_captured` drives it (a ``Popen`` adapted by
    :class:`PopenChild`, or a spawner's ``Spawned``)."""

    def poll(self) -> int | None:
        """Exit status (``128 + N`` for signal N) once exited, else ``None``."""

    def done(self) -> bool:
        """Exited, or lost (its status will never be known)."""

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit status, or ``None`` if still running after ``timeout`` seconds."""

    def kill(self) -> None:
        """SIGKILL the program's whole process group."""


class PopenChild:
    """:class:`Child` over a ``subprocess.Popen`` started with ``start_new_session``."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc

    def poll(self) -> int | None:
        return _shell(self.proc.poll())

    def done(self) -> bool:
        return self.proc.poll() is not None

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            return _shell(self.proc.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        kill_group(self.proc)


def _shell(rc: int | None) -> int | None:
    return 128 - rc if rc is not None and rc < 0 else rc


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
    start: Callable[[int, int], Child],
    *,
    timeout_s: float,
    output_bytes: int,
    on_exit: Callable[[], None] | None = None,
) -> Captured:
    """Start a program with ``start(stdout_fd, stderr_fd)`` and run it with a wall-clock
    deadline and capped output capture.

    Never raises for the program's behaviour; a failure to start comes back as
    ``spawn_error``. ``on_exit`` runs when the program has exited (or was killed) and again
    at the end, e.g. to sweep background processes that left the process group.
    """
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        child = start(out_w, err_w)
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        for fd in (out_r, err_r):
            os.close(fd)
        return Captured(None, b"", b"", False, False, time.monotonic() - t0,
                        spawn_error=f"{type(exc).__name__}: {exc}")
    finally:
        os.close(out_w)
        os.close(err_w)

    bufs = {"stdout": bytearray(), "stderr": bytearray()}
    truncated = timed_out = False
    sel = selectors.DefaultSelector()
    for name, fd in (("stdout", out_r), ("stderr", err_r)):
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ, name)
    rc: int | None = None
    try:
        drain_until = None  # after the end: read what is left, but not forever
        while sel.get_map():
            now = time.monotonic()
            if drain_until is None:
                if child.done():
                    # The program is done; whatever still holds its pipes is a leftover
                    # background process of its group: kill it, keep the buffered output.
                    child.kill()
                    if on_exit is not None:
                        on_exit()
                    drain_until = now + 1.0
                elif now >= deadline:
                    timed_out = True
                    child.kill()
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
        rc = child.wait(max(0.1, deadline - time.monotonic()) if not timed_out else 2.0)
        if not child.done():
            timed_out = True
            child.kill()
            rc = child.wait(5.0)
    finally:
        sel.close()
        for fd in (out_r, err_r):
            os.close(fd)
        if not child.done():
            child.kill()
        if on_exit is not None:
            on_exit()
    return Captured(rc, bytes(bufs["stdout"]), bytes(bufs["stderr"]), truncated, timed_out,
                    time.monotonic() - t0)


def decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")
