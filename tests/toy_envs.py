"""A tiny TextEnv used to test the contract without an engine."""

from __future__ import annotations

from typing import Any

from turnrl.envs.base import InvalidAction, TextEnv
from turnrl.envs.parsing import InvalidReply, extract_command


class GuessNumber(TextEnv):
    """Guess a number between 1 and 10 (test env)."""

    instructions = "Guess the hidden number. Reply with 'guess N'."

    def __init__(self, *, high: int = 10, max_turns: int = 6, invalid_penalty: float = -0.1,
                 render_mode: str | None = None) -> None:
        super().__init__(max_turns=max_turns, invalid_penalty=invalid_penalty,
                         render_mode=render_mode)
        self.high = high

    def _reset_episode(self, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        self._target = 1 + self.episode_seed % self.high
        task = f"Find the number between 1 and {self.high}."
        return task, {"task": task, "admissible_actions": self._admissible(),
                      "expert_action": f"guess {self._target}"}

    def _admissible(self) -> list[str]:
        return [f"guess {n}" for n in range(1, self.high + 1)]

    def parse_action(self, reply: str) -> str:
        try:
            command = extract_command(reply)
        except InvalidReply as exc:
            raise InvalidAction(str(exc)) from None
        if not command.startswith("guess "):
            raise InvalidAction("Reply with 'guess N', e.g. 'guess 3'.")
        return command

    def _step_action(self, command: str) -> tuple[str, float, bool, dict[str, Any]]:
        info: dict[str, Any] = {"admissible_actions": self._admissible(),
                                "expert_action": f"guess {self._target}"}
        if command not in info["admissible_actions"]:
            info["invalid_action"] = True
            return f"'{command}' is not a guess I understand.", 0.0, False, info
        guess = int(command.split()[1])
        if guess == self._target:
            info["won"] = True
            return "Correct!", 1.0, True, info
        hint = "higher" if guess < self._target else "lower"
        return f"No, go {hint}.", 0.0, False, info
