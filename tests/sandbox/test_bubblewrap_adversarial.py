"""Adversarial programs against the bubblewrap backend.

Each attack must be contained, come back with the right status, leave the host as it
was, and leave no process behind. The programs are real and run in a real ``bwrap``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sandbox_helpers import FAST, wait_no_leftovers

import turnrl

PROJECT_DIR = Path(turnrl.__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_leftovers_after(bwrap):
    yield
    assert wait_no_leftovers() == [], "a sandboxed process outlived its run"


@pytest.fixture
def host_canary(tmp_path):
    path = tmp_path / "canary.txt"
    path.write_text("untouched")
    yield path
    assert path.read_text() == "untouched"


# ------------------------------------------------------------------ network
def test_network_connect_is_blocked(bwrap):
    # A real listener on the host's loopback: the sandbox must not reach even that.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        code = f"""
import socket
results = []
for target in [("127.0.0.1", {port}), ("1.1.1.1", 80), ("8.8.8.8", 53)]:
    try:
        socket.create_connection(target, timeout=2).close()
        results.append("CONNECTED")
    except OSError as exc:
        results.append(type(exc).__name__)
try:
    socket.getaddrinfo("pypi.org", 443)
    results.append("RESOLVED")
except OSError as exc:
    results.append("dns:" + type(exc).__name__)
import os
print(results, sorted(os.listdir("/sys/class/net")) if os.path.exists("/sys/class/net") else "no-sys")
"""
        result = bwrap.run(code)
    finally:
        server.close()
    assert result.status == "ok", result
    assert "CONNECTED" not in result.stdout and "RESOLVED" not in result.stdout
    assert "ConnectionRefusedError" in result.stdout  # own loopback, nothing listens


# ------------------------------------------------------------------ filesystem
def test_writes_outside_scratch_fail(bwrap, host_canary):
    targets = ["/usr/evil", "/etc/evil", "/evil", "/dev/evil", "/run/turnrl/main.py",
               "/proc/evil", str(host_canary), str(PROJECT_DIR / "evil.py"), "/root/evil",
               "/var/tmp/evil"]
    code = f"""
import os
ok = []
for path in {targets!r}:
    try:
        with open(path, "w") as f:
            f.write("pwned")
        ok.append(path)
    except OSError:
        pass
with open("scratch_file.txt", "w") as f:   # the scratch dir is writable
    f.write("fine")
with open("/tmp/t.txt", "w") as f:
    f.write("fine")
print("WROTE", ok, os.getcwd())
"""
    result = bwrap.run(code)
    assert result.status == "ok", result
    assert result.stdout.strip() == "WROTE [] /home/sandbox"
    assert not (PROJECT_DIR / "evil.py").exists()


def test_host_secrets_and_project_are_invisible(bwrap, host_canary):
    secrets = ["/etc/shadow", "/etc/passwd", "/root", str(PROJECT_DIR),
               str(PROJECT_DIR / "pyproject.toml"), str(host_canary), os.path.expanduser("~"),
               "/work", "/home"]
    code = f"""
import os
seen = []
for path in {secrets!r}:
    try:
        if os.path.isdir(path):
            seen.append((path, os.listdir(path)))
        else:
            with open(path, "rb") as f:
                seen.append((path, len(f.read())))
    except OSError:
        pass
print(seen)
print(open("/proc/1/cmdline", "rb").read().split(b"\\0")[0])
"""
    result = bwrap.run(code)
    assert result.status == "ok", result
    lines = result.stdout.splitlines()
    # Only /home exists (holding the sandbox's own, empty, scratch dir).
    assert lines[0] == "[('/home', ['sandbox'])]"
    assert lines[1].endswith("bwrap'")  # pid 1 is the sandbox's own init, not the host's


def test_sandboxes_cannot_see_each_others_scratch(bwrap):
    writer = threading.Thread(target=bwrap.run, args=(
        "open('secret.txt', 'w').write('s3cret'); open('/tmp/secret2', 'w').write('x');"
        "import time; time.sleep(1.5)",))
    writer.start()
    time.sleep(0.5)
    try:
        result = bwrap.run("import os; print(os.listdir('.'), os.listdir('/tmp'))")
    finally:
        writer.join()
    assert result.stdout.strip() == "[] []"


# ------------------------------------------------------------------ processes
def test_fork_bomb_is_contained(bwrap):
    code = """
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
"""
    t0 = time.monotonic()
    result = bwrap.run(code, timeout_s=3)
    assert result.status == "timeout", result
    assert time.monotonic() - t0 < 8
    # The host can still start processes.
    assert subprocess.run([sys.executable, "-c", "print(1)"], capture_output=True,
                          timeout=10).stdout == b"1\n"


def test_fork_limit_is_applied(bwrap):
    code = """
