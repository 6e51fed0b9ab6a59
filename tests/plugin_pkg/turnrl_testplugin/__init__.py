"""A third-party package that adds an environment through the `turnrl.envs` entry point."""

import turnrl
from turnrl.envs.base import InvalidAction, TextEnv


def register_all() -> None:
    turnrl.register("turnrl/PluginCounter-v0", "turnrl_testplugin:Counter", max_turns=3)


class Counter(TextEnv):
    """Count to three (plugin test env)."""

    instructions = "Reply 'count'."

    def _reset_episode(self, options):
        self._n = 0
        return "Start counting.", {"task": "Count to three."}

    def parse_action(self, reply):
        if reply.strip().lower() != "count":
            raise InvalidAction("Reply 'count'.")
        return "count"

    def _step_action(self, command):
        self._n += 1
        done = self._n >= 3
        return str(self._n), float(done), done, {"won": done}
