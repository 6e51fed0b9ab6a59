"""Helpers shared by the sandbox tests."""

from __future__ import annotations

import os
import time

from turnrl.sandbox import Limits

#: Short limits keep the adversarial tests fast.
FAST = Limits(wall_time_s=3.0, cpu_time_s=2.0, memory_mb=256, max_processes=32,
              output_bytes=1_000_000, file_size_mb=8, scratch_mb=32)


def _our_pidns() -> str:
    return os.readlink("/proc/self/ns/pid")


def sandboxed_processes() -> list[str]:
    """Live (non-zombie) processes inside some other pid namespace that belong to the
    sandbox uid: anything a sandbox left behind."""
    uid = 65534 if os.geteuid() == 0 else os.getuid()
    ours, found = _our_pidns(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                status = f.read()
            if f"\nUid:\t{uid}\t" not in status or "\nState:\tZ" in status:
                continue
            if os.readlink(f"/proc/{entry}/ns/pid") == ours:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ")[:80]
            found.append(f"{entry}: {cmdline!r}")
        except OSError:
            continue
    return found


def wait_no_leftovers(timeout_s: float = 3.0) -> list[str]:
    """Processes still left after up to ``timeout_s`` (the kernel kills asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = sandboxed_processes()
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)
