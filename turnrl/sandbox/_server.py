"""The interpreter that a :class:`~turnrl.sandbox.session.Session` runs inside a sandbox.

This file is not imported by turnrl: its source is sent into the sandbox and run there as
``python3 -I -c <source> <config json>``, so it uses the standard library only and runs on
Python >= 3.8.

Protocol (one JSON object per line): requests arrive on the original stdin; each answer
is written to the original stdout, prefixed with the session token. The program's own
stdout and stderr are pipes swapped in around every cell, drained by two threads that keep
the first ``output_bytes`` bytes of each and drop the rest.

Requests: ``{"op": "run", "code", "timeout_s", "cpu_s", "files"}``, ``{"op": "reset"}``,
``{"op": "exit"}``. Run answers: ``{"status", "exit_code", "stdout", "stderr",
"truncated", "message"}``.

Time limits are enforced from inside first -- SIGALRM (wall) and the soft CPU rlimit
(SIGXCPU) raise an exception in the cell, so the variables survive a timeout -- and from
outside as a backstop: the host kills the whole sandbox if no answer comes back in time.
"""

import ast
import base64
import builtins
import json
import linecache
import math
import os
import resource
import shutil
import signal
import sys
import threading
import traceback

CFG = json.loads(sys.argv[1])
TOKEN = CFG["token"]
OUTPUT_BYTES = int(CFG["output_bytes"])
SCRATCH = CFG["scratch"]
TMP = CFG.get("tmp")
PRIVATE_PIDS = bool(CFG.get("private_pids"))


class _Interrupt(BaseException):
    """Raised into a cell by a limit; a BaseException so ``except Exception`` misses it."""


class _WallTimeout(_Interrupt):
    pass


class _CpuTimeout(_Interrupt):
    pass


def _on_alarm(signum, frame):
    raise _WallTimeout()


def _on_xcpu(signum, frame):
    raise _CpuTimeout()


class _Reader(threading.Thread):
    """Drains one pipe; keeps the head, counts the rest."""

    def __init__(self, fd):
        threading.Thread.__init__(self, daemon=True)
        self.fd = fd
        self.kept = bytearray()
        self.dropped = 0

    def run(self):
        try:
            while True:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    break
                room = OUTPUT_BYTES - len(self.kept)
                if room > 0:
                    self.kept += chunk[:room]
                self.dropped += max(0, len(chunk) - max(room, 0))
        except OSError:
            pass
        finally:
            os.close(self.fd)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _cpu_used():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _set_cpu_soft(seconds):
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if seconds is None:
        soft = hard
    else:
        soft = int(math.ceil(_cpu_used() + seconds))
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _disarm():
    signal.setitimer(signal.ITIMER_REAL, 0)
    _set_cpu_soft(None)


def _my_sid():
    return os.getsid(0)


def _strays():
    """Processes to kill after a cell: everything else in a private pid namespace, or
    the members of our session otherwise. Zombies are skipped (they hold nothing)."""
    me, sid, found = os.getpid(), _my_sid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid in (me, 1):
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


def _kill_strays():
    killed = set()
    for _ in range(100):
        victims = _strays()
        if not victims:
            break
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except OSError:
                pass
        _reap()
    for pid in killed:  # our own children: wait for them, so no zombie is left
        try:
            os.waitpid(pid, 0)
        except (ChildProcessError, OSError):
            pass
    _reap()


def _reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


