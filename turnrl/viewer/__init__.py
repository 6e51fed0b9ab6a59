"""See what the trainer saw: a static HTML report of a run (curves, episodes, and each
training sample token by token with its loss mask, advantages and values), and the mask
audit behind it."""

from turnrl.viewer.audit import mask_audit, token_sources
from turnrl.viewer.report import load_run, render_report, write_report

__all__ = ["mask_audit", "token_sources", "load_run", "render_report", "write_report"]
