"""The supervisor and interpreter of a :class:`~turnrl.sandbox.session.Session`.

This file is not imported by turnrl: its source is sent into the sandbox and run there as
``python3 -I -c <source> <config json>``, so it uses the standard library only and runs on
Python >= 3.8.

Two processes, so that the cells' code never touches the host's channel:

``supervisor``  this program. It holds the channel to the host (``req_fd``: requests in,
                ``rep_fd``: answers out, one JSON object per line, each answer carrying its
                request's ``id``), makes itself non-dumpable (a process of the same uid then
                cannot read or write it, or reach its file descriptors, through ``/proc``),
                ignores every signal it can, and never runs a cell. It decides each cell's
                status from what it observes itself: its own clock, the interpreter's CPU
                time in ``/proc``, and whether the interpreter is still alive.
``interpreter`` a child forked from the supervisor before any cell ran, holding only its
                end of three pipes: requests from the supervisor, its stdout and stderr,
                and a "done" pipe. It runs cells in one namespace, so state persists. If it
                dies (``os._exit``, a segfault, a kill), the supervisor keeps the output it
                had read, reports the crash and forks a fresh interpreter.

Between cells the interpreter is stopped (SIGSTOP) and every other process in the sandbox
is killed, so a thread or process a cell leaves behind uses no CPU until the next cell of
the same session. Limits: the wall clock (SIGALRM into the cell, then SIGKILL after
``grace_s``), CPU time (the soft ``RLIMIT_CPU``, raised per cell, then SIGKILL after
``grace_s`` more), and the memory, process, file-size and open-file rlimits of the
interpreter.

Requests: ``{"op": "run", "id", "code", "timeout_s", "cpu_s", "files"}`` and
``{"op": "exit"}``. Answers: ``{"ready": true}`` once, then per run ``{"id", "status",
"exit_code", "stdout", "stderr", "truncated", "message", "restarted"}``.
"""

import ast
import base64
import builtins
import errno
import fcntl
import io
import json
import linecache
import math
import os
import resource
import select
import signal
import sys
import time
import traceback

CFG = json.loads(sys.argv[1])
OUTPUT_BYTES = int(CFG["output_bytes"])
SCRATCH = CFG["scratch"]
PRIVATE_PIDS = bool(CFG.get("private_pids"))
GRACE_S = float(CFG.get("grace_s", 1.0))
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ===================================================================== the interpreter
class _Interrupt(BaseException):
    """Raised into a cell by a limit; a BaseException so ``except Exception`` misses it."""


#: Whether a cell is running: a limit's signal that arrives late, after the cell, is
#: dropped instead of breaking the interpreter's own code.
_IN_CELL = [False]


def _on_alarm(signum, frame):
    if _IN_CELL[0]:
        raise _Interrupt("wall")


def _on_xcpu(signum, frame):
    if _IN_CELL[0]:
        raise _Interrupt("cpu")


# The interpreter's own tools, bound now: a cell that patches json, os or builtins for
# its own ends must not break how its results get back.
_dumps, _loads, _os_write = json.dumps, json.loads, os.write
_exec, _eval, _compile, _repr, _print = builtins.exec, builtins.eval, builtins.compile, repr, print


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[_os_write(fd, view):]


def _text_stream(fd):
    # Line-buffered: what a cell printed before a crash has reached the supervisor.
    raw = io.FileIO(fd, "w", closefd=False)
    return io.TextIOWrapper(io.BufferedWriter(raw), encoding="utf-8",
                            errors="backslashreplace", line_buffering=True)


def interpreter_main(req_fd, done_fd):
    """Serve cells forever (runs in the forked child; never returns)."""
    ns = {"__name__": "__main__", "__builtins__": builtins}
    sys.stdout = sys.__stdout__ = _text_stream(1)
    sys.stderr = sys.__stderr__ = _text_stream(2)
    sys.stdin = sys.__stdin__ = open(os.devnull)
    sys.path.insert(0, SCRATCH)
    own_streams = (sys.stdout, sys.stderr)
    requests = os.fdopen(req_fd, "rb")
    # Prepared now, while memory is free: the answer when even that runs out.
    out_of_memory = b'{"n": %d, "outcome": "memory", "message": "memory exhausted"}\n'
    n = 0
    while True:
        line = requests.readline()
        if not line:
            os._exit(0)
        try:
            req = _loads(line)
            n = req["n"]
            _reap_children()
            done = run_cell(ns, req, f"<cell {n}>")
            done["n"] = n
            data = (_dumps(done) + "\n").encode()
        except MemoryError:
            data = out_of_memory % n
        except BaseException as exc:  # whatever happened, answer; never die here
            data = (_dumps({"n": n, "outcome": "error", "exit_code": 1,
                            "message": f"{type(exc).__name__} raised"}) + "\n").encode()
        for stream in (sys.stdout, sys.stderr, *own_streams):
            try:
                stream.flush()
            except BaseException:
                pass
        try:
            _write_all(done_fd, data)
        except OSError:
            os._exit(1)


