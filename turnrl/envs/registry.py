"""Registering and creating environments by versioned string id.

Ids look like ``turnrl/<Name>-v<N>``. Every id registered here is also registered with
Gymnasium, so ``gymnasium.make("turnrl/TextWorld-v0")`` works after ``import turnrl``.
Entry points are imported lazily (``"package.module:Class"``), so listing environments
never imports an engine.

Third-party packages add environments through the ``turnrl.envs`` entry-point group. In
their ``pyproject.toml``::

    [project.entry-points."turnrl.envs"]
    my_envs = "my_package.envs"            # a module whose import registers its envs
    # or: my_envs = "my_package.envs:register_all"   (a function called with no args)

They are loaded once, the first time turnrl lists or makes an environment.
"""

from __future__ import annotations

import importlib
import inspect
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, TypeVar, overload

import gymnasium as gym

from turnrl.errors import (
    ConfigError,
    DuplicateEnvError,
    InvalidEnvIdError,
    PluginError,
    UnknownEnvError,
    did_you_mean,
)

__all__ = [
    "EnvSpec", "register", "make", "spec", "list_envs", "load_plugins", "accepts_kwarg",
    "prepare", "ENTRY_POINT_GROUP", "EnvFactory", "factory",
]

ENTRY_POINT_GROUP = "turnrl.envs"
_ID_RE = re.compile(r"^(?P<ns>[A-Za-z][\w.-]*)/(?P<name>[A-Za-z][\w.]*)-v(?P<version>\d+)$")

EnvT = TypeVar("EnvT", bound=type)


@dataclass(frozen=True)
class EnvSpec:
    """A registered environment.

    Attributes:
        id: ``<namespace>/<Name>-v<N>``.
        entry_point: ``"module:attr"`` string or a callable returning the env.
        defaults: keyword arguments passed to the entry point unless overridden in make.
        description: one line shown by ``turnrl envs``.
    """

    id: str
    entry_point: str | Callable[..., gym.Env]
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def load(self) -> Callable[..., gym.Env]:
        """Import and return the entry point."""
        if callable(self.entry_point):
            return self.entry_point
        module_name, _, attr = self.entry_point.partition(":")
        module = importlib.import_module(module_name)
        try:
            return getattr(module, attr)
        except AttributeError as exc:
            raise ImportError(
                f"entry point {self.entry_point!r} of {self.id!r}: module {module_name!r} "
                f"has no attribute {attr!r}"
            ) from exc


_REGISTRY: dict[str, EnvSpec] = {}
_plugins_loaded = False


def _check_id(env_id: str) -> None:
    if not isinstance(env_id, str) or not _ID_RE.match(env_id):
        raise InvalidEnvIdError(
            f"environment id must look like 'turnrl/<Name>-v<N>' (e.g. 'turnrl/MyGame-v0'), "
            f"got {env_id!r}"
        )


def _describe(entry_point: Any) -> str:
    doc = inspect.getdoc(entry_point) if not isinstance(entry_point, str) else None
    return doc.strip().splitlines()[0] if doc else ""


@overload
def register(
    id: str, entry_point: None = None, *, description: str = "", override: bool = False,
    **defaults: Any,
) -> Callable[[EnvT], EnvT]: ...


@overload
def register(
    id: str, entry_point: str | Callable[..., gym.Env], *, description: str = "",
    override: bool = False, **defaults: Any,
) -> EnvSpec: ...


def register(
    id: str,
    entry_point: str | Callable[..., gym.Env] | None = None,
    *,
    description: str = "",
    override: bool = False,
    **defaults: Any,
) -> EnvSpec | Callable[[EnvT], EnvT]:
    """Register an environment under a versioned id (also with Gymnasium).

    Args:
        id: ``<namespace>/<Name>-v<N>``, e.g. ``"turnrl/MyGame-v0"``.
        entry_point: ``"module:Class"`` (imported lazily) or a class / factory. Omit it
            to use ``register`` as a class decorator.
        description: one line for ``turnrl envs``; defaults to the class docstring's first
            line when the entry point is an object.
        override: replace an existing registration instead of raising.
        **defaults: keyword arguments passed to the entry point unless overridden.

    Returns:
        The :class:`EnvSpec`, or, used as a decorator, the class unchanged.

    Raises:
        InvalidEnvIdError: the id is not of the form ``<namespace>/<Name>-v<N>``.
        DuplicateEnvError: the id is taken and ``override`` is false.

    Example:
        >>> @turnrl.register("turnrl/Echo-v0", max_turns=5)
        ... class Echo(turnrl.TextEnv): ...
        >>> env = turnrl.make("turnrl/Echo-v0")
    """
    if entry_point is None:

        def decorator(cls: EnvT) -> EnvT:
            register(id, cls, description=description, override=override, **defaults)
            return cls

        _check_id(id)
        return decorator

    _check_id(id)
    if id in _REGISTRY and not override:
        raise DuplicateEnvError(
            f"environment id {id!r} is already registered (entry point "
            f"{_REGISTRY[id].entry_point!r}); pick a new version such as "
            f"{_next_version(id)!r}, or pass override=True to replace it"
        )
    if not (isinstance(entry_point, str) and ":" in entry_point) and not callable(entry_point):
        raise ConfigError(
            f"entry_point must be 'module:attr' or a callable, got {entry_point!r}"
        )
    env_spec = EnvSpec(
        id=id,
        entry_point=entry_point,
        defaults=dict(defaults),
        description=description or _describe(entry_point),
    )
    _REGISTRY[id] = env_spec
    if id in gym.registry:
        del gym.registry[id]  # ours is the source of truth; keep Gymnasium in step
    gym.register(id=id, entry_point=entry_point, kwargs=dict(defaults), disable_env_checker=True)
    return env_spec


