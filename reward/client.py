"""A Python client of the reward-model scoring API (reward/server.py, docs/SERVER.md): batches items over
requests, retries what the server asks to retry, and offers a callable in TRL's reward-function form."""
from __future__ import annotations

import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping, Sequence

API_KEY_ENV = "CHATALIGN_API_KEY"  # as in reward.server (kept here so the client needs no web stack)
RETRY_STATUSES = frozenset({429, 502, 503, 504})  # overloaded, shutting down, timed out: worth another try

Conversation = str | list[dict[str, str]]


class RewardServerError(RuntimeError):
    """The server refused a request (4xx: fix the input) or kept failing after the retries."""

    def __init__(self, message: str, status: int | None = None, detail: str | None = None):
        super().__init__(message)
        self.status, self.detail = status, detail


def item(conversation: Conversation, response: str, is_safety: bool = False) -> dict[str, Any]:
    """One item of POST /v1/score: a prompt (one user turn) or a conversation ending with a user turn."""
    key = "prompt" if isinstance(conversation, str) else "messages"
    return {key: conversation, "response": response, "is_safety": bool(is_safety)}


class RewardClient:
    """Scores through a running `chatalign serve`.

    Items go out ``batch_size`` per request, up to ``concurrency`` requests at a time (the server merges
    concurrent requests into model batches). Connection errors and 429/502/503/504 are retried up to
    ``retries`` times, waiting the server's Retry-After when it gives one, else an exponential backoff;
    a 4xx is the caller's to fix and raises at once. Scoring is idempotent, so retrying is safe.
    """

    def __init__(self, url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout: float = 150.0,
                 retries: int = 4, backoff_s: float = 0.5, batch_size: int = 64, concurrency: int = 4):
        import httpx

        if batch_size < 1 or concurrency < 1 or retries < 0:
            raise ValueError(f"batch_size and concurrency must be >= 1 and retries >= 0, got {batch_size}, "
                             f"{concurrency}, {retries}")
        api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url, self.retries, self.backoff_s = url.rstrip("/"), retries, backoff_s
        self.batch_size, self.concurrency = batch_size, concurrency
        self._http = httpx.Client(base_url=self.url, timeout=timeout, headers=headers,
                                  limits=httpx.Limits(max_connections=concurrency))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "RewardClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def ready(self) -> bool:
        import httpx

        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def wait_ready(self, timeout_s: float = 300.0, poll_s: float = 0.2) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if time.monotonic() > deadline:
                raise RewardServerError(f"{self.url} was not ready within {timeout_s} s (GET /readyz)")
            time.sleep(poll_s)

    def score(self, items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The server's row (helpful, safety, safety_probability, reward, reward_whitened, unsafe, decided_by,
        tokens, truncated) of each item, in order. Items as made by ``item()``."""
        chunks = [list(items[i:i + self.batch_size]) for i in range(0, len(items), self.batch_size)]
        if len(chunks) <= 1:
            results = [self._post("/v1/score", {"items": chunk})["items"] for chunk in chunks]
        else:
            with ThreadPoolExecutor(min(self.concurrency, len(chunks))) as pool:
                results = list(pool.map(lambda chunk: self._post("/v1/score", {"items": chunk})["items"], chunks))
        return [row for chunk in results for row in chunk]

    def rewards(self, conversations: Sequence[Conversation], responses: Sequence[str],
                is_safety: Sequence[bool] | None = None, key: str = "reward") -> list[float]:
        """One value (``key`` of the row: reward, reward_whitened, helpful or safety) per response."""
        if len(conversations) != len(responses):
            raise ValueError(f"{len(conversations)} conversations but {len(responses)} responses: give one each")
        flags = is_safety if is_safety is not None else [False] * len(responses)
        if len(flags) != len(responses):
            raise ValueError(f"{len(flags)} safety flags for {len(responses)} responses: give one each")
        rows = self.score([item(c, r, s) for c, r, s in zip(conversations, responses, flags)])
        return [row[key] for row in rows]

    def trl_reward_function(self, safety_column: str = "is_safety", key: str = "reward") -> "TRLRewardFunction":
        """A reward function for TRL trainers (e.g. ``GRPOTrainer(reward_funcs=[client.trl_reward_function()])``)."""
        return TRLRewardFunction(self, safety_column, key)

    def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        import httpx

        problem, wait = "", 0.0
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(wait)
            try:
                response = self._http.post(path, json=payload)
            except httpx.TransportError as err:  # refused, reset, timed out: the server may be restarting
                problem = f"{type(err).__name__}: {err}"
                wait = self.backoff_s * 2 ** attempt * (1 + random.random())
                continue
            if response.status_code == 200:
                return response.json()
            detail = _detail(response)
            if response.status_code not in RETRY_STATUSES:
                raise RewardServerError(f"POST {self.url}{path}: {response.status_code}: {detail}",
                                        response.status_code, detail)
            problem = f"{response.status_code}: {detail}"
            retry_after = response.headers.get("retry-after", "")
            wait = (min(float(retry_after), 60.0) if retry_after.isdigit()
                    else self.backoff_s * 2 ** attempt * (1 + random.random()))
        raise RewardServerError(f"POST {self.url}{path} failed {self.retries + 1} times; last: {problem}")


def _detail(response: Any) -> str:
    try:
        return str(response.json().get("detail", response.text))
    except ValueError:
        return response.text[:500]


class TRLRewardFunction:
    """TRL's reward-function form: called as ``f(prompts=..., completions=..., **dataset_columns)`` and
    returning one float per completion. Prompts and completions may be plain text (the prompt is then one
    user turn) or conversational (message lists; the completion's assistant message is the response).
    The dataset column ``safety_column``, when present, tags safety prompts."""

    def __init__(self, client: RewardClient, safety_column: str = "is_safety", key: str = "reward"):
        self.client, self.safety_column, self.key = client, safety_column, key
        self.__name__ = "chatalign_reward"  # TRL logs rewards under the function's name

    def __call__(self, prompts: Sequence[Conversation], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        responses = [_completion_text(c) for c in completions]
        flags = kwargs.get(self.safety_column)
        flags = [bool(f) for f in flags] if flags is not None else None
        conversations = [p if isinstance(p, str) else list(p) for p in prompts]
        return self.client.rewards(conversations, responses, flags, key=self.key)


def _completion_text(completion: Any) -> str:
    if isinstance(completion, str):
        return completion
    answers = [m["content"] for m in completion if m.get("role") == "assistant"]
    if not answers:
        raise ValueError(f"a conversational completion without an assistant message: {completion!r}")
    return answers[-1]
