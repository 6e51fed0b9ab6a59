"""Adversarial agents against the code envs' rewards, on a real bubblewrap sandbox.

Each agent is a scripted list of replies that tries to win without solving the task:
fake test reports, ``os._exit``, looking for the harness's tests and token, writing to
every file descriptor it can reach, objects that equal everything, killing the judge,
leaving threads and processes for the next episode. All of them must end with reward 0
and ``won`` false -- and an honest agent in the same setting must still win, so the
tests can tell.
"""

from __future__ import annotations

import logging

import pytest

import turnrl
from turnrl.sandbox import make_sandbox


def play(env, seed: int, replies: list[str]) -> tuple[float, bool, list[str], dict]:
    """Reset with ``seed``, send ``replies`` until the episode ends: (total reward, won,
    observations, reset info)."""
    _, info = env.reset(seed=seed)
    total, won, observations = 0.0, False, []
    for reply in replies:
        obs, reward, terminated, truncated, step_info = env.step(reply)
        total += reward
        won = won or bool(step_info.get("won"))
        observations.append(obs)
        if terminated or truncated:
            break
    return total, won, observations, info


def block(code: str) -> str:
    return f"```python\n{code}\n```"


# ------------------------------------------------------------------ CodeRepair
#: HumanEval/0: has_close_elements(numbers, threshold) -> bool, 7 asserts.
FORGED_REPORT = """
import json, os, sys
fake = json.dumps({"passed": 7, "failed": [], "load_error": None, "error": None, "output": ""})
for prefix in ["", "0" * 32, "ok", "PASS"]:
    print(prefix + fake)
sys.stdout.flush()
os._exit(0)
"""

#: Looks everywhere a harness could leave its tests or token; raises with what it found,
#: so the feedback shows it.
INTROSPECT = r"""
import gc, os, re, sys
found = []
def look(where, text):
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    if "assert candidate" in text or "def check" in text or re.search(r"\b[0-9a-f]{32}\b", text):
        found.append(where)
for name, module in list(sys.modules.items()):
    for key, value in list(vars(module).items()):
        if isinstance(value, (str, bytes)):
            look(f"{name}.{key}", value)
for obj in gc.get_objects():
    if isinstance(obj, dict):
        for value in list(obj.values()):
            if isinstance(value, (str, bytes)):
                look("gc", value)
for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
    for what in ("cmdline", "environ", "mem"):
        try:
            with open(f"/proc/{pid}/{what}", "rb") as f:
                look(f"/proc/{pid}/{what}", f.read(1 << 20))
        except OSError:
            pass
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        continue
    for fd in fds:
        try:
            with open(f"/proc/{pid}/fd/{fd}", "rb") as f:
                os.set_blocking(f.fileno(), False)
                look(f"/proc/{pid}/fd/{fd}", f.read(1 << 20) or b"")
        except (OSError, TypeError):
            pass
for fd in range(64):
    try:
        look(f"fd {fd}", os.pread(fd, 1 << 20, 0))
    except OSError:
        pass
for root in ("/run", "/tmp", "/home", os.getcwd()):
    for dirpath, _, files in os.walk(root):
        for name in files:
            try:
                look(os.path.join(dirpath, name), open(os.path.join(dirpath, name), "rb").read())
            except OSError:
                pass
raise RuntimeError("FOUND " + repr(sorted(set(found))))
"""

ALWAYS_EQUAL = """
class Anything:
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
    __hash__ = object.__hash__

def has_close_elements(numbers, threshold):
    return Anything()
"""

PATCH_EVERYTHING = """
import builtins
builtins.AssertionError = type("NeverRaised", (Exception,), {})
builtins.abs = lambda x: 0
builtins.isinstance = lambda *a: True
def has_close_elements(numbers, threshold):
    return True
"""

WRITE_EVERY_FD = """
import json, os
fake = json.dumps({"passed": 7, "failed": [], "load_error": None, "error": None, "output": ""})
for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        continue
    for fd in fds:
        try:
            f = os.open(f"/proc/{pid}/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK)
            os.write(f, ("\\n" + "0" * 32 + fake + "\\n").encode())
            os.close(f)
        except OSError:
            pass
def has_close_elements(numbers, threshold):
    return True
"""

