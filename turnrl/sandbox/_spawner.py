"""Host side of the spawner (see ``_spawner_server.py``): start sandboxes so that none
outlives this process, whatever moment it dies at.

:func:`spawner_for` gives the :class:`Spawner` of a Python interpreter and uid, starting
it on first use (one small process, tens of milliseconds, once). :meth:`Spawner.spawn`
starts a program with the given file descriptors and returns a :class:`Spawned`, which
behaves like a ``subprocess.Popen`` that can only be polled, waited for and killed (the
kill takes its whole process group, i.e. the whole sandbox).

After ``os.fork()`` the child drops its parent's spawners and starts its own when it needs
one: a spawner serves the process that started it.

If the spawner itself is killed, its sandboxes die with it (bwrap's ``--die-with-parent``)
except those still starting up; every command it starts carries :attr:`Spawner.tag`, so
turnrl finds those and kills them. Only if turnrl and the spawner die at the same moment
can a sandbox that was starting be left behind.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["Spawned", "Spawner", "SpawnError", "spawner_for"]

SPAWNER_SOURCE = Path(__file__).with_name("_spawner_server.py").read_text(encoding="utf-8")
#: Seconds to wait for the spawner to answer that a program started.
SPAWN_TIMEOUT_S = 30.0


class SpawnError(OSError):
    """The spawner could not start the program, or is gone."""


class Spawned:
    """A program started by a :class:`Spawner`. Its exit status uses the shell convention
    (``128 + N`` for death by signal N); ``None`` while it runs or if the spawner died."""

    def __init__(self, spawner: Spawner, ident: int) -> None:
        self._spawner = spawner
        self.id = ident
        self.pid: int | None = None
        self.returncode: int | None = None
        self.error = ""
        self._started = threading.Event()
        self._exited = threading.Event()

    def poll(self) -> int | None:
        return self.returncode

    def done(self) -> bool:
        """Exited, or lost with the spawner (then ``returncode`` stays ``None``)."""
        return self._exited.is_set()

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit status, or ``None`` if it did not exit within ``timeout`` seconds."""
        self._exited.wait(timeout)
        return self.returncode

    def kill(self) -> None:
        """SIGKILL its process group: bwrap and, through its pid 1, the whole sandbox."""
        if not self._exited.is_set():
            try:
                self._spawner._send({"op": "kill", "id": self.id})
            except OSError:
                pass  # the spawner is gone, and with it the sandbox


class Spawner:
    """Connection to one spawner process (see the module docstring). Thread-safe."""

    def __init__(self, python: str, user: int | None = None) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            extra = {"user": user, "group": user, "extra_groups": []} if user is not None else {}
            self._proc = subprocess.Popen(
                [python, "-I", "-S", "-c", SPAWNER_SOURCE, str(theirs.fileno())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/",
                env={"PATH": "/usr/bin:/bin"}, start_new_session=True, **extra,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._sock = ours
        self._owner = os.getpid()
        self._lock = threading.Lock()
        self._next_id = 0
        self._children: dict[int, Spawned] = {}
        self._closing = False
        #: Put in the command line of whatever this spawner starts (see kill_tagged).
        self.tag = f"turnrl-spawner-{secrets.token_hex(8)}"
        self.alive = True
        threading.Thread(target=self._read, name="turnrl-spawner-reader", daemon=True).start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def spawn(self, argv: Sequence[str], fds: Sequence[int], *, env: Mapping[str, str]) -> Spawned:
        """Start ``argv`` in ``/`` with ``fds[i]`` as its fd ``i``; wait until it executes.

        The caller keeps (and closes) its own copies of ``fds``.

        Raises:
            SpawnError: the program could not be started, or the spawner is gone.
        """
        with self._lock:
            self._next_id += 1
            child = Spawned(self, self._next_id)
            self._children[child.id] = child
        request = {"op": "spawn", "id": child.id, "argv": list(argv), "env": dict(env)}
        try:
            self._send(request, fds)
        except OSError as exc:
            self._forget(child)
            raise SpawnError(f"the sandbox spawner is gone: {exc}") from None
        if not child._started.wait(SPAWN_TIMEOUT_S):
            child.kill()
            raise SpawnError(f"the sandbox spawner did not start the program in {SPAWN_TIMEOUT_S:g} s")
        if child.pid is None:
            raise SpawnError(child.error or "the sandbox spawner is gone")
        return child

    def _send(self, obj: dict, fds: Sequence[int] = ()) -> None:
        data = json.dumps(obj).encode()
        with self._lock:
            if not self.alive:
                raise OSError("spawner closed")
            socket.send_fds(self._sock, [data], list(fds))

    def _forget(self, child: Spawned) -> None:
        with self._lock:
            self._children.pop(child.id, None)

    def _read(self) -> None:
        try:
            while True:
                data = self._sock.recv(1 << 16)
                if not data:
                    break
                msg = json.loads(data)
                with self._lock:
                    child = self._children.get(msg["id"])
                if child is None:
                    continue
                if "pid" in msg:
                    child.pid = msg["pid"]
                    child._started.set()
                elif "error" in msg:
                    child.error = msg["error"]
                    self._forget(child)
                    child._started.set()
                    child._exited.set()
                elif "status" in msg:
                    child.returncode = int(msg["status"])
                    self._forget(child)
                    child._started.set()
                    child._exited.set()
        except (OSError, ValueError, KeyError):
            pass
        finally:
            with self._lock:
                self.alive = False
                orphans, self._children = list(self._children.values()), {}
            if not self._closing:
                # The spawner was killed: its sandboxes die with it, except one still
                # starting up, whose pid 1 is not yet tied to its bwrap. Kill those here.
                kill_tagged(self.tag)
            for child in orphans:
                child.error = child.error or "the sandbox spawner exited"
                child._started.set()
                child._exited.set()
            try:
                self._proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                pass

    def close(self) -> None:
        """Disconnect: the spawner kills every sandbox it started and exits."""
        with self._lock:
            self.alive = False
            self._closing = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def kill_tagged(tag: str, rounds: int = 50) -> None:
    """SIGKILL every process whose command line contains ``tag``, until none is left."""
    needle = tag.encode()
    for _ in range(rounds):
        found = False
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if needle not in f.read():
                        continue
                os.kill(int(entry), signal.SIGKILL)
                found = True
            except OSError:
                continue
        if not found:
            return
        time.sleep(0.005)


_spawners: dict[tuple[str, int | None], Spawner] = {}
_spawners_lock = threading.Lock()


def spawner_for(python: str, user: int | None = None) -> Spawner:
    """The running spawner for ``(python, user)``, started on first use (or again if it
    died).

    Raises:
        OSError: the spawner process could not be started.
    """
    key = (python, user)
    with _spawners_lock:
        spawner = _spawners.get(key)
        if spawner is None or not spawner.alive or spawner._owner != os.getpid():
            spawner = _spawners[key] = Spawner(python, user)
        return spawner


def _after_fork_in_child() -> None:
    # The sockets belong to the parent's spawners; this process starts its own.
    global _spawners_lock
    _spawners_lock = threading.Lock()
    for spawner in _spawners.values():
        try:
            os.close(spawner._sock.detach())
        except OSError:
            pass
    _spawners.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
