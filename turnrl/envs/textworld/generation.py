"""Generating TextWorld games from ``(challenge, settings, seed)``, cached on disk.

A game is made by TextWorld's own challenge generator
(``textworld.challenges.CHALLENGES[name]`` with ``GameOptions.seeds = seed``) and
compiled to a ``.z8`` z-machine file with ``textworld.generator.compile_game``. That takes
0.5--3 s (more for big treasure hunts), so compiled games are cached under
:func:`default_cache_dir`, keyed by (challenge, normalised settings, seed, TextWorld
version, :data:`CACHE_FORMAT_VERSION`)::

    <cache_dir>/<challenge>/<settings digest>/settings.json   the settings, readable
    <cache_dir>/<challenge>/<settings digest>/<seed>/         game.z8, game.json, meta.json
    <cache_dir>/<challenge>/<settings digest>/<seed>.lock     fcntl lock of that entry
    <cache_dir>/<challenge>/<settings digest>/<seed>.failures.json  remembered failures

Concurrency: a process holding an entry's lock generates the game into a private temp
directory and renames it into place (atomic), so readers never see half a game and two
processes asking for the same key generate it once. A cache hit takes one ``stat`` and
one small JSON read, without the lock.

Generation runs in a separate, warm worker process (TextWorld is imported once, then
reused for every game) under ``generation_timeout_s``; a worker that overruns is killed
with its Inform 7 compiler children. A failed attempt (an exception such as TextWorld's
``QuestGenerationError``, or a timeout) is retried with a seed derived deterministically
from ``(seed, attempt)`` (:func:`derive_game_seed`), up to :data:`MAX_ATTEMPTS` attempts;
``info["game_seed"]`` tells which generation seed made the game. Failures are remembered
in the cache, so a generator that hangs is not run again for that key (a remembered
timeout is retried only with a longer ``generation_timeout_s``). When every attempt fails,
:class:`~turnrl.errors.GameGenerationError` names the challenge, settings and seed.

Settings (merged over :data:`DEFAULT_SETTINGS`; anything else is rejected up front):

``tw-simple``
    ``rewards`` in {dense, balanced, sparse}; ``goal`` in {detailed, brief, none};
    ``test`` (bool: draw from the held-out object set).
``tw-coin_collector``
    ``level`` 1--300: quest length ``(level-1) % 100 + 1`` rooms, with
    ``(level-1) // 100`` distractor rooms per chain room. TextWorld 1.7 dropped Glulx and
    z-machine games hold at most 100 rooms, so only levels whose
    ``((level-1)//100 + 1) * ((level-1)%100 + 1) <= 100`` are supported:
    1--100, 101--150 and 201--233 (:class:`~turnrl.errors.UnsupportedSettingsError`
    otherwise).
``tw-treasure_hunter``
    ``level`` 1--30 (easy 1--10: 5 rooms; medium 11--20: 10 rooms, doors and
    containers; hard 21--30: 20 rooms, locked doors and keys). Measured on this project's
    2-core machine (TextWorld 1.7.0, one process per game, 60 s limit, seeds 0 and 1 for
    levels 21--29, seeds 0--4 for levels 29--30): levels 1--10 take ~0.5 s, levels 21--28
    2--16 s (growing with the level), and the hard end has a heavy tail: level 29 seed 1
    and level 30 seed 1 did not finish within 60 s (level 30 has been seen running past
    10 minutes), while level 30 seeds 0, 2, 3, 4 finished in 38, 13, 34 and 8 s. So no
    level is rejected outright -- most seeds work -- but levels 21--30 emit a
    :class:`UserWarning` (slow; some seeds hang), and the hang is handled by
    ``generation_timeout_s``: the generator is killed and the seed retried with a derived
    one, and the failure remembered. Level 20 (and other medium levels) can raise
    ``QuestGenerationError`` for some seeds; those are retried the same way. Pregenerate
    hard levels ahead of time (:func:`pregenerate`).
``tw-cooking``
    ``recipe`` 1--5 ingredients; ``take`` 0--``recipe`` of them to find (the rest start
    in the inventory); ``go`` in {1, 6, 9, 12} rooms; ``open``/``cook``/``cut``/``drop``
    skills (bool); ``recipe_seed`` >= 0 (> 0 shuffles the recipe, which needs
    ``take`` >= 1); ``split`` in {None, "train", "valid", "test"}.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from turnrl.errors import ConfigError, GameGenerationError, UnsupportedSettingsError, did_you_mean

__all__ = [
    "CHALLENGES", "DEFAULT_SETTINGS", "CACHE_FORMAT_VERSION", "MAX_ATTEMPTS",
    "GeneratedGame", "GameCache", "GenerationWorker",
    "default_cache_dir", "normalize_settings", "derive_game_seed", "pregenerate",
]

#: The TextWorld challenges this environment generates.
CHALLENGES: tuple[str, ...] = ("tw-simple", "tw-coin_collector", "tw-treasure_hunter", "tw-cooking")

#: Settings used for every key the caller does not give.
DEFAULT_SETTINGS: dict[str, dict[str, Any]] = {
    "tw-simple": {"rewards": "dense", "goal": "detailed", "test": False},
    "tw-coin_collector": {"level": 5},
    "tw-treasure_hunter": {"level": 5},
    "tw-cooking": {
        "recipe": 1, "take": 1, "go": 6, "open": True, "cook": False, "cut": False,
        "drop": False, "recipe_seed": 0, "split": None,
    },
}

#: Bump when the layout or content of cache entries changes; old entries are then ignored.
CACHE_FORMAT_VERSION = 1
#: Generation attempts per seed (the first with the seed itself, then derived seeds).
MAX_ATTEMPTS = 3
#: Treasure-hunter levels from which generation is slow and may hang (module docstring).
TREASURE_HUNTER_SLOW_LEVEL = 21

_WORKER_SCRIPT = Path(__file__).with_name("_worker.py")
_WORKER_START_TIMEOUT_S = 120.0


# ---------------------------------------------------------------------------- settings
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_choice(
    challenge: str, key: str, value: Any, allowed: Iterable[Any],
    error: type[ConfigError] = ConfigError,
) -> None:
    allowed = list(allowed)
    if value not in allowed or isinstance(value, bool) != any(isinstance(a, bool) for a in allowed):
        raise error(f"{challenge} setting {key!r} must be one of {allowed}, got {value!r}")


def _check_int(
    challenge: str, key: str, value: Any, low: int, high: int | None,
    error: type[ConfigError] = ConfigError,
) -> None:
    span = f"between {low} and {high}" if high is not None else f">= {low}"
    if not _is_int(value):
        raise ConfigError(f"{challenge} setting {key!r} must be an int {span}, got {value!r}")
    if value < low or (high is not None and value > high):
        raise error(f"{challenge} setting {key!r} must be {span}, got {value!r}")


def _coin_collector_rooms(level: int) -> int:
    return ((level - 1) // 100 + 1) * ((level - 1) % 100 + 1)


def normalize_settings(challenge: str, settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate ``settings`` for ``challenge`` and merge them over the defaults.

    Returns:
        The complete settings dict, as passed to TextWorld and used in the cache key.

    Raises:
        ConfigError: unknown challenge or key, or a value of the wrong type or range (the
            message says what is allowed).
        UnsupportedSettingsError: valid for TextWorld's argument parser but not generable
            with TextWorld 1.7 (see the module docstring).
    """
    if challenge not in CHALLENGES:
        raise ConfigError(
            f"unknown TextWorld challenge {challenge!r}.{did_you_mean(str(challenge), CHALLENGES)} "
            f"Supported challenges: {', '.join(CHALLENGES)}"
        )
    if settings is None:
        settings = {}
    if not isinstance(settings, Mapping):
        raise ConfigError(
            f"settings must be a dict or None, got {type(settings).__name__}: {settings!r:.80}"
        )
    defaults = DEFAULT_SETTINGS[challenge]
    unknown = [k for k in settings if k not in defaults]
    if unknown:
        hints = "".join(did_you_mean(str(k), defaults) for k in unknown)
        raise ConfigError(
            f"unknown {challenge} setting(s) {', '.join(repr(k) for k in unknown)}.{hints} "
            f"Valid keys: {', '.join(defaults)}"
        )
    s = {**defaults, **settings}

    if challenge == "tw-simple":
        _check_choice(challenge, "rewards", s["rewards"], ["dense", "balanced", "sparse"])
        _check_choice(challenge, "goal", s["goal"], ["detailed", "brief", "none"])
        _check_choice(challenge, "test", s["test"], [False, True])
    elif challenge == "tw-coin_collector":
        _check_int(challenge, "level", s["level"], 1, 300, UnsupportedSettingsError)
        if _coin_collector_rooms(s["level"]) > 100:
            raise UnsupportedSettingsError(
                f"tw-coin_collector level {s['level']} needs "
                f"{_coin_collector_rooms(s['level'])} rooms, but TextWorld 1.7 games hold at "
                f"most 100 rooms. Supported levels: 1-100, 101-150, 201-233."
            )
    elif challenge == "tw-treasure_hunter":
        _check_int(challenge, "level", s["level"], 1, 30, UnsupportedSettingsError)
        if s["level"] >= TREASURE_HUNTER_SLOW_LEVEL:
            warnings.warn(
                f"tw-treasure_hunter level {s['level']} (hard, 20 rooms) takes 2-40 s per "
                f"game to generate and hangs on some seeds; hung generations are killed after "
                f"generation_timeout_s and retried with a derived seed. Pregenerate these "
                f"games (turnrl.envs.textworld.pregenerate) before training or evaluation.",
                UserWarning, stacklevel=3,
            )
    else:  # tw-cooking
        _check_int(challenge, "recipe", s["recipe"], 1, 5, UnsupportedSettingsError)
        _check_int(challenge, "take", s["take"], 0, None)
        if s["take"] > s["recipe"]:
            raise UnsupportedSettingsError(
                f"tw-cooking setting 'take' ({s['take']}) must be <= 'recipe' ({s['recipe']}): "
                f"only ingredients of the recipe can be fetched"
            )
        if _is_int(s["go"]):
            _check_choice(challenge, "go", s["go"], [1, 6, 9, 12], UnsupportedSettingsError)
        _check_choice(challenge, "go", s["go"], [1, 6, 9, 12])
        for key in ("open", "cook", "cut", "drop"):
            _check_choice(challenge, key, s[key], [False, True])
        _check_int(challenge, "recipe_seed", s["recipe_seed"], 0, 2**31 - 1)
        if s["recipe_seed"] > 0 and s["take"] < 1:
            raise UnsupportedSettingsError(
                f"tw-cooking recipe_seed={s['recipe_seed']} (a shuffled recipe) needs the "
                f"'take' skill: set take >= 1 or recipe_seed=0"
            )
        _check_choice(challenge, "split", s["split"], [None, "train", "valid", "test"])
    return s