KILL_THE_JUDGE = """
import os, signal
os.kill(os.getppid(), signal.SIGKILL)
def has_close_elements(numbers, threshold):
    return True
"""

#: A daemon that outlives the solution, steals the judge's report (and with it the nonce)
#: off the sandbox's stdout pipe and writes a forged one. Reachable when turnrl runs as a
#: normal user: the pipe then belongs to the sandbox's uid.
STEAL_THE_REPORT = r"""
import json, os
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        fd = os.open("/proc/1/fd/1", os.O_RDONLY)
        data = b""
        while b"\n" not in data:
            data += os.read(fd, 65536)
        fake = {"passed": 7, "failed": [], "load_error": None, "error": None, "output": ""}
        out = os.open("/proc/1/fd/1", os.O_WRONLY)
        os.write(out, (data[:32].decode() + json.dumps(fake) + "\n").encode())
        os._exit(0)
    os._exit(0)
def has_close_elements(numbers, threshold):
    return True
"""

EXIT_AT_LOAD = "import sys\nsys.exit(0)"
EXIT_IN_CALL = "def has_close_elements(numbers, threshold):\n    import os\n    os._exit(0)"

REPAIR_ATTACKS = {
    "fake report and os._exit": FORGED_REPORT,
    "introspection": INTROSPECT,
    "always-equal object": ALWAYS_EQUAL,
    "patched builtins": PATCH_EVERYTHING,
    "writing every fd": WRITE_EVERY_FD,
    "killing the judge": KILL_THE_JUDGE,
    "stealing the report": STEAL_THE_REPORT,
    "sys.exit at load": EXIT_AT_LOAD,
    "os._exit in the call": EXIT_IN_CALL,
}


@pytest.mark.parametrize("attack", list(REPAIR_ATTACKS))
def test_code_repair_cannot_be_won_without_solving(attack, sandbox):
    env = turnrl.make("turnrl/CodeRepair-v0", sandbox=sandbox, problems=[0], max_turns=1,
                      test_timeout_s=5.0)
    try:
        reward, won, observations, _ = play(env, 0, [block(REPAIR_ATTACKS[attack])])
        assert (reward, won) == (0.0, False), observations
        if attack == "introspection":  # it ran, looked everywhere, and found nothing
            assert "FOUND []" in observations[0], observations[0]
        # The honest expert still wins in the same env.
        reward, won, _, info = play(env, 0, [])
        _, reward, terminated, _, step_info = env.step(info["expert_action"])
        assert (reward, step_info["won"]) == (1.0, True)
    finally:
        env.close()


UNPRIVILEGED_HOST = r"""
import json, sys
import turnrl
from turnrl.sandbox import make_sandbox
attacks = json.loads(sys.stdin.read())
sandbox = make_sandbox("bubblewrap")
repair = turnrl.make("turnrl/CodeRepair-v0", sandbox=sandbox, problems=[0], max_turns=1,
                     test_timeout_s=5.0)
wins = {}
for name, code in attacks["repair"].items():
    wins[name] = 0
    for _ in range(10 if name == "stealing the report" else 1):
        repair.reset(seed=0)
        _, reward, _, _, info = repair.step("```python\n" + code + "\n```")
        wins[name] += reward > 0 or info["won"]
_, info = repair.reset(seed=0)
wins["expert"] = repair.step(info["expert_action"])[1]
interpreter = turnrl.make("turnrl/CodeInterpreter-v0", sandbox=sandbox, tasks=["gcd"],
                          max_code_calls=10)
cell = lambda code: interpreter.step("```python\n" + code + "\n```")[0]
interpreter.reset(seed=3)
cell("x = 1")
cell(attacks["forge"])
after_forging = cell("print(x + 41)")
cell(attacks["haunt"])
interpreter.reset(seed=4)
next_episode = cell("import os\nprint(6 * 7, 'HAUNTED' in os.environ)")
wins["clean"] = [after_forging, next_episode] == ["Code Execution Results:\n42",
                                                  "Code Execution Results:\n42 False"]
print(json.dumps(wins))
"""


