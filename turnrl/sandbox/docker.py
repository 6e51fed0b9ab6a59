"""The ``docker`` backend: each run in a fresh container (docker SDK, ``pip install
'turnrl[docker]'``).

Containers get ``--network none``, a read-only root filesystem with size-capped tmpfs
mounts for the scratch directory and ``/tmp``, cgroup limits on memory (no swap), pids
and CPU (one core), ulimits on CPU time, file size and open files, all capabilities
dropped, ``no-new-privileges``, an unprivileged user (65534) and no logging driver (the
host reads the output over the attach stream and keeps only ``output_bytes`` of it).

The program's source, its files and its stdin are streamed in over the container's
stdin to a tiny boot script (the root filesystem is read-only, so nothing is copied in).
The image needs ``python3`` on ``PATH``; the default is ``python:3.12-slim``.

What this backend does not give (its :attr:`protections` are ``isolation`` and
``cgroup_limits``; the engine's default seccomp profile applies, turnrl adds none):

* no trusted status: the container's exit status is all the host sees, so a CPU-time kill
  (SIGXCPU) reads as ``runtime_error`` -- the program could have sent itself that signal;
* no private session channel: the session supervisor talks over the container's stdio,
  which the container's init also holds, so a cell can reach it through ``/proc/1/fd``.
  A session here can forge its own results; train with rewards from bubblewrap;
* ``secret`` is handed to the program on fd 3, but other processes of the container can
  read it through ``/proc`` while the program runs.

These tests need a Docker engine, which the CI machines lack; they skip there.
"""

from __future__ import annotations

import base64
import collections
import json
import select
import time
from collections.abc import Mapping
from typing import Any

from turnrl.errors import ConfigError
from turnrl.sandbox.base import (
    CODE_DIR,
    SCRATCH_DIR,
    ExecResult,
    Limits,
    Sandbox,
    SandboxUnavailable,
    classify,
    reject_nul,
)
from turnrl.sandbox.session import SERVER_SOURCE, Channel, Session, session_config

__all__ = ["DockerSandbox", "DEFAULT_IMAGE"]

DEFAULT_IMAGE = "python:3.12-slim"
_USER = "65534:65534"

#: Reads one JSON line from stdin (files, program, stdin bytes), writes the files into the
#: scratch dir, points fd 0 at the stdin bytes and executes the program.
_BOOT = r"""
import base64, json, os, sys
req = json.loads(sys.stdin.buffer.readline())
if req.get("secret") is not None:
    secret = os.memfd_create("secret")
    os.write(secret, base64.b64decode(req["secret"]))
    os.lseek(secret, 0, 0)
    os.dup2(secret, 3)
for name, data in req["files"].items():
    path = os.path.join(req["scratch"], name)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as f:
        f.write(base64.b64decode(data))
with open(req["stdin_path"], "wb") as f:
    f.write(base64.b64decode(req["stdin"]))
fd = os.open(req["stdin_path"], os.O_RDONLY)
os.dup2(fd, 0)
os.execvp(req["program"][0], req["program"])
"""


