"""The ``process`` backend: rlimits only, **no isolation**.

The program runs as a plain child process with CPU, memory, process, file-size and
open-file rlimits, in a temporary working directory that is deleted afterwards. It can
read whatever its uid can read and reach the network. Use it only for code you trust, or
inside a machine that is itself disposable; it refuses to start unless ``unsafe=True``.

It uses the same trusted monitor and session supervisor as bubblewrap, so statuses are
decided the same way, but nothing stops the program from reaching them: it runs as the
same uid, outside any namespace, with no seccomp filter, and can read this process's
memory. Its :attr:`~turnrl.sandbox.base.Sandbox.protections` are empty: rewards computed
from its results can be forged, and memory outside ``RLIMIT_AS`` (``memfd_create``, shared
memory) is not limited.

When turnrl runs as root, programs run as an unprivileged uid (65534) so that the
process limit means something (the kernel ignores ``RLIMIT_NPROC`` for root). Leftover
background processes are found by a marker in their environment and killed.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Mapping

from turnrl.sandbox._proc import (
    PopenChild,
    judge,
    memfd,
    monitor_argv,
    read_report,
    run_captured,
)
from turnrl.sandbox.base import ExecResult, Limits, Sandbox, SandboxUnavailable, reject_nul
from turnrl.sandbox.session import SERVER_SOURCE, PipeChannel, Session, session_config

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
        return ({"user": self.uid, "group": self.uid, "extra_groups": []} if os.geteuid() == 0
                else {})

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
        secret: bytes | None = None,
    ) -> ExecResult:
        program_file, timeout, files_bytes, stdin_bytes = self._check_run_args(
            code, language, timeout_s, files, stdin, secret)
        rejected = reject_nul(code)
        if rejected is not None:
            return rejected
        try:
            scratch, marker = self._workdir()
        except OSError as exc:
            return ExecResult("", "", None, "infra_error", False, 0.0, f"no scratch dir: {exc}")
        report_r = report_w = secret_fd = -1
        try:
            code_dir = os.path.join(scratch, ".turnrl")
            os.mkdir(code_dir)
            code_path = os.path.join(code_dir, program_file)
            _write(code_path, code.encode("utf-8", errors="surrogateescape"), self)
            for name, data in files_bytes.items():
                _write(os.path.join(scratch, name), data, self)
            stdin_path = os.path.join(code_dir, "stdin")
            _write(stdin_path, stdin_bytes, self)
            report_r, report_w = os.pipe()
            if secret is not None:
                secret_fd = memfd("secret", bytes(secret))
            program = [self.python, code_path] if language == "python" else ["/bin/bash", code_path]
            cpu = min(float(self.limits.cpu_time_s), timeout)
            argv = monitor_argv(self.python, self.limits.rlimits(cpu_time_s=cpu), program,
                                report_fd=report_w, secret_fd=secret_fd if secret_fd >= 0 else None)
            passed = [report_w] + ([secret_fd] if secret_fd >= 0 else [])
            with open(stdin_path, "rb") as stdin_file:

                def start(out: int, err: int) -> PopenChild:
                    return PopenChild(subprocess.Popen(
                        argv, stdin=stdin_file, stdout=out, stderr=err, pass_fds=passed,
                        env=self._env(scratch, marker), cwd=scratch, start_new_session=True,
                        close_fds=True, **self._as_user()))

                cap = run_captured(start, timeout_s=timeout, output_bytes=self.limits.output_bytes,
                                   on_exit=lambda: _kill_marked(marker))
            report = read_report(report_r)
        except OSError as exc:
            return ExecResult("", "", None, "infra_error", False, 0.0, f"could not prepare the run: {exc}")
        finally:
            for fd in (report_r, report_w, secret_fd):
                if fd >= 0:
                    os.close(fd)
            shutil.rmtree(scratch, ignore_errors=True)
        if cap.spawn_error:
            return ExecResult("", "", None, "infra_error", False, cap.duration_s, cap.spawn_error)
        return judge(cap, report, timeout_s=timeout, cpu_limit_s=cpu,
                     fallback_exit_code=cap.returncode)

    def session(self, *, limits: Limits | None = None) -> Session:
        limits = limits or self.limits
        return Session(lambda config: self._launch_server(limits, config), limits,
                       backend=self.name, config=session_config(limits, scratch="",
                                                                private_pids=False))

    def _launch_server(self, limits: Limits, config: dict) -> PipeChannel:
        scratch, marker = self._workdir()

        def cleanup() -> None:
            _kill_marked(marker)
            shutil.rmtree(scratch, ignore_errors=True)

        kept: list[int] = []
        theirs: list[int] = []
        try:
            req_r, req_w = os.pipe()
            kept.append(req_w)
            theirs.append(req_r)
            rep_r, rep_w = os.pipe()
            kept.append(rep_r)
            theirs.append(rep_w)
            diag_r, diag_w = os.pipe()
            kept.append(diag_r)
            theirs.append(diag_w)
            cfg = {**config, "scratch": scratch, "req_fd": req_r, "rep_fd": rep_w}
            proc = subprocess.Popen(
                [self.python, "-I", "-c", SERVER_SOURCE, json.dumps(cfg)],
                stdin=subprocess.DEVNULL, stdout=diag_w, stderr=diag_w, pass_fds=[req_r, rep_w],
                env=self._env(scratch, marker), cwd=scratch, start_new_session=True,
                close_fds=True, **self._as_user(),
            )
        except BaseException:
            for fd in kept:
                os.close(fd)
            cleanup()
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        return PipeChannel(PopenChild(proc), req_w=req_w, rep_r=rep_r, diag_r=diag_r,
                           max_line_bytes=12 * limits.output_bytes + (1 << 20), cleanup=cleanup)


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