def derive_game_seed(seed: int, attempt: int) -> int:
    """The generation seed of ``attempt`` (0-based) for episode ``seed``.

    Attempt 0 uses the seed itself when TextWorld accepts it (0 <= seed < 2**31); retries
    and larger seeds use a hash of ``(seed, attempt)``, so they are the same everywhere.
    """
    if attempt == 0 and 0 <= seed < 2**31:
        return seed
    digest = hashlib.sha256(f"turnrl-textworld:{seed}:{attempt}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 2**31


def default_cache_dir() -> Path:
    """``$TURNRL_CACHE/textworld`` if ``TURNRL_CACHE`` is set, else
    ``~/.cache/turnrl/textworld``."""
    root = os.environ.get("TURNRL_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "turnrl"
    return base / "textworld"


def textworld_version() -> str:
    return metadata.version("textworld")


# ---------------------------------------------------------------------------- worker
class _GenerationTimeout(Exception):
    pass


class _WorkerCrashed(Exception):
    pass


class GenerationWorker:
    """A warm process that imports TextWorld once and then generates games on request.

    The process is started on first use and restarted after it was killed (timeout) or
    died. Calls are serialised by a lock; use one worker per parallel stream.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._buffer = b""
        self._lock = threading.Lock()

    def generate(
        self, challenge: str, settings: Mapping[str, Any], game_seed: int, out_dir: str,
        timeout_s: float,
    ) -> dict[str, Any]:
        """Generate one game into ``out_dir`` (``game.z8`` + ``game.json``).

        Returns:
            The worker's answer: ``{"ok": True, ...}`` or ``{"ok": False, "error_type",
            "error"}`` for an exception raised by TextWorld.

        Raises:
            _GenerationTimeout: no answer within ``timeout_s`` (the worker was killed).
            _WorkerCrashed: the worker died or could not start.
        """
        with self._lock:
            self._ensure_started()
            request = {"challenge": challenge, "settings": dict(settings),
                       "game_seed": int(game_seed), "out_dir": out_dir}
            assert self._proc is not None and self._proc.stdin is not None
            try:
                self._proc.stdin.write((json.dumps(request) + "\n").encode())
                self._proc.stdin.flush()
            except OSError as exc:
                self._kill()
                raise _WorkerCrashed(f"generation worker is gone: {exc}") from exc
            try:
                return self._read_line(timeout_s)
            except _GenerationTimeout:
                self._kill()  # it may never come back: kill it and its compiler children
                raise

    def close(self) -> None:
        """Stop the worker process (a later call starts a fresh one)."""
        with self._lock:
            self._kill()

    def __del__(self) -> None:
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            self._kill()

    # -- internals
    def _ensure_started(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        self._kill()
        env = dict(os.environ, PYTHONHASHSEED="0")  # set iteration order in TextWorld
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-u", str(_WORKER_SCRIPT)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                env=env, start_new_session=True,  # own process group: kill it whole
            )
        except OSError as exc:
            raise _WorkerCrashed(f"could not start the generation worker: {exc}") from exc
        self._buffer = b""
        try:
            ready = self._read_line(_WORKER_START_TIMEOUT_S)
        except _GenerationTimeout as exc:
            self._kill()
            raise _WorkerCrashed(
                f"generation worker did not start within {_WORKER_START_TIMEOUT_S:.0f} s"
            ) from exc
        if not ready.get("ready"):
            self._kill()
            raise _WorkerCrashed(f"generation worker sent {ready!r} instead of ready")

    def _read_line(self, timeout_s: float) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _GenerationTimeout()
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                code = self._proc.poll()
                self._kill()
                raise _WorkerCrashed(f"generation worker exited (exit code {code})")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the worker's own group (ni, inform6)
            except (ProcessLookupError, PermissionError):
                proc.kill()
        for stream in (proc.stdin, proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        proc.wait()


_shared_worker: GenerationWorker | None = None
_shared_lock = threading.Lock()


def shared_worker() -> GenerationWorker:
    """The process-wide worker used when none is given (kept warm between games)."""
    global _shared_worker
    with _shared_lock:
        if _shared_worker is None:
            _shared_worker = GenerationWorker()
        return _shared_worker


# ---------------------------------------------------------------------------- cache
@dataclass(frozen=True)
class GeneratedGame:
    """A compiled game in the cache.

    Attributes:
        path: the ``.z8`` file (its ``.json`` sits next to it).
        seed: the episode seed it was asked for.
        game_seed: the generation seed that made it (differs from ``seed`` after a retry).
        attempt: 0-based attempt that succeeded.
        generation_s: seconds the generation took when it was made.
        cached: whether this call found it in the cache.
    """

    path: str
    seed: int
    game_seed: int
    attempt: int
    generation_s: float
    cached: bool


class GameCache:
    """Compiled games on disk, keyed by (challenge, settings, seed, versions).

    Args:
        cache_dir: root folder; defaults to :func:`default_cache_dir`.
    """

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self._tw_version = textworld_version()

    def settings_dir(self, challenge: str, settings: Mapping[str, Any]) -> Path:
        key = {"challenge": challenge, "settings": dict(settings),
               "textworld": self._tw_version, "format": CACHE_FORMAT_VERSION}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        return self.root / challenge / digest

    def lookup(self, challenge: str, settings: Mapping[str, Any], seed: int) -> GeneratedGame | None:
        """The cached game for this key, or ``None`` (never generates, never locks)."""
        entry = self.settings_dir(challenge, settings) / str(seed)
        try:
            meta = json.loads((entry / "meta.json").read_text())
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
            return None
        return GeneratedGame(
            path=str(entry / "game.z8"), seed=seed, game_seed=meta["game_seed"],
            attempt=meta["attempt"], generation_s=meta["generation_s"], cached=True,
        )

    def get(
        self,
        challenge: str,
        settings: Mapping[str, Any],
        seed: int,
        *,
        timeout_s: float = 120.0,
        worker: GenerationWorker | None = None,
    ) -> GeneratedGame:
        """The game for ``(challenge, settings, seed)``: from the cache, else generated.

        ``settings`` must already be normalised (:func:`normalize_settings`).

        Raises:
            GameGenerationError: every attempt failed (now or, remembered, earlier).
        """
        hit = self.lookup(challenge, settings, seed)
        if hit is not None:
            return hit
        sdir = self.settings_dir(challenge, settings)
        sdir.mkdir(parents=True, exist_ok=True)
        _write_once(sdir / "settings.json", {"challenge": challenge, "settings": dict(settings)})
        with _locked(sdir / f"{seed}.lock"):
            hit = self.lookup(challenge, settings, seed)  # made while we waited for the lock
            if hit is not None:
                return hit
            return self._generate(challenge, settings, seed, sdir, timeout_s,
                                  worker or shared_worker())

    def _generate(
        self, challenge: str, settings: Mapping[str, Any], seed: int, sdir: Path,
        timeout_s: float, worker: GenerationWorker,
    ) -> GeneratedGame:
        failures_path = sdir / f"{seed}.failures.json"
        failures = _read_json(failures_path, default={"attempts": {}})["attempts"]
        for attempt in range(MAX_ATTEMPTS):
            game_seed = derive_game_seed(seed, attempt)
            known = failures.get(str(attempt))
            if known is not None and (
                known["kind"] == "error" or known.get("timeout_s", 0) >= timeout_s
            ):
                continue  # failed before under the same conditions: don't run it again
            tmp = sdir / f".tmp-{seed}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
            try:
                answer = worker.generate(challenge, settings, game_seed, str(tmp), timeout_s)
            except _GenerationTimeout:
                failures[str(attempt)] = {
                    "kind": "timeout", "game_seed": game_seed, "timeout_s": timeout_s,
                    "error": f"no game within generation_timeout_s={timeout_s:g}",
                }
            except _WorkerCrashed as exc:  # not remembered: may be the machine, not the seed
                failures[str(attempt)] = {"kind": "crash", "game_seed": game_seed,
                                          "error": str(exc)}
            else:
                if answer["ok"]:
                    meta = {
                        "challenge": challenge, "settings": dict(settings), "seed": seed,
                        "game_seed": game_seed, "attempt": attempt,
                        "generation_s": round(answer["seconds"], 3),
                        "textworld": self._tw_version, "format": CACHE_FORMAT_VERSION,
                        "walkthrough": answer.get("walkthrough", []),
                    }
                    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
                    entry = sdir / str(seed)
                    os.rename(tmp, entry)  # atomic: readers see all of it or nothing
                    return GeneratedGame(str(entry / "game.z8"), seed, game_seed, attempt,
                                         meta["generation_s"], cached=False)
                failures[str(attempt)] = {
                    "kind": "error", "game_seed": game_seed,
                    "error": f"{answer['error_type']}: {answer['error']}"[:500],
                }
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            remembered = {k: v for k, v in failures.items() if v["kind"] != "crash"}
            _atomic_write_json(failures_path, {"seed": seed, "attempts": remembered})

        details = "; ".join(
            f"attempt {k} (game_seed {v['game_seed']}): {v['error']}"
            for k, v in sorted(failures.items())
        )
        raise GameGenerationError(
            f"could not generate a {challenge} game with settings {dict(settings)} for seed "
            f"{seed} after {MAX_ATTEMPTS} attempts: {details}. Try other settings (an easier "
            f"level), a larger generation_timeout_s, or another seed. Failures are remembered "
            f"in {failures_path}; delete it to try again."
        )


class _locked:
    """Exclusive ``fcntl`` lock on a file for the duration of a ``with`` block."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: Any = None

    def __enter__(self) -> _locked:
        self._fh = open(self.path, "a")  # noqa: SIM115  (held until __exit__)
        fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
        self._fh.close()


def _read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def _atomic_write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _write_once(path: Path, data: Any) -> None:
    if not path.exists():
        _atomic_write_json(path, data)


# ---------------------------------------------------------------------------- pregenerate
def pregenerate(
    challenge: str,
    settings: Mapping[str, Any] | None,
    seeds: Iterable[int],
    *,
    workers: int = 2,
    cache_dir: str | os.PathLike[str] | None = None,
    generation_timeout_s: float = 120.0,
) -> dict[int, GeneratedGame | GameGenerationError]:
    """Fill the cache with the games of ``seeds``, ``workers`` generations at a time.

    Seeds already cached cost nothing. Failures are returned, not raised, so one bad seed
    does not stop the rest.

    Args:
        challenge, settings: as for :class:`~turnrl.envs.textworld.env.TextWorldEnv`.
        seeds: episode seeds (the ``seed`` given to ``reset``).
        workers: generation processes run in parallel (each imports TextWorld once).
        cache_dir: as for the env; default :func:`default_cache_dir`.
        generation_timeout_s: limit per generation attempt.

    Returns:
        ``{seed: GeneratedGame or GameGenerationError}`` in the order of ``seeds``.

    Example:
        >>> pregenerate("tw-cooking", {"recipe": 2}, range(100), workers=2)
    """
    if not _is_int(workers) or workers < 1:
        raise ConfigError(f"workers must be an int >= 1, got {workers!r}")
    normalized = normalize_settings(challenge, settings)
    cache = GameCache(cache_dir)
    seeds = [int(s) for s in seeds]
    results: dict[int, GeneratedGame | GameGenerationError] = {}
    todo = []
    for seed in seeds:
        hit = cache.lookup(challenge, normalized, seed)
        if hit is not None:
            results[seed] = hit
        else:
            todo.append(seed)
    if todo:
        pool = [GenerationWorker() for _ in range(min(workers, len(todo)))]
        free = list(pool)
        free_lock = threading.Lock()

        def run(seed: int) -> GeneratedGame | GameGenerationError:
            with free_lock:
                worker = free.pop()
            try:
                return cache.get(challenge, normalized, seed, timeout_s=generation_timeout_s,
                                 worker=worker)
            except GameGenerationError as exc:
                return exc
            finally:
                with free_lock:
                    free.append(worker)

        try:
            with ThreadPoolExecutor(max_workers=len(pool)) as executor:
                for seed, result in zip(todo, executor.map(run, todo), strict=True):
                    results[seed] = result
        finally:
            for worker in pool:
                worker.close()
    return {seed: results[seed] for seed in seeds}
