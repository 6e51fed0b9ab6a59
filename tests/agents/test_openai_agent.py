"""The OpenAI-compatible agent against a scripted local HTTP server: the request it sends,
retries with backoff on 429/5xx (Retry-After honoured), hard errors, concurrency, and
`turnrl eval` end to end. (The same agent against a real `vllm serve` is the vLLM issue's
test.)"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from turnrl.agents import make_agent
from turnrl.agents.openai import OpenAIAgent, OpenAIError
from turnrl.errors import ConfigError


class Server:
    """Answers /v1/chat/completions; ``script`` is a list of status codes to answer with
    before succeeding (per request, in arrival order)."""

    def __init__(self, script=(), reply=lambda body: "guess 3", delay_s=0.0):
        self.script = list(script)
        self.reply, self.delay_s = reply, delay_s
        self.requests: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append({"path": self.path, "body": body,
                                           "auth": self.headers.get("Authorization")})
                    status = outer.script.pop(0) if outer.script else 200
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                time.sleep(outer.delay_s)
                with outer.lock:
                    outer.in_flight -= 1
                if status != 200:
                    self.send_response(status)
                    if status == 429:
                        self.send_header("Retry-After", "0.05")
                    self.end_headers()
                    self.wfile.write(b'{"error": "scripted"}')
                    return
                out = {"choices": [{"message": {"role": "assistant", "content": outer.reply(body)}}],
                       "usage": {"prompt_tokens": 7, "completion_tokens": 2}}
                data = json.dumps(out).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def server():
    servers = []

    def start(**kwargs):
        servers.append(Server(**kwargs))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def test_request_shape_and_reply(server, monkeypatch):
    srv = server()
    monkeypatch.setenv("TEST_KEY", "sk-test")
    agent = OpenAIAgent("tiny", base_url=srv.url, api_key_env="TEST_KEY", max_tokens=12, seed=3)
    conv = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "go"},
            {"role": "assistant", "content": "x = 1"}, {"role": "tool", "content": "ok"}]
    (action,) = agent.act([conv])
    assert action.text == "guess 3" and action.token_ids is None
    req = srv.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
    assert req["body"]["model"] == "tiny" and req["body"]["max_tokens"] == 12 and req["body"]["seed"] == 3
    assert [m["role"] for m in req["body"]["messages"]] == ["system", "user", "assistant", "user"]
    assert agent.stats["prompt_tokens"] == 7 and agent.stats["completion_tokens"] == 2


def test_retries_429_and_5xx_then_succeeds(server):
    srv = server(script=[429, 503, 500])
    agent = OpenAIAgent("tiny", base_url=srv.url, max_retries=3, backoff_s=0.01)
    assert agent.act([[{"role": "user", "content": "hi"}]])[0].text == "guess 3"
    assert agent.stats["retries"] == 3 and len(srv.requests) == 4


def test_gives_up_after_retries_and_raises_hard_errors(server):
    srv = server(script=[503] * 10)
    agent = OpenAIAgent("tiny", base_url=srv.url, max_retries=2, backoff_s=0.01)
    with pytest.raises(OpenAIError, match="still failing after 2 retries; last: 503"):
        agent.act([[{"role": "user", "content": "hi"}]])
    srv2 = server(script=[400])
    with pytest.raises(OpenAIError, match="answered 400"):
        OpenAIAgent("tiny", base_url=srv2.url).act([[{"role": "user", "content": "hi"}]])
    assert len(srv2.requests) == 1  # a 400 is not retried
    dead = OpenAIAgent("tiny", base_url="http://127.0.0.1:9/v1", max_retries=1, backoff_s=0.01,
                       timeout_s=2)
    with pytest.raises(OpenAIError, match="URLError"):
        dead.act([[{"role": "user", "content": "hi"}]])


def test_concurrency_is_capped(server):
    srv = server(delay_s=0.2)
    agent = OpenAIAgent("tiny", base_url=srv.url, concurrency=3)
    start = time.time()
    out = agent.act([[{"role": "user", "content": str(i)}] for i in range(6)])
    assert len(out) == 6 and srv.max_in_flight == 3
    assert time.time() - start < 6 * 0.2  # concurrent, not one by one


def test_bad_settings_are_named():
    with pytest.raises(ConfigError, match="concurrency must be >= 1.*base_url must start"):
        OpenAIAgent("m", base_url="localhost:8000", concurrency=0)
    with pytest.raises(ConfigError, match="model is empty"):
        make_agent("openai:")


@pytest.mark.parametrize("mode", ["lockstep", "async"])
def test_eval_cli_end_to_end(server, tmp_path, mode):
    from toy_envs import GuessNumber

    import turnrl
    from turnrl.cli import main

    turnrl.register("turnrl/GuessOpenAI-v0", GuessNumber, override=True, max_turns=3)
    srv = server(reply=lambda body: "guess 3")
    out = tmp_path / "r.json"
    assert main(["eval", "turnrl/GuessOpenAI-v0", "--agent", "openai:tiny", "--base-url", srv.url,
                 "--episodes", "10", "--json", str(out), "--quiet", "--mode", mode]) == 0
    row = json.loads(out.read_text())[0]
    # GuessNumber's target is 1 + seed % 10: "guess 3" wins on seed 2 only
    assert row["episodes"] == 10 and row["success_rate"] == pytest.approx(0.1)
    assert main(["eval", "turnrl/GuessOpenAI-v0", "--agent", "random", "--base-url", srv.url]) == 2
