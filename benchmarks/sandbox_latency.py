"""Sandbox latency: p50/p95 of ``run("print(1)")`` per backend, and throughput with
several workers.

    python benchmarks/sandbox_latency.py                  # all available backends
    python benchmarks/sandbox_latency.py --runs 200 --workers 2 --out results.json
    PYTHONPATH=/path/to/other/checkout python benchmarks/sandbox_latency.py  # that turnrl
    python benchmarks/sandbox_latency.py --against /path/to/other/checkout --runs 300

Measures, per backend: one-shot ``Sandbox.run`` latency (a fresh sandbox per run),
``Session.run`` latency on a warm session, the start of a session, ``reset()`` plus the
next cell (what ``CodeInterpreter-v0`` does between episodes), and one-shot runs/s with
``--workers`` threads. Backends that cannot run here are listed with the reason. The
process backend (no isolation) is measured as a floor. Prints a table and writes JSON.

turnrl is imported from ``PYTHONPATH`` when set, else from this checkout, so one script
can time two checkouts. ``--against CHECKOUT`` does it call by call: two worker processes
(this checkout and CHECKOUT) take turns, one ``run("print(1)")`` or session cell each, so
both see the same machine load; it prints both sides' p50/p95 and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent.parent))  # after PYTHONPATH

import turnrl  # noqa: E402
from turnrl.sandbox import SandboxUnavailable, make_sandbox  # noqa: E402

CODE = "print(1)"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def time_calls(fn, n: int) -> tuple[list[float], int]:
    latencies, failures = [], 0
    for _ in range(n):
        t0 = time.perf_counter()
        result = fn()
        latencies.append(time.perf_counter() - t0)
        failures += result.stdout != "1\n"
    return latencies, failures


def throughput(sandbox, workers: int, seconds: float) -> tuple[float, int]:
    done, failures = [0] * workers, [0] * workers
    stop = time.perf_counter() + seconds

    def work(i: int) -> None:
        while time.perf_counter() < stop:
            failures[i] += sandbox.run(CODE).stdout != "1\n"
            done[i] += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - t0), sum(failures)


def bench(name: str, runs: int, workers: int, seconds: float) -> dict:
    try:
        sandbox = make_sandbox(name, unsafe=(name == "process"))
    except SandboxUnavailable as exc:
        return {"backend": name, "available": False, "reason": str(exc)}
    for _ in range(3):  # warm caches
        sandbox.run(CODE)
    run_lat, run_fail = time_calls(lambda: sandbox.run(CODE), runs)
    with sandbox.session() as session:
        session.run(CODE)
        sess_lat, sess_fail = time_calls(lambda: session.run(CODE), runs)
    start_lat, reset_lat = [], []
    for _ in range(min(runs, 20)):
        s = sandbox.session()
        t0 = time.perf_counter()
        s.start()
        start_lat.append(time.perf_counter() - t0)
        s.run("x = 1")
        t0 = time.perf_counter()  # reset and the next cell: where the new sandbox starts
        s.reset()
        s.run(CODE)
        reset_lat.append(time.perf_counter() - t0)
        s.close()
    rps, tp_fail = throughput(sandbox, workers, seconds)
    sandbox.close()
    ms = lambda v: round(1000 * v, 2)  # noqa: E731
    return {
        "backend": name, "available": True, "runs": runs,
        "run_p50_ms": ms(statistics.median(run_lat)), "run_p95_ms": ms(percentile(run_lat, 0.95)),
        "session_p50_ms": ms(statistics.median(sess_lat)),
        "session_p95_ms": ms(percentile(sess_lat, 0.95)),
        "session_start_p50_ms": ms(statistics.median(start_lat)),
        "session_reset_p50_ms": ms(statistics.median(reset_lat)),
        "protections": sorted(getattr(sandbox, "protections", ())),
        "workers": workers, "runs_per_s": round(rps, 1),
        "failures": run_fail + sess_fail + tp_fail,
    }


def worker(backend: str) -> None:
    """``--worker``: time one call per command read from stdin (``run``, ``cell``,
    ``reset``); answer with the seconds it took."""
    sandbox = make_sandbox(backend, unsafe=(backend == "process"))
    session = sandbox.session()
    for _ in range(3):
        sandbox.run(CODE)
        session.run(CODE)
    print(f"ready {Path(turnrl.__file__).parent}", flush=True)
    calls = {"run": lambda: sandbox.run(CODE), "cell": lambda: session.run(CODE),
             "reset": lambda: (session.reset(), session.run(CODE))[1]}
    for line in sys.stdin:
        t0 = time.perf_counter()
        result = calls[line.strip()]()
        elapsed = time.perf_counter() - t0
        ok = result.stdout == "1\n"
        print(f"{elapsed if ok else -1.0}", flush=True)
    session.close()


def against(other: str, backend: str, runs: int) -> None:
    """Time this checkout and ``other`` call by call (see the module docstring)."""
    import subprocess

    here = str(Path(__file__).resolve().parent.parent)
    procs = {}
    for label, root in (("this", here), ("other", other)):
        env = {**os.environ, "PYTHONPATH": root}
        procs[label] = subprocess.Popen(
            [sys.executable, __file__, "--worker", "--backends", backend], env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        print(f"{label}: turnrl from {procs[label].stdout.readline().split()[1]}")
    timings: dict[tuple[str, str], list[float]] = {}
    for kind, n in (("run", runs), ("cell", 10 * runs), ("reset", min(runs, 50))):
        for i in range(n):
            order = ("this", "other") if i % 2 == 0 else ("other", "this")
            for label in order:
                procs[label].stdin.write(kind + "\n")
                procs[label].stdin.flush()
                value = float(procs[label].stdout.readline())
                timings.setdefault((label, kind), []).append(value)
    for proc in procs.values():
        proc.stdin.close()
        proc.wait()
    ms = lambda v, q: round(1000 * percentile(v, q), 3)  # noqa: E731
    print(f"{backend}, call by call: " + ", ".join(f"{k} x{len(timings[('this', k)])}"
                                                   for k in ("run", "cell", "reset")))
    print("checkout   run p50   run p95   cell p50   cell p95   reset+cell p50   failures")
    for label in ("other", "this"):
        t = {k: [v for v in timings[(label, k)] if v >= 0] for k in ("run", "cell", "reset")}
        fails = sum(v < 0 for k in ("run", "cell", "reset") for v in timings[(label, k)])
        print(f"{label:8} {ms(t['run'], .5):9} {ms(t['run'], .95):9} {ms(t['cell'], .5):10} "
              f"{ms(t['cell'], .95):10} {ms(t['reset'], .5):16} {fails:10}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="bubblewrap,process,docker")
    parser.add_argument("--runs", type=int, default=100, help="timed calls per measurement")
    parser.add_argument("--workers", type=int, default=2, help="threads for runs/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of the runs/s test")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "sandbox_latency.json"))
    parser.add_argument("--against", metavar="CHECKOUT",
                        help="time this checkout against another, call by call")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.backends.split(",")[0])
    if args.against:
        return against(args.against, args.backends.split(",")[0], args.runs)

    rows = [bench(name, args.runs, args.workers, args.seconds) for name in args.backends.split(",")]
    header = ["backend", "run p50 ms", "run p95 ms", "session p50 ms", "session p95 ms",
              "session start ms", "reset + cell ms", f"runs/s ({args.workers} workers)",
              "failures"]
    keys = ["backend", "run_p50_ms", "run_p95_ms", "session_p50_ms", "session_p95_ms",
            "session_start_p50_ms", "session_reset_p50_ms", "runs_per_s", "failures"]
    table = [[str(r.get(k, "")) for k in keys] for r in rows if r["available"]]
    widths = [max(len(h), *(len(row[i]) for row in table)) if table else len(h)
              for i, h in enumerate(header)]
    print("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    for row in table:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    for r in rows:
        if not r["available"]:
            print(f"{r['backend']}: not measured ({r['reason']})")
    report = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "platform": platform.platform(), "python": platform.python_version(),
        "command": "python benchmarks/sandbox_latency.py " + " ".join(sys.argv[1:]),
        "workers": args.workers, "code": CODE, "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"turnrl from {Path(turnrl.__file__).parent}; wrote {out}")


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value} ms"


def markdown(report: dict) -> str:
    """The results as a Markdown table (used by ``benchmarks/report.py``)."""
    lines = [f"| backend | run p50 | run p95 | session cell p50 / p95 | session start | "
             f"reset + next cell | runs/s, {report['workers']} workers |",
             "|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        if not r["available"]:
            lines.append(f"| {r['backend']} | not measured: {r['reason'][:80]} | | | | | |")
            continue
        lines.append(f"| {r['backend']} | {r['run_p50_ms']} ms | {r['run_p95_ms']} ms | "
                     f"{r['session_p50_ms']} / {r['session_p95_ms']} ms | {r['session_start_p50_ms']} ms | "
                     f"{_ms(r.get('session_reset_p50_ms'))} | {r['runs_per_s']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
