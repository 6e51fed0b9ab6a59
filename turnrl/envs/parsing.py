"""Turning an agent's whole reply into an environment command.

The agent answers in free text; environments pull their command out of it, so the
output format is learnt by RL too. The rules here are shared by the text-game envs:

1. If the reply contains ``Action:`` (any case), the command is what follows the last one
   on that line. This lets an agent think first (``Thought: ... Action: go north``).
2. Otherwise the command is the last non-empty line of the reply.
3. A leading ``>`` prompt, surrounding quotes/backticks and a trailing full stop are
   removed; whitespace is collapsed; the command is lower-cased.

A reply from which no command can be read raises :class:`InvalidReply`, whose message
is the feedback the environment shows the agent.
"""

from __future__ import annotations

import re
import string

_ACTION_RE = re.compile(r"action\s*:", re.IGNORECASE)
_PRINTABLE = set(string.printable) - set("\x0b\x0c\r\t\n")


class InvalidReply(Exception):
    """The reply holds no usable command; ``str(exc)`` is the feedback for the agent."""


def extract_command(reply: str, *, max_chars: int = 200) -> str:
    """Pull a single command out of a free-text reply.

    Args:
        reply: the agent's whole reply.
        max_chars: longest command accepted, in characters.

    Returns:
        The normalised command, e.g. ``"take coin"``.

    Raises:
        InvalidReply: the reply is empty, has no letters, holds characters a text game
            cannot take (non-ASCII, control characters), or the command is too long.

    Example:
        >>> extract_command("I should grab it.\\nAction: Take the coin.")
        'take the coin'
    """
    if not isinstance(reply, str):
        raise TypeError(f"reply must be a str, got {type(reply).__name__}")
    matches = list(_ACTION_RE.finditer(reply))
    if matches:
        tail = reply[matches[-1].end():]
        candidate = tail.lstrip(" \t").split("\n", 1)[0]
    else:
        lines = [line for line in reply.splitlines() if line.strip()]
        candidate = lines[-1] if lines else ""
    command = candidate.strip()
    command = command.lstrip(">").strip()
    command = command.strip("`'\"").strip()
    if command.endswith("."):
        command = command[:-1].rstrip()
    command = " ".join(command.split()).lower()
    if not command:
        raise InvalidReply(
            "Your reply held no command. Reply with a single command such as "
            "'go north' (or 'Action: go north' after your thoughts)."
        )
    if len(command) > max_chars:
        raise InvalidReply(
            f"Your command was {len(command)} characters long; commands are at most "
            f"{max_chars}. Reply with one short command such as 'open door'."
        )
    if any(ch not in _PRINTABLE for ch in command):
        raise InvalidReply(
            "Your command held characters the game cannot read (only plain ASCII "
            "letters, digits and punctuation are allowed). Reply with a command such as "
            "'take key'."
        )
    if not any(ch.isalpha() for ch in command):
        raise InvalidReply(
            f"'{command}' is not a command: a command is made of words, e.g. 'look'."
        )
    return command