def _reap_children():
    # Children of earlier cells were killed between cells; collect their zombies.
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def run_cell(ns, req, filename):
    """Run one cell; ``{"outcome", "exit_code", "message"}`` (outcome: ok, error, memory,
    exit or interrupted -- the supervisor decides the status)."""
    outcome, exit_code, message = "ok", 0, ""
    # Our handlers again (a cell may have replaced them), armed only while the cell runs.
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.signal(signal.SIGXCPU, _on_xcpu)
    try:
        _IN_CELL[0] = True
        try:
            for name, b64 in (req.get("files") or {}).items():
                path = os.path.join(SCRATCH, name)
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                with open(path, "wb") as f:
                    f.write(base64.b64decode(b64))
        except OSError as exc:
            return {"outcome": "error", "exit_code": 1, "message": f"could not write files: {exc}"}
        execute(ns, req["code"], filename)
    except _Interrupt as exc:
        outcome, exit_code, message = "interrupted", None, str(exc.args[0] if exc.args else "")
    except (MemoryError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno != errno.ENOMEM:
            outcome, exit_code, message = "error", 1, f"{type(exc).__name__} raised"
        else:  # ENOMEM: memfd_create and shared memory are refused as memory
            outcome, exit_code, message = "memory", 1, "memory limit exceeded"
        print_user_traceback(exc, filename)
    except SystemExit as exc:
        code = exc.code
        if code is None or code == 0:
            exit_code = 0
        elif isinstance(code, int):
            exit_code = code
        else:
            exit_code = 1
            _print_err(str(code))
        if exit_code != 0:
            outcome, message = "exit", f"exited with status {exit_code}"
    except BaseException as exc:
        outcome, exit_code, message = "error", 1, f"{type(exc).__name__} raised"
        print_user_traceback(exc, filename)
    finally:
        _IN_CELL[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)  # an alarm the cell set must not fire later
    return {"outcome": outcome, "exit_code": exit_code, "message": message}


def execute(ns, code, filename):
    """Run a cell like a notebook: the value of a final expression is printed."""
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    tree = ast.parse(code, filename, "exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    _exec(_compile(tree, filename, "exec"), ns)
    if last is not None:
        value = _eval(_compile(last, filename, "eval"), ns)
        if value is not None:
            _print(_repr(value))


def _print_err(text):
    try:
        sys.stderr.write(text + "\n")
    except BaseException:
        pass


def print_user_traceback(exc, filename):
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != filename:
        tb = tb.tb_next  # hide the interpreter's own frames
    try:
        if isinstance(exc, SyntaxError):
            lines = traceback.format_exception_only(type(exc), exc)
        else:
            lines = traceback.format_exception(type(exc), exc, tb)
        sys.stderr.write("".join(lines))
    except BaseException:  # e.g. no memory left to format it
        try:
            _write_all(2, b"\n" + type(exc).__name__.encode() + b" (traceback unavailable)\n")
        except BaseException:
            pass
    finally:
        exc.__traceback__ = None


# ===================================================================== the supervisor
def make_non_dumpable():
    import ctypes

    if ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE) failed")


def cpu_seconds(pid):
    """CPU time of ``pid``'s threads (not its children), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, ValueError, IndexError):
        return None


def exit_status(status):
    """``(exit code in the shell convention, signal or None)``."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status), os.WTERMSIG(status)
    return os.WEXITSTATUS(status), None


def near_cpu_limit(used_s, limit_s):
    """Whether an interpreter stopped by SIGXCPU had used about its CPU budget: the kernel
    counts clock ticks, /proc the precise run time, several percent lower under load (as
    ``turnrl.sandbox._proc.near_cpu_limit``)."""
    return used_s >= 0.9 * limit_s - 0.1


class Capture:
    """One output pipe of the interpreter: keeps the head of each cell's bytes."""

    def __init__(self, fd):
        self.fd = fd
        self.kept = bytearray()
        self.dropped = 0
        self.eof = False  # the interpreter closed its end
        os.set_blocking(fd, False)

    def read(self):
        """Read what is there."""
        while not self.eof:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                self.eof = True
                return
            room = OUTPUT_BYTES - len(self.kept)
            if room > 0:
                self.kept += chunk[:room]
            self.dropped += max(0, len(chunk) - max(room, 0))

    def take(self):
        text = bytes(self.kept).decode("utf-8", errors="replace")
        dropped = self.dropped
        self.kept, self.dropped = bytearray(), 0
        return text, dropped


class Interpreter:
    """The supervisor's handle on one forked interpreter."""

    def __init__(self):
        req_r, req_w = os.pipe()
        done_r, done_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the interpreter: nothing of the supervisor's channel comes along
            try:
                null = os.open(os.devnull, os.O_RDWR)
                # Above every target first, so no dup2 overwrites a source still needed.
                sources = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
                           for fd in (null, out_w, err_w, req_r, done_w)]
                for target, source in enumerate(sources):
                    os.dup2(source, target)
                os.closerange(5, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
                for sig in signal.valid_signals():  # undo the supervisor's SIG_IGN
                    if sig not in (signal.SIGKILL, signal.SIGSTOP):
                        try:
                            signal.signal(sig, signal.SIG_DFL)
                        except (OSError, ValueError):
                            pass
                # As in any Python: SIGINT raises KeyboardInterrupt, a broken pipe and the
                # file-size limit raise OSError instead of killing the process.
                signal.signal(signal.SIGINT, signal.default_int_handler)
                signal.signal(signal.SIGPIPE, signal.SIG_IGN)
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                for name, value in CFG.get("rlimits", {}).items():
                    resource.setrlimit(getattr(resource, name), (value, value))
                interpreter_main(3, 4)
            finally:
                os._exit(70)
        for fd in (req_r, done_w, out_w, err_w):
            os.close(fd)
        self.pid = pid
        self.req_w = req_w
        self.done_r = done_r
        self.out = Capture(out_r)
        self.err = Capture(err_r)
        self.exit_code = None  # set once reaped
        self.signal = None
        self.cells = 0
        self.last_cpu = None  # CPU seconds when last seen alive

    def alive(self):
        return self.exit_code is None

    def kill(self):
        if self.exit_code is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except OSError:
                pass

    def exited(self):
        """Whether it has exited (reaping it if so), without waiting."""
        if self.exit_code is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = self.pid, 0
            if pid == self.pid:
                self.exit_code, self.signal = exit_status(status)
        return self.exit_code is not None

    def reap(self):
        """Wait for the (killed or exited) interpreter; its exit status."""
        if self.exit_code is None:
            try:
                _, status = os.waitpid(self.pid, 0)
                self.exit_code, self.signal = exit_status(status)
            except ChildProcessError:
                self.exit_code = -1
        return self.exit_code

    def close(self):
        self.kill()
        self.reap()
        for fd in (self.req_w, self.done_r, self.out.fd, self.err.fd):
            try:
                os.close(fd)
            except OSError:
                pass


def other_processes(keep):
    """Processes to kill between cells: everything else in a private pid namespace, or
    the members of our session otherwise. Zombies are skipped (they hold nothing)."""
    sid, found = os.getsid(0), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid in keep or pid == 1:
            continue
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
            state = stat[stat.rindex(b")") + 2:stat.rindex(b")") + 3]
            if state in (b"Z", b"X"):
                continue
            if not PRIVATE_PIDS and os.getsid(pid) != sid:
                continue
        except (OSError, ValueError):
            continue
        found.append(pid)
    return found


def kill_others(keep):
    for _ in range(100):
        victims = other_processes(keep)
        if not victims:
            return
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.001)


