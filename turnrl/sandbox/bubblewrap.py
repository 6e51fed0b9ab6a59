"""The ``bubblewrap`` backend: each run in fresh Linux namespaces, no daemon, no root.

Every :meth:`BubblewrapSandbox.run` starts ``bwrap`` with

* all namespaces unshared (user, pid, network, ipc, uts, cgroup): no network interface
  but loopback, no view of host processes; when the sandbox's first process exits, the
  kernel kills everything left in its pid namespace, so nothing is left behind;
* a read-only view of the system (``/usr`` and its ``/bin``, ``/lib`` links, a few
  harmless ``/etc`` entries); no ``/home``, ``/root``, ``/work``, ``/etc/shadow``, no
  project directory, no other sandbox's files;
* two private size-capped tmpfs mounts, the scratch directory (``/home/sandbox``, also
  the working directory and ``$HOME``) and ``/tmp`` -- the only writable places;
* the program running as an unprivileged uid (65534 by default). When turnrl runs as
  root, bwrap itself is started as that uid, because the kernel ignores
  ``RLIMIT_NPROC`` for root -- a fork bomb would otherwise be limited by nothing;
* a seccomp filter (``turnrl.sandbox._seccomp``) and ``--disable-userns`` where this
  bwrap and kernel support them: no nested namespaces (``unshare -Ur`` fails), no mount,
  ptrace, bpf, keyctl, perf_event_open or io_uring, and no ``memfd_create`` or SysV/POSIX
  shared memory, which would hold memory outside the address-space limit;
* a trusted monitor as the sandbox's first program (``turnrl.sandbox._proc.MONITOR``):
  it sets the rlimits (cgroups are not available to unprivileged users), runs the program
  as its child and reports how it ended on a pipe the program never holds. The host
  enforces the wall-clock limit and the output caps, so the status -- above all
  ``timeout`` and ``infra_error`` -- comes from what the host and the monitor saw, never
  from the program's exit status.

Every bwrap is started by the spawner (``turnrl.sandbox._spawner``), a small process that
kills every sandbox of this process when this process ends, however it ends, including a
``kill -9`` while a bwrap is still starting.

What is enforced on this machine is in :attr:`BubblewrapSandbox.protections` (and logged);
a bwrap older than 0.8 has no ``--disable-userns`` (the seccomp filter still refuses
nested user namespaces), and an architecture other than x86-64 or aarch64 gets no filter.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Mapping
from typing import Any

from turnrl.errors import ConfigError
from turnrl.sandbox import _seccomp
from turnrl.sandbox._proc import (
    Captured,
    decode,
    judge,
    memfd,
    monitor_argv,
    read_report,
    run_captured,
)
from turnrl.sandbox._spawner import Spawned, Spawner, spawner_for
from turnrl.sandbox.base import (
    CODE_DIR,
    SCRATCH_DIR,
    ExecResult,
    Limits,
    Sandbox,
    SandboxUnavailable,
    reject_nul,
)
from turnrl.sandbox.session import SERVER_SOURCE, PipeChannel, Session, session_config

__all__ = ["BubblewrapSandbox"]

logger = logging.getLogger(__name__)

_SYSTEM_DIRS = ("bin", "sbin", "lib", "lib64", "lib32", "libx32")
#: Read-only /etc entries programs commonly need; nothing secret.
_ETC_ENTRIES = ("alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime")
_NOBODY = 65534


def _sandbox_env() -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": SCRATCH_DIR,
        "TMPDIR": "/tmp",
        "USER": "sandbox",
        "LOGNAME": "sandbox",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONPATH": SCRATCH_DIR,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONIOENCODING": "utf-8",
    }


@functools.lru_cache(maxsize=8)
def bwrap_options(bwrap: str) -> frozenset[str]:
    """The command-line options this ``bwrap`` knows (from ``bwrap --help``)."""
    try:
        out = subprocess.run([bwrap, "--help"], capture_output=True, timeout=10, text=True)
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    return frozenset(word for line in (out.stdout + out.stderr).splitlines()
                     for word in line.split()[:1] if word.startswith("--"))


class _Fds:
    """Host fds handed to bwrap (fd 0, 1, 2 of the spawn come first, then these as 3, 4,
    ...) and the host fds to close once bwrap has started or failed to."""

    def __init__(self) -> None:
        self.extra: list[int] = []
        self.owned: list[int] = []

    def add(self, fd: int) -> int:
        """Pass ``fd``; returns the number it has in bwrap."""
        self.extra.append(fd)
        return 2 + len(self.extra)

    def own(self, fd: int) -> int:
        """Close ``fd`` in :meth:`close`; returns it."""
        self.owned.append(fd)
        return fd

    def close(self) -> None:
        for fd in self.owned:
            try:
                os.close(fd)
            except OSError:
                pass
        self.owned.clear()


class BubblewrapSandbox(Sandbox):
    """Sandbox on ``bwrap`` (Debian/Ubuntu package ``bubblewrap``).

    Args:
        limits: resource limits (default :class:`Limits`).
        python: interpreter inside the sandbox; default ``/usr/bin/python3`` (the system
            Python, whose standard library lives under the read-only ``/usr``).
        bwrap: path of the ``bwrap`` binary (default: found on ``PATH``).
        uid: unprivileged uid/gid the program runs as (also the host uid bwrap is
            started as when turnrl runs as root).
        ro_binds: extra host paths mounted read-only at the same place (e.g. a
            directory of packages), as ``{host_path: sandbox_path}``.
        seccomp: apply the seccomp filter and ``--disable-userns`` where supported
            (``False`` only to compare; the sandbox is weaker without them).

    Raises:
        SandboxUnavailable: no ``bwrap``, no interpreter, or the kernel refuses the
            namespaces (the message says which).
    """

    name = "bubblewrap"
    _probe_cache: dict[tuple, tuple[bool, str, frozenset[str]]] = {}
    _probe_lock = threading.Lock()

    def __init__(
        self,
        limits: Limits | None = None,
        *,
        python: str | None = None,
        bwrap: str | None = None,
        uid: int = _NOBODY,
        ro_binds: Mapping[str, str] | None = None,
        seccomp: bool = True,
    ) -> None:
        super().__init__(limits)
        self.bwrap = bwrap or shutil.which("bwrap") or ""
        self.python = python or _default_python()
        if isinstance(uid, bool) or not isinstance(uid, int) or not 0 < uid < 2**31:
            raise ConfigError(f"uid must be an unprivileged uid (an int > 0), got {uid!r}")
        self.uid = uid
        self.ro_binds = dict(ro_binds or {})
        for src, dest in self.ro_binds.items():
            if not os.path.isabs(src) or not os.path.isabs(dest):
                raise ConfigError(f"ro_binds needs absolute paths, got {src!r} -> {dest!r}")
        #: The hardening options this sandbox passes to bwrap: "seccomp", "disable_userns".
        self._hardening: frozenset[str] = frozenset()
        ok, reason, hardening = self._probe(bool(seccomp))
        if not ok:
            raise SandboxUnavailable(f"the bubblewrap sandbox cannot run here: {reason}")
        self._hardening = hardening
        self.protections = frozenset({"isolation", "trusted_status", "private_channel"}
                                     | _protections_of(hardening))

    # ------------------------------------------------------------------ availability
    @classmethod
    def availability(cls) -> tuple[bool, str]:
        try:
            cls()
        except SandboxUnavailable as exc:
            return False, str(exc)
        return True, ""

    def _probe(self, want_hardening: bool) -> tuple[bool, str, frozenset[str]]:
        """Can bwrap run here, and with which hardening options? Tried once per
        configuration, strongest first; what cannot be enforced is logged as a warning."""
        if not self.bwrap or not os.access(self.bwrap, os.X_OK):
            return False, ("`bwrap` not found; install it (Debian/Ubuntu: "
                           "`apt-get install bubblewrap`) or pass bwrap='/path/to/bwrap'"), frozenset()
        if not os.access(self.python, os.X_OK):
            return False, f"no Python interpreter at {self.python!r}; pass python='...'", frozenset()
        key = (self.bwrap, self.python, self.uid, tuple(sorted(self.ro_binds.items())),
               want_hardening)
        with self._probe_lock:
            if key in self._probe_cache:
                return self._probe_cache[key]
            options = bwrap_options(self.bwrap)
            available = set()
            if want_hardening and "--seccomp" in options and _seccomp.compile_filter():
                available.add("seccomp")
            if want_hardening and "--disable-userns" in options:
                available.add("disable_userns")
            tries = [frozenset(available), frozenset(available - {"disable_userns"}), frozenset()]
            failures = []
            for hardening in dict.fromkeys(tries):
                self._hardening = hardening
                result = self.run("print('ok')", timeout_s=20.0)
                if result.ok and result.stdout.strip() == "ok":
                    missing = {"seccomp", "no_nested_userns"} - _protections_of(hardening)
                    if want_hardening and missing:
                        logger.warning("turnrl bubblewrap sandbox: not enforced here: %s (%s)",
                                       ", ".join(sorted(missing)),
                                       "; ".join(failures) or _why_missing(missing, options))
                    self._probe_cache[key] = (True, "", hardening)
                    return self._probe_cache[key]
                failures.append(f"with {sorted(hardening) or 'no hardening'}: "
                                f"{result.message or result.stderr.strip()[-300:]}")
            self._probe_cache[key] = (False, "a test run of bwrap failed (" + "; ".join(failures)
                                      + "); user namespaces may be disabled (sysctl "
                                      "kernel.unprivileged_userns_clone)", frozenset())
            return self._probe_cache[key]

    # ------------------------------------------------------------------ command line
    def _spawner(self) -> Spawner:
        """This process's spawner for our interpreter and uid (started on first use)."""
        return spawner_for(self.python, self._spawner_user())

    def _spawner_user(self) -> int | None:
        """Run bwrap as the unprivileged uid when we are root (see module docstring)."""
        return self.uid if os.geteuid() == 0 else None

    def _bwrap_args(self, limits: Limits, fds: _Fds, spawner: Spawner) -> list[str]:
        scratch_bytes = str(int(limits.scratch_mb) * 1024 * 1024)
        # No --new-session: the spawner already starts bwrap in a session of its own
        # (no controlling terminal), and the sandbox's pid 1 must stay in bwrap's process
        # group so that one killpg ends the sandbox at any point of its start-up.
        # The tag (a no-op --unsetenv) lets turnrl find this bwrap if the spawner dies.
        args = ["--unshare-all", "--die-with-parent", "--unsetenv", spawner.tag]
        if "disable_userns" in self._hardening:
            args += ["--unshare-user", "--disable-userns"]
        args += ["--uid", str(self.uid), "--gid", str(self.uid), "--hostname", "sandbox",
                 "--ro-bind", "/usr", "/usr"]
        for name in _SYSTEM_DIRS:
            path = "/" + name
            if os.path.islink(path):
                args += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                args += ["--ro-bind", path, path]
        for name in _ETC_ENTRIES:
            args += ["--ro-bind-try", "/etc/" + name, "/etc/" + name]
        python_prefix = os.path.dirname(os.path.dirname(os.path.realpath(self.python)))
        if python_prefix not in ("/usr", "/"):
            args += ["--ro-bind", python_prefix, python_prefix]
        for src, dest in self.ro_binds.items():
            args += ["--ro-bind", src, dest]
        args += [
            "--proc", "/proc", "--dev", "/dev",
            "--size", scratch_bytes, "--tmpfs", SCRATCH_DIR,
            "--size", scratch_bytes, "--tmpfs", "/tmp",
            "--dir", CODE_DIR,
            "--chdir", SCRATCH_DIR, "--clearenv",
        ]
        for key, value in _sandbox_env().items():
            args += ["--setenv", key, value]
        if "seccomp" in self._hardening:
            program = _seccomp.compile_filter()
            assert program is not None
            args += ["--seccomp", str(fds.add(fds.own(memfd("seccomp", program))))]
        return args

    @staticmethod
    def _seal() -> list[str]:
        """Last mount steps: nothing outside the tmpfs mounts stays writable."""
        return ["--remount-ro", "/dev", "--remount-ro", "/"]

    # ------------------------------------------------------------------ run
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
        program_file, timeout, files_bytes, stdin_bytes = self._check_run_args(
            code, language, timeout_s, files, stdin, secret)
        rejected = reject_nul(code)
        if rejected is not None:
            return rejected
        limits = self.limits
        fds = _Fds()
        spawned: list[Spawned] = []
        try:
            try:
                spawner = self._spawner()
                report_r, report_w = (fds.own(fd) for fd in os.pipe())
                fds.add(report_w)  # fd 3: the monitor's report, see monitor_argv below
                secret_fd = None
                if secret is not None:
                    secret_fd = fds.add(fds.own(memfd("secret", bytes(secret))))
                args = self._bwrap_args(limits, fds, spawner)
                code_fd = fds.own(memfd("code", code.encode("utf-8", errors="surrogateescape")))
                code_path = f"{CODE_DIR}/{program_file}"
                args += ["--perms", "0444", "--ro-bind-data", str(fds.add(code_fd)), code_path]
                made_dirs: set[str] = set()
                for name, data in files_bytes.items():
                    parts = name.split("/")[:-1]
                    for i in range(1, len(parts) + 1):
                        sub = "/".join(parts[:i])
                        if sub not in made_dirs:
                            made_dirs.add(sub)
                            args += ["--dir", f"{SCRATCH_DIR}/{sub}"]
                    file_fd = fds.own(memfd("file", data))
                    args += ["--perms", "0644", "--file", str(fds.add(file_fd)),
                             f"{SCRATCH_DIR}/{name}"]
                status_r, status_w = (fds.own(fd) for fd in os.pipe())
                args += self._seal() + ["--json-status-fd", str(fds.add(status_w))]
                stdin_fd = fds.own(memfd("stdin", stdin_bytes))
            except OSError as exc:
                return ExecResult("", "", None, "infra_error", False, 0.0,
                                  f"could not prepare the sandbox: {exc}")
            program = [self.python, code_path] if language == "python" else ["/bin/bash", code_path]
            cpu = min(float(limits.cpu_time_s), timeout)
            argv = [self.bwrap, *args, "--",
                    *monitor_argv(self.python, limits.rlimits(cpu_time_s=cpu), program,
                                  report_fd=3, secret_fd=secret_fd)]

            def start(out: int, err: int) -> Spawned:
                spawned.append(spawner.spawn(argv, [stdin_fd, out, err, *fds.extra],
                                             env={"PATH": "/usr/bin:/bin"}))
                return spawned[-1]

            cap = run_captured(start, timeout_s=timeout, output_bytes=limits.output_bytes)
            sandbox_status = _read_status(status_r)
            report = read_report(report_r)
        finally:
            fds.close()
        return self._result(cap, spawned, sandbox_status, report, timeout, cpu)

    @staticmethod
    def _result(cap: Captured, spawned: list[Spawned], sandbox_status: dict, report: Any,
                timeout: float, cpu: float) -> ExecResult:
        if cap.spawn_error:
            return ExecResult("", "", None, "infra_error", False, cap.duration_s,
                              f"could not start bwrap: {cap.spawn_error}")
        if spawned and spawned[0].returncode is None and spawned[0].error:
            return ExecResult("", "", None, "infra_error", False, cap.duration_s,
                              f"the sandbox was lost: {spawned[0].error}")
        if "exit-code" not in sandbox_status and not cap.timed_out:
            # bwrap reports an exit code only once its setup is done and the monitor runs.
            return ExecResult("", "", None, "infra_error", False, cap.duration_s,
                              f"bwrap failed to set up the sandbox: {decode(cap.stderr).strip()[-1000:]}")
        return judge(cap, report, timeout_s=timeout, cpu_limit_s=cpu,
                     fallback_exit_code=sandbox_status.get("exit-code", cap.returncode))

    # ------------------------------------------------------------------ session
    def session(self, *, limits: Limits | None = None) -> Session:
        limits = limits or self.limits
        config = session_config(limits, scratch=SCRATCH_DIR, private_pids=True)
        return Session(lambda cfg: self._launch_server(limits, cfg), limits,
                       backend=self.name, config=config)

    def _launch_server(self, limits: Limits, config: dict[str, Any]) -> PipeChannel:
        fds = _Fds()
        kept: list[int] = []  # the host's ends, closed here only if the start fails
        try:
            req_r, req_w = os.pipe()
            kept.append(req_w)
            fds.add(fds.own(req_r))  # fd 3: requests in
            rep_r, rep_w = os.pipe()
            kept.append(rep_r)
            fds.add(fds.own(rep_w))  # fd 4: answers out
            diag_r, diag_w = os.pipe()
            kept.append(diag_r)
            fds.own(diag_w)
            null = fds.own(os.open(os.devnull, os.O_RDONLY))
            spawner = self._spawner()
            argv = [self.bwrap, *self._bwrap_args(limits, fds, spawner), *self._seal(), "--",
                    self.python, "-I", "-c", SERVER_SOURCE,
                    json.dumps({**config, "req_fd": 3, "rep_fd": 4})]
            child = spawner.spawn(argv, [null, diag_w, diag_w, *fds.extra],
                                  env={"PATH": "/usr/bin:/bin"})
        except BaseException:
            for fd in kept:
                os.close(fd)
            raise
        finally:
            fds.close()
        return PipeChannel(child, req_w=req_w, rep_r=rep_r, diag_r=diag_r,
                           max_line_bytes=12 * limits.output_bytes + (1 << 20))


