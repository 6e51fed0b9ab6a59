"""A test judge whose verdict the code under test cannot forge.

The judge runs as one sandboxed program (:data:`JUDGE_SOURCE`) in two processes:

``judge``     trusted. It makes itself non-dumpable (a process of the same uid can then
              neither read nor write it, nor reach its file descriptors, through
              ``/proc``), forks the solution process, and only *then* reads its job from
              the sandbox's secret input (fd 3, see :meth:`turnrl.sandbox.Sandbox.run`):
              the tests, the problem's own helpers and a fresh random nonce. It runs the
              tests itself, calling the candidate function through a proxy, and prints
              its report on one line that starts with the nonce.
``solution``  untrusted. A fork of the judge from before the job was read, so neither its
              memory nor its file descriptors hold the tests or the nonce; its stdout and
              stderr go to the judge. It loads the solution and answers calls: each
              argument list arrives, each return value goes back as plain data.

Return values cross as plain data (``None``, bool, int, float, complex, str, bytes, and
lists, tuples, sets, frozensets and dicts of them), decoded strictly by the judge, so
the comparisons run on builtin values in the judge's own process: an object whose
``__eq__`` always says yes, a patched ``builtins``, a fake report on stdout, ``os._exit``
or a look at ``__main__`` get the solution nothing. What the solution can still do is
return the right values -- or fail. The verdict needs the sandbox's ``private_channel``
protection (bubblewrap); elsewhere the secret input is readable and the verdict can be
forged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["JUDGE_SOURCE", "Verdict", "judge_job", "read_verdict"]

#: The sandboxed program (Python >= 3.8, standard library only). See the module docstring.
JUDGE_SOURCE = r'''
import builtins, json, os, select, signal, sys, time, traceback

MAX_DEPTH, MAX_LINE = 200, 32 << 20
KINDS = {type(None): "N", bool: "b", int: "i", float: "f", complex: "c", str: "s",
         bytes: "y", list: "l", tuple: "t", set: "S", frozenset: "F", dict: "d"}


def encode(value, depth=0):
    """Plain data as tagged JSON; anything else raises TypeError."""
    if depth > MAX_DEPTH:
        raise ValueError("nested too deeply")
    kind = KINDS.get(type(value))
    if kind is None:
        for base, tag in KINDS.items():  # subclasses travel as their builtin base
            if base is not type(None) and isinstance(value, base):
                kind, value = tag, base(value) if base is not bool else bool(value)
                break
        else:
            raise TypeError("cannot pass a %s between the judge and the solution"
                            % type(value).__name__)
    if kind in ("N", "b"):
        return [kind, value]
    if kind == "i":
        return [kind, format(value, "x")]
    if kind == "f":
        return [kind, value.hex()]
    if kind == "c":
        return [kind, value.real.hex(), value.imag.hex()]
    if kind == "s":
        return [kind, value]
    if kind == "y":
        return [kind, value.hex()]
    if kind == "d":
        return [kind, [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]]
    return [kind, [encode(item, depth + 1) for item in value]]


def decode(data, depth=0):
    """The inverse of encode, strict: a malformed value raises ValueError."""
    if depth > MAX_DEPTH or not isinstance(data, list) or not data:
        raise ValueError("malformed value")
    kind, rest = data[0], data[1:]
    if kind == "N":
        return None
    if kind == "b" and rest and type(rest[0]) is bool:
        return rest[0]
    if kind == "i" and rest and type(rest[0]) is str:
        return int(rest[0], 16)
    if kind == "f" and rest and type(rest[0]) is str:
        return float.fromhex(rest[0])
    if kind == "c" and len(rest) == 2:
        return complex(float.fromhex(rest[0]), float.fromhex(rest[1]))
    if kind == "s" and rest and type(rest[0]) is str:
        return rest[0]
    if kind == "y" and rest and type(rest[0]) is str:
        return bytes.fromhex(rest[0])
    if kind in ("l", "t", "S", "F") and rest and type(rest[0]) is list:
        items = [decode(item, depth + 1) for item in rest[0]]
        return {"l": list, "t": tuple, "S": set, "F": frozenset}[kind](items)
    if kind == "d" and rest and type(rest[0]) is list:
        return {decode(k, depth + 1): decode(v, depth + 1) for k, v in rest[0]}
    raise ValueError("malformed value")


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# ------------------------------------------------------------------ the solution process
def solution_main(requests, replies):
    """Load the solution, then answer calls until the judge closes the pipe."""
    lines = os.fdopen(requests, "rb")
    load = json.loads(lines.readline())
    ns = {"__name__": "__solution__"}
    try:
        exec(compile(load["source"], "solution.py", "exec"), ns)
        function = ns[load["entry_point"]]
        answer = {"ok": True}
    except BaseException as exc:
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        answer = {"error": text[-2000:]}
    write_all(replies, (json.dumps(answer) + "\n").encode())
    if "error" in answer:
        os._exit(0)
    for line in lines:
        try:
            call = json.loads(line)
            ident, args = call["id"], call["args"]
        except (ValueError, TypeError, KeyError):
            continue  # not from the judge
        try:
            answer = {"id": ident, "value": encode(function(*[decode(a) for a in args]))}
        except BaseException as exc:
            answer = {"id": ident, "raised": [type(exc).__name__, str(exc)[:300]]}
        try:
            data = (json.dumps(answer) + "\n").encode()
        except BaseException as exc:
            data = (json.dumps({"id": ident, "raised": [type(exc).__name__, ""]}) + "\n").encode()
        write_all(replies, data)
    os._exit(0)


# ------------------------------------------------------------------ the judge
class SolutionGone(BaseException):
    """The solution process died or broke the protocol. Not an Exception, so the tests'
    own handlers do not catch it."""


class OutOfTime(BaseException):
    """The judge's time budget ran out."""


