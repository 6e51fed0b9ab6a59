"""Entry point of a :class:`~turnrl.envs.pool.SubprocessPool` worker:
``python -m turnrl.envs._pool_worker FD`` where FD is its end of a socket pair."""

from __future__ import annotations

import sys
from multiprocessing.connection import Connection

from turnrl.envs.pool import _worker_main

if __name__ == "__main__":
    _worker_main(Connection(int(sys.argv[1])))
