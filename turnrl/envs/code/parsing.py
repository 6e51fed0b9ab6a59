"""Reading code blocks and final answers out of an agent's reply."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["CodeBlock", "ToolCall", "find_code_block", "find_code_blocks", "find_tool_calls",
           "find_answers"]

# An opening fence tagged python (```python, ```py, ```python3), at the start of a line or
# after text on the same line.
_OPEN_RE = re.compile(r"```[ \t]*(?:python3?|py)[ \t]*\r?\n", re.IGNORECASE)


@dataclass(frozen=True)
class CodeBlock:
    """A fenced code block: where it starts in the reply, its code, whether it was closed."""

    start: int
    code: str
    closed: bool


def find_code_blocks(reply: str) -> list[CodeBlock]:
    """Every ```python block, in order. A final block without a closing fence runs to the
    end of the reply (generation is often stopped on the closing fence, which then is not
    part of the reply)."""
    blocks, pos = [], 0
    while True:
        m = _OPEN_RE.search(reply, pos)
        if m is None:
            return blocks
        end = reply.find("```", m.end())
        if end < 0:
            blocks.append(CodeBlock(m.start(), reply[m.end():], False))
            return blocks
        blocks.append(CodeBlock(m.start(), reply[m.end():end], True))
        pos = end + 3


def find_code_block(reply: str) -> CodeBlock | None:
    """The first ```python block (the agent's turn ends there), or ``None``."""
    blocks = find_code_blocks(reply)
    return blocks[0] if blocks else None


@dataclass(frozen=True)
class ToolCall:
    """A ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` block (Qwen / Hermes
    format): where it starts, the function name and arguments, or what was wrong with it."""

    start: int
    name: str
    arguments: dict[str, Any]
    error: str | None = None


_CALL_RE = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)


def find_tool_calls(reply: str) -> list[ToolCall]:
    """Every ``<tool_call>`` block, in order; a final one without ``</tool_call>`` runs to
    the end of the reply. ``arguments`` may be an object or a JSON string holding one."""
    calls = []
    for m in _CALL_RE.finditer(reply):
        body = m.group(1).strip()
        try:
            data = json.loads(body)
        except json.JSONDecodeError as exc:
            calls.append(ToolCall(m.start(), "", {}, f"not valid JSON ({exc.msg} at character {exc.pos})"))
            continue
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            calls.append(ToolCall(m.start(), "", {}, 'not an object with a "name"'))
            continue
        args = data.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                args = None
        if not isinstance(args, dict):
            calls.append(ToolCall(m.start(), data["name"], {}, '"arguments" is not an object'))
            continue
        calls.append(ToolCall(m.start(), data["name"], args))
    return calls


def find_answers(reply: str, open_tag: str, close_tag: str) -> list[tuple[int, str]]:
    """``(position, text)`` of every ``open_tag ... close_tag`` span, text stripped."""
    pattern = re.compile(re.escape(open_tag) + r"(.*?)" + re.escape(close_tag), re.DOTALL)
    return [(m.start(), m.group(1).strip()) for m in pattern.finditer(reply)]
