"""The CLI, run as a user runs it: a subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def turnrl(*args, stdin=None, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "turnrl.cli", *args], input=stdin, capture_output=True,
        text=True, timeout=timeout, env={**os.environ},
    )


def test_envs_lists_ids_and_suites():
    out = turnrl("envs")
    assert out.returncode == 0, out.stderr
    assert "turnrl/TextWorld-v0" in out.stdout and "textworld" in out.stdout
    data = json.loads(turnrl("envs", "--json").stdout)
    assert any(e["id"] == "turnrl/TextWorld-v0" and e["description"] for e in data["envs"])


def test_eval_expert_json(tmp_path):
    path = tmp_path / "res.json"
    out = turnrl("eval", "turnrl/TextWorld-v0", "--agent", "expert", "--episodes", "3",
                 "--env-arg", "challenge=tw-coin_collector", "--json", str(path))
    assert out.returncode == 0, out.stderr
    assert "success" in out.stdout and "95% CI" in out.stdout
    data = json.loads(path.read_text())
    assert isinstance(data, list) and len(data) == 1
    row = data[0]
    assert set(row) == {"env", "episodes", "success_rate", "success_ci95", "mean_return",
                        "mean_turns", "invalid_rate", "failed", "restarts", "seeds",
                        "samples_per_seed", "pass_at_k", "episode_results"}
    assert row["samples_per_seed"] == 1 and row["pass_at_k"] == [] and row["seeds"] == 3
    assert [(e["seed"], e["sample"], e["won"]) for e in row["episode_results"]] == [
        (0, 0, True), (1, 0, True), (2, 0, True)]
    assert row["env"] == "turnrl/TextWorld-v0" and row["episodes"] == 3
    assert row["success_rate"] == 1.0 and row["invalid_rate"] == 0.0
    low, high = row["success_ci95"]
    assert 0.0 < low < 1.0 and high == pytest.approx(1.0)
    assert row["mean_turns"] >= 1 and row["failed"] == 0 and row["restarts"] == 0


def test_eval_random_suite_subset(tmp_path):
    path = tmp_path / "res.json"
    out = turnrl("eval", "textworld", "--agent", "random", "--episodes", "2", "--json", str(path))
    assert out.returncode == 0, out.stderr
    rows = json.loads(path.read_text())
    assert [r["env"] for r in rows] == [
        "tw-simple", "tw-coin_collector", "tw-treasure_hunter", "tw-cooking"]
    assert all(r["episodes"] == 2 for r in rows)


def test_unknown_target_is_a_clean_error():
    out = turnrl("eval", "turnrl/TextWorlds-v0", "--agent", "expert")
    assert out.returncode == 2
    assert "turnrl/TextWorld-v0" in out.stderr and "Traceback" not in out.stderr


def test_unknown_agent_is_a_clean_error():
    out = turnrl("eval", "turnrl/TextWorld-v0", "--agent", "exprt", "--episodes", "1")
    assert out.returncode == 2 and "expert" in out.stderr and "Traceback" not in out.stderr


def test_play_session_through_stdin():
    script = "/hint\n/actions\ngo north\n/quit\n"
    out = turnrl("play", "turnrl/TextWorld-v0", "--seed", "1",
                 "--env-arg", "challenge=tw-coin_collector", stdin=script)
    assert out.returncode == 0, out.stderr
    assert "-= " in out.stdout  # a room header from the game
    assert "inventory" in out.stdout  # /actions listed admissible commands


def _bad_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: {tiny: {hidden_size: 64}\nenv: [\n")
    return str(path)


def _tiny_32(tmp_path):
    path = tmp_path / "tiny32.yaml"
    path.write_text("model: {tiny: {hidden_size: 32}}\nenv: {id: turnrl/TextWorld-v0}\n"
                    f"run_dir: {tmp_path / 'run'}\n")
    return str(path)


def _far_results(tmp_path):
    """Results of seeds that tests/data/compare_a.json does not hold."""
    path = tmp_path / "far.json"
    path.write_text(json.dumps([{"env": "coin", "episode_results": [
        {"seed": 1000, "sample": 0, "won": True}]}]))
    return str(path)


COMPARE_A = str(Path(__file__).parent / "data" / "compare_a.json")


@pytest.mark.parametrize("case,args,named", [
    ("pass@k above n", lambda t: ["eval", "textworld", "--agent", "random", "--samples-per-seed",
                                  "3", "--pass-at", "5"],
     "pass@5 needs at least 5 samples per seed, got 3"),
    ("pass@0", lambda t: ["eval", "textworld", "--pass-at", "0"], "k >= 1, got k=0"),
    ("no samples", lambda t: ["eval", "textworld", "--samples-per-seed", "0"],
     "samples per seed must be >= 1, got 0"),
    ("unknown compare side", lambda t: ["compare", "rnadom", "expert", "--target", "textworld"],
     "'rnadom' is neither a results file, a run directory nor a registered agent. Did you mean 'random'"),
    ("compare without target", lambda t: ["compare", "random", "expert"], "needs an env or suite"),
    ("no common seeds", lambda t: ["compare", COMPARE_A, _far_results(t)], "share no (env, seed)"),
    ("unwritable json", lambda t: ["eval", "textworld", "--agent", "random", "--episodes", "1",
                                   "--json", str(t / "missing" / "r.json")], "does not exist"),
    ("json is a folder", lambda t: ["eval", "textworld", "--agent", "random", "--json", str(t)],
     "is a directory"),
    ("bad env keyword", lambda t: ["eval", "turnrl/TextWorld-v0", "--agent", "random",
                                   "--env-arg", "bogus_kw=1"], "does not accept 'bogus_kw'"),
    ("missing config", lambda t: ["train", str(t / "nope.yaml")], "does not exist"),
    ("missing run dir", lambda t: ["train", "--resume", str(t / "nope")], "no such run directory"),
    ("yaml syntax", lambda t: ["train", _bad_yaml(t)], "is not valid YAML (line"),
    ("tiny too small", lambda t: ["train", _tiny_32(t)], "model.tiny.hidden_size must be an integer >= 64"),
])
def test_user_errors_exit_2_with_one_line(tmp_path, case, args, named):
    import time

    start = time.time()
    out = turnrl(*args(tmp_path), timeout=120)
    assert out.returncode == 2, (case, out.stderr[-2000:])
    lines = [line for line in out.stderr.splitlines() if line.strip() and "%|" not in line]
    assert len(lines) == 1 and lines[0].startswith("turnrl: error:"), (case, out.stderr[-2000:])
    assert named in lines[0] and "Traceback" not in out.stderr, (case, lines[0])
    assert time.time() - start < 30, f"{case}: the error came late"
