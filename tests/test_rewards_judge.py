"""The LLM judge against a tiny OpenAI-compatible server on 127.0.0.1: scores, retries, down and slow endpoints."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from glimpserl.rewards import build_reward
from glimpserl.rewards.judge import JudgeError, parse_score

# The fake judge's reply to each prediction (the test template sends only the prediction).
REPLIES = {"cat": "Yes.", "dog": "0.3", "fox": "Score: 4/5", "emu": "banana"}


class FakeJudge(BaseHTTPRequestHandler):
    """Replies like /v1/chat/completions; the server's `behaviour` makes it fail, stall or refuse."""

    def do_POST(self):  # noqa: N802 - the name http.server dispatches to
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
            server.requests.append((self.path, dict(self.headers), body))
            failures_left = server.failures_left
            server.failures_left -= 1
        if server.behaviour == "slow":
            time.sleep(1.0)
        if server.behaviour.startswith("trickle"):
            return self._trickle(server.behaviour == "trickle_headers")
        if server.behaviour == "unauthorized":
            return self._send(401, {"error": "bad key"})
        if failures_left > 0:
            return self._send(503, {"error": "overloaded"})
        content = REPLIES[body["messages"][0]["content"]]
        self._send(200, {"choices": [{"message": {"role": "assistant", "content": content}}]})

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left: expected in the slow test
            pass

    def _trickle(self, headers_too: bool) -> None:
        """One byte every 0.1 s for 4 s: each read is quick, the reply never ends in time."""
        reply = json.dumps({"choices": [{"message": {"content": "Yes." + " " * 40}}]}).encode()
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(reply)}\r\n\r\n".encode()
        if not headers_too:
            self.wfile.write(head)
            head = b""
        try:
            for i, byte in enumerate(head + reply):
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                if i < 40:
                    time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up, as it should
            pass

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture
def judge_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeJudge)
    server.behaviour, server.failures_left, server.requests, server.lock = "ok", 0, [], threading.Lock()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def judge(base_url: str, **params):
    defaults = {"model": "tiny-judge", "prompt_template": "{prediction}", "backoff": 0.01, "max_workers": 2}
    return build_reward("llm_judge", base_url=base_url, **{**defaults, **params})


def url_of(server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/v1"


def completions(*answers: str) -> list[list[dict]]:
    return [[{"role": "assistant", "content": f"<answer>{a}</answer>"}] for a in answers]


@pytest.mark.parametrize(
    "reply, scale, expected",
    [("0.7", 1.0, 0.7), ("Yes.", 1.0, 1.0), ("Incorrect", 1.0, 0.0), ("8", 10.0, 0.8), ("3/4", 1.0, 0.75)]
    + [("<think>maybe 5</think> 1", 1.0, 1.0), ("banana", 1.0, None), ("7", 1.0, None)],
)
def test_parse_score(reply, scale, expected):
    assert parse_score(reply, scale) == (pytest.approx(expected) if expected is not None else None)


def test_judge_scores_each_answer(judge_server, monkeypatch):
    monkeypatch.setenv("TEST_JUDGE_KEY", "sekrit")
    reward = judge(url_of(judge_server), api_key_env="TEST_JUDGE_KEY")
    metrics = {}
    scores = reward(
        prompts=[[{"role": "user", "content": "What animal?"}]] * 5,
        completions=completions("cat", "dog", "fox", "emu", "cat"),
        answer=["cat", "cat", "fox", "emu", None],
        log_metric=lambda k, v: metrics.__setitem__(k, v),
    )
    assert scores == [1.0, 0.3, 0.8, None, None]  # "banana" is unreadable; no reference -> not asked
    assert metrics == {"rewards/llm_judge/unparsed": 0.25}
    assert len(judge_server.requests) == 4
    path, headers, body = judge_server.requests[0]
    assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer sekrit"
    assert body["model"] == "tiny-judge" and body["temperature"] == 0.0


def test_judge_question_and_answer_in_template(judge_server):
    reward = judge(url_of(judge_server), prompt_template="{prediction}", question_column="question")
    with pytest.raises(ValueError, match="column 'question'"):
        reward(completions=completions("cat"), answer=["cat"])
    with pytest.raises(ValueError, match="must use {prediction}"):
        judge(url_of(judge_server), prompt_template="{question} {answer}")
    with pytest.raises(ValueError, match="only"):
        judge(url_of(judge_server), prompt_template="{prediction} {image}")


def test_judge_retries_transient_errors(judge_server):
    judge_server.failures_left = 2
    reward = judge(url_of(judge_server), max_retries=2, max_workers=1)
    assert reward(completions=completions("cat"), answer=["cat"]) == [1.0]
    assert len(judge_server.requests) == 3


def test_judge_unauthorized_is_not_retried(judge_server, monkeypatch):
    judge_server.behaviour = "unauthorized"
    monkeypatch.setenv("TEST_JUDGE_KEY", "wrong")
    reward = judge(url_of(judge_server), api_key_env="TEST_JUDGE_KEY")
    with pytest.raises(JudgeError, match=r"HTTP 401.*\$TEST_JUDGE_KEY"):
        reward(completions=completions("cat"), answer=["cat"])
    assert len(judge_server.requests) == 1


def test_judge_down_endpoint_names_the_url():
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    reward = judge(f"http://127.0.0.1:{port}/v1", max_retries=1)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    with pytest.raises(JudgeError, match=f"{url} after 2 attempts.*server is running"):
        reward(completions=completions("cat", "dog"), answer=["cat", "cat"])


def test_judge_slow_endpoint_times_out(judge_server):
    judge_server.behaviour = "slow"
    reward = judge(url_of(judge_server), timeout=0.2, max_retries=1)
    start = time.monotonic()
    with pytest.raises(JudgeError, match=r"after 2 attempts \(timeout 0.2s each\).*timed out"):
        reward(completions=completions("cat"), answer=["cat"])
    assert time.monotonic() - start < 1.5


def test_judge_missing_api_key_fails_at_build_time(monkeypatch):
    monkeypatch.delenv("TEST_JUDGE_KEY", raising=False)
    with pytest.raises(ValueError, match="TEST_JUDGE_KEY"):
        judge("http://127.0.0.1:1/v1", api_key_env="TEST_JUDGE_KEY")


@pytest.mark.parametrize("behaviour", ["trickle_body", "trickle_headers"])
def test_judge_timeout_bounds_the_whole_request(judge_server, behaviour):
    """A server that sends one byte every 0.1 s answers every socket read in time; the request must still end at
    its deadline (0.3 s), not when the server is done (4 s per attempt)."""
    judge_server.behaviour = behaviour
    reward = judge(url_of(judge_server), timeout=0.3, max_retries=1)
    start = time.monotonic()
    with pytest.raises(JudgeError, match=r"after 2 attempts \(timeout 0.3s each\).*no complete reply within 0.3s"):
        reward(completions=completions("cat"), answer=["cat"])
    assert time.monotonic() - start < 1.5