class _Demux:
    """Splits Docker's multiplexed attach stream (8-byte frame headers) into stdout and
    stderr, over a raw socket, with deadlines on every read."""

    def __init__(self, sock: Any) -> None:
        self.sock = getattr(sock, "_sock", sock)  # SocketIO wraps the real socket
        self.sock.setblocking(False)
        self.pending = bytearray()
        self.eof = False

    def send(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            left = deadline - time.monotonic()
            if left <= 0:
                raise OSError("timed out writing to the container")
            _, writable, _ = select.select([], [self.sock], [], min(left, 1.0))
            if writable:
                try:
                    view = view[self.sock.send(view):]
                except (BlockingIOError, InterruptedError):
                    continue

    def read_frames(self, deadline: float) -> list[tuple[int, bytes]]:
        """Frames available before ``deadline`` (maybe none); sets ``eof`` at the end."""
        if self.eof:
            return []
        left = max(0.0, deadline - time.monotonic())
        readable, _, _ = select.select([self.sock], [], [], min(left, 1.0))
        if readable:
            try:
                chunk = self.sock.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                chunk = None
            except OSError:
                chunk = b""
            if chunk == b"":
                self.eof = True
            elif chunk:
                self.pending += chunk
        frames = []
        while len(self.pending) >= 8:
            size = int.from_bytes(self.pending[4:8], "big")
            if len(self.pending) < 8 + size:
                break
            frames.append((self.pending[0], bytes(self.pending[8:8 + size])))
            del self.pending[:8 + size]
        return frames

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class _DockerChannel(Channel):
    """Session link over a container's attach stream."""

    def __init__(self, container: Any, demux: _Demux, max_line_bytes: int) -> None:
        self.container = container
        self.demux = demux
        self.max_line_bytes = max_line_bytes
        self.out = bytearray()
        self.err: collections.deque[bytes] = collections.deque(maxlen=64)
        self._closed = False

    def send(self, data: bytes, deadline: float) -> None:
        self.demux.send(data, deadline)

    def readline(self, deadline: float) -> bytes | None:
        while True:
            idx = self.out.find(b"\n")
            if idx >= 0:
                line = bytes(self.out[:idx + 1])
                del self.out[:idx + 1]
                return line
            if self.demux.eof or len(self.out) > self.max_line_bytes:
                return b""
            if time.monotonic() >= deadline:
                return None
            for stream, payload in self.demux.read_frames(deadline):
                if stream == 1:
                    self.out += payload
                else:
                    self.err.append(payload[:2000])

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.demux.close()
        _remove(self.container)

    def exit_code(self) -> int | None:
        try:
            self.container.reload()
            state = self.container.attrs.get("State", {})
            if state.get("Running"):
                return None
            return int(state.get("ExitCode"))
        except Exception:
            return None

    def diagnostics(self) -> str:
        return b"".join(self.err).decode("utf-8", errors="replace")[-2000:]


def _remove(container: Any) -> None:
    try:
        container.remove(force=True)
    except Exception:
        pass


class DockerSandbox(Sandbox):
    """Sandbox on a Docker engine.

    Args:
        limits: resource limits (memory and processes become cgroup limits).
        image: image with ``python3`` on ``PATH`` (pulled on first use if ``pull``).
        client: a ``docker.DockerClient``; default ``docker.from_env()``.
        cpus: CPU cores a container may use.
        pull: pull ``image`` if the engine does not have it.
        runtime: OCI runtime, e.g. ``"runsc"`` for gVisor.

    Raises:
        SandboxUnavailable: the docker SDK is missing or no engine answers.
    """

    name = "docker"
    protections = frozenset({"isolation", "cgroup_limits"})

    def __init__(self, limits: Limits | None = None, *, image: str = DEFAULT_IMAGE,
                 client: Any = None, cpus: float = 1.0, pull: bool = True,
                 runtime: str | None = None) -> None:
        super().__init__(limits)
        if not isinstance(image, str) or not image:
            raise ConfigError(f"image must be a non-empty image name, got {image!r}")
        if not cpus > 0:
            raise ConfigError(f"cpus must be > 0, got {cpus!r}")
        self.image = image
        self.cpus = float(cpus)
        self.runtime = runtime
        self.client = client if client is not None else _connect()
        self._image_ready = False
        self._pull = pull

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        try:
            _connect()
        except SandboxUnavailable as exc:
            return False, str(exc)
        return True, ""

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:
            pass

    # ------------------------------------------------------------------ containers
    def _ensure_image(self) -> str:
        """'' when the image is there, else why not."""
        if self._image_ready:
            return ""
        import docker

        try:
            self.client.images.get(self.image)
        except docker.errors.ImageNotFound:
            if not self._pull:
                return f"image {self.image!r} is not present; run `docker pull {self.image}`"
            try:
                self.client.images.pull(self.image)
            except Exception as exc:
                return f"could not pull image {self.image!r}: {exc}"
        except Exception as exc:
            return f"the Docker engine did not answer: {exc}"
        self._image_ready = True
        return ""

    def _container_kwargs(self, limits: Limits, cpu_s: float) -> dict[str, Any]:
        import docker

        scratch = f"size={limits.scratch_mb}m,mode=1777,exec"
        mem = f"{int(limits.memory_mb)}m"
        kwargs: dict[str, Any] = dict(
            image=self.image,
            user=_USER,
            network_mode="none",
            mem_limit=mem,
            memswap_limit=mem,
            pids_limit=int(limits.max_processes),
            nano_cpus=int(self.cpus * 1e9),
            read_only=True,
            tmpfs={SCRATCH_DIR: scratch, "/tmp": scratch, CODE_DIR: "size=16m,mode=1777"},
            working_dir=SCRATCH_DIR,
            environment={
                "HOME": SCRATCH_DIR, "TMPDIR": "/tmp", "LANG": "C.UTF-8",
                "PYTHONPATH": SCRATCH_DIR, "PYTHONDONTWRITEBYTECODE": "1",
                "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8",
            },
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            ulimits=[
                docker.types.Ulimit(name="cpu", soft=max(1, int(cpu_s + 0.999)), hard=max(1, int(cpu_s + 0.999)) + 1),
                docker.types.Ulimit(name="fsize", soft=limits.file_size_mb * 2**20, hard=limits.file_size_mb * 2**20),
                docker.types.Ulimit(name="nofile", soft=limits.open_files, hard=limits.open_files),
                docker.types.Ulimit(name="core", soft=0, hard=0),
            ],
            log_config=docker.types.LogConfig(type="none"),
            stdin_open=True,
            init=True,
            hostname="sandbox",
            detach=True,
        )
        if self.runtime:
            kwargs["runtime"] = self.runtime
        return kwargs

    def _start(self, command: list[str], limits: Limits, cpu_s: float) -> tuple[Any, _Demux]:
        container = self.client.containers.create(command=command, **self._container_kwargs(limits, cpu_s))
        try:
            sock = container.attach_socket(params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
            container.start()
        except BaseException:
            _remove(container)
            raise
        return container, _Demux(sock)

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
        files_b64 = {k: base64.b64encode(v).decode() for k, v in files_bytes.items()}
        files_b64[f"{CODE_DIR}/{program_file}"] = base64.b64encode(code.encode("utf-8", "surrogateescape")).decode()
        stdin_b64 = base64.b64encode(stdin_bytes).decode()
        t0 = time.monotonic()
        why = self._ensure_image()
        if why:
            return ExecResult("", "", None, "infra_error", False, time.monotonic() - t0, why)
        program = ["python3" if language == "python" else "bash", f"{CODE_DIR}/{program_file}"]
        request = {"files": files_b64, "scratch": SCRATCH_DIR, "stdin": stdin_b64,
                   "stdin_path": f"{CODE_DIR}/.stdin", "program": program,
                   "secret": base64.b64encode(secret).decode() if secret is not None else None}
        limits = self.limits
        cpu = min(float(limits.cpu_time_s), timeout)
        try:
            container, demux = self._start(["python3", "-I", "-S", "-c", _BOOT], limits, cpu)
        except Exception as exc:
            return ExecResult("", "", None, "infra_error", False, time.monotonic() - t0,
                              f"could not start a container: {type(exc).__name__}: {exc}")
        deadline = t0 + timeout
        bufs = {1: bytearray(), 2: bytearray()}
        truncated = timed_out = False
        try:
            try:
                demux.send(json.dumps(request).encode() + b"\n", min(deadline, time.monotonic() + 10))
            except OSError:
                pass  # the container died already; its status says why
            while not demux.eof:
                if time.monotonic() >= deadline:
                    timed_out = True
                    break
                for stream, payload in demux.read_frames(deadline):
                    buf = bufs.get(stream)
                    if buf is None:
                        continue
                    room = limits.output_bytes - len(buf)
                    if room > 0:
                        buf += payload[:room]
                    truncated |= len(payload) > room
            exit_code, oom = None, False
            if not timed_out:
                try:
                    exit_code = int(container.wait(timeout=max(1.0, deadline - time.monotonic() + 1.0))["StatusCode"])
                    container.reload()
                    oom = bool(container.attrs.get("State", {}).get("OOMKilled"))
                except Exception:
                    timed_out = exit_code is None
        finally:
            demux.close()
            _remove(container)
        stdout = bytes(bufs[1]).decode("utf-8", errors="replace")
        stderr = bytes(bufs[2]).decode("utf-8", errors="replace")
        duration = time.monotonic() - t0
        if oom:
            return ExecResult(stdout, stderr, exit_code, "memory", truncated, duration,
                              "memory limit exceeded (the container was OOM-killed)")
        # The exit status is all there is: 128 + N may be a signal or the program's choice.
        killed_by = exit_code - 128 if exit_code is not None and exit_code > 128 else None
        status, message = classify(exit_code, stderr, killed_by=killed_by, timed_out=timed_out,
                                   timeout_s=timeout)
        return ExecResult(stdout, stderr, exit_code, status, truncated, duration, message)

    # ------------------------------------------------------------------ session
    def session(self, *, limits: Limits | None = None) -> Session:
        limits = limits or self.limits
        return Session(lambda config: self._launch_server(limits, config), limits,
                       backend=self.name,
                       config=session_config(limits, scratch=SCRATCH_DIR, private_pids=True))

    def _launch_server(self, limits: Limits, config: dict[str, Any]) -> Channel:
        why = self._ensure_image()
        if why:
            raise RuntimeError(why)
        # The session's CPU limit is managed per cell by the server (soft rlimit), so the
        # container's hard CPU ulimit is generous: 100 cells' worth.
        config = {**config, "req_fd": 0, "rep_fd": 1}  # stdio: reachable by cells, see above
        container, demux = self._start(["python3", "-I", "-c", SERVER_SOURCE, json.dumps(config)],
                                       limits, 100 * float(limits.cpu_time_s))
        return _DockerChannel(container, demux, 12 * limits.output_bytes + (1 << 20))


def _connect() -> Any:
    try:
        import docker
    except ImportError:
        raise SandboxUnavailable(
            "the docker backend needs the docker SDK: pip install 'turnrl[docker]'"
        ) from None
    try:
        client = docker.from_env(timeout=5)
        client.ping()
    except Exception as exc:
        raise SandboxUnavailable(
            f"no Docker engine answers ({type(exc).__name__}: {str(exc)[:200]}); start the "
            "Docker daemon or set DOCKER_HOST"
        ) from None
    return client