class Solution:
    """The judge's end of the pipes to the solution process."""

    def __init__(self, requests, replies, output, deadline):
        self.requests, self.replies, self.output = requests, replies, output
        self.deadline = deadline
        self.buf = b""
        self.captured = b""
        self.calls = 0
        os.set_blocking(replies, False)
        os.set_blocking(output, False)

    def read_output(self):
        try:
            while True:
                chunk = os.read(self.output, 65536)
                if not chunk:
                    return
                self.captured = (self.captured + chunk)[-4000:]
        except OSError:
            return

    def ask(self, obj, ident=None):
        """Send a request; the next answer (a JSON object on one line, with ``"id":
        ident`` if given). Anything else -- the solution may write what it likes to its
        own ends of the pipes -- is skipped."""
        try:
            write_all(self.requests, (json.dumps(obj) + "\n").encode())
        except OSError:
            pass  # it died; the read below says so
        while True:
            while b"\n" not in self.buf:
                self.fill()
            line, self.buf = self.buf.split(b"\n", 1)
            try:
                answer = json.loads(line)
            except ValueError:
                continue
            if isinstance(answer, dict) and (ident is None or answer.get("id") == ident):
                return answer

    def fill(self):
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise OutOfTime()
        ready, _, _ = select.select([self.replies, self.output], [], [], left)
        if self.output in ready:
            self.read_output()
        if self.replies in ready:
            try:
                chunk = os.read(self.replies, 1 << 20)
            except BlockingIOError:
                return
            if not chunk:
                raise SolutionGone("the solution's process exited")
            self.buf += chunk
            if len(self.buf) > MAX_LINE:
                raise SolutionGone("the solution sent an answer over the size limit")

    def call(self, *args, **kwargs):
        """The candidate function, as the tests see it."""
        if kwargs:
            raise TypeError("the judge passes positional arguments only")
        self.calls += 1
        answer = self.ask({"id": self.calls, "args": [encode(a) for a in args]}, self.calls)
        if "raised" in answer:
            name, message = [str(part) for part in (list(answer["raised"]) + ["", ""])[:2]]
            cls = getattr(builtins, name, None)
            if isinstance(cls, type) and issubclass(cls, Exception):
                raise cls(message)
            raise RuntimeError("%s: %s" % (name, message))
        try:
            return decode(answer.get("value"))
        except (ValueError, TypeError, OverflowError, RecursionError, MemoryError):
            raise TypeError("the function returned a value the judge cannot read") from None


def make_non_dumpable():
    import ctypes

    if ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE) failed")


