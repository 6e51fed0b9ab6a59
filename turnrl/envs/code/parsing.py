"""Reading code blocks and final answers out of an agent's reply."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["CodeBlock", "find_code_block", "find_code_blocks", "find_answers"]

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


def find_answers(reply: str, open_tag: str, close_tag: str) -> list[tuple[int, str]]:
    """``(position, text)`` of every ``open_tag ... close_tag`` span, text stripped."""
    pattern = re.compile(re.escape(open_tag) + r"(.*?)" + re.escape(close_tag), re.DOTALL)
    return [(m.start(), m.group(1).strip()) for m in pattern.finditer(reply)]
