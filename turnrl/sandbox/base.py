"""The sandbox contract: :class:`Limits`, :class:`ExecResult` and :class:`Sandbox`.

A sandbox runs untrusted code (what an agent wrote) and always answers with an
:class:`ExecResult`; it never raises because of what the code did. Failures are data:

``ok``            the program exited with status 0.
``timeout``       wall-clock or CPU time limit reached; the program was killed.
``memory``        the memory limit was hit (``MemoryError``, allocation failure).
``runtime_error`` any other failure of the program: non-zero exit, exception, signal.
``infra_error``   the sandbox itself failed (could not start, lost its interpreter);
                  the code may not have run at all. Retry only these.

Every backend applies the same :class:`Limits`. Network is always off and only the
scratch directory (the working directory, ``$HOME``) and ``/tmp`` are writable, except in
the ``process`` backend, which has no isolation at all and refuses to start unless
``unsafe=True``.

Errors in the *arguments* (an unknown language, a file name that climbs out of the
scratch directory, a negative timeout) are the caller's bugs and raise
:class:`~turnrl.errors.ConfigError` at once.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from turnrl.errors import ConfigError, TurnRLError

if TYPE_CHECKING:
    from turnrl.sandbox.session import Session

__all__ = [
    "ExecResult", "Limits", "Sandbox", "SandboxUnavailable", "Status", "STATUSES", "LANGUAGES",
    "check_files", "check_language", "check_timeout", "classify", "reject_nul", "PROTECTIONS",
]

Status = Literal["ok", "timeout", "memory", "runtime_error", "infra_error"]
STATUSES: tuple[str, ...] = ("ok", "timeout", "memory", "runtime_error", "infra_error")

#: Languages every backend runs, and the file name the program gets inside the sandbox.
LANGUAGES: dict[str, str] = {"python": "main.py", "bash": "main.sh"}

#: Where a program's source lives inside a sandbox (read-only, outside the scratch dir).
CODE_DIR = "/run/turnrl"
#: The writable scratch directory: working directory and ``$HOME``.
SCRATCH_DIR = "/home/sandbox"


#: Protections a backend may enforce; ``Sandbox.protections`` names those an instance does
#: (``make_sandbox`` logs them). A backend that lacks one says so in its docstring.
PROTECTIONS: dict[str, str] = {
    "isolation": "own mount, pid, network, ipc and uts namespaces (or a container): no host "
                 "files, processes or network",
    "trusted_status": "timeouts and infra errors come from what the host or a monitor the "
                      "program cannot reach observed, never from the program's exit status",
    "private_channel": "session results and run()'s secret input travel on file descriptors "
                       "the sandboxed code cannot reach",
    "seccomp": "a seccomp filter refuses namespace creation, mounts, ptrace, bpf, keyctl, "
               "perf_event_open, io_uring, and memory that escapes the address-space limit "
               "(memfd_create, SysV shared memory and message queues, POSIX queues)",
    "no_nested_userns": "no user namespace can be created inside the sandbox",
    "cgroup_limits": "memory and processes are limited for the sandbox as a whole (cgroups)",
}


class SandboxUnavailable(TurnRLError, RuntimeError):
    """A backend cannot run on this machine (no ``bwrap``, no Docker engine, ...) or was
    asked for without the consent it needs (``process`` without ``unsafe=True``)."""


@dataclass(frozen=True)
class Limits:
    """Resource limits applied to every program run in a sandbox.

    Attributes:
        wall_time_s: wall-clock seconds before the program is killed (``timeout``).
            :meth:`Sandbox.run` takes a per-call ``timeout_s`` that overrides it.
        cpu_time_s: CPU seconds (user + system) before the program is killed.
        memory_mb: memory limit in MiB. In bubblewrap and process it is each process's
            address space (``RLIMIT_AS``); in docker, the container's cgroup limit. Hitting
            it gives status ``memory``. Memory the address-space limit cannot see is
            refused in bubblewrap (``memfd_create``, SysV shared memory and message
            queues, POSIX message queues fail with ENOMEM, so also give ``memory``), and
            files live on the two tmpfs mounts of ``scratch_mb`` each. One bubblewrap
            sandbox therefore holds at most ``memory_mb * max_processes + 2 *
            scratch_mb`` MiB; a limit on the sum would need cgroups, which unprivileged
            users do not get.
        max_processes: processes and threads the program may have at once (fork bombs
            stop here). Counted per sandbox, so concurrent sandboxes do not share it.
        file_size_mb: largest file the program may write, in MiB.
        output_bytes: bytes kept of each of stdout and stderr; the rest is read and
            dropped, and ``output_truncated`` is set. 1 MB matches SandboxFusion.
        scratch_mb: size of the writable scratch directory (and, separately, of ``/tmp``).
        open_files: file descriptors the program may hold.
    """

    wall_time_s: float = 10.0
    cpu_time_s: float = 10.0
    memory_mb: int = 1024
    max_processes: int = 64
    file_size_mb: int = 16
    output_bytes: int = 1_000_000
    scratch_mb: int = 64
    open_files: int = 256

    def __post_init__(self) -> None:
        problems = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                problems.append(f"{f.name} must be a number, got {value!r}")
            elif not math.isfinite(value) or value <= 0:
                problems.append(f"{f.name} must be > 0, got {value!r}")
        if not problems:
            if self.memory_mb < 32:
                problems.append(f"memory_mb must be >= 32 (an interpreter needs it), got {self.memory_mb}")
            if self.max_processes < 2:
                problems.append(f"max_processes must be >= 2, got {self.max_processes}")
            if self.open_files < 16:
                problems.append(f"open_files must be >= 16, got {self.open_files}")
        if problems:
            raise ConfigError("invalid sandbox Limits: " + "; ".join(problems))

    def replace(self, **changes: Any) -> Limits:
        """A copy with some fields changed (validated again).

        Raises:
            ConfigError: an unknown field name (the valid ones are listed) or a bad value.
        """
        names = [f.name for f in dataclasses.fields(self)]
        unknown = [k for k in changes if k not in names]
        if unknown:
            raise ConfigError(f"unknown Limits field(s) {unknown}; valid fields: {', '.join(names)}")
        return dataclasses.replace(self, **changes)

    def rlimits(self, *, cpu_time_s: float | None = None) -> dict[str, int]:
        """The ``resource.RLIMIT_*`` values a launcher applies (name -> soft=hard value)."""
        cpu = cpu_time_s if cpu_time_s is not None else self.cpu_time_s
        return {
            "RLIMIT_CPU": max(1, math.ceil(cpu)),
            "RLIMIT_AS": int(self.memory_mb) * 1024 * 1024,
            "RLIMIT_NPROC": int(self.max_processes),
            "RLIMIT_FSIZE": int(self.file_size_mb) * 1024 * 1024,
            "RLIMIT_NOFILE": int(self.open_files),
            "RLIMIT_CORE": 0,
        }


@dataclass
class ExecResult:
    """What happened when a program ran.

    Attributes:
        stdout: standard output, decoded as UTF-8 (bad bytes replaced), at most
            ``Limits.output_bytes`` bytes of it.
        stderr: standard error, likewise.
        exit_code: the program's exit status; ``128 + N`` when killed by signal N;
            ``None`` when it never ran or its status is unknown (infra errors).
        status: ``ok | timeout | memory | runtime_error | infra_error``.
        output_truncated: stdout or stderr was longer than the limit and was cut.
        duration_s: wall-clock seconds from start to result.
        message: a short human-readable note on why the status is what it is (empty
            when ``ok``), e.g. ``"wall time limit of 2.0 s exceeded"``.
    """

    stdout: str
    stderr: str
    exit_code: int | None
    status: Status
    output_truncated: bool = False
    duration_s: float = 0.0
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Sandbox(abc.ABC):
    """Runs untrusted code under :class:`Limits` and returns :class:`ExecResult` objects.

    Instances are thread-safe: many ``run`` calls may be in flight at once, each in its
    own isolated sandbox. Use :func:`turnrl.sandbox.make_sandbox` to pick a backend.

    Example:
        >>> from turnrl.sandbox import make_sandbox
        >>> sandbox = make_sandbox("auto")
        >>> sandbox.run("print(6 * 7)").stdout
        '42\\n'
        >>> with sandbox.session() as s:
        ...     s.run("x = 6")
        ...     s.run("print(x * 7)").stdout
        '42\\n'
    """

    #: Backend name used by :func:`make_sandbox`.
    name: ClassVar[str] = ""
    #: The :data:`PROTECTIONS` this sandbox enforces (set by each backend, per instance
    #: where it depends on the machine).
    protections: frozenset[str] = frozenset()

    def __init__(self, limits: Limits | None = None) -> None:
        if limits is not None and not isinstance(limits, Limits):
            raise ConfigError(f"limits must be a turnrl.sandbox.Limits, got {type(limits).__name__}")
        self.limits = limits or Limits()

    @classmethod
    @abc.abstractmethod
    def availability(cls) -> tuple[bool, str]:
        """``(True, "")`` if this backend can run here, else ``(False, reason)``."""

    @abc.abstractmethod
    def run(
        self,
        code: str,
        *,
        language: str = "python",
        timeout_s: float | None = None,
        stdin: str | bytes | None = None,
        files: Mapping[str, str | bytes] | None = None,
        secret: bytes | None = None,
    ) -> ExecResult:
        """Run ``code`` once in a fresh sandbox.

        Args:
            code: the program's source. Source with a NUL byte is not run: the result is a
                ``runtime_error``, as for a syntax error.
            language: one of :data:`LANGUAGES` (``"python"``, ``"bash"``).
            timeout_s: wall-clock limit for this run; default ``limits.wall_time_s``.
            stdin: bytes (or text, UTF-8 encoded) fed to the program's standard input.
                Other processes in the sandbox can read it too; it is not a secret.
            files: extra files placed in the scratch directory first, by relative path.
            secret: bytes the program reads from file descriptor 3 (a memory file at
                offset 0). Only the program's first process gets it, so a harness that
                keeps fd 3 from the code it runs keeps the secret from that code (the
                CodeRepair judge keeps its tests this way). Needs the
                ``"private_channel"`` protection to mean anything.

        Returns:
            An :class:`ExecResult`; never raises for anything the code does.

        Raises:
            ConfigError: a bad argument (unknown language, bad file name, bad timeout).
        """

    @abc.abstractmethod
    def session(self, *, limits: Limits | None = None) -> Session:
        """A stateful Python interpreter inside a sandbox of its own: variables survive
        between :meth:`Session.run` calls. See :class:`turnrl.sandbox.session.Session`."""

    def close(self) -> None:  # noqa: B027  (optional hook, not abstract)
        """Release backend resources (clients, cached images). Idempotent."""

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(limits={self.limits})"

    def _timeout(self, timeout_s: float | None) -> float:
        return check_timeout(timeout_s, self.limits.wall_time_s)

    def _check_run_args(
        self, code: str, language: str, timeout_s: float | None,
        files: Mapping[str, str | bytes] | None, stdin: str | bytes | None,
        secret: bytes | None = None,
    ) -> tuple[str, float, dict[str, bytes], bytes]:
        """Validate :meth:`run`'s arguments: ``(program file name, timeout, files as
        bytes, stdin as bytes)``; a bad one raises :class:`ConfigError`."""
        if not isinstance(code, str):
            raise ConfigError(f"code must be a str, got {type(code).__name__}")
        if secret is not None and not isinstance(secret, (bytes, bytearray)):
            raise ConfigError(f"secret must be bytes or None, got {type(secret).__name__}")
        return (check_language(language), self._timeout(timeout_s), check_files(files),
                encode_stdin(stdin))


def check_timeout(timeout_s: float | None, default: float) -> float:
    """``timeout_s`` as a float, or ``default`` when ``None``; raise on a bad value."""
    if timeout_s is None:
        return float(default)
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not (
        math.isfinite(timeout_s) and timeout_s > 0
    ):
        raise ConfigError(f"timeout_s must be a number > 0 or None, got {timeout_s!r}")
    return float(timeout_s)


def check_language(language: str) -> str:
    """Return the program file name for ``language``, or raise naming the allowed ones."""
    try:
        return LANGUAGES[language]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown language {language!r}; the sandbox runs: {', '.join(LANGUAGES)}"
        ) from None


def check_files(files: Mapping[str, str | bytes] | None) -> dict[str, bytes]:
    """Validate ``files`` (relative paths inside the scratch dir) and encode them.

    Raises:
        ConfigError: an absolute path, a path with ``..``, an empty name, or content that
            is neither ``str`` nor ``bytes``.
    """
    if files is None:
        return {}
    if not isinstance(files, Mapping):
        raise ConfigError(f"files must be a mapping of relative path -> content, got {type(files).__name__}")
    out: dict[str, bytes] = {}
    for name, content in files.items():
        norm = posixpath.normpath(name) if isinstance(name, str) and name else ""
        if (
            not norm or norm.startswith(("/", "..")) or norm == "." or "\x00" in norm
            or any(part == ".." for part in norm.split("/"))
        ):
            raise ConfigError(
                f"file name {name!r} is not allowed: use a relative path inside the scratch "
                f"directory, such as 'data/input.txt'"
            )
        if isinstance(content, str):
            content = content.encode("utf-8")
        if not isinstance(content, (bytes, bytearray)):
            raise ConfigError(f"content of file {name!r} must be str or bytes, got {type(content).__name__}")
        out[norm] = bytes(content)
    return out


def encode_stdin(stdin: str | bytes | None) -> bytes:
    if stdin is None:
        return b""
    if isinstance(stdin, str):
        return stdin.encode("utf-8")
    if isinstance(stdin, (bytes, bytearray)):
        return bytes(stdin)
    raise ConfigError(f"stdin must be str, bytes or None, got {type(stdin).__name__}")


_MEMORY_MARKERS = ("MemoryError", "Cannot allocate memory", "std::bad_alloc", "out of memory")


def classify(
    exit_code: int | None,
    stderr: str,
    *,
    killed_by: int | None = None,
    timed_out: bool = False,
    timeout_s: float = 0.0,
    cpu_exceeded: bool = False,
    cpu_limit_s: float = 0.0,
) -> tuple[Status, str]:
    """Map how a program ended to ``(status, message)``.

    ``exit_code`` follows the shell convention (``128 + N`` for death by signal N);
    ``killed_by`` is the signal when the caller knows the program died of one, since an
    exit status of 152 alone could be either. The two limits come as flags from what the
    *host* observed (its clock; the CPU time a trusted monitor read), never from the exit
    status: a program can exit with 152 or send itself SIGXCPU, and that is a
    ``runtime_error``.
    """
    if timed_out:
        return "timeout", f"wall time limit of {timeout_s:g} s exceeded; the program was killed"
    if cpu_exceeded:
        return "timeout", f"CPU time limit of {cpu_limit_s:g} s exceeded; the program was killed"
    if exit_code is None:
        return "infra_error", "the sandbox reported no exit status"
    if exit_code == 0:
        return "ok", ""
    tail = stderr[-2000:]
    if any(marker in tail for marker in _MEMORY_MARKERS):
        return "memory", "memory limit exceeded"
    if killed_by == 25:  # SIGXFSZ
        return "runtime_error", "file size limit exceeded"
    if killed_by is not None:
        return "runtime_error", f"killed by signal {killed_by}"
    return "runtime_error", f"exited with status {exit_code}"


def reject_nul(code: str) -> ExecResult | None:
    """The result for source code containing a NUL byte, which no interpreter the sandbox
    runs accepts (Python 3.11 would silently drop everything after it): a
    ``runtime_error``, as a syntax error would be. ``None`` for valid code."""
    if "\x00" not in code:
        return None
    line = code.count("\n", 0, code.index("\x00")) + 1
    return ExecResult("", f"SyntaxError: source code cannot contain null bytes (line {line})\n",
                      1, "runtime_error", False, 0.0,
                      "the code contains a NUL byte; it was not run")
