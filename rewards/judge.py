"""LLM-judge correctness: an OpenAI-compatible chat endpoint grades each answer against the reference.

The judge is any server speaking `POST {base_url}/chat/completions` (vLLM, SGLang, llama.cpp, TGI, OpenAI). Only
the standard library is used. Requests run in a thread pool (`max_workers` at a time), each bounded by a total
deadline (connecting, sending and reading the whole reply: a server that trickles bytes cannot hold it longer) and
retried with exponential backoff on connection errors, timeouts, 429 and 5xx. An endpoint that stays unreachable
raises `JudgeError` naming the URL and what to check; training should stop rather than learn from missing scores.
A reply the parser cannot read scores `None` (the judge's fault, not the policy's).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import socket
import string
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .base import as_references, get_column, prompt_text
from .correctness import AnswerReward
from .registry import register

DEFAULT_TEMPLATE = (
    "You are grading an answer to a question about an image.\n"
    "Question: {question}\n"
    "Reference answer: {answer}\n"
    "Model answer: {prediction}\n"
    "Does the model answer mean the same as the reference answer? Reply with only a number from 0 (wrong) "
    "to 1 (fully correct)."
)
_TEMPLATE_FIELDS = frozenset({"question", "answer", "prediction"})
_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)
_VERDICT = re.compile(r"^\W*(yes|no|correct|incorrect|right|wrong|true|false)\b", re.IGNORECASE)
_POSITIVE = frozenset({"yes", "correct", "right", "true"})
_FRACTION = re.compile(r"(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)")
_NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?|\.\d+)")


class JudgeError(RuntimeError):
    """The judge endpoint failed in a way retries did not fix."""


class _Retryable(Exception):
    """A reply worth retrying: HTTP 429 or 5xx."""


def post_with_deadline(url: str, body: bytes, headers: dict, timeout: float) -> tuple[int, bytes]:
    """POST `body` to `url`; returns (status, reply body). The whole exchange ends within `timeout` seconds: a
    watchdog shuts the socket down at the deadline, which ends any read in progress (TimeoutError). Honours the
    usual *_proxy environment variables."""
    parts = urllib.parse.urlsplit(url)
    https = parts.scheme == "https"
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    host, port = parts.hostname, parts.port
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        proxy_parts = urllib.parse.urlsplit(proxy)
        host, port = proxy_parts.hostname, proxy_parts.port
        target = target if https else url  # https tunnels through the proxy; plain http names the full URL
    connection = (http.client.HTTPSConnection if https else http.client.HTTPConnection)(host, port, timeout=timeout)
    if https and (host, port) != (parts.hostname, parts.port):
        connection.set_tunnel(parts.hostname, parts.port)
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        if connection.sock is not None:
            with contextlib.suppress(OSError):
                connection.sock.shutdown(socket.SHUT_RDWR)

    watchdog = threading.Timer(timeout, expire)
    watchdog.daemon = True
    watchdog.start()
    try:
        connection.request("POST", target, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException) as error:
        if expired.is_set():
            raise TimeoutError(f"timed out: no complete reply within {timeout}s") from error
        raise
    finally:
        watchdog.cancel()
        connection.close()


def parse_score(reply: str, scale: float = 1.0) -> float | None:
    """A score in [0, 1] from a judge's reply: a leading yes/no-like verdict, a fraction (`4/5`) or the first
    number divided by `scale`; `None` if there is none or it falls outside [0, 1]."""
    text = _THINK_BLOCK.sub(" ", reply).strip()
    verdict = _VERDICT.match(text)
    if verdict:
        return 1.0 if verdict.group(1).lower() in _POSITIVE else 0.0
    fraction = _FRACTION.search(text)
    if fraction and float(fraction.group(2)) > 0:
        value = float(fraction.group(1)) / float(fraction.group(2))
    else:
        number = _NUMBER.search(text)
        if number is None:
            return None
        value = float(number.group(1)) / scale
    return value if 0.0 <= value <= 1.0 else None


def check_template(template: str) -> None:
    """Refuse a prompt template with unknown `{fields}` or without `{prediction}`."""
    fields = {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}
    unknown = sorted(fields - _TEMPLATE_FIELDS)
    if unknown or "prediction" not in fields:
        raise ValueError(
            f"llm_judge: prompt_template may use only {sorted(_TEMPLATE_FIELDS)} and must use {{prediction}}; "
            f"it uses {sorted(fields)}. Write literal braces as {{{{ and }}}}."
        )


@register("llm_judge")
class LLMJudge(AnswerReward):
    """Correctness graded by an LLM: the judge's score in [0, 1] for each answer.

    Args:
        base_url: the server's OpenAI-compatible API root, e.g. `http://127.0.0.1:8000/v1`.
        model: the model name the server serves.
        prompt_template: the judge prompt, with `{question}`, `{answer}` (references joined by " | ") and
            `{prediction}` (the answer extracted from the completion).
        question_column: dataset column with the question; `None` takes the text of the prompt's last user turn.
        api_key_env: name of the environment variable holding the API key (sent as a Bearer token); `None`: no key.
        timeout: seconds one request may take in all (connect, send, the whole reply), per attempt.
        max_retries: retries after the first attempt, waiting `backoff * 2**attempt` seconds before each.
        max_workers: requests in flight at once.
        max_tokens, temperature: sampling of the judge's reply.
        score_scale: the judge's scale, when it answers e.g. 0-10 (then 10).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        prompt_template: str = DEFAULT_TEMPLATE,
        answer_column: str = "answer",
        question_column: str | None = None,
        answer_tag: str | None = "answer",
        require_tag: bool = False,
        api_key_env: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 3,
        backoff: float = 1.0,
        max_workers: int = 8,
        max_tokens: int = 16,
        temperature: float = 0.0,
        score_scale: float = 1.0,
    ):
        super().__init__(answer_column, answer_tag, require_tag)
        check_template(prompt_template)
        if api_key_env is not None and not os.environ.get(api_key_env):
            raise ValueError(f"llm_judge: api_key_env is '{api_key_env}', but that environment variable is not set.")
        if timeout <= 0 or max_retries < 0 or max_workers < 1 or score_scale <= 0:
            raise ValueError("llm_judge: need timeout > 0, max_retries >= 0, max_workers >= 1 and score_scale > 0.")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.prompt_template = prompt_template
        self.question_column = question_column
        self.api_key_env = api_key_env  # the name only: the key itself is read per request, never stored
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_workers = max_workers
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.score_scale = score_scale

    def _post(self, prompt: str) -> str:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }
        headers = {"Content-Type": "application/json"}
        if self.api_key_env is not None:
            headers["Authorization"] = f"Bearer {os.environ.get(self.api_key_env, '')}"
        status, data = post_with_deadline(self.url, json.dumps(body).encode(), headers, self.timeout)
        if status == 429 or status >= 500:
            raise _Retryable(f"HTTP {status}: {data[:300].decode(errors='replace')!r}")
        if status >= 400:
            raise self._fatal_http_error(status, data)
        payload = json.loads(data.decode(errors="replace"))
        try:
            return payload["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as error:
            raise JudgeError(
                f"llm_judge: {self.url} answered without choices[0].message.content: {payload!r:.300}"
            ) from error

    def _fatal_http_error(self, status: int, data: bytes) -> JudgeError:
        detail = data.decode(errors="replace")[:300]
        hint = "check base_url (it usually ends in /v1) and the model name"
        if status in (401, 403):
            hint = f"check the API key in ${self.api_key_env}" if self.api_key_env else "set api_key_env"
        return JudgeError(f"llm_judge: {self.url} returned HTTP {status} ({detail!r}); {hint}.")

    def ask(self, prompt: str) -> str:
        """The judge's reply to `prompt`, retrying transient failures; raises `JudgeError` when they persist."""
        last_error: Exception | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                return self._post(prompt)
            except (_Retryable, OSError, http.client.HTTPException, json.JSONDecodeError) as error:
                last_error = error  # OSError covers refused connections, resets and timeouts
        raise JudgeError(
            f"llm_judge: no usable reply from {self.url} after {self.max_retries + 1} attempts (timeout "
            f"{self.timeout}s each); last error: {last_error!r}. Check that the judge server is running and reachable "
            f"from this machine, that base_url is right, and that it serves model '{self.model}'."
        ) from last_error

    def score_batch(self, predictions: list[str | None], kwargs: dict[str, Any]) -> list[float | None]:
        size = len(predictions)
        cells = get_column(kwargs, self.answer_column, self.__name__, size)
        if self.question_column is not None:
            questions = [str(q) for q in get_column(kwargs, self.question_column, self.__name__, size)]
        else:
            questions = [prompt_text(p) for p in kwargs.get("prompts") or [""] * size]
        jobs = {}  # row -> prompt, for the rows the judge has to grade
        for i, (prediction, cell) in enumerate(zip(predictions, cells, strict=True)):
            references = as_references(cell)
            if references is not None and prediction is not None:
                jobs[i] = self.prompt_template.format(
                    question=questions[i], answer=" | ".join(references), prediction=prediction
                )
        with ThreadPoolExecutor(max_workers=min(self.max_workers, max(len(jobs), 1))) as pool:
            replies = dict(zip(jobs, pool.map(self.ask, jobs.values()), strict=True))
        scores: list[float | None] = []
        for i, cell in enumerate(cells):
            if as_references(cell) is None:
                scores.append(None)
            else:
                scores.append(parse_score(replies[i], self.score_scale) if i in replies else 0.0)
        unreadable = [float(scores[i] is None) for i in replies]
        self.log(kwargs.get("log_metric"), "unparsed", unreadable)
        return scores
