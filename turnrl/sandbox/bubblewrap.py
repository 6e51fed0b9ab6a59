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
* rlimits for CPU time, address space, processes, file size and open files, set by a
  tiny launcher inside the sandbox (cgroups are not available to unprivileged users).

The host enforces the wall-clock limit and the output caps, so nothing the program does
can stop the caller from getting its result.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Mapping

from turnrl.errors import ConfigError
from turnrl.sandbox._proc import (
    LAUNCH_FAILED,
    decode,
    launcher_argv,
    memfd,
    run_captured,
    spawn_long_lived,
)
from turnrl.sandbox.base import (
    CODE_DIR,
    SCRATCH_DIR,
    ExecResult,
    Limits,
    Sandbox,
    SandboxUnavailable,
    classify,
)
from turnrl.sandbox.session import SERVER_SOURCE, Session, SubprocessChannel

__all__ = ["BubblewrapSandbox"]

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

    Raises:
        SandboxUnavailable: no ``bwrap``, no interpreter, or the kernel refuses the
            namespaces (the message says which).
    """

    name = "bubblewrap"
    _probe_cache: dict[tuple, tuple[bool, str]] = {}
    _probe_lock = threading.Lock()

    def __init__(
        self,
        limits: Limits | None = None,
        *,
        python: str | None = None,
        bwrap: str | None = None,
        uid: int = _NOBODY,
        ro_binds: Mapping[str, str] | None = None,
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
        ok, reason = self._probe()
        if not ok:
            raise SandboxUnavailable(f"the bubblewrap sandbox cannot run here: {reason}")

    # ------------------------------------------------------------------ availability
    @classmethod
    def availability(cls) -> tuple[bool, str]:
        try:
            cls()
        except SandboxUnavailable as exc:
            return False, str(exc)
        return True, ""

    def _probe(self) -> tuple[bool, str]:
        if not self.bwrap or not os.access(self.bwrap, os.X_OK):
            return False, ("`bwrap` not found; install it (Debian/Ubuntu: "
                           "`apt-get install bubblewrap`) or pass bwrap='/path/to/bwrap'")
        if not os.access(self.python, os.X_OK):
            return False, f"no Python interpreter at {self.python!r}; pass python='...'"
        key = (self.bwrap, self.python, self.uid, tuple(sorted(self.ro_binds.items())))
        with self._probe_lock:
            if key not in self._probe_cache:
                argv = [self.bwrap, *self._bwrap_args(Limits()), "--", self.python, "-I", "-S",
                        "-c", "print('ok')"]
                cap = run_captured(argv, timeout_s=20.0, output_bytes=4096, cwd="/",
                                   env={"PATH": "/usr/bin:/bin"}, **self._host_user())
                if cap.stdout.strip() == b"ok":
                    self._probe_cache[key] = (True, "")
                else:
                    why = cap.spawn_error or decode(cap.stderr).strip() or f"exit status {cap.returncode}"
                    self._probe_cache[key] = (False, f"a test run of bwrap failed ({why}); user "
                                              "namespaces may be disabled (sysctl "
                                              "kernel.unprivileged_userns_clone)")
            return self._probe_cache[key]

    # ------------------------------------------------------------------ command line
    def _host_user(self) -> dict[str, int | None]:
        """Run bwrap as the unprivileged uid when we are root (see module docstring)."""
        if os.geteuid() == 0:
            return {"user": self.uid, "group": self.uid}
        return {}

    def _bwrap_args(self, limits: Limits) -> list[str]:
        scratch_bytes = str(int(limits.scratch_mb) * 1024 * 1024)
        args = [
            "--unshare-all", "--die-with-parent", "--new-session",
            "--uid", str(self.uid), "--gid", str(self.uid), "--hostname", "sandbox",
            "--ro-bind", "/usr", "/usr",
        ]
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
    ) -> ExecResult:
        program_file, timeout, files_bytes, stdin_bytes = self._check_run_args(
            code, language, timeout_s, files, stdin)
        limits = self.limits
        fds: list[int] = []
        status_r = status_w = -1
        try:
            try:
                args = self._bwrap_args(limits)
                code_fd = memfd("code", code.encode("utf-8", errors="surrogateescape"))
                fds.append(code_fd)
                code_path = f"{CODE_DIR}/{program_file}"
                args += ["--perms", "0444", "--ro-bind-data", str(code_fd), code_path]
                made_dirs: set[str] = set()
                for name, data in files_bytes.items():
                    parts = name.split("/")[:-1]
                    for i in range(1, len(parts) + 1):
                        sub = "/".join(parts[:i])
                        if sub not in made_dirs:
                            made_dirs.add(sub)
                            args += ["--dir", f"{SCRATCH_DIR}/{sub}"]
                    fd = memfd("file", data)
                    fds.append(fd)
                    args += ["--perms", "0644", "--file", str(fd), f"{SCRATCH_DIR}/{name}"]
                stdin_fd = memfd("stdin", stdin_bytes)
                fds.append(stdin_fd)
                status_r, status_w = os.pipe()
                args += self._seal() + ["--json-status-fd", str(status_w)]
            except OSError as exc:
                return ExecResult("", "", None, "infra_error", False, 0.0,
                                  f"could not prepare the sandbox: {exc}")
            if language == "python":
                program = [self.python, code_path]
            else:
                program = ["/bin/bash", code_path]
            cpu = min(float(limits.cpu_time_s), timeout)
            argv = [self.bwrap, *args, "--",
                    *launcher_argv(self.python, limits.rlimits(cpu_time_s=cpu), program)]
            cap = run_captured(
                argv, timeout_s=timeout, output_bytes=limits.output_bytes, stdin_fd=stdin_fd,
                pass_fds=[*fds, status_w], env={"PATH": "/usr/bin:/bin"}, cwd="/",
                **self._host_user(),
            )
            os.close(status_w)
            status_w = -1
            sandbox_status = _read_status(status_r)
        finally:
            for fd in (*fds, status_r, status_w):
                if fd >= 0:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
        stdout, stderr = decode(cap.stdout), decode(cap.stderr)
        if cap.spawn_error:
            return ExecResult("", "", None, "infra_error", False, cap.duration_s,
                              f"could not start bwrap: {cap.spawn_error}")
        if "child-pid" not in sandbox_status and not cap.timed_out:
            return ExecResult("", "", None, "infra_error", False, cap.duration_s,
                              f"bwrap failed to set up the sandbox: {stderr.strip()[-1000:]}")
        exit_code = sandbox_status.get("exit-code", cap.returncode)
        if exit_code == LAUNCH_FAILED and "turnrl-launch:" in stderr:
            return ExecResult(stdout, stderr, None, "infra_error", cap.truncated, cap.duration_s,
                              "the launcher could not apply the limits or start the program")
        status, message = classify(exit_code, stderr, timed_out=cap.timed_out,
                                   timeout_s=timeout, cpu_limit_s=cpu)
        return ExecResult(stdout, stderr, exit_code, status, cap.truncated, cap.duration_s, message)

    # ------------------------------------------------------------------ session
    def session(self, *, limits: Limits | None = None) -> Session:
        limits = limits or self.limits
        return Session(
            lambda config: self._launch_server(limits, config), limits, backend=self.name,
            config={"scratch": SCRATCH_DIR, "tmp": "/tmp", "private_pids": True},
        )

    def _launch_server(self, limits: Limits, config: str) -> SubprocessChannel:
        import subprocess

        argv = [self.bwrap, *self._bwrap_args(limits), *self._seal(), "--",
                self.python, "-I", "-c", SERVER_SOURCE, config]
        proc = spawn_long_lived(lambda: subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={"PATH": "/usr/bin:/bin"}, cwd="/", start_new_session=True, close_fds=True,
            **({"extra_groups": [], **self._host_user()} if self._host_user() else {}),
        ))
        return SubprocessChannel(proc, max_line_bytes=12 * limits.output_bytes + (1 << 20))


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