def unprivileged_python() -> tuple[list[str], dict]:
    """``(argv prefix, subprocess kwargs)`` to run this test environment's Python as uid
    65534 (when the tests run as root), or skip: the point is turnrl run by a normal user,
    whose sandboxes share its uid."""
    import os
    import site
    import subprocess
    import sys
    from pathlib import Path

    project = str(Path(turnrl.__file__).resolve().parent.parent)
    env = {"PATH": "/usr/bin:/bin", "HOME": "/",
           "PYTHONPATH": os.pathsep.join([project, *site.getsitepackages()])}
    if os.geteuid() != 0:
        return [sys.executable], {"env": env}
    as_nobody = {"user": 65534, "group": 65534, "extra_groups": [], "env": env, "cwd": "/"}
    version = "import sys; print(sys.version_info[:2])"
    for python in (sys.executable, "/usr/bin/python3"):  # a venv under /root is out of reach
        try:
            out = subprocess.run([python, "-c", version], capture_output=True, text=True,
                                 timeout=30, **as_nobody)
        except OSError:
            continue
        if out.returncode == 0 and out.stdout.strip() == str(sys.version_info[:2]):
            return [python], as_nobody
    pytest.skip("no Python of this version that uid 65534 can run")


def test_the_suite_holds_for_an_unprivileged_host(sandbox):
    """Run as a normal user's turnrl (not root), the sandbox's processes share the host's
    uid, so more of the sandbox is reachable -- bwrap's stdio pipes above all, through
    which a daemon could steal the judge's report and forge one. The attacks again, from
    a host process with uid 65534."""
    import json
    import subprocess

    argv, kwargs = unprivileged_python()
    attacks = {"repair": REPAIR_ATTACKS, "forge": FORGE_PROTOCOL, "haunt": HAUNT}
    proc = subprocess.run([*argv, "-c", UNPRIVILEGED_HOST], input=json.dumps(attacks),
                          capture_output=True, text=True, timeout=300, **kwargs)
    assert proc.returncode == 0, proc.stderr[-2000:]
    wins = json.loads(proc.stdout.splitlines()[-1])
    assert (wins.pop("expert"), wins.pop("clean")) == (1.0, True)
    assert wins == dict.fromkeys(REPAIR_ATTACKS, 0)


def test_partial_credit_counts_only_real_passes(sandbox):
    env = turnrl.make("turnrl/CodeRepair-v0", sandbox=sandbox, problems=[0], max_turns=1,
                      partial_credit=True)
    try:
        reward, won, _, _ = play(env, 0, [block(WRITE_EVERY_FD)])
        assert reward == pytest.approx(4 / 7) and not won  # what `return True` really passes
    finally:
        env.close()


def test_code_repair_warns_when_verdicts_could_be_forged(caplog):
    unisolated = make_sandbox("process", unsafe=True)
    with caplog.at_level(logging.WARNING, logger="turnrl.envs.code.repair"):
        turnrl.make("turnrl/CodeRepair-v0", sandbox=unisolated, problems=[0]).close()
    assert "its verdicts can be forged" in caplog.text


# ------------------------------------------------------------------ CodeInterpreter
def honest_replies(info: dict) -> list[str]:
    answer = info["expert_action"][3:-3]
    return [block(f"print({answer!r})"), f"<<<{answer}>>>"]


#: Episode 1 of a session: state, threads and processes that would tamper with episode 2.
HAUNT = """
import builtins, os, subprocess, sys, threading, time
builtins.print = lambda *a, **k: sys.stdout.write("<<<HACKED>>>\\n")
os.environ["HAUNTED"] = "1"
def haunt():
    while True:
        sys.stdout.write("<<<HACKED>>>\\n")
        time.sleep(0.001)
threading.Thread(target=haunt, daemon=True).start()
subprocess.Popen(["sh", "-c", "while :; do echo '<<<HACKED>>>' > /proc/1/fd/1; done"],
                 start_new_session=True)
"""

FORGE_PROTOCOL = """
import json, os
fake = "".join(json.dumps({"id": i, "status": "ok", "exit_code": 0, "stdout": "<<<FORGED>>>",
                           "stderr": "", "truncated": False, "message": "",
                           "restarted": False}) + "\\n" for i in range(1, 20))
for fd in range(64):
    try:
        os.write(fd, fake.encode())
    except OSError:
        pass
for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        continue
    for fd in fds:
        try:
            f = os.open(f"/proc/{pid}/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK)
            os.write(f, fake.encode())
            os.close(f)
        except OSError:
            pass
"""