class Supervisor:
    def __init__(self):
        self.req = os.fdopen(int(CFG["req_fd"]), "rb")
        self.rep = int(CFG["rep_fd"])
        self.worker = None
        os.makedirs(SCRATCH, exist_ok=True)
        os.chdir(SCRATCH)

    def send(self, obj):
        _write_all(self.rep, (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8", "replace"))

    def serve(self):
        self.send({"ready": True, "pid": os.getpid(), "python": sys.version.split()[0]})
        while True:
            line = self.req.readline()
            if not line:
                return
            reply = {}
            try:
                req = json.loads(line)
                reply["id"] = req.get("id")
                if req.get("op") == "exit":
                    return
                if req.get("op") != "run":
                    raise ValueError("unknown op {!r}".format(req.get("op")))
                reply.update(self.run(req))
            except BaseException as exc:  # the supervisor's own fault: an infra error
                reply.update({"status": "infra_error", "exit_code": None, "stdout": "",
                              "stderr": "", "truncated": False, "restarted": False,
                              "message": f"session supervisor error: {type(exc).__name__}: {exc}"})
            self.send(reply)

    def run(self, req):
        restarted_before = False
        if self.worker is None or not self.worker.alive():
            if self.worker is not None:
                self.worker.close()
            restarted_before = self.worker is not None
            self.worker = Interpreter()
        w = self.worker
        w.cells += 1
        timeout_s, cpu_s = float(req["timeout_s"]), float(req["cpu_s"])
        cpu0 = cpu_seconds(w.pid) or 0.0
        cpu_soft = int(math.ceil(cpu0 + cpu_s))
        try:  # the hard limit stays infinite so later cells can raise the soft one
            resource.prlimit(w.pid, resource.RLIMIT_CPU, (cpu_soft, resource.RLIM_INFINITY))
        except OSError:
            pass  # the cell lowered its own hard limit: its later cells get less CPU
        payload = (json.dumps({"n": w.cells, "code": req["code"],
                               "files": req.get("files") or {}}) + "\n").encode()
        done, how = self.drive(w, payload, w.cells, timeout_s, cpu_soft)
        w.out.read()
        w.err.read()
        if w.alive():
            try:
                os.kill(w.pid, signal.SIGSTOP)  # idle until the next cell, threads included
            except OSError:
                pass
        kill_others({os.getpid(), w.pid})
        stdout, dropped_out = w.out.take()
        stderr, dropped_err = w.err.take()
        result = self.status(w, done, how, timeout_s, cpu_s, cpu0, cpu_soft)
        result.update(stdout=stdout, stderr=stderr, truncated=bool(dropped_out or dropped_err))
        if restarted_before:
            result["message"] = ("(the interpreter was restarted before this cell; earlier "
                                 "variables are lost) " + result["message"])
        return result

    def drive(self, w, payload, n, timeout_s, cpu_soft):
        """Send the cell and follow it to its end: ``(done message or None, how)`` where
        how is "done", "died", "closed" (it closed its done pipe and was killed), "wall"
        (interrupted, then done or killed) or "cpu" (killed past the CPU limit)."""
        t0 = time.monotonic()
        deadline = t0 + timeout_s
        kill_at = None
        how = "done"
        try:
            os.kill(w.pid, signal.SIGCONT)
        except OSError:
            pass
        os.set_blocking(w.req_w, False)
        pending = memoryview(payload)
        done_buf = b""
        while True:
            now = time.monotonic()
            if kill_at is None and now >= deadline:
                how = "wall"
                try:
                    os.kill(w.pid, signal.SIGALRM)
                except OSError:
                    pass
                kill_at = now + GRACE_S
            if kill_at is not None and now >= kill_at:
                w.kill()
                w.reap()
                return None, how
            cpu = cpu_seconds(w.pid)
            w.last_cpu = cpu if cpu is not None else w.last_cpu
            if cpu is not None and cpu >= cpu_soft + GRACE_S:  # it ignored SIGXCPU
                w.kill()
                w.reap()
                return None, "cpu"
            wait = (kill_at if kill_at is not None else deadline) - now
            reads = [c.fd for c in (w.out, w.err) if not c.eof] + [w.done_r]
            writes = [w.req_w] if pending else []
            try:
                readable, writable, _ = select.select(reads, writes, [], max(0.0, min(wait, 0.1)))
            except InterruptedError:
                continue
            if writable:
                try:
                    pending = pending[os.write(w.req_w, pending):]
                except BlockingIOError:
                    pass
                except OSError:
                    pending = pending[:0]  # it died; the done pipe says so next
            if w.out.fd in readable:
                w.out.read()
            if w.err.fd in readable:
                w.err.read()
            if w.done_r in readable:
                try:
                    chunk = os.read(w.done_r, 65536)
                except OSError:
                    chunk = b""
                if not chunk:  # the interpreter died, or closed its end of the pipe
                    return None, self.ended(w, how)
                done_buf += chunk
                while b"\n" in done_buf:  # answers for another cell number are ignored
                    line, done_buf = done_buf.split(b"\n", 1)
                    try:
                        message = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(message, dict) and message.get("n") == n:
                        return message, how

    @staticmethod
    def ended(w, how):
        """The done pipe hit end-of-file: reap the interpreter (killing it if it only closed
        the pipe); how the cell ended."""
        for _ in range(50):  # a dying process closes its fds just before it exits
            if w.exited():
                return "died" if how == "done" else how
            time.sleep(0.001)
        w.kill()
        w.reap()
        if how != "done":
            return how
        return "closed" if w.signal == signal.SIGKILL else "died"

    def status(self, w, done, how, timeout_s, cpu_s, cpu0, cpu_soft):
        lost = not w.alive()
        cpu = cpu_seconds(w.pid) if not lost else w.last_cpu
        # A CPU timeout: killed past the limit, or stopped by SIGXCPU (the cell's interrupt,
        # or death by it) near the limit.
        stopped_by_xcpu = ((done or {}).get("outcome") == "interrupted"
                           and (done or {}).get("message") == "cpu"
                           or lost and w.signal in (signal.SIGXCPU, signal.SIGKILL))
        cpu_exceeded = how == "cpu" or (stopped_by_xcpu and cpu is not None
                                        and near_cpu_limit(cpu - cpu0, cpu_soft - cpu0))
        tail = "; the interpreter was killed and restarts with a fresh state" if lost else ""
        if how == "wall":
            return {"status": "timeout", "exit_code": None, "restarted": lost, "message":
                    f"wall time limit of {timeout_s:g}s exceeded; the cell was interrupted{tail}"}
        if cpu_exceeded:
            return {"status": "timeout", "exit_code": None, "restarted": lost, "message":
                    f"CPU time limit of {cpu_s:g}s exceeded; the cell was interrupted{tail}"}
        if lost:
            how_it_ended = (f"was killed by signal {w.signal}" if w.signal is not None
                            else f"exited with status {w.exit_code}")
            if how == "closed":
                how_it_ended = "closed its pipe to the supervisor and was stopped"
            return {"status": "runtime_error", "exit_code": w.exit_code, "restarted": True,
                    "message": f"the interpreter {how_it_ended}; it restarts with a fresh state "
                               "on the next call (files in the scratch directory are kept)"}
        outcome = done.get("outcome")
        exit_code = done.get("exit_code")
        if not isinstance(exit_code, int) or isinstance(exit_code, bool):
            exit_code = 1
        message = str(done.get("message", ""))[:500]
        if outcome == "interrupted":  # not by a limit the supervisor saw
            message = "the cell was interrupted, but by no limit"
        if outcome == "ok":
            return {"status": "ok", "exit_code": 0, "restarted": False, "message": ""}
        if outcome == "memory":
            return {"status": "memory", "exit_code": 1, "restarted": False,
                    "message": "memory limit exceeded"}
        return {"status": "runtime_error", "exit_code": exit_code, "restarted": False,
                "message": message or "the cell failed"}

    def shutdown(self):
        if self.worker is not None:
            self.worker.close()
        kill_others({os.getpid()})


def main():
    try:
        make_non_dumpable()
    except Exception as exc:
        sys.stderr.write(f"turnrl session: cannot protect the supervisor: {exc}\n")
        os._exit(3)
    for sig in signal.valid_signals():  # only SIGKILL and SIGSTOP can stop the supervisor
        if sig not in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD):
            try:
                signal.signal(sig, signal.SIG_IGN)
            except (OSError, ValueError):
                pass
    supervisor = Supervisor()
    try:
        supervisor.serve()
    finally:
        supervisor.shutdown()
        os._exit(0)


if __name__ == "__main__":
    main()