def _next_version(env_id: str) -> str:
    m = _ID_RE.match(env_id)
    assert m is not None
    taken = {s.id for s in _REGISTRY.values()}
    version = int(m["version"]) + 1
    while f"{m['ns']}/{m['name']}-v{version}" in taken:
        version += 1
    return f"{m['ns']}/{m['name']}-v{version}"


def spec(env_id: str) -> EnvSpec:
    """The :class:`EnvSpec` of a registered id.

    Raises:
        UnknownEnvError: not registered; the message lists close matches.
    """
    load_plugins()
    try:
        return _REGISTRY[env_id]
    except (KeyError, TypeError):
        pass
    raise UnknownEnvError(
        f"no environment registered as {env_id!r}.{did_you_mean(str(env_id), _REGISTRY)} "
        f"Run `turnrl envs` to list them all."
    )


def make(env_id: str, **kwargs: Any) -> gym.Env:
    """Create a registered environment.

    Args:
        env_id: a registered id, e.g. ``"turnrl/TextWorld-v0"``.
        **kwargs: override the registered defaults.

    Raises:
        UnknownEnvError: the id is not registered (close matches are suggested).
        ConfigError: a keyword the environment does not accept (the accepted ones are
            listed).
    """
    env_spec = spec(env_id)
    factory = env_spec.load()
    merged = {**env_spec.defaults, **kwargs}
    _check_kwargs(env_spec.id, factory, merged)
    env = factory(**merged)
    if env.spec is None:
        # Mirror Gymnasium's bookkeeping so `env.spec.id` works for envs made here too.
        env.spec = gym.spec(env_spec.id)
    return env


@dataclass(frozen=True)
class EnvFactory:
    """``make(env_id, **kwargs)`` as a picklable callable that carries its registration, so
    env worker processes and Ray actors can build envs registered at run time (in a
    notebook, a test, a script's ``__main__``) that their fresh interpreter does not know."""

    spec: EnvSpec
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __call__(self) -> gym.Env:
        known = _REGISTRY.get(self.spec.id)
        if known is None or known.entry_point != self.spec.entry_point:
            register(self.spec.id, self.spec.entry_point, override=True,
                     description=self.spec.description, **self.spec.defaults)
        return make(self.spec.id, **self.kwargs)


def factory(env_id: str, **kwargs: Any) -> EnvFactory:
    """A callable that makes ``env_id`` with ``kwargs``, in this process or any worker (see
    :class:`EnvFactory`); what env pools and the trainer use.

    Raises:
        UnknownEnvError: the id is not registered.
        ConfigError: a keyword the environment does not accept -- now, before any env is
            made or prepared.
    """
    env_spec = spec(env_id)
    _check_kwargs(env_spec.id, env_spec.load(), {**env_spec.defaults, **kwargs})
    return EnvFactory(env_spec, dict(kwargs))


def _check_kwargs(env_id: str, factory: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return
    params = sig.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [
        name for name, p in params.items()
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        hints = "".join(did_you_mean(k, accepted) for k in unknown)
        raise ConfigError(
            f"{env_id} does not accept {', '.join(repr(k) for k in unknown)}.{hints} "
            f"Accepted keywords: {', '.join(accepted)}"
        )


def accepts_kwarg(env_id: str, name: str) -> bool:
    """Whether the env's entry point takes keyword ``name``."""
    factory = spec(env_id).load()
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def prepare(env_id: str, seeds: Any, kwargs: dict[str, Any] | None = None, *, workers: int = 2) -> None:
    """Let an env get the episodes of ``seeds`` ready ahead of time, in parallel (e.g.
    TextWorld generates and caches their games). Envs without a ``prepare`` classmethod
    need nothing; this is then a no-op."""
    factory = spec(env_id).load()
    hook = getattr(factory, "prepare", None)
    if callable(hook):
        hook(list(seeds), workers=workers, **{**spec(env_id).defaults, **(kwargs or {})})


def list_envs() -> list[EnvSpec]:
    """All registered environments, sorted by id."""
    load_plugins()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def load_plugins(*, force: bool = False) -> list[str]:
    """Load third-party environments from the ``turnrl.envs`` entry-point group.

    Called automatically by :func:`make`, :func:`spec` and :func:`list_envs`; call it
    yourself before ``gymnasium.make`` of a third-party id. A plugin that fails to load
    is reported with a warning naming it, and the others still load.

    Returns:
        Names of the entry points loaded by this call.
    """
    global _plugins_loaded
    if _plugins_loaded and not force:
        return []
    _plugins_loaded = True
    loaded = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
            if callable(obj) and not inspect.isclass(obj):
                obj()
        except DuplicateEnvError:
            if force:
                continue  # already loaded on an earlier call
            raise
        except Exception as exc:  # a broken plugin must not break turnrl
            warnings.warn(
                str(PluginError(f"turnrl env plugin {ep.name!r} ({ep.value}) failed to load: "
                                f"{type(exc).__name__}: {exc}")),
                stacklevel=2,
            )
            continue
        loaded.append(ep.name)
    return loaded
