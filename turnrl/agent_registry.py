"""Agents by name: what ``turnrl eval --agent NAME`` and :func:`make_agent` build.

An agent spec is a registered name, optionally followed by one argument after a colon:
``"random"``, ``"dispatch_greedy"``, ``"hf:runs/quickstart/final_model"``,
``"openai:my-model"``. Entry points are imported lazily (``"package.module:Class"``), so
listing agents never imports a model backend, and this module imports nothing from
:mod:`turnrl.agents`: env packages register their own baselines here (next to their env
registrations) without importing agent code.

Third-party packages add agents through the ``turnrl.agents`` entry-point group. In their
``pyproject.toml``::

    [project.entry-points."turnrl.agents"]
    my_agents = "my_package.agents"            # a module whose import registers its agents
    # or: my_agents = "my_package.agents:register_all"   (a function called with no args)

They are loaded once, the first time turnrl lists, looks up or makes an agent.

Example:
    >>> from turnrl.agent_registry import make_agent, register_agent
    >>> register_agent("always_look", "my_package.agents:LookAgent",
    ...                description="replies 'look' to everything")
    >>> agent = make_agent("always_look")
    >>> policy = make_agent("hf:Qwen/Qwen2.5-0.5B-Instruct", max_new_tokens=128)
"""

from __future__ import annotations

import importlib
import inspect
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any

from turnrl.errors import ConfigError, DuplicateEnvError, PluginError, did_you_mean

if TYPE_CHECKING:
    from turnrl.agents.base import Agent

__all__ = [
    "AgentSpec", "register_agent", "make_agent", "agent_spec", "list_agents",
    "load_agent_plugins", "ENTRY_POINT_GROUP",
]

ENTRY_POINT_GROUP = "turnrl.agents"
_NAME_RE = re.compile(r"^[A-Za-z][\w.-]*$")


@dataclass(frozen=True)
class AgentSpec:
    """A registered agent.

    Attributes:
        name: what goes before the colon of a spec (``"random"``, ``"hf"``).
        entry_point: ``"module:attr"`` string (imported on first use) or a callable
            returning the agent.
        description: one line for ``turnrl eval --help``.
        kwargs: keyword arguments always passed to the entry point (e.g.
            ``{"policy": "greedy"}`` for one baseline of a family).
        argument: for parameterised agents, ``(keyword, metavar)``: the text after the
            colon is passed as ``keyword`` (``("model", "MODEL")`` makes ``hf:gpt2``
            call the entry point with ``model="gpt2"``); None: the agent takes no argument.
        seeded: whether the agent draws random numbers and takes ``seed=`` (``turnrl eval
            --seed`` then seeds it); None: decided from the entry point's signature on
            first use (see :meth:`takes_seed`).
    """

    name: str
    entry_point: str | Callable[..., Agent]
    description: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    argument: tuple[str, str] | None = None
    seeded: bool | None = None

    @property
    def usage(self) -> str:
        """The spec as a user writes it: ``"random"`` or ``"hf:MODEL"``."""
        return f"{self.name}:{self.argument[1]}" if self.argument else self.name

    def load(self) -> Callable[..., Agent]:
        """Import and return the entry point.

        Raises:
            ImportError: the module or its attribute does not exist.
        """
        if callable(self.entry_point):
            return self.entry_point
        module_name, _, attr = self.entry_point.partition(":")
        module = importlib.import_module(module_name)
        try:
            return getattr(module, attr)
        except AttributeError as exc:
            raise ImportError(
                f"entry point {self.entry_point!r} of agent {self.name!r}: module "
                f"{module_name!r} has no attribute {attr!r}"
            ) from exc

    def takes_seed(self) -> bool:
        """Whether to pass ``seed=``: :attr:`seeded` when set, else whether the entry
        point accepts a ``seed`` keyword (this imports it)."""
        if self.seeded is not None:
            return self.seeded
        params = _parameters(self.load())
        return params is not None and ("seed" in params or _takes_var_keyword(params))


