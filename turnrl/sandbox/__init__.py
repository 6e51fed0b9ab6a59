"""Running untrusted code: :func:`make_sandbox`, :class:`Sandbox`, :class:`Limits`,
:class:`ExecResult`, stateful :class:`Session` objects and a :class:`SessionPool`.

Backends, strongest first (the order ``make_sandbox("auto")`` tries):

``bubblewrap``  Linux namespaces via ``bwrap``: no network, read-only system, private
                tmpfs scratch, unprivileged uid, rlimits, a seccomp filter; statuses and
                session results that the code cannot forge. Fast (tens of ms per run).
                The backend for RL: rewards computed from it cannot be faked.
``docker``      a container per run: cgroup limits, ``--network none``, read-only root.
                Needs a Docker engine; slower to start. Its statuses and session results
                can be forged by the code (see ``turnrl.sandbox.docker``).
``process``     rlimits only, no isolation; refused unless ``unsafe=True``.

Each sandbox names what it enforces in ``sandbox.protections`` (see :data:`PROTECTIONS`);
``make_sandbox`` logs it. docs/sandbox.md has the design and the threat model.

Example:
    >>> from turnrl.sandbox import make_sandbox
    >>> sandbox = make_sandbox("auto")          # logs which backend it picked
    >>> result = sandbox.run("print(sum(range(10)))", timeout_s=5)
    >>> result.status, result.stdout
    ('ok', '45\\n')
"""

from __future__ import annotations

import logging
from typing import Any

from turnrl.errors import ConfigError, did_you_mean
from turnrl.sandbox.base import (
    LANGUAGES,
    PROTECTIONS,
    STATUSES,
    ExecResult,
    Limits,
    Sandbox,
    SandboxUnavailable,
    Status,
)
from turnrl.sandbox.pool import PoolExhausted, SessionPool
from turnrl.sandbox.session import Session

__all__ = [
    "BACKENDS", "ExecResult", "LANGUAGES", "Limits", "PROTECTIONS", "PoolExhausted", "STATUSES",
    "Sandbox",
    "SandboxUnavailable", "Session", "SessionPool", "Status", "available_backends",
    "make_sandbox",
]

logger = logging.getLogger(__name__)

#: Backend name -> "module:Class"; imported only when asked for.
BACKENDS: dict[str, str] = {
    "bubblewrap": "turnrl.sandbox.bubblewrap:BubblewrapSandbox",
    "docker": "turnrl.sandbox.docker:DockerSandbox",
    "process": "turnrl.sandbox.process:ProcessSandbox",
}
#: Order tried by ``make_sandbox("auto")``: isolation strength, then start-up cost.
AUTO_ORDER = ("bubblewrap", "docker", "process")


def _backend_class(name: str) -> type[Sandbox]:
    import importlib

    module, _, attr = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def make_sandbox(backend: str | Sandbox = "auto", *, limits: Limits | None = None,
                 unsafe: bool = False, **kwargs: Any) -> Sandbox:
    """Create a sandbox by backend name.

    Args:
        backend: ``"auto"``, ``"bubblewrap"``, ``"docker"`` or ``"process"`` (or a
            :class:`Sandbox`, returned as is).
        limits: resource limits (default :class:`Limits`).
        unsafe: allow the ``process`` backend (no isolation). ``"auto"`` falls back to it
            only when this is true and nothing stronger is available.
        **kwargs: backend options (e.g. ``image=`` for docker, ``python=`` for
            bubblewrap).

    Returns:
        The sandbox; ``"auto"`` logs (INFO) which backend it chose and why others were
        skipped.

    Raises:
        ConfigError: unknown backend name (the valid ones are listed).
        SandboxUnavailable: the backend cannot run here; for ``"auto"``, none can, with
            each backend's reason.
    """
    if isinstance(backend, Sandbox):
        return backend
    if backend == "auto":
        if kwargs:
            raise ConfigError(
                f"backend options {sorted(kwargs)} need an explicit backend, not 'auto'"
            )
        reasons = []
        for name in AUTO_ORDER:
            if name == "process" and not unsafe:
                reasons.append("process: refused without unsafe=True (no isolation)")
                continue
            try:
                sandbox = _make(name, limits, unsafe)
            except SandboxUnavailable as exc:
                reasons.append(f"{name}: {exc}")
                continue
            logger.info("turnrl sandbox: using the %s backend, enforcing %s%s", name,
                        ", ".join(sorted(sandbox.protections)) or "nothing",
                        f" (skipped: {'; '.join(reasons)})" if reasons else "")
            return sandbox
        raise SandboxUnavailable(
            "no sandbox backend can run here:\n  " + "\n  ".join(reasons)
            + "\nInstall bubblewrap (`apt-get install bubblewrap`), start Docker, or pass "
            "unsafe=True to allow the unisolated process backend."
        )
    if backend not in BACKENDS:
        raise ConfigError(
            f"unknown sandbox backend {backend!r}.{did_you_mean(str(backend), BACKENDS)} "
            f"Choose one of: auto, {', '.join(BACKENDS)}"
        )
    return _make(backend, limits, unsafe, **kwargs)


def _make(name: str, limits: Limits | None, unsafe: bool, **kwargs: Any) -> Sandbox:
    cls = _backend_class(name)
    if name == "process":
        return cls(limits, unsafe=unsafe, **kwargs)
    return cls(limits, **kwargs)


def available_backends() -> dict[str, tuple[bool, str]]:
    """``{backend: (available, reason)}`` for every backend (for ``turnrl`` diagnostics)."""
    return {name: _backend_class(name).availability() for name in BACKENDS}
