"""``turnrl/CodeInterpreter-v0``: reasoning tasks with a Python tool.

Tasks come from the `reasoning-gym <https://github.com/open-thought/reasoning-gym>`_
package: procedural, offline, each with its own verifier. The protocol follows
R1-Code-Interpreter:

1. The agent reasons in text. When it wants to compute something it writes **one**
   fenced ```python block; its turn ends at that block (text after it is ignored).
2. The block runs in a stateful sandboxed Python session (variables persist across the
   episode). Its output comes back as a **tool** observation headed
   ``Code Execution Results:`` and cut to ``max_tool_output_chars``.
3. At most ``max_code_calls`` code calls (5 by default); after that, code is refused.
4. The final answer is wrapped ``<<<answer>>>`` (configurable) and scored by
   reasoning-gym's own ``score_answer``; the reward is that score (0..1) and the episode
   ends. ``won`` means a perfect score.

A reply with neither a code block nor an answer is a format error: feedback observation,
``info["invalid_action"] = True``, reward ``invalid_penalty``.

``max_code_calls=0`` takes the tool away: the instructions then ask for the answer alone,
and a code block is a format error. The final step's ``info["metrics"]`` has
``code_calls`` and ``answer_from_tool`` (1 when the answer is a line a code call printed).

The oracle (``info["expert_action"]``) gives the answer directly; with
``expert_code=True`` it demonstrates the tool instead, on tasks whose items carry a Python
expression (:data:`EXPRESSION_TASKS`): first a code call printing that expression, then
the printed result as the answer. That is the SFT warm start for learning to use the tool.

With ``tool_format="tool_call"`` the code is called as a native tool instead, in the format
Qwen models (and Hermes-style templates) are trained on::

    <tool_call>
    {"name": "python", "arguments": {"code": "print(123 * 456)"}}
    </tool_call>

The tool is described to the model by its JSON schema (``info["tools"]`` at reset, which
the rollout passes to the chat template), and results come back as ``tool`` messages,
which the template renders its own way (``<tool_response>`` for Qwen). Scoring is the
same in both formats.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from turnrl.envs.base import InvalidAction, TextEnv
from turnrl.envs.code._common import build_sandbox, format_execution
from turnrl.envs.code.parsing import find_answers, find_code_block, find_tool_calls
from turnrl.errors import ConfigError, did_you_mean
from turnrl.sandbox import Limits, Sandbox, Session

__all__ = ["CodeInterpreterEnv", "DEFAULT_TASKS", "EXPRESSION_TASKS", "TOOL_FORMATS", "PYTHON_TOOL"]

#: How the agent calls the interpreter: fenced ```python blocks, or native tool calls.
TOOL_FORMATS = ("fenced", "tool_call")
#: The interpreter as a function tool (JSON schema), for ``tool_format="tool_call"``.
PYTHON_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "python",
        "description": "Run Python code in a persistent session (variables are kept between "
                       "calls) and return what it prints. Use print() to see values.",
        "parameters": {
            "type": "object",
            "properties": {"code": {"type": "string", "description": "the Python code to run"}},
            "required": ["code"],
        },
    },
}

#: Tasks used when none are named: a mix that code helps with.
DEFAULT_TASKS: tuple[str, ...] = (
    "basic_arithmetic", "chain_sum", "gcd", "lcm", "prime_factorization", "number_sorting",
    "puzzle24", "countdown", "game_of_life",
)
#: Tasks whose items carry ``metadata["expression"]``, a Python expression worth the answer
#: (integer arithmetic), which ``expert_code=True`` demonstrates printing.
EXPRESSION_TASKS: tuple[str, ...] = ("products", "chain_sum")
#: Items per task dataset; an episode seed picks one of them.
_DATASET_SIZE = 1_000_000
_CODE, _ANSWER = "code", "answer"


def _available_tasks() -> list[str]:
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


class CodeInterpreterEnv(TextEnv):
    """Reasoning-gym tasks solved with an optional sandboxed Python tool.

    Args:
        tasks: reasoning-gym dataset names to draw from (default :data:`DEFAULT_TASKS`);
            the episode seed picks the task and the item.
        task_configs: per-task keyword arguments for ``reasoning_gym.create_dataset``,
            e.g. ``{"countdown": {"min_numbers": 3, "max_numbers": 4}}``.
        dataset_seed: seed of the procedural datasets (items differ per seed).
        max_code_calls: code executions allowed per episode; 0 takes the tool away.
        max_turns: turn budget (code calls + format errors + the answer).
        answer_open, answer_close: the tags around the final answer.
        max_tool_output_chars: longest code output shown to the agent.
        code_timeout_s: wall-clock limit of one code call.
        invalid_penalty: reward on a turn with a format error (no code, no answer, code
            past the cap).
        sandbox: ``"auto"``, a backend name, or a :class:`~turnrl.sandbox.Sandbox`.
        limits: sandbox limits (default: 10 s, 1 GiB, 32 processes).
        tool_format: ``"fenced"`` (a ```python block) or ``"tool_call"`` (a native
            ``<tool_call>`` to the ``python`` tool; see the module docstring).
        expert_code: the oracle demonstrates the tool (a code call printing the task's
            expression, then the printed answer) instead of answering directly. Needs
            ``max_code_calls >= 1`` and tasks among :data:`EXPRESSION_TASKS`.

    Raises:
        ConfigError: an unknown task (close matches and the full list are given), a
            task config the dataset rejects, or a bad number.
        SandboxUnavailable: no sandbox backend can run here.
    """

    def __init__(
        self,
        *,
        tasks: Sequence[str] | str | None = None,
        task_configs: Mapping[str, Mapping[str, Any]] | None = None,
        dataset_seed: int = 0,
        max_code_calls: int = 5,
        max_turns: int | None = None,
        answer_open: str = "<<<",
        answer_close: str = ">>>",
        max_tool_output_chars: int = 4000,
        code_timeout_s: float = 10.0,
        invalid_penalty: float = 0.0,
        sandbox: str | Sandbox = "auto",
        limits: Limits | None = None,
        tool_format: str = "fenced",
        expert_code: bool = False,
        render_mode: str | None = None,
    ) -> None:
        if tool_format not in TOOL_FORMATS:
            raise ConfigError(f"tool_format must be one of {', '.join(TOOL_FORMATS)}, got "
                              f"{tool_format!r}{did_you_mean(str(tool_format), TOOL_FORMATS)}")
        self.tool_format = tool_format
        if isinstance(max_code_calls, bool) or not isinstance(max_code_calls, int) or max_code_calls < 0:
            raise ConfigError(f"max_code_calls must be an int >= 0, got {max_code_calls!r}")
        super().__init__(
            max_turns=max_turns if max_turns is not None else max_code_calls + 3,
            invalid_penalty=invalid_penalty, render_mode=render_mode,
        )
        if not (isinstance(answer_open, str) and answer_open and isinstance(answer_close, str) and answer_close):
            raise ConfigError(f"answer_open and answer_close must be non-empty strings, got "
                              f"{answer_open!r}, {answer_close!r}")
        if not isinstance(max_tool_output_chars, int) or max_tool_output_chars < 16:
            raise ConfigError(f"max_tool_output_chars must be an int >= 16, got {max_tool_output_chars!r}")
        if not (isinstance(code_timeout_s, (int, float)) and math.isfinite(code_timeout_s) and code_timeout_s > 0):
            raise ConfigError(f"code_timeout_s must be a number > 0, got {code_timeout_s!r}")
        self.tasks = self._check_tasks(tasks)
        self.task_configs = {k: dict(v) for k, v in (task_configs or {}).items()}
        unknown = [k for k in self.task_configs if k not in self.tasks]
        if unknown:
            raise ConfigError(f"task_configs names {unknown}, which are not among tasks "
                              f"{list(self.tasks)}")
        self.expert_code = self._check_expert_code(expert_code, max_code_calls)
        self.dataset_seed = int(dataset_seed)
        self.max_code_calls = max_code_calls
        self.answer_open, self.answer_close = answer_open, answer_close
        self.max_tool_output_chars = max_tool_output_chars
        self.code_timeout_s = float(code_timeout_s)
        self._datasets: dict[str, Any] = {}
        for name in self.tasks:  # fail at construction on a bad task config
            self._dataset(name)
        self.sandbox = build_sandbox(sandbox, limits)
        self._session: Session | None = None
        self.instructions = self._instructions()
        self._entry: dict[str, Any] = {}
        self._task_name = ""
        self._code_calls = 0
        self._tool_lines: set[str] = set()  # stripped lines the code calls printed

    # ------------------------------------------------------------------ set-up
    @staticmethod
    def _check_tasks(tasks: Sequence[str] | str | None) -> tuple[str, ...]:
        if tasks is None:
            return DEFAULT_TASKS
        if isinstance(tasks, str):
            tasks = [t.strip() for t in tasks.split(",") if t.strip()]
        tasks = tuple(tasks)
        if not tasks:
            raise ConfigError("tasks must name at least one reasoning-gym dataset")
        available = _available_tasks()
        for name in tasks:
            if name not in available:
                raise ConfigError(
                    f"unknown reasoning-gym task {name!r}.{did_you_mean(str(name), available)} "
                    f"Available: {', '.join(available)}"
                )
        return tasks

    def _check_expert_code(self, expert_code: bool, max_code_calls: int) -> bool:
        if not isinstance(expert_code, bool):
            raise ConfigError(f"expert_code must be true or false, got {expert_code!r}")
        if not expert_code:
            return False
        if max_code_calls < 1:
            raise ConfigError("expert_code=True demonstrates a code call: it needs "
                              f"max_code_calls >= 1, got {max_code_calls}")
        others = [t for t in self.tasks if t not in EXPRESSION_TASKS]
        if others:
            raise ConfigError(f"expert_code=True needs tasks whose items carry a Python "
                              f"expression ({', '.join(EXPRESSION_TASKS)}); {others} do not. "
                              "Drop those tasks or set expert_code=False.")
        return True

    def _dataset(self, name: str) -> Any:
        if name not in self._datasets:
            import reasoning_gym

            config = self.task_configs.get(name, {})
            try:
                self._datasets[name] = reasoning_gym.create_dataset(
                    name, seed=self.dataset_seed, size=_DATASET_SIZE, **config)
            except (TypeError, ValueError, AssertionError) as exc:
                raise ConfigError(f"reasoning-gym rejected the config {config!r} of task "
                                  f"{name!r}: {type(exc).__name__}: {exc}") from None
        return self._datasets[name]

    def _instructions(self) -> str:
        a, b = self.answer_open, self.answer_close
        if self.max_code_calls == 0:
            return ("You solve reasoning tasks. There is no code interpreter: reply with your "
                    f"final answer wrapped as {a}answer{b}, in the format the task asks for, "
                    f"e.g. {a}42{b}.")
        if self.tool_format == "tool_call":
            return (
                "You solve reasoning tasks. You may run Python with the python tool: call it as\n"
                '<tool_call>\n{"name": "python", "arguments": {"code": "..."}}\n</tool_call>\n'
                "and stop; the code runs in a persistent Python session (variables are kept) and "
                "what it prints comes back as the tool's response. "
                f"You may call it at most {self.max_code_calls} times. "
                f"When you know the answer, reply with it wrapped as {a}answer{b}, "
                f"in the format the task asks for, e.g. {a}42{b}."
            )
        return (
            "You solve reasoning tasks. You may use a Python interpreter: write one fenced "
            "code block\n```python\n...\n```\nand stop; the code runs in a persistent Python "
            "session (variables are kept) and its output comes back as "
            "'Code Execution Results:'. Use print() to see values. "
            f"You may run code at most {self.max_code_calls} times. "
            f"When you know the answer, reply with it wrapped as {a}answer{b}, "
            f"in the format the task asks for, e.g. {a}42{b}.\n\n"
            "Example:\nTask: What is 123 * 456?\n"
            "You: Let me compute it.\n```python\nprint(123 * 456)\n```\n"
            "Code Execution Results:\n56088\n"
            f"You: {a}56088{b}"
        )

    # ------------------------------------------------------------------ TextEnv API
    def _reset_episode(self, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        rng = np.random.default_rng(self.episode_seed)
        self._task_name = self.tasks[int(rng.integers(len(self.tasks)))]
        index = int(rng.integers(_DATASET_SIZE))
        self._entry = self._dataset(self._task_name)[index]
        self._code_calls = 0
        self._tool_lines = set()
        if self._session is not None:
            self._session.reset()  # a new sandbox for the next code call: nothing carries over
        question = str(self._entry["question"])
        tool = (f"You can run Python code (up to {self.max_code_calls} times). "
                if self.max_code_calls else "")
        obs = (f"Task: {question}\n\n{tool}Give your final answer as "
               f"{self.answer_open}answer{self.answer_close}.")
        info = {
            "task": question,
            "task_name": self._task_name,
            "expert_action": self._expert_call() if self.expert_code else self._expert(),
            "metrics": {"code_calls": 0.0},
        }
        if self.tool_format == "tool_call":
            info["tools"] = [PYTHON_TOOL]  # for the chat template's tool listing
        return obs, info

    def _expert(self) -> str:
        return f"{self.answer_open}{self._entry['answer']}{self.answer_close}"

    def _expert_call(self) -> str:
        """A code call printing the task's expression, in the env's tool format."""
        code = f"print({self._entry['metadata']['expression']})"
        if self.tool_format == "tool_call":
            call = json.dumps({"name": "python", "arguments": {"code": code}})
            return f"<tool_call>\n{call}\n</tool_call>"
        return f"```python\n{code}\n```"

    def parse_action(self, reply: str) -> str:
        if self.tool_format == "tool_call":
            return self._parse_tool_call(reply)
        block = find_code_block(reply)
        answers = find_answers(reply, self.answer_open, self.answer_close)
        if block is not None and not any(pos < block.start for pos, _ in answers):
            if self.max_code_calls == 0:
                raise InvalidAction("There is no code interpreter here; the code was not run. "
                                    f"Give your final answer as {self.answer_open}answer"
                                    f"{self.answer_close}.")
            if not block.code.strip():
                raise InvalidAction("Your ```python block was empty. Put code in it, or give "
                                    f"your final answer as {self.answer_open}answer{self.answer_close}.")
            if self._code_calls >= self.max_code_calls:
                raise InvalidAction(
                    f"You have used all {self.max_code_calls} code calls; the code was not run. "
                    f"Give your final answer now as {self.answer_open}answer{self.answer_close}."
                )
            return f"{_CODE}\n{block.code}"
        if block is not None:  # an answer came before the code: the answer ends the turn
            answers = [(pos, text) for pos, text in answers if pos < block.start]
        if answers:
            return f"{_ANSWER}\n{answers[-1][1]}"
        raise InvalidAction(
            "Your reply had neither a ```python code block nor a final answer. Write code in "
            f"a ```python block to run it, or give your answer as "
            f"{self.answer_open}answer{self.answer_close}."
        )

    def _parse_tool_call(self, reply: str) -> str:
        """A ``python`` tool call (the turn ends at the first call) or a final answer."""
        calls = find_tool_calls(reply)
        answers = find_answers(reply, self.answer_open, self.answer_close)
        call = calls[0] if calls else None
        if call is not None and any(pos < call.start for pos, _ in answers):
            call = None  # an answer came before the call: the answer ends the turn
            answers = [(pos, text) for pos, text in answers if pos < calls[0].start]
        if call is None:
            if answers:
                return f"{_ANSWER}\n{answers[-1][1]}"
            raise InvalidAction(
                'Your reply had neither a tool call (<tool_call>{"name": "python", "arguments": '
                '{"code": "..."}}</tool_call>) nor a final answer '
                f"{self.answer_open}answer{self.answer_close}.")
        if call.error is not None:
            raise InvalidAction(f"Your <tool_call> was {call.error}; write "
                                '{"name": "python", "arguments": {"code": "..."}}.')
        code = call.arguments.get("code")
        if call.name != "python" or not isinstance(code, str):
            raise InvalidAction(f"There is one tool, python, taking a string argument code; "
                                f"you called {call.name!r} with {sorted(call.arguments)}.")
        if not code.strip():
            raise InvalidAction("The code you passed to the python tool was empty.")
        if self._code_calls >= self.max_code_calls:
            raise InvalidAction(
                f"You have used all {self.max_code_calls} tool calls; the code was not run. "
                f"Give your final answer now as {self.answer_open}answer{self.answer_close}.")
        return f"{_CODE}\n{code}"

    def _step_action(self, command: str) -> tuple[str, float, bool, dict[str, Any]]:
        kind, _, payload = command.partition("\n")
        if kind == _CODE:
            return self._run_code(payload)
        score = self._score(payload)
        won = score >= 1.0 - 1e-9
        obs = (f"Final answer received: {payload[:200]!r}. "
               + ("It is correct." if won else f"It scored {score:.2f} of 1."))
        from_tool = bool(payload.strip()) and payload.strip() in self._tool_lines
        return obs, score, True, {
            "won": won, "expert_action": None,
            "metrics": {"code_calls": float(self._code_calls), "score": score,
                        "answer_from_tool": float(from_tool)},
        }

    def _run_code(self, code: str) -> tuple[str, float, bool, dict[str, Any]]:
        self._code_calls += 1
        if self._session is None:
            self._session = self.sandbox.session()
        result = self._session.run(code, timeout_s=self.code_timeout_s)
        self._tool_lines.update(line.strip() for line in result.stdout.splitlines() if line.strip())
        obs = format_execution(result, max_chars=self.max_tool_output_chars,
                               header="Code Execution Results:")
        left = self.max_code_calls - self._code_calls
        if left == 0:
            obs += (f"\n\n(That was your last code call. Give your final answer as "
                    f"{self.answer_open}answer{self.answer_close}.)")
        return obs, 0.0, False, {
            "obs_role": "tool", "expert_action": self._expert(),
            "metrics": {"code_calls": float(self._code_calls)},
            "exec_status": result.status,
        }

    def _score(self, answer: str) -> float:
        try:
            score = float(self._dataset(self._task_name).score_answer(answer, self._entry))
        except Exception:  # verifiers raise on malformed answers: that is a wrong answer
            return 0.0
        return score if math.isfinite(score) else 0.0

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
        super().close()
