"""Sandbox latency: p50/p95 of ``run("print(1)")`` per backend, and throughput with
several workers.

    python benchmarks/sandbox_latency.py                  # all available backends
    python benchmarks/sandbox_latency.py --runs 200 --workers 2 --out results.json
    PYTHONPATH=/path/to/other/checkout python benchmarks/sandbox_latency.py  # that turnrl

Measures, per backend: one-shot ``Sandbox.run`` latency (a fresh sandbox per run),
``Session.run`` latency on a warm session, the start of a session and its ``reset()``
(what ``CodeInterpreter-v0`` does between episodes), and one-shot runs/s with
``--workers`` threads. Backends that cannot run here are listed with the reason. The
process backend (no isolation) is measured as a floor. Prints a table and writes JSON.

turnrl is imported from ``PYTHONPATH`` when set, else from this checkout, so one script
can time two checkouts side by side.
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
        t0 = time.perf_counter()
        s.reset()
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="bubblewrap,process,docker")
    parser.add_argument("--runs", type=int, default=100, help="timed calls per measurement")
    parser.add_argument("--workers", type=int, default=2, help="threads for runs/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of the runs/s test")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "sandbox_latency.json"))
    args = parser.parse_args()

    rows = [bench(name, args.runs, args.workers, args.seconds) for name in args.backends.split(",")]
    header = ["backend", "run p50 ms", "run p95 ms", "session p50 ms", "session p95 ms",
              "session start ms", "session reset ms", f"runs/s ({args.workers} workers)",
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


def markdown(report: dict) -> str:
    """The results as a Markdown table (used by ``benchmarks/report.py``)."""
    lines = [f"| backend | run p50 | run p95 | session cell p50 / p95 | session start | "
             f"session reset | runs/s, {report['workers']} workers |",
             "|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        if not r["available"]:
            lines.append(f"| {r['backend']} | not measured: {r['reason'][:80]} | | | | | |")
            continue
        lines.append(f"| {r['backend']} | {r['run_p50_ms']} ms | {r['run_p95_ms']} ms | "
                     f"{r['session_p50_ms']} / {r['session_p95_ms']} ms | {r['session_start_p50_ms']} ms | "
                     f"{r.get('session_reset_p50_ms', '')} ms | {r['runs_per_s']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
