"""Game-generation worker, run as a separate process by :mod:`.generation`.

Runs as a plain script (``python _worker.py``) so that starting it imports TextWorld
and nothing else -- never the caller's ``__main__`` module. It reads one JSON request
per line on stdin and answers one JSON line per request on its private protocol pipe
(the original stdout); anything TextWorld or Inform 7 prints goes to stderr instead.
It exits when stdin closes, i.e. when its parent goes away.

Request:  ``{"challenge": str, "settings": dict, "game_seed": int, "out_dir": str}``
Answer:   ``{"ok": true, "seconds": float, "walkthrough": [...]}`` or
          ``{"ok": false, "error_type": str, "error": str, "seconds": float}``
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback


def _generate(request: dict) -> dict:
    import textworld.challenges
    import textworld.generator
    from textworld.generator.game import GameOptions

    _, make, _ = textworld.challenges.CHALLENGES[request["challenge"]]
    options = GameOptions()
    options.seeds = int(request["game_seed"])
    options.path = os.path.join(request["out_dir"], "game.z8")
    options.force_recompile = True
    game = make(dict(request["settings"]), options)
    textworld.generator.compile_game(game, options)
    # Inform 7 source: only needed to debug the compiler, ~3x the size of the game.
    ni = os.path.join(request["out_dir"], "game.ni")
    if os.path.exists(ni):
        os.remove(ni)
    return {"walkthrough": list(game.walkthrough or [])}


def main() -> None:
    # Keep the protocol pipe private: TextWorld and the Inform compilers may print.
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    import textworld.challenges  # noqa: F401  (warm up: the expensive import, done once)
    import textworld.generator  # noqa: F401

    protocol.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        start = time.perf_counter()
        try:
            answer = {"ok": True, **_generate(json.loads(line))}
        except Exception as exc:  # reported to the parent, which decides what to do
            answer = {
                "ok": False,
                "error_type": type(exc).__name__,
                "error": str(exc) or traceback.format_exc(limit=3),
            }
        answer["seconds"] = time.perf_counter() - start
        protocol.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main()