def _protections_of(hardening: frozenset[str]) -> set[str]:
    # The filter refuses unshare/clone with CLONE_NEWUSER, so it also rules out nested
    # user namespaces where bwrap has no --disable-userns.
    protections = set()
    if "seccomp" in hardening:
        protections |= {"seccomp", "no_nested_userns"}
    if "disable_userns" in hardening:
        protections.add("no_nested_userns")
    return protections


def _why_missing(missing: set[str], options: frozenset[str]) -> str:
    why = []
    if "no_nested_userns" in missing and "--disable-userns" not in options:
        why.append("this bwrap has no --disable-userns (bubblewrap >= 0.8 has)")
    if "seccomp" in missing and _seccomp.compile_filter() is None:
        why.append(f"no seccomp filter for the {os.uname().machine} architecture")
    elif "seccomp" in missing and "--seccomp" not in options:
        why.append("this bwrap has no --seccomp")
    return "; ".join(why) or "turned off"


def _default_python() -> str:
    if os.access("/usr/bin/python3", os.X_OK):
        return "/usr/bin/python3"
    found = shutil.which("python3")
    return os.path.realpath(found) if found else "/usr/bin/python3"


def _read_status(fd: int) -> dict:
    """Merge the JSON documents bwrap wrote to ``--json-status-fd``."""
    os.set_blocking(fd, False)
    chunks = []
    try:
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    except (BlockingIOError, OSError):
        pass
    merged: dict = {}
    for line in b"".join(chunks).splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict):
            merged.update(doc)
    return merged
