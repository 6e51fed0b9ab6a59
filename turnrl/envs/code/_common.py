"""Pieces shared by the code environments."""

from __future__ import annotations

from turnrl.sandbox import ExecResult, Limits, Sandbox, make_sandbox

#: Default limits for agent code: generous enough for brute-force searches.
DEFAULT_LIMITS = Limits(wall_time_s=10.0, cpu_time_s=10.0, memory_mb=1024, max_processes=32,
                        output_bytes=100_000)


def build_sandbox(sandbox: str | Sandbox, limits: Limits | None) -> Sandbox:
    """A sandbox from a backend name or instance (see :func:`turnrl.sandbox.make_sandbox`)."""
    if isinstance(sandbox, Sandbox):
        return sandbox
    return make_sandbox(sandbox, limits=limits or DEFAULT_LIMITS)


def truncate(text: str, max_chars: int) -> str:
    """Keep the head of ``text``, with a marker saying how much was cut."""
    if len(text) <= max_chars:
        return text
    return text[:max_chars] + f"\n... [output truncated: {len(text) - max_chars} more characters]"


def format_execution(result: ExecResult, *, max_chars: int, header: str) -> str:
    """The observation for one code execution: output, errors, and why it stopped."""
    parts = []
    if result.stdout:
        parts.append(result.stdout.rstrip("\n"))
    if result.stderr:
        parts.append(result.stderr.rstrip("\n"))
    body = "\n".join(parts) if parts else "(no output)"
    if result.output_truncated:
        body += "\n... [output truncated by the sandbox]"
    notes = {
        "timeout": f"[Execution stopped: {result.message or 'time limit exceeded'}]",
        "memory": "[Execution stopped: memory limit exceeded]",
        "infra_error": f"[The code could not be run (sandbox error): {result.message}]",
    }
    if result.status in notes:
        body += "\n" + notes[result.status]
    return f"{header}\n{truncate(body, max_chars)}"