def stop_the_solution(pid, private_pids):
    """Kill the solution and everything it started; whether that worked. In a private pid
    namespace that is every process but pid 1, our parent (the sandbox's monitor) and us;
    without one (no isolation), only the solution's process group can be found."""
    if not private_pids:
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except OSError:
                pass
        return True
    keep = {1, os.getpid(), os.getppid()}
    for _ in range(200):
        others = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) in keep:
                continue
            try:
                with open("/proc/%s/stat" % entry, "rb") as f:
                    state = f.read().rsplit(b")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state not in (b"Z", b"X"):
                others.append(int(entry))
        if not others:
            return True
        for other in others:
            try:
                os.kill(other, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.001)
    return False


def read_job():
    data = b""
    while True:
        chunk = os.read(3, 1 << 20)
        if not chunk:
            break
        data += chunk
    os.close(3)
    return json.loads(data)


def run_tests(job, solution, report):
    try:
        loaded = solution.ask({"source": job["solution"], "entry_point": job["entry_point"]})
    except SolutionGone as exc:
        report["load_error"] = "%s while loading" % exc
        return
    if "error" in loaded:
        report["load_error"] = str(loaded["error"])
        return
    ns = {"__name__": "__judge__"}
    exec(compile(job["prompt"], "prompt.py", "exec"), ns)  # the problem's own helpers
    ns[job["entry_point"]] = solution.call
    ns["__fail"] = lambda source, got: report["failed"].append({"assert": source, "got": got})
    ns["__report"] = report
    exec(compile(job["tests"], "tests.py", "exec"), ns)
    ns["check"](solution.call)


def main():
    start = time.monotonic()
    make_non_dumpable()
    requests_r, requests_w = os.pipe()
    replies_r, replies_w = os.pipe()
    output_r, output_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the solution: forked before the job was read, and the job's fd goes first
        try:
            os.close(3)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(output_w, 1)
            os.dup2(output_w, 2)
            for fd in (null, requests_w, replies_r, output_r, output_w):
                os.close(fd)
            sys.stdout = open(1, "w", buffering=1, closefd=False)
            sys.stderr = open(2, "w", buffering=1, closefd=False)
            solution_main(requests_r, replies_w)
        finally:
            os._exit(70)
    for fd in (requests_r, replies_w, output_w):
        os.close(fd)
    job = read_job()
    solution = Solution(requests_w, replies_r, output_r, start + float(job["budget_s"]))
    report = {"passed": 0, "failed": [], "load_error": None, "error": None, "output": ""}
    try:
        run_tests(job, solution, report)
    except OutOfTime:
        report["error"] = "TimeoutError: the tests did not finish in time"
    except SolutionGone as exc:
        report["error"] = "the tests stopped: %s" % exc
    except BaseException as exc:
        report["error"] = "".join(traceback.format_exception_only(type(exc), exc)).strip()[-2000:]
    # Nothing of the solution may outlive this point: a process it left behind could read
    # the report off the stdout pipe (through /proc/1/fd/1) and write a forged one.
    if not stop_the_solution(pid, bool(job.get("private_pids"))):
        os._exit(3)  # fail closed: no report, no verdict
    solution.read_output()
    report["output"] = solution.captured.decode("utf-8", "replace")[-2000:]
    write_all(1, (job["nonce"] + json.dumps(report) + "\n").encode())
    os._exit(0)


main()
'''


@dataclass
class Verdict:
    """The judge's report: asserts passed, the failing ones, and why it stopped early."""

    passed: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    load_error: str | None = None
    error: str | None = None
    output: str = ""


def judge_job(*, nonce: str, prompt: str, solution: str, tests: str, entry_point: str,
              budget_s: float, private_pids: bool) -> bytes:
    """The job (the run's ``secret``): everything the judge must keep from the solution.

    ``private_pids``: the sandbox has a pid namespace of its own, so the judge may kill
    every other process in it before it reports (pass ``"isolation" in
    sandbox.protections``; never true without isolation, where it would mean every
    process of the uid)."""
    return json.dumps({"nonce": nonce, "prompt": prompt, "solution": solution, "tests": tests,
                       "entry_point": entry_point, "budget_s": budget_s,
                       "private_pids": private_pids}).encode()


def read_verdict(stdout: str, nonce: str) -> Verdict | None:
    """The report on the line that starts with ``nonce``, or ``None`` (no verdict)."""
    for line in stdout.splitlines():
        if not line.startswith(nonce):
            continue
        try:
            doc: Any = json.loads(line[len(nonce):])
        except ValueError:
            return None
        if not isinstance(doc, dict):
            return None
        try:
            return Verdict(passed=int(doc["passed"]), failed=list(doc["failed"]),
                           load_error=doc.get("load_error"), error=doc.get("error"),
                           output=str(doc.get("output", "")))
        except (KeyError, TypeError, ValueError):
            return None
    return None