class Server:
    def __init__(self):
        self.proto_in = os.fdopen(os.dup(0), "rb")
        self.proto_out = os.dup(1)
        self.null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(self.null, fd)
        for name, value in CFG.get("rlimits", {}).items():
            resource.setrlimit(getattr(resource, name), (value, value))
        threading.stack_size(512 * 1024)  # threads count against the memory limit
        os.makedirs(SCRATCH, exist_ok=True)
        os.chdir(SCRATCH)
        sys.path.insert(0, SCRATCH)
        self.cells = 0
        self.fresh_namespace()

    def fresh_namespace(self):
        self.ns = {"__name__": "__main__", "__builtins__": builtins}

    def send(self, obj):
        line = TOKEN + " " + json.dumps(obj, ensure_ascii=False) + "\n"
        _write_all(self.proto_out, line.encode("utf-8", errors="replace"))

    # ------------------------------------------------------------------ ops
    def serve(self):
        self.send({"ready": True, "pid": os.getpid(), "python": sys.version.split()[0]})
        while True:
            line = self.proto_in.readline()
            if not line:
                return
            try:
                req = json.loads(line)
                op = req.get("op")
                if op == "run":
                    reply = self.run_cell(req)
                elif op == "reset":
                    reply = self.reset()
                elif op == "exit":
                    return
                else:
                    reply = {"status": "infra_error", "message": f"unknown op {op!r}"}
            except _Interrupt:
                reply = {"status": "timeout", "message": "time limit reached"}
            except BaseException as exc:  # the server must answer, whatever happened
                reply = {"status": "infra_error",
                         "message": f"session server error: {type(exc).__name__}: {exc}"}
            self.send(reply)

    def reset(self):
        _kill_strays()
        self.fresh_namespace()
        for root in (SCRATCH, TMP):
            if not root or not os.path.isdir(root):
                continue
            for name in os.listdir(root):
                path = os.path.join(root, name)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    try:
                        os.unlink(path)
                    except OSError:
                        pass
        for name, module in list(sys.modules.items()):
            path = getattr(module, "__file__", None) or ""
            if path.startswith(SCRATCH) or (TMP and path.startswith(TMP)):
                del sys.modules[name]
        os.chdir(SCRATCH)
        return {"ok": True}

    def write_files(self, files):
        for name, b64 in (files or {}).items():
            path = os.path.join(SCRATCH, name)
            parent = os.path.dirname(path)
            if parent:
                os.makedirs(parent, exist_ok=True)
            with open(path, "wb") as f:
                f.write(base64.b64decode(b64))

    def run_cell(self, req):
        self.cells += 1
        filename = f"<cell {self.cells}>"
        try:
            self.write_files(req.get("files"))
        except OSError as exc:
            return {"status": "runtime_error", "exit_code": 1, "stdout": "", "stderr": "",
                    "truncated": False, "message": f"could not write files: {exc}"}
        r_out, w_out = os.pipe()
        r_err, w_err = os.pipe()
        readers = [_Reader(r_out), _Reader(r_err)]
        for reader in readers:
            reader.start()
        os.dup2(w_out, 1)
        os.dup2(w_err, 2)
        os.close(w_out)
        os.close(w_err)
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        status, exit_code, message = "ok", 0, ""
        try:
            signal.signal(signal.SIGALRM, _on_alarm)
            signal.signal(signal.SIGXCPU, _on_xcpu)
            try:
                _set_cpu_soft(float(req["cpu_s"]))
                signal.setitimer(signal.ITIMER_REAL, float(req["timeout_s"]))
                self.execute(req["code"], filename)
            finally:
                _disarm()
        except _WallTimeout:
            status, exit_code = "timeout", None
            message = "wall time limit of {:g}s exceeded; the cell was interrupted".format(req["timeout_s"])
            self.print_exc("TimeoutError: " + message)
        except _CpuTimeout:
            status, exit_code = "timeout", None
            message = "CPU time limit of {:g}s exceeded; the cell was interrupted".format(req["cpu_s"])
            self.print_exc("TimeoutError: " + message)
        except MemoryError as exc:
            status, exit_code, message = "memory", 1, "memory limit exceeded"
            self.print_user_traceback(exc, filename)
        except SystemExit as exc:
            code = exc.code
            if code is None or code == 0:
                exit_code = 0
            elif isinstance(code, int):
                exit_code = code
            else:
                exit_code = 1
                self.print_exc(str(code))
            if exit_code != 0:
                status, message = "runtime_error", f"exited with status {exit_code}"
        except BaseException as exc:
            status, exit_code = "runtime_error", 1
            message = f"{type(exc).__name__} raised"
            self.print_user_traceback(exc, filename)
        finally:
            for _ in range(3):  # a late signal may land here; disarm until it holds
                try:
                    _disarm()
                    break
                except _Interrupt:
                    continue
            for stream in (sys.__stdout__, sys.__stderr__):
                try:
                    stream.flush()
                except BaseException:
                    pass
            os.dup2(self.null, 1)
            os.dup2(self.null, 2)
        _kill_strays()  # background processes would hold the pipes open
        for reader in readers:
            reader.join(2.0)
        out, err = readers[0], readers[1]
        return {
            "status": status,
            "exit_code": exit_code,
            "stdout": bytes(out.kept).decode("utf-8", errors="replace"),
            "stderr": bytes(err.kept).decode("utf-8", errors="replace"),
            "truncated": bool(out.dropped or err.dropped),
            "message": message,
        }

    def execute(self, code, filename):
        """Run a cell like a notebook: the value of a final expression is printed."""
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        tree = ast.parse(code, filename, "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, filename, "exec"), self.ns)
        if last is not None:
            value = eval(compile(last, filename, "eval"), self.ns)
            if value is not None:
                print(repr(value))

    def print_exc(self, text):
        try:
            sys.__stderr__.write(text + "\n")
        except BaseException:
            pass

    def print_user_traceback(self, exc, filename):
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != filename:
            tb = tb.tb_next  # hide the server's own frames
        try:
            if isinstance(exc, SyntaxError):
                lines = traceback.format_exception_only(type(exc), exc)
            else:
                lines = traceback.format_exception(type(exc), exc, tb)
            sys.__stderr__.write("".join(lines))
        except BaseException:
            self.print_exc(f"{type(exc).__name__}: {exc}")
        finally:
            exc.__traceback__ = None


if __name__ == "__main__":
    Server().serve()
