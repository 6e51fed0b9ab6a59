"""The spawner: the process that starts every ``bwrap`` and kills them all if turnrl dies.

This file is not imported by turnrl: its source runs as ``python3 -I -S -c <source> FD``
(standard library only, Python >= 3.8), started once per turnrl process by
:mod:`turnrl.sandbox._spawner`. FD is one end of a ``SOCK_SEQPACKET`` socket pair; turnrl
holds the other end and nothing else does.

Why it exists: ``bwrap --die-with-parent`` ties a sandbox to its parent with
``PR_SET_PDEATHSIG``, which bwrap sets a little after it starts, in each of its two
processes. If the parent is killed in between, the sandbox is orphaned and runs on. Here
the parent is this small process, which outlives turnrl on purpose: when the socket
reaches end-of-file (turnrl exited or was killed, even with ``kill -9``), it kills every
sandbox it started and exits. Each bwrap starts in a session and process group of its
own, and the sandbox's pid 1 stays in that group until it is linked to its parent, so one
``killpg`` ends a sandbox at any stage of its start-up. The spawner is also a
child subreaper, so a sandbox process orphaned mid start-up is reparented here and reaped.

Messages (JSON, one per datagram): requests ``{"op": "spawn", "id", "argv", "env"}``
with the child's file descriptors attached in order (the first becomes fd 0, the next fd 1,
and so on) and ``{"op": "kill", "id"}``; answers ``{"id", "pid"}`` once the program is
executing, ``{"id", "error"}`` if it could not be started, and ``{"id", "status"}`` when it
has exited (``128 + N`` when killed by signal N).
"""

import array
import fcntl
import json
import os
import select
import signal
import socket
import sys

MAX_FDS = 64
#: Signals whose handling the spawner changes (Python ignores SIGPIPE and SIGXFSZ); a
#: program it starts gets the defaults back. Programs run from the spawner's working
#: directory, "/".
RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD, signal.SIGINT, signal.SIGTERM,
                 signal.SIGHUP)
SOCK = socket.socket(fileno=int(sys.argv[1]))
CHILDREN = {}  # pid -> request id
PIDS = {}  # request id -> pid


def set_subreaper():
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except Exception:
        pass  # the process-group kill still ends every sandbox


def send(obj):
    try:
        SOCK.send(json.dumps(obj).encode())
    except OSError:
        pass  # turnrl is gone; the loop sees end-of-file next


def receive():
    fds = array.array("i")
    msg, ancdata, _, _ = SOCK.recvmsg(1 << 20, socket.CMSG_SPACE(MAX_FDS * fds.itemsize),
                                      getattr(socket, "MSG_CMSG_CLOEXEC", 0))
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - (len(data) % fds.itemsize)])
    return msg, list(fds)


def exit_status(status):
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def kill_group(pid):
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def spawn(req, fds):
    """Start ``req["argv"]`` with ``fds`` as its fds 0, 1, 2, ...; owns (closes) ``fds``.
    ``posix_spawn`` copies nothing of this process (no fork), and ``setsid`` gives the
    program a session and process group of its own."""
    # Every source goes above the target numbers first, so that no dup2 overwrites a
    # source still needed; all of them close on exec, the targets excepted.
    sources = []
    try:
        for fd in fds:
            sources.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, len(fds)))
    finally:
        for fd in fds:
            os.close(fd)
    try:
        actions = [(os.POSIX_SPAWN_DUP2, source, target) for target, source in enumerate(sources)]
        pid = os.posix_spawn(req["argv"][0], req["argv"], req.get("env") or {},
                             file_actions=actions, setsid=True, setsigmask=(),
                             setsigdef=RESET_SIGNALS)
    except OSError as exc:
        send({"id": req["id"], "error": f"{type(exc).__name__}: {exc}"})
        return
    finally:
        for source in sources:
            os.close(source)
    CHILDREN[pid] = req["id"]
    PIDS[req["id"]] = pid
    send({"id": req["id"], "pid": pid})


def reap():
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None:
            return
        pid = info.si_pid
        if pid in CHILDREN:
            # bwrap has exited but is not reaped yet, so its process group id cannot be
            # reused: whatever of its sandbox is left goes now.
            kill_group(pid)
        _, status = os.waitpid(pid, 0)
        ident = CHILDREN.pop(pid, None)
        if ident is not None:
            PIDS.pop(ident, None)
            send({"id": ident, "status": exit_status(status)})


def shutdown():
    for pid in list(CHILDREN):
        kill_group(pid)
    signal.signal(signal.SIGALRM, lambda *a: os._exit(0))
    signal.alarm(10)  # never linger, whatever a child does
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
    os._exit(0)


def main():
    set_subreaper()
    os.set_inheritable(SOCK.fileno(), False)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *a: None)
    signal.set_wakeup_fd(wake_w)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # only end-of-file on the socket stops us
    while True:
        try:
            ready, _, _ = select.select([SOCK, wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in ready:
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
        reap()
        if SOCK in ready:
            try:
                msg, fds = receive()
            except OSError:
                msg, fds = b"", []
            if not msg:
                shutdown()
            req = None
            try:
                req = json.loads(msg)
                if req["op"] == "spawn":
                    owned, fds = fds, []
                    spawn(req, owned)
                elif req["op"] == "kill" and req["id"] in PIDS:
                    kill_group(PIDS[req["id"]])
            except Exception as exc:  # a bad request must not stop the spawner
                if isinstance(req, dict) and "id" in req:
                    send({"id": req["id"], "error": f"spawner: {type(exc).__name__}: {exc}"})
            finally:
                for fd in fds:
                    try:
                        os.close(fd)
                    except OSError:
                        pass


if __name__ == "__main__":
    main()