_REGISTRY: dict[str, AgentSpec] = {}
_plugins_loaded = False


def _parameters(factory: Callable[..., Any]) -> Mapping[str, inspect.Parameter] | None:
    try:
        return inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins and some C callables have no signature
        return None


def _takes_var_keyword(params: Mapping[str, inspect.Parameter]) -> bool:
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def register_agent(
    name: str,
    entry_point: str | Callable[..., Agent],
    *,
    description: str,
    kwargs: Mapping[str, Any] | None = None,
    argument: tuple[str, str] | None = None,
    seeded: bool | None = None,
    override: bool = False,
) -> AgentSpec:
    """Register an agent under ``name`` for :func:`make_agent` and ``turnrl eval --agent``.

    Args:
        name: letters, digits, ``_``, ``.`` and ``-``, starting with a letter (no colon:
            that separates the argument).
        entry_point: ``"module:attr"`` (imported lazily) or a class / factory.
        description: one line for ``turnrl eval --help``.
        kwargs: keyword arguments always passed to the entry point.
        argument: ``(keyword, metavar)`` for an agent parameterised by the text after the
            colon, e.g. ``("model", "MODEL")`` for ``hf:MODEL``.
        seeded: whether the agent takes ``seed=`` and uses it; None: read the entry
            point's signature when first needed.
        override: replace an existing registration instead of raising.

    Returns:
        The :class:`AgentSpec`.

    Raises:
        ConfigError: a malformed name, entry point or argument.
        DuplicateEnvError: the name is taken and ``override`` is false.
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(
            f"agent name must start with a letter and hold only letters, digits, '_', '.' "
            f"and '-' (the argument goes after a colon: register 'hf', use 'hf:MODEL'), "
            f"got {name!r}"
        )
    if name in _REGISTRY and not override:
        raise DuplicateEnvError(
            f"agent {name!r} is already registered (entry point "
            f"{_REGISTRY[name].entry_point!r}); pick another name, or pass override=True "
            f"to replace it"
        )
    if not (isinstance(entry_point, str) and ":" in entry_point) and not callable(entry_point):
        raise ConfigError(
            f"agent {name!r}: entry_point must be 'module:attr' or a callable, got {entry_point!r}"
        )
    if argument is not None and not (
        isinstance(argument, tuple) and len(argument) == 2
        and all(isinstance(a, str) and a for a in argument)
    ):
        raise ConfigError(
            f"agent {name!r}: argument must be a (keyword, metavar) pair of non-empty "
            f"strings such as ('model', 'MODEL'), got {argument!r}"
        )
    fixed = dict(kwargs or {})
    if argument is not None and argument[0] in fixed:
        raise ConfigError(
            f"agent {name!r}: keyword {argument[0]!r} is both fixed in kwargs and taken "
            f"from the spec's argument; drop one"
        )
    agent = AgentSpec(name=name, entry_point=entry_point, description=description,
                      kwargs=fixed, argument=argument, seeded=seeded)
    _REGISTRY[name] = agent
    return agent


def agent_spec(spec: str) -> AgentSpec:
    """The :class:`AgentSpec` of a name or a full spec (``"hf"`` and ``"hf:gpt2"`` both
    give the ``hf`` agent).

    Raises:
        ConfigError: no agent of that name; the message suggests close names and lists
            the registered agents.
    """
    load_agent_plugins()
    name = spec.partition(":")[0] if isinstance(spec, str) else spec
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        pass
    raise ConfigError(
        f"unknown agent {spec!r}.{did_you_mean(str(name), _REGISTRY)} Available: "
        f"{', '.join(s.usage for s in list_agents())} (`turnrl eval --help` says what "
        f"each does)"
    )


def make_agent(spec: str, **kwargs: Any) -> Agent:
    """Build an agent from its spec.

    Args:
        spec: a registered name (``"random"``, ``"expert"``, ``"dispatch_greedy"``, ...),
            or ``name:ARGUMENT`` for a parameterised agent: ``"hf:ORG/NAME"`` or
            ``"hf:runs/quickstart/final_model"`` (a Hugging Face policy decoding
            greedily), ``"openai:MODEL"`` (an OpenAI-compatible server).
        **kwargs: passed to the agent (e.g. ``seed=0``; ``max_new_tokens=128`` for ``hf``).

    Returns:
        The agent.

    Raises:
        ConfigError: an unknown name (close names are suggested), an argument missing or
            given to an agent that takes none, a keyword the spec already fixes, or a
            keyword the agent does not accept (the accepted ones are listed).

    Example:
        >>> make_agent("random", seed=0)
        >>> make_agent("hf:runs/quickstart/final_model", max_new_tokens=32)
    """
    agent = agent_spec(spec)
    _, colon, arg = spec.partition(":")
    if agent.argument is None:
        if colon:
            raise ConfigError(f"agent {agent.name!r} takes no argument, got {spec!r}; "
                              f"write {agent.usage!r}")
        from_spec: dict[str, Any] = {}
    else:
        keyword, _ = agent.argument
        if not arg:
            raise ConfigError(f"agent {spec!r}: {keyword} is empty; write {agent.usage} -- "
                              f"{agent.description}")
        from_spec = {keyword: arg}
    fixed = {**agent.kwargs, **from_spec}
    clash = sorted(set(fixed) & set(kwargs))
    if clash:
        raise ConfigError(
            f"agent {spec!r} sets {', '.join(f'{k}={fixed[k]!r}' for k in clash)} itself; "
            f"do not pass {', '.join(repr(k) for k in clash)}"
        )
    factory = agent.load()
    merged = {**fixed, **kwargs}
    _check_kwargs(spec, factory, merged)
    return factory(**merged)


def _check_kwargs(spec: str, factory: Callable[..., Any], kwargs: Mapping[str, Any]) -> None:
    params = _parameters(factory)
    if params is None or _takes_var_keyword(params):
        return
    accepted = [
        name for name, p in params.items()
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        hints = "".join(did_you_mean(k, accepted) for k in unknown)
        raise ConfigError(
            f"agent {spec!r} does not accept {', '.join(repr(k) for k in unknown)}.{hints} "
            f"Accepted keywords: {', '.join(accepted) or '(none)'}"
        )


def list_agents() -> list[AgentSpec]:
    """All registered agents, sorted by name."""
    load_agent_plugins()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def load_agent_plugins(*, force: bool = False) -> list[str]:
    """Load third-party agents from the ``turnrl.agents`` entry-point group.

    Called by :func:`make_agent`, :func:`agent_spec` and :func:`list_agents`. A plugin
    that fails to load is reported with a warning naming it, and the others still load.

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
                str(PluginError(f"turnrl agent plugin {ep.name!r} ({ep.value}) failed to "
                                f"load: {type(exc).__name__}: {exc}")),
                stacklevel=2,
            )
            continue
        loaded.append(ep.name)
    return loaded


# Built-in agents. Env packages register their own baselines in turnrl/envs/__init__.py.
register_agent("random", "turnrl.agents.baselines:RandomAgent", seeded=True,
               description="uniform over the env's admissible commands")
register_agent("expert", "turnrl.agents.baselines:ExpertAgent", seeded=False,
               description="the env's oracle, info['expert_action']")
register_agent("scripted_code", "turnrl.agents.scripted_code:ScriptedCodeAgent", seeded=False,
               description="code envs: a model-free baseline that writes and runs a solver")
register_agent("hf", "turnrl.agents.hf:HFPolicy", argument=("model", "MODEL"), seeded=True,
               kwargs={"greedy": True}, description="a Hugging Face id or a saved model "
               "directory such as a run's final_model, decoding greedily")
register_agent("openai", "turnrl.agents.openai:OpenAIAgent", argument=("model", "MODEL"),
               seeded=True, description="a model served by an OpenAI-compatible server "
               "at --base-url")
