"""The ``process`` backend: rlimits only, **no isolation**.

The program runs as a plain child process with CPU, memory, process, file-size and
open-file rlimits, in a temporary working directory that is deleted afterwards. It can
read whatever its uid can read and reach the network. Use it only for code you trust, or
inside a machine that is itself disposable; it refuses to start unless ``unsafe=True``.

When turnrl runs as root, programs run as an unprivileged uid (65534) so that the
process limit means something (the kernel ignores ``RLIMIT_NPROC`` for root). Leftover
background processes are found by a marker in their environment and killed.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Mapping

from turnrl.sandbox._proc import LAUNCH_FAILED, decode, launcher_argv, run_captured
from turnrl.sandbox.base import (
    ExecResult,
    Limits,
    Sandbox,
    SandboxUnavailable,
    classify,
)
from turnrl.sandbox.session import SERVER_SOURCE, Session, SubprocessChannel

__all__ = ["ProcessSandbox"]

_MARKER = "TURNRL_SANDBOX_ID"
_NOBODY = 65534

UNSAFE_MESSAGE = (
    "the 'process' sandbox has no isolation: code runs directly on this machine with "
    "rlimits only, can read every file its user can read (your home, this project, "
    "credentials) and can use the network. Pass unsafe=True only for trusted code or "
    "inside a disposable VM/container; otherwise install bubblewrap "
    "(`apt-get install bubblewrap`) or use the docker backend."
)


class ProcessSandbox(Sandbox):
    """Runs code as a local child process under rlimits. No isolation (see module doc).

    Args:
        limits: resource limits.
        unsafe: must be ``True``; the backend refuses to start otherwise.
        python: interpreter to use (default ``/usr/bin/python3``, else this Python).
        uid: uid to run as when turnrl runs as root.

    Raises:
        SandboxUnavailable: ``unsafe`` is not ``True``.
    """

    name = "process"

    def __init__(self, limits: Limits | None = None, *, unsafe: bool = False,
                 python: str | None = None, uid: int = _NOBODY) -> None:
        if unsafe is not True:
            raise SandboxUnavailable(UNSAFE_MESSAGE)
        super().__init__(limits)
        self.python = python or ("/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK)
                                 else os.path.realpath(shutil.which("python3") or "python3"))
        self.uid = uid

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        return True, "available only with unsafe=True (no isolation)"

    def _as_user(self) -> dict:
        return {"user": self.uid, "group": self.uid} if os.geteuid() == 0 else {}

    def _workdir(self) -> tuple[str, str]:
        """A fresh scratch dir (writable by the program's uid) and a marker id."""
        scratch = tempfile.mkdtemp(prefix="turnrl-sandbox-")
        if os.geteuid() == 0:
            os.chown(scratch, self.uid, self.uid)
        return scratch, secrets.token_hex(8)

    def _env(self, scratch: str, marker: str) -> dict[str, str]:
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": scratch, "TMPDIR": scratch,
            "LANG": "C.UTF-8", "PYTHONPATH": scratch, "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8", _MARKER: marker,
        }

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
        try:
            scratch, marker = self._workdir()
        except OSError as exc:
            return ExecResult("", "", None, "infra_error", False, 0.0, f"no scratch dir: {exc}")
        try:
            code_dir = os.path.join(scratch, ".turnrl")
            os.mkdir(code_dir)
            code_path = os.path.join(code_dir, program_file)
            _write(code_path, code.encode("utf-8", errors="surrogateescape"), self)
            for name, data in files_bytes.items():
                _write(os.path.join(scratch, name), data, self)
            stdin_path = os.path.join(code_dir, "stdin")
            _write(stdin_path, stdin_bytes, self)
            program = [self.python, code_path] if language == "python" else ["/bin/bash", code_path]
            cpu = min(float(self.limits.cpu_time_s), timeout)
            with open(stdin_path, "rb") as stdin_file:
                cap = run_captured(
                    launcher_argv(self.python, self.limits.rlimits(cpu_time_s=cpu), program),
                    timeout_s=timeout, output_bytes=self.limits.output_bytes,
                    stdin_fd=stdin_file.fileno(), env=self._env(scratch, marker), cwd=scratch,
                    on_exit=lambda: _kill_marked(marker), **self._as_user(),
                )
        except OSError as exc:
            return ExecResult("", "", None, "infra_error", False, 0.0, f"could not prepare the run: {exc}")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if cap.spawn_error:
            return ExecResult("", "", None, "infra_error", False, cap.duration_s, cap.spawn_error)
        stdout, stderr = decode(cap.stdout), decode(cap.stderr)
        if cap.returncode == LAUNCH_FAILED and "turnrl-launch:" in stderr:
            return ExecResult(stdout, stderr, None, "infra_error", cap.truncated, cap.duration_s,
                              "the launcher could not apply the limits or start the program")
        status, message = classify(cap.returncode, stderr, timed_out=cap.timed_out,
                                   timeout_s=timeout, cpu_limit_s=cpu)
        return ExecResult(stdout, stderr, cap.returncode, status, cap.truncated, cap.duration_s,
                          message)

    def session(self, *, limits: Limits | None = None) -> Session:
        limits = limits or self.limits
        return Session(lambda config: self._launch_server(limits, config), limits,
                       backend=self.name, config={"private_pids": False})

    def _launch_server(self, limits: Limits, config: str) -> SubprocessChannel:
        import json

        scratch, marker = self._workdir()
        cfg = {**json.loads(config), "scratch": scratch, "tmp": None}

        def cleanup() -> None:
            _kill_marked(marker)
            shutil.rmtree(scratch, ignore_errors=True)

        try:
            proc = subprocess.Popen(
                [self.python, "-I", "-c", SERVER_SOURCE, json.dumps(cfg)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=self._env(scratch, marker), cwd=scratch, start_new_session=True,
                close_fds=True, **({"extra_groups": [], **self._as_user()} if self._as_user() else {}),
            )
        except BaseException:
            cleanup()
            raise
        return SubprocessChannel(proc, max_line_bytes=12 * limits.output_bytes + (1 << 20),
                                 cleanup=cleanup)


def _write(path: str, data: bytes, sandbox: ProcessSandbox) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    if os.geteuid() == 0:
        for p in (path, os.path.dirname(path)):
            os.chown(p, sandbox.uid, sandbox.uid)


def _kill_marked(marker: str) -> None:
    """Kill every process whose environment carries ``marker`` (escaped background jobs)."""
    needle = f"{_MARKER}={marker}".encode()
    for _ in range(20):
        found = False
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    env = f.read()
            except OSError:
                continue
            if needle in env.split(b"\0"):
                found = True
                try:
                    os.kill(int(entry), signal.SIGKILL)
                except OSError:
                    pass
        if not found:
            return