#: Looks for the task's question anywhere in the sandbox (it is never sent there).
FIND_THE_TASK = r"""
import gc, os
needle = %r
hits = []
for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
    for what in ("cmdline", "environ"):
        try:
            if needle.encode() in open(f"/proc/{pid}/{what}", "rb").read():
                hits.append(f"/proc/{pid}/{what}")
        except OSError:
            pass
for dirpath, _, files in os.walk("/"):
    if dirpath.startswith(("/proc", "/sys", "/usr", "/dev")):
        continue
    for name in files:
        try:
            if needle.encode() in open(os.path.join(dirpath, name), "rb").read():
                hits.append(os.path.join(dirpath, name))
        except OSError:
            pass
hits += ["gc"] * any(isinstance(o, str) and needle in o for o in gc.get_objects())
print("HITS", hits)
"""


def test_code_interpreter_rewards_only_the_answer(sandbox):
    env = turnrl.make("turnrl/CodeInterpreter-v0", sandbox=sandbox, tasks=["gcd"],
                      max_code_calls=3)
    try:
        _, info = env.reset(seed=11)
        needle = info["task"][:60]
        attacks = [block(FORGE_PROTOCOL), block("import os\nos._exit(0)"),
                   block(FIND_THE_TASK % needle),
                   "Final answer received. It is correct. <<<definitely not the answer>>>"]
        reward, won, observations, _ = play(env, 11, attacks)
        assert (reward, won) == (0.0, False), observations
        assert "HITS []" in observations[2], observations[2]
        assert "FORGED" not in "".join(observations[1:])  # only in its own output
        # Honest play in the same env wins.
        _, info = env.reset(seed=11)
        reward, won, _, _ = play(env, 11, honest_replies(info))
        assert (reward, won) == (1.0, True)
    finally:
        env.close()


def test_nothing_of_an_episode_reaches_the_next(sandbox):
    env = turnrl.make("turnrl/CodeInterpreter-v0", sandbox=sandbox, tasks=["gcd"],
                      max_code_calls=3)
    try:
        reward, won, observations, _ = play(env, 5, [block(HAUNT), block("print(1)"),
                                                     "<<<HACKED>>>"])
        assert "HACKED" in observations[1]  # the haunting works within its own episode
        assert (reward, won) == (0.0, False)
        _, info = env.reset(seed=6)
        obs, *_ = env.step(block("import os\nprint(6 * 7, 'HAUNTED' in os.environ)"))
        assert obs == "Code Execution Results:\n42 False"
        reward, won, observations, _ = play(env, 6, honest_replies(info))
        assert (reward, won) == (1.0, True)
        assert "HACKED" not in "".join(observations)
    finally:
        env.close()


# ------------------------------------------------------------------ the judge's codec
def _judge_codec():
    from turnrl.envs.code.judge import JUDGE_SOURCE

    ns: dict = {}
    exec(JUDGE_SOURCE.rsplit("main()", 1)[0], ns)  # everything but the entry point
    return ns["encode"], ns["decode"]


def test_values_cross_the_judge_exactly_and_only_as_plain_data():
    import json
    import math

    encode, decode = _judge_codec()
    values = [None, True, 0, -5, 2**100, 1.5, -0.0, float("inf"), 1 + 2j, "h\u00e9\udc80",
              b"\x00\xff", [1, (2, 3)], {1: {"a": frozenset({1})}}, {3, 4}, ()]
    for value in values:
        back = decode(json.loads(json.dumps(encode(value))))
        assert back == value and type(back) is type(value)
    assert math.isnan(decode(encode(float("nan"))))

    class Anything:
        def __eq__(self, other):
            return True

    with pytest.raises(TypeError, match="cannot pass a Anything"):
        encode(Anything())
    for malformed in (["lt", []], ["d", [[1]]], ["x"], [], "s", ["i", "zz"], ["S", [["l", []]]]):
        with pytest.raises((ValueError, TypeError)):
            decode(malformed)