import os, time
n = 0
try:
    for _ in range(1000):
        if os.fork() == 0:
            time.sleep(5)
            os._exit(0)
        n += 1
except OSError as exc:
    print("stopped after", n, type(exc).__name__)
"""
    result = bwrap.run(code)
    assert result.status == "ok", result
    spawned = int(result.stdout.split()[2])
    assert spawned < FAST.max_processes  # the rlimit, not the loop, stopped it


def test_memory_bomb(bwrap):
    result = bwrap.run("chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))")
    assert result.status == "memory", result
    assert "MemoryError" in result.stderr


def test_cpu_bound_infinite_loop(bwrap):
    # The wall limit is far away: the CPU rlimit (2 s) must be what stops it. (CPU seconds
    # can take longer than wall seconds on a shared VM, hence the loose bound.)
    result = bwrap.run("while True:\n    pass", timeout_s=30)
    assert result.status == "timeout", result
    assert "CPU time" in result.message
    assert result.duration_s < 15


def test_sleep_past_the_timeout(bwrap):
    result = bwrap.run("import time\nprint('before', flush=True)\ntime.sleep(60)", timeout_s=1.0)
    assert result.status == "timeout", result
    assert 1.0 <= result.duration_s < 3.0
    assert result.stdout == "before\n"  # output up to the kill is kept


def test_100mb_output_flood(bwrap):
    code = "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(100):\n    sys.stdout.write(chunk)\n" \
           "sys.stderr.write('e' * (5 << 20))"
    result = bwrap.run(code, timeout_s=20)
    assert result.status == "ok", result.message
    assert result.output_truncated
    assert len(result.stdout) == FAST.output_bytes and set(result.stdout) == {"x"}
    assert len(result.stderr) == FAST.output_bytes


def test_killing_its_parent_and_everyone(bwrap):
    code = """
import os, signal
for target in (os.getppid(), 1):
    try:
        os.kill(target, signal.SIGKILL)
    except OSError as exc:
        print("refused", type(exc).__name__)
print("still here", flush=True)
os.kill(-1, signal.SIGKILL)   # every process it may signal
"""
    result = bwrap.run(code)
    assert "still here" in result.stdout
    assert result.status in ("ok", "runtime_error"), result
    # The caller and the backend are fine: the next run works.
    assert bwrap.run("print(2 + 2)").stdout == "4\n"


def test_background_processes_are_not_left_behind(bwrap):
    code = """
import os, subprocess
subprocess.Popen(["sleep", "1000"])
subprocess.Popen(["sleep", "1001"], start_new_session=True)
subprocess.Popen("nohup sleep 1002 >/dev/null 2>&1 &", shell=True)
if os.fork() == 0:          # classic daemon: double fork, new session
    os.setsid()
    if os.fork() == 0:
        import time
        time.sleep(1003)
    os._exit(0)
print("spawned")
"""
    t0 = time.monotonic()
    result = bwrap.run(code)
    assert result.status == "ok" and result.stdout == "spawned\n", result
    assert time.monotonic() - t0 < 2.5  # did not wait for the sleepers


def test_closing_stdout_and_spinning(bwrap):
    result = bwrap.run("import os\nos.close(1)\nos.close(2)\nimport time\ntime.sleep(30)",
                       timeout_s=1.0)
    assert result.status == "timeout"


def test_concurrent_runs_do_not_interfere(bwrap):
    results: dict[int, str] = {}

    def one(i: int) -> None:
        results[i] = bwrap.run(
            f"open('me.txt', 'w').write('{i}')\nimport time; time.sleep(0.2)\n"
            "print(open('me.txt').read())"
        ).stdout

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {i: f"{i}\n" for i in range(8)}
