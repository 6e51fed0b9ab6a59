"""Build the static HTML report of a run directory (``turnrl view RUN_DIR``)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from turnrl.errors import ConfigError
from turnrl.viewer.audit import mask_audit

__all__ = ["load_run", "render_report", "write_report", "serve"]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_run(run_dir: str | Path, step: int | None = None) -> dict[str, Any]:
    """Everything the report shows: metrics, logged episodes and token records (with their
    mask audit), optionally only those of update ``step``."""
    run = Path(run_dir)
    if not (run / "metrics.jsonl").exists():
        raise ConfigError(f"{run} is not a turnrl run directory (no metrics.jsonl)")
    metrics = _read_jsonl(run / "metrics.jsonl")
    config = {}
    if (run / "config.yaml").exists():
        import yaml

        config = yaml.safe_load((run / "config.yaml").read_text()) or {}
    episodes = []
    for row in _read_jsonl(run / "samples.jsonl"):
        if step is not None and row["step"] != step:
            continue
        summary = row.get("summary", {})
        episodes.append({
            "id": len(episodes), "step": row["step"], "phase": row["phase"],
            "episode": row.get("episode", -1), "env": row.get("env_id", ""), "seed": row.get("seed"),
            "won": bool(summary.get("won")), "return": float(summary.get("return", 0.0)),
            "turns": int(summary.get("turns", 0)), "messages": row.get("messages", []),
        })
    tokens = []
    for row in _read_jsonl(run / "tokens.jsonl"):
        if step is not None and row["step"] != step:
            continue
        row["audit"] = mask_audit(row["sources"], row["loss_mask"])
        tokens.append(row)
    if step is not None and not episodes and not tokens:
        steps = sorted({r["step"] for r in _read_jsonl(run / "samples.jsonl")})
        raise ConfigError(f"update {step} has no logged episodes in {run}; logged updates: "
                          f"{steps[:10]}{' ...' if len(steps) > 10 else ''}")
    train = [r for r in metrics if r.get("phase") == "train"]
    return {
        "run_dir": str(run), "algorithm": config.get("algorithm", {}).get("name", "?"),
        "updates": len(train), "metrics": metrics, "episodes": episodes, "tokens": tokens,
    }


def render_report(data: dict[str, Any]) -> str:
    template = resources.files("turnrl.viewer").joinpath("template.html").read_text(encoding="utf-8")
    payload = json.dumps(data, ensure_ascii=False).replace("</", "<\\/")  # keep </script> out
    return template.replace("__RUN_DATA__", payload)


def write_report(run_dir: str | Path, out: str | Path | None = None, step: int | None = None) -> Path:
    """Write the report (default ``RUN_DIR/report.html``) and return its path."""
    data = load_run(run_dir, step)
    path = Path(out) if out is not None else Path(run_dir) / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(data), encoding="utf-8")
    return path


def serve(path: str | Path, port: int = 8765) -> None:  # pragma: no cover - interactive
    """Serve the report's folder on localhost until interrupted."""
    import functools
    import http.server

    path = Path(path).resolve()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(path.parent))
    with http.server.ThreadingHTTPServer(("127.0.0.1", port), handler) as httpd:
        print(f"serving http://127.0.0.1:{port}/{path.name}  (Ctrl-C to stop)")
        try:
            httpd.serve_forever()
        except KeyboardInterrupt:
            pass
