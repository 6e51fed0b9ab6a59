"""A rule-based agent that solves some code-environment tasks *by writing code*.

:class:`ScriptedCodeAgent` (``turnrl eval --agent scripted_code``) gives the code envs a
baseline that needs no model and exercises the whole tool loop: it reads the task like a
model would (from the conversation, not from the env's oracle), writes a short Python
program in a ```python block, reads the ``Code Execution Results:`` tool message and
answers ``<<<output>>>``.

It recognises these reasoning-gym tasks: ``basic_arithmetic``, ``chain_sum``, ``gcd``,
``lcm``, ``prime_factorization``, ``number_sorting``, ``puzzle24``, ``countdown`` and
``game_of_life``. Anything else gets a give-up answer (a failure), and on
``turnrl/CodeRepair-v0`` it submits a stub that fails the tests -- so its success rate
is a floor that a model must beat. (The ``expert`` agent solves CodeRepair with the
canonical solutions.)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from turnrl.agents.base import Action
from turnrl.trajectory import Message

__all__ = ["ScriptedCodeAgent", "solver_code"]

_NUM = r"-?\d+(?:\.\d+)?"

# Searches combinations of two numbers at a time with exact fractions: finds an
# expression over all the numbers that equals the target.
_SEARCH = '''
from functools import lru_cache
numbers, target = {numbers!r}, {target!r}

@lru_cache(maxsize=200_000)
def solve(items):
    # items: sorted tuple of (value, expression); combine two, recurse on the rest.
    if len(items) == 1:
        return items[0][1] if items[0][0] == target else None
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            (a, ea), (b, eb) = items[i], items[j]
            if a < b:
                (a, ea), (b, eb) = (b, eb), (a, ea)
            rest = items[:i] + items[i + 1:j] + items[j + 1:]
            options = [(a + b, f"({{ea}} + {{eb}})"), (a * b, f"{{ea}} * {{eb}}")]
            if a > b:
                options.append((a - b, f"({{ea}} - {{eb}})"))
            if b > 1 and a % b == 0:
                options.append((a // b, f"{{ea}} / {{eb}}"))
            for value, expr in options:
                found = solve(tuple(sorted(rest + ((value, expr),))))
                if found:
                    return found
    return None

answer = solve(tuple(sorted((n, str(n)) for n in numbers)))
print(answer if answer else "no solution")
'''

_GAME_OF_LIFE = '''
import json
grid, steps = {grid!r}, {steps!r}
rows, cols = len(grid), len(grid[0])
for _ in range(steps):
    grid = [[1 if (n := sum(grid[(r + dr) % rows][(c + dc) % cols]
                            for dr in (-1, 0, 1) for dc in (-1, 0, 1) if dr or dc)) == 3
             or (grid[r][c] and n == 2) else 0 for c in range(cols)] for r in range(rows)]
print(json.dumps(grid, separators=(",", ":")))
'''


def _numbers(text: str) -> list[int]:
    return [int(x) for x in re.findall(r"-?\d+", text)]


def solver_code(question: str) -> str | None:
    """Python source that prints the answer to ``question``, or ``None`` when the task is
    not one this agent knows."""
    q = " ".join(question.split())
    m = re.search(r"Make 24 using ([\d, ]+)", q)
    if m:
        return _SEARCH.format(numbers=_numbers(m.group(1)), target=24)
    m = re.search(r"(?:make|Calculate) (\d+) using all of these numbers: ([\d, ]+)", q) or re.search(
        r"Using all the numbers ([\d, ]+), create an expression that equals (\d+)", q)
    if m:
        first, second = m.group(1), m.group(2)
        target, nums = (second, first) if m.group(0).startswith("Using") else (first, second)
        return _SEARCH.format(numbers=_numbers(nums), target=int(target))
    m = re.search(r"prime factorization of (\d+)", q)
    if m:
        return (f"n, p, out = {int(m.group(1))}, 2, []\n"
                "while p * p <= n:\n    while n % p == 0:\n        out.append(p)\n"
                "        n //= p\n    p += 1\nif n > 1:\n    out.append(n)\n"
                "print(' × '.join(map(str, out)))")
    m = re.search(r"(Greatest Common Divisor|Least Common Multiple).*?numbers: ([\d, ]+)", q)
    if m:
        fn = "gcd" if m.group(1).startswith("Greatest") else "lcm"
        return f"import math\nprint(math.{fn}(*{_numbers(m.group(2))!r}))"
    m = re.search(r"Sort these numbers in (ascending|descending) order: ((?:" + _NUM + r",? ?)+)", q)
    if m:
        items = [s for s in re.findall(_NUM, m.group(2))]
        return (f"items = {items!r}\n"
                f"print(sorted(items, key=float, reverse={m.group(1) == 'descending'}))")
    m = re.search(r"after (\d+) steps? of simulation", q)
    if m and "[[" in q:
        board = q[q.rfind("[["):]  # the last grid; the first is the format example
        grid = [_numbers(row) for row in re.findall(r"\[([\d,\s]+)\]", board)]
        return _GAME_OF_LIFE.format(grid=grid, steps=int(m.group(1)))
    if re.search(r"Calculate|arithmetic problem|evaluate", q, re.IGNORECASE):
        candidates = re.findall(r"[-+*/().\d ]*\d[-+*/().\d ]*", q)
        expr = max(candidates, key=len, default="").strip().rstrip(".= ")
        if expr and re.search(r"\d\s*[-+*/]\s*[-(\d]", expr):
            return (f"value = {expr}\n"
                    "print(int(value) if float(value).is_integer() else round(value, 6))")
    return None


class ScriptedCodeAgent:
    """Solves known reasoning-gym tasks by writing code (see the module docstring).

    Args:
        answer_open, answer_close: the answer tags of the env (CodeInterpreter's default).
    """

    name = "scripted_code"

    def __init__(self, answer_open: str = "<<<", answer_close: str = ">>>") -> None:
        self.answer_open, self.answer_close = answer_open, answer_close

    def act(
        self,
        conversations: Sequence[list[Message]],
        infos: Sequence[dict[str, Any]] | None = None,
    ) -> list[Action]:
        return [Action(text=self._reply(messages)) for messages in conversations]

    def _reply(self, messages: list[Message]) -> str:
        last = messages[-1] if messages else {"role": "user", "content": ""}
        task = next((m["content"] for m in messages if m["role"] == "user"), "")
        if task.startswith("Complete this Python function"):
            return self._repair_stub(task)
        if last["role"] == "tool" and last["content"].startswith("Code Execution Results:"):
            output = last["content"].split("\n", 1)[1] if "\n" in last["content"] else ""
            answer = output.strip().splitlines()[0] if output.strip() else ""
            return f"The program printed the answer.\n{self.answer_open}{answer}{self.answer_close}"
        code = solver_code(task)
        if code is None:
            return f"I do not know how to solve this.\n{self.answer_open}unknown{self.answer_close}"
        return f"I will compute this with Python.\n```python\n{code.strip()}\n```"

    @staticmethod
    def _repair_stub(task: str) -> str:
        m = re.search(r"^def (\w+)\((.*?)\)", task, re.MULTILINE | re.DOTALL)
        if m is None:
            return "```python\npass\n```"
        return f"```python\ndef {m.group(1)}(*args, **kwargs):\n    raise NotImplementedError\n```"
