"""Backend selection, argument checking, and the process backend."""

from __future__ import annotations

import logging

import pytest
from sandbox_helpers import FAST

from turnrl.errors import ConfigError
from turnrl.sandbox import Limits, SandboxUnavailable, available_backends, make_sandbox
from turnrl.sandbox.base import classify


def test_auto_picks_the_strongest_available_and_logs_it(bwrap, caplog):
    with caplog.at_level(logging.INFO, logger="turnrl.sandbox"):
        sandbox = make_sandbox("auto")
    assert sandbox.name == "bubblewrap"
    assert "using the bubblewrap backend, enforcing" in caplog.text
    assert "trusted_status" in caplog.text and "private_channel" in caplog.text


def test_unknown_backend_names_the_choices():
    with pytest.raises(ConfigError, match=r"'bubblwrap'.*Did you mean 'bubblewrap'.*auto, bubblewrap, docker, process"):
        make_sandbox("bubblwrap")


def test_process_backend_refuses_without_unsafe_and_says_why():
    with pytest.raises(SandboxUnavailable, match="no isolation.*unsafe=True"):
        make_sandbox("process")


def test_available_backends_reports_reasons():
    report = available_backends()
    assert set(report) == {"bubblewrap", "docker", "process"}
    for ok, reason in report.values():
        assert ok or reason


@pytest.mark.parametrize("bad", [{"memory_mb": 0}, {"wall_time_s": -1}, {"max_processes": True},
                                 {"output_bytes": float("nan")}])
def test_bad_limits_name_the_field(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        Limits(**bad)


def test_limits_replace_rejects_unknown_fields():
    with pytest.raises(ConfigError, match="valid fields: wall_time_s"):
        Limits().replace(wall_time=3)


def test_bad_arguments_raise_config_errors(bwrap):
    with pytest.raises(ConfigError, match="'ruby'.*python, bash"):
        bwrap.run("puts 1", language="ruby")
    with pytest.raises(ConfigError, match="relative path"):
        bwrap.run("print(1)", files={"../escape.txt": "x"})
    with pytest.raises(ConfigError, match="relative path"):
        bwrap.run("print(1)", files={"/etc/passwd": "x"})
    with pytest.raises(ConfigError, match="timeout_s"):
        bwrap.run("print(1)", timeout_s=0)


def test_bash_stdin_and_files(bwrap):
    result = bwrap.run("read line; echo \"got $line\"; cat data/in.txt", language="bash",
                       stdin="hello\n", files={"data/in.txt": "file!"})
    assert (result.status, result.stdout) == ("ok", "got hello\nfile!")


def test_exit_codes_and_statuses(bwrap):
    assert bwrap.run("import sys; sys.exit(3)").exit_code == 3
    assert bwrap.run("import sys; sys.exit(3)").status == "runtime_error"
    assert bwrap.run("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)").exit_code == 128 + 11


def test_classify_maps_endings():
    assert classify(0, "")[0] == "ok"
    assert classify(1, "Traceback...\nMemoryError\n")[0] == "memory"
    # An exit status never means a time limit: only what the host or monitor observed does.
    assert classify(152, "") == ("runtime_error", "exited with status 152")
    assert classify(152, "", killed_by=24) == ("runtime_error", "killed by signal 24")
    assert classify(152, "", killed_by=24, cpu_exceeded=True, cpu_limit_s=2)[0] == "timeout"
    assert classify(137, "", timed_out=True, timeout_s=2)[0] == "timeout"
    assert classify(None, "")[0] == "infra_error"
    assert classify(2, "boom")[0] == "runtime_error"


def test_every_backend_says_what_it_does_not_enforce():
    from turnrl.sandbox import PROTECTIONS
    from turnrl.sandbox.docker import DockerSandbox

    process = make_sandbox("process", unsafe=True, limits=FAST)
    assert process.protections == frozenset()  # no isolation: nothing can be promised
    assert DockerSandbox.protections == {"isolation", "cgroup_limits"}  # no trusted status
    assert DockerSandbox.protections <= set(PROTECTIONS)


def test_process_backend_runs_with_rlimits():
    sandbox = make_sandbox("process", unsafe=True, limits=FAST)
    assert sandbox.run("print(6 * 7)").stdout == "42\n"
    assert sandbox.run("x = bytearray(10**10)").status == "memory"
    assert sandbox.run("import time; time.sleep(5)", timeout_s=0.5).status == "timeout"
    bg = sandbox.run("import subprocess\nsubprocess.Popen(['sleep', '100'], start_new_session=True)\nprint('ok')")
    assert bg.stdout == "ok\n" and bg.duration_s < 1.0
    with sandbox.session() as s:
        s.run("x = 2")
        assert s.run("x * 21").stdout == "42\n"
