"""Stateful sessions and the warm session pool, on the bubblewrap backend."""

from __future__ import annotations

import threading

import pytest
from sandbox_helpers import FAST, wait_no_leftovers

from turnrl.sandbox import SessionPool
from turnrl.sandbox.bubblewrap import BubblewrapSandbox


@pytest.fixture
def session(bwrap: BubblewrapSandbox):
    with bwrap.session() as s:
        yield s
    assert wait_no_leftovers() == []


def test_state_persists_across_calls(session):
    assert session.run("import math\nx = 41\ndef f(v):\n    return v + 1").status == "ok"
    result = session.run("print(f(x))\nmath.sqrt(16)")
    assert (result.status, result.stdout) == ("ok", "42\n4.0\n")  # last expression shown
    assert session.run("open('notes.txt', 'w').write('kept')").ok
    assert session.run("print(open('notes.txt').read())").stdout == "kept\n"


def test_files_are_importable(session):
    assert session.run("import helper\nhelper.VALUE", files={"helper.py": "VALUE = 7\n"}).stdout == "7\n"


def test_exception_keeps_state_and_hides_server_frames(session):
    session.run("x = 1")
    result = session.run("y = x / 0")
    assert result.status == "runtime_error" and result.exit_code == 1
    assert "ZeroDivisionError" in result.stderr and "_server" not in result.stderr
    assert "<cell 2>" in result.stderr and "y = x / 0" in result.stderr
    assert session.run("print(x)").stdout == "1\n"


def test_syntax_error(session):
    result = session.run("def (")
    assert result.status == "runtime_error" and "SyntaxError" in result.stderr


def test_timeout_interrupts_the_cell_but_keeps_state(session):
    session.run("x = 'kept'")
    result = session.run("import time\ntime.sleep(30)", timeout_s=1.0)
    assert result.status == "timeout" and result.duration_s < 3
    assert session.run("print(x)").stdout == "kept\n"
    assert session.restarts == 0


def test_cpu_loop_times_out_and_keeps_state(session):
    session.run("x = 5")
    result = session.run("while True:\n    pass", timeout_s=20)
    assert result.status == "timeout" and "CPU" in result.message
    assert session.run("print(x)").stdout == "5\n"


def test_unstoppable_cell_kills_and_restarts_the_session(session):
    session.run("x = 1")
    code = "import time\nwhile True:\n    try:\n        time.sleep(10)\n    except BaseException:\n        pass"
    result = session.run(code, timeout_s=1.0)
    assert result.status == "timeout" and "fresh state" in result.message
    after = session.run("print('alive')")
    assert after.stdout == "alive\n" and "restarted" in after.message
    assert session.run("x").status == "runtime_error"  # NameError: state was lost
    assert session.restarts == 1


@pytest.mark.parametrize("crash", [
    "import os\nos._exit(3)",
    "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
    "import ctypes\nctypes.string_at(0)",  # segfault
    "import os\nos.closerange(3, 1024)",    # drops the protocol pipe
])
def test_crash_restarts_cleanly(session, crash):
    session.run("x = 1")
    result = session.run(crash)
    assert result.status == "runtime_error", result
    assert "restarts" in result.message
    after = session.run("print('fresh')\nprint('x' in globals())")
    assert after.status == "ok" and after.stdout == "fresh\nFalse\n"


def test_memory_error_keeps_the_session(session):
    session.run("x = 3")
    result = session.run("y = bytearray(10**10)")
    assert result.status == "memory" and "MemoryError" in result.stderr
    assert session.run("print(x)").stdout == "3\n"


def test_output_is_truncated(session):
    result = session.run("print('y' * (5 * 10**6))")
    assert result.ok and result.output_truncated and len(result.stdout) == FAST.output_bytes


def test_background_processes_and_fork_bombs_end_with_the_cell(session):
    result = session.run("import subprocess\nsubprocess.Popen(['sleep', '1000'])\n"
                         "subprocess.Popen(['sleep', '1001'], start_new_session=True)\nprint('ok')")
    assert result.stdout == "ok\n"
    assert session.run("import os\nprint(sorted(p for p in os.listdir('/proc') if p.isdigit()))"
                       ).stdout.count("'") == 6  # pid 1 (bwrap init), supervisor, interpreter
    bomb = session.run("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
                       timeout_s=2)
    assert bomb.status == "timeout"
    assert session.run("print(1)").stdout == "1\n"


def test_reset_forgets_everything(session):
    session.run("x = 1\nopen('f.txt', 'w').write('a')", files={"mod.py": "A = 1"})
    session.run("import mod")
    session.reset()
    result = session.run("import os\nprint('x' in globals(), os.listdir('.'))")
    assert result.stdout == "False []\n"


def test_sessions_are_isolated_from_each_other(bwrap):
    with bwrap.session() as a, bwrap.session() as b:
        a.run("secret = 1\nopen('/tmp/a.txt', 'w').write('a')")
        assert b.run("print('secret' in globals(), __import__('os').listdir('/tmp'))").stdout == "False []\n"


def test_closed_session_reports_infra_error(bwrap):
    s = bwrap.session()
    s.run("print(1)")
    s.close()
    assert s.run("print(1)").status == "infra_error"


def test_pool_reuses_warm_sessions(bwrap):
    with SessionPool(bwrap, max_size=2, warm=1) as pool:
        with pool.session() as s:
            s.run("x = 1")
            first = s
        with pool.session() as s:
            assert s is first  # the same warm interpreter ...
            assert s.run("print('x' in globals())").stdout == "False\n"  # ... wiped
        assert pool.reused >= 1

        results = []

        def work(i: int) -> None:
            with pool.session() as s:
                results.append(s.run(f"v = {i}\nprint(v * 2)").stdout)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(results) == sorted(f"{2 * i}\n" for i in range(6))
        assert pool.started <= 2


def test_pool_hands_back_a_fresh_sandbox_after_a_crash(bwrap):
    with SessionPool(bwrap, max_size=1) as pool:
        with pool.session() as s:
            s.run("x = 1\nopen('f.txt', 'w').write('a')\nimport os\nos._exit(1)")
        with pool.session() as s:
            result = s.run("import os\nprint('x' in globals(), os.listdir('.'))")
            assert (result.status, result.stdout) == ("ok", "False []\n")


def test_session_outlives_the_thread_that_started_it(bwrap):
    # bwrap --die-with-parent fires when the forking *thread* exits; sessions must not.
    holder = {}
    t = threading.Thread(target=lambda: holder.update(s=bwrap.session(), r=None) or holder["s"].start())
    t.start()
    t.join(30)
    s = holder["s"]
    try:
        assert s.run("print('still alive')").stdout == "still alive\n"
        assert s.restarts == 0
    finally:
        s.close()
