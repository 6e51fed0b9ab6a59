"""`turnrl view`: the report of a real tiny run, checked in a real headless browser, and
the mask audit on a corrupted sample."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from toy_envs import GuessNumber  # noqa: E402

import turnrl  # noqa: E402
from turnrl.trainer import Trainer, load_config  # noqa: E402
from turnrl.trajectory import build_samples  # noqa: E402
from turnrl.viewer import load_run, mask_audit, token_sources, write_report  # noqa: E402

turnrl.register("turnrl/GuessView-v0", GuessNumber, override=True, max_turns=3)
ARTIFACTS = Path(os.environ.get("TURNRL_TEST_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_guess_model):
    run = tmp_path_factory.mktemp("view") / "run"
    cfg = load_config(None, [
        f"model.name_or_path={tiny_guess_model}", "env.id=turnrl/GuessView-v0",
        "rollout.episodes_per_update=6", "rollout.max_new_tokens=5", "rollout.num_envs=6",
        "total_updates=2", f"run_dir={run}", "eval.episodes=3", "progress=false",
        "optim.minibatch_size=3", "optim.micro_batch_size=3", "log_episodes=3", "log_tokens=2",
    ])
    Trainer(cfg).fit()
    return run


def test_trainer_logs_token_records_that_pass_the_audit(run_dir):
    rows = [json.loads(x) for x in (run_dir / "tokens.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 2  # 2 episodes (full context: one sample each) x 2 updates
    for r in rows:
        n = len(r["input_ids"])
        for key in ("tokens", "sources", "loss_mask", "turn_index", "rollout_logprobs",
                    "train_logprobs", "advantages"):
            assert len(r[key]) == n, key
        assert len(r["values"]) == len(r["value_positions"])
        assert mask_audit(r["sources"], r["loss_mask"])["ok"]
        # advantages only on tokens in the loss
        assert all(a == 0 for a, m in zip(r["advantages"], r["loss_mask"], strict=True) if not m)
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(m["perf/log_tokens_s"] >= 0 for m in metrics if m["phase"] == "train")


def test_mask_audit_flags_a_corrupted_sample(run_dir, tmp_path):
    rows = [json.loads(x) for x in (run_dir / "tokens.jsonl").read_text().splitlines()]
    bad = dict(rows[0])
    mask = list(bad["loss_mask"])
    obs = bad["sources"].index("observation")
    act = bad["sources"].index("action")
    mask[obs], mask[act] = 1, 0  # an observation token trained on, a sampled token left out
    bad["loss_mask"] = mask
    audit = mask_audit(bad["sources"], mask)
    assert not audit["ok"]
    assert "1 observation token(s) are in the loss" in audit["warnings"][0]
    assert "1 sampled action token(s) are masked" in audit["warnings"][1]
    # the report of a run holding that sample marks it
    corrupt = tmp_path / "run"
    shutil.copytree(run_dir, corrupt)
    (corrupt / "tokens.jsonl").write_text(json.dumps(bad) + "\n")
    data = load_run(corrupt)
    assert [r["audit"]["ok"] for r in data["tokens"]] == [False]


def test_token_sources_agree_with_the_sample_builder_in_window_mode(run_dir):
    rows = [json.loads(x) for x in (run_dir / "samples.jsonl").read_text().splitlines()]
    import dataclasses

    from turnrl.trajectory import Trajectory

    names = {f.name for f in dataclasses.fields(Trajectory)}
    row = next(r for r in rows if r["phase"] == "train")
    traj = Trajectory.from_dict({k: v for k, v in row.items() if k in names})
    for context in ("full", "window(1)"):
        for s in build_samples([traj], context):
            sources = token_sources(traj, s, context)
            assert mask_audit(sources, s.loss_mask)["ok"], context
            if context != "full" and s.value_turns[0] > 0:
                assert "context-action" in sources


def test_report_in_a_headless_browser(run_dir):
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on PATH (make system-deps installs it)")
    report = write_report(run_dir)
    episodes = len((run_dir / "samples.jsonl").read_text().splitlines())
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(report.resolve().as_uri())
        assert page.locator("#episode-list tr").count() == episodes
        assert page.locator("#episode-count").inner_text() == f"({episodes} of {episodes})"
        # filters work: only the train episodes of update 1
        page.select_option("#f-phase", "train")
        assert page.locator("#episode-list tr").count() == sum(
            1 for x in (run_dir / "samples.jsonl").read_text().splitlines()
            if json.loads(x)["phase"] == "train")
        page.select_option("#f-phase", "")
        # a masked observation token has the masked style; a policy token shows its advantage
        masked = page.locator(".tok.masked[data-source='observation']").first
        assert masked.evaluate("e => getComputedStyle(e).color") == "rgb(154, 160, 166)"
        policy = page.locator(".tok.policy").first
        assert policy.evaluate("e => getComputedStyle(e).backgroundColor") != "rgba(0, 0, 0, 0)"
        policy.hover()
        tip = page.locator("#tooltip")
        assert tip.is_visible() and "advantage" in tip.inner_text() and "in loss yes" in tip.inner_text()
        assert page.locator(".audit[data-audit='ok']").count() >= 1
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        page.locator("#token-section").screenshot(path=str(ARTIFACTS / "token_view.png"))
        browser.close()
    assert errors == []


def test_view_cli_filters_by_step_and_names_bad_input(run_dir, tmp_path, capsys):
    from turnrl.cli import main

    out = tmp_path / "one.html"
    assert main(["view", str(run_dir), "--step", "1", "--out", str(out)]) == 0
    data = load_run(run_dir, step=1)
    assert data["episodes"] and all(e["step"] == 1 for e in data["episodes"])
    assert all(r["step"] == 1 for r in data["tokens"]) and out.stat().st_size > 0
    assert main(["view", str(run_dir), "--step", "99"]) == 2
    assert "update 99 has no logged episodes" in capsys.readouterr().err
    assert main(["view", str(tmp_path / "nope")]) == 2
