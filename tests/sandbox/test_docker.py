"""The docker backend against a real Docker engine. These tests skip, with the reason,
when no engine answers (as on machines without Docker); they never mock the engine."""

from __future__ import annotations

import pytest
from sandbox_helpers import FAST

from turnrl.sandbox import SandboxUnavailable
from turnrl.sandbox.docker import DockerSandbox


@pytest.fixture(scope="module")
def docker_sandbox():
    try:
        sandbox = DockerSandbox(FAST)
    except SandboxUnavailable as exc:
        pytest.skip(f"docker backend unavailable: {exc}")
    if sandbox._ensure_image():
        pytest.skip(f"docker image unavailable: {sandbox._ensure_image()}")
    yield sandbox
    sandbox.close()


def test_runs_code(docker_sandbox):
    result = docker_sandbox.run("print(6 * 7)")
    assert (result.status, result.stdout) == ("ok", "42\n")


def test_stdin_files_and_bash(docker_sandbox):
    result = docker_sandbox.run("read x; echo $x; cat d/f.txt", language="bash", stdin="hi\n",
                                files={"d/f.txt": "file"})
    assert (result.status, result.stdout) == ("ok", "hi\nfile")


def test_network_is_off(docker_sandbox):
    code = ("import socket\ntry:\n    socket.create_connection(('1.1.1.1', 80), timeout=2)\n"
            "    print('CONNECTED')\nexcept OSError as e:\n    print('blocked')")
    assert docker_sandbox.run(code).stdout == "blocked\n"


def test_root_is_read_only_and_scratch_writable(docker_sandbox):
    code = ("import os\ntry:\n    open('/evil', 'w')\n    print('WROTE')\nexcept OSError:\n    print('ro')\n"
            "open('ok.txt', 'w').write('x'); print(os.getcwd(), os.getuid())")
    assert docker_sandbox.run(code).stdout == "ro\n/home/sandbox 65534\n"


def test_limits(docker_sandbox):
    assert docker_sandbox.run("import time; time.sleep(30)", timeout_s=1).status == "timeout"
    assert docker_sandbox.run("x = bytearray(2 * 10**9)").status == "memory"
    flood = docker_sandbox.run("print('x' * (20 * 10**6))")
    assert flood.ok and flood.output_truncated and len(flood.stdout) == FAST.output_bytes
    bomb = docker_sandbox.run("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
                              timeout_s=3)
    assert bomb.status == "timeout"


def test_session_state_and_crash(docker_sandbox):
    with docker_sandbox.session() as s:
        s.run("x = 41")
        assert s.run("x + 1").stdout == "42\n"
        assert s.run("import os\nos._exit(1)").status == "runtime_error"
        assert s.run("print('x' in globals())").stdout == "False\n"
