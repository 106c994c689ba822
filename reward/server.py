"""The reward-model scoring HTTP API (`chatalign serve`, docs/SERVER.md): both RMs behind one batched
endpoint for other trainers (OpenRLHF's remote RM, TRL reward functions), data filtering and remote
rejection sampling.

Rewards come from reward.combine.RewardFunction, the one implementation of the Llama 2 reward (both
RMs, the safety gate, the combination); this module adds the HTTP layer around it: validation and
limits, authentication, metrics, and dynamic batching of concurrent requests into model batches.

The web stack (fastapi, uvicorn, prometheus-client; the `serve` extra) and torch are imported where
they are used, so `chatalign --help` and the CLI's argument parser do not pay for them.
"""
import argparse
import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Optional, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictStr, model_validator

log = logging.getLogger("chatalign.server")

API_KEY_ENV = "CHATALIGN_API_KEY"
# Reachable without the API key: process and readiness probes carry no data.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
ENDPOINTS = ("/v1/score", "/get_reward", "/healthz", "/readyz", "/metrics", "/openapi.json")


class ServerConfigError(ValueError):
    """A server setting that cannot work (names the setting and the fix)."""


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------

@dataclass
class ServerSettings:
    """Every knob of the server; the CLI flags of `chatalign serve` map one to one onto these."""

    host: str = "127.0.0.1"  # any other address needs an API key
    port: int = 8000
    api_key: Optional[str] = field(default=None, repr=False)  # bearer token; from API_KEY_ENV or a file
    cors_origins: list[str] = field(default_factory=list)  # [] = CORS off: browsers on other origins get no access
    max_items_per_request: int = 256
    max_tokens_per_item: Optional[int] = None  # None = what the RMs were trained on (manifest max_length)
    truncate: bool = False  # False: an item over the token limit is refused (413); True: its oldest tokens go
    max_body_bytes: int = 8 * 1024 * 1024
    batch_tokens: int = 16384  # padded tokens (rows x longest row) of one model forward pass
    max_batch_items: int = 64  # rows of one model forward pass; 1 turns batching off
    max_wait_ms: float = 10.0  # how long the oldest queued item waits for others to share its batch
    max_queue_items: int = 4096  # items waiting for a model batch; beyond this requests get 503 + Retry-After
    request_timeout_s: float = 120.0  # body read, queueing and scoring of one request
    max_connections: int = 1024  # open connections before uvicorn answers 503 itself

    def check(self) -> None:
        positive = ("port", "max_items_per_request", "max_body_bytes", "batch_tokens", "max_batch_items",
                    "max_queue_items", "request_timeout_s", "max_connections")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ServerConfigError(f"server setting {name} must be > 0, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ServerConfigError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.max_tokens_per_item is not None and self.max_tokens_per_item < 1:
            raise ServerConfigError(f"max_tokens_per_item must be >= 1, got {self.max_tokens_per_item}")
        if self.max_items_per_request > self.max_queue_items:
            raise ServerConfigError(
                f"max_items_per_request ({self.max_items_per_request}) exceeds max_queue_items "
                f"({self.max_queue_items}): such a request could never be queued; raise the queue or lower the limit")
        if self.api_key is not None and not self.api_key.strip():
            raise ServerConfigError("the API key is empty: put a non-empty token in the key file or "
                                    f"${API_KEY_ENV}")
        if not is_loopback(self.host) and not self.api_key:
            raise ServerConfigError(
                f"binding to {self.host!r} exposes the server beyond this machine, which needs an API key: set "
                f"${API_KEY_ENV} or pass --api-key-file FILE (clients send 'Authorization: Bearer <key>'), "
                "or bind to 127.0.0.1")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # any other host name may resolve anywhere
        return False


# ---------------------------------------------------------------------------------------------
# The API's data: requests and responses
# ---------------------------------------------------------------------------------------------

def _unicode_text(value: str) -> str:
    # json.loads accepts lone UTF-16 surrogates ("\ud800"), which no tokenizer can encode
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"contains {value[err.start]!r} at character {err.start}, a lone UTF-16 surrogate "
                         "that is not valid Unicode text") from None
    return value


Text = Annotated[StrictStr, AfterValidator(_unicode_text)]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: Text


def check_conversation(messages: list[Message]) -> None:
    """An optional system message, then user and assistant turns alternating, ending with a user turn
    (the answer being scored is the assistant turn that follows)."""
    start = 1 if messages and messages[0].role == "system" else 0
    for i in range(start, len(messages)):
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        if messages[i].role != expected:
            raise ValueError(f"messages[{i}] has role {messages[i].role!r} where {expected!r} was expected: after an "
                             "optional first system message, user and assistant turns alternate, starting with user")
    if len(messages) == start or messages[-1].role != "user":
        raise ValueError("the conversation must end with a user turn (the scored response answers it)")


class ScoreItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    messages: Optional[list[Message]] = Field(
        None, description="The conversation so far: an optional system message, then alternating user and "
                          "assistant turns ending with a user turn. Give this or `prompt`.")
    prompt: Optional[Text] = Field(None, description="Shorthand for messages=[{role: user, content: prompt}].")
    response: Text = Field(description="The assistant's answer to score (not empty).")
    is_safety: StrictBool = Field(
        False, description="The prompt is a safety prompt: the safety RM decides the reward (Llama 2 §3.2.3).")

    @model_validator(mode="after")
    def _one_conversation(self) -> "ScoreItem":
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of 'messages' (a conversation) or 'prompt' (one user turn)")
        if self.messages is not None:
            check_conversation(self.messages)
        if not self.response.strip():
            raise ValueError("response is empty: the reward models score an answer; leave out items without one")
        return self

    def conversation(self) -> list[dict[str, str]]:
        if self.messages is None:
            return [{"role": "user", "content": self.prompt}]
        return [m.model_dump() for m in self.messages]


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[ScoreItem] = Field(min_length=1, description="Items to score; at most the server's "
                                                             "max_items_per_request (413 beyond it).")


class ScoredItem(BaseModel):
    helpful: float = Field(description="Raw score of the helpfulness RM (a logit; σ of it is R_h).")
    safety: float = Field(description="Raw score of the safety RM (a logit).")
    safety_probability: float = Field(description="σ(safety) = R_s, what the safety gate compares.")
    reward: float = Field(description="The Llama 2 reward LOGIT(R_c): the safety score when the prompt is a "
                                      "safety prompt or R_s < threshold, else the helpfulness score.")
    reward_whitened: Optional[float] = Field(
        None, description="(reward - mean) / std with the fixed statistics the server was started with; "
                          "null when it whitens nothing.")
    unsafe: bool = Field(description="R_s < threshold: the safety gate found the response unsafe.")
    decided_by: Literal["helpful", "safety"] = Field(description="Which RM's score the reward is.")
    tokens: int = Field(description="Tokens the longer of the two RMs' encodings scored.")
    truncated: bool = Field(description="The oldest tokens were dropped to fit max_tokens_per_item.")


class ScoreResponse(BaseModel):
    items: list[ScoredItem]
    threshold: float = Field(description="The safety gate's threshold on R_s.")
    models: dict[str, str] = Field(description="The helpful and safety RMs that scored (registry ids or paths).")


PromptTag = Union[StrictStr, StrictBool, None]


class RemoteRMRequest(BaseModel):
    """OpenRLHF's remote reward-model request (--remote_rm_url). Unknown keys are ignored."""

    model_config = ConfigDict(extra="ignore")
    query: list[Text] = Field(min_length=1, description="Prompt and response as one text, in the chat "
                                                        "template (what OpenRLHF sends).")
    prompts: Optional[list[Text]] = Field(None, description="The prompt part of each query (optional).")
    labels: Optional[list[PromptTag]] = Field(
        None, description="Per query: 'safety' (or true) marks a safety prompt; 'helpful', '', false or null "
                          "a helpfulness prompt.")

    @model_validator(mode="after")
    def _same_lengths(self) -> "RemoteRMRequest":
        for name in ("prompts", "labels"):
            values = getattr(self, name)
            if values is not None and len(values) != len(self.query):
                raise ValueError(f"{name} has {len(values)} entries but query has {len(self.query)}: "
                                 "give one per query")
        return self


class RemoteRMResponse(BaseModel):
    rewards: list[float] = Field(description="The reward of each query (whitened when the server whitens).")
    scores: list[float] = Field(description="The same values (OpenRLHF reads `scores` for filtering and logs).")
    extra_logs: dict[str, list[float]] = Field(description="Per query: helpful and safety raw scores, unsafe (0/1).")


class ErrorBody(BaseModel):
    detail: str = Field(description="What is wrong and what to do.")
    errors: Optional[list[dict[str, Any]]] = Field(None, description="Validation errors by field (422 only).")


class Health(BaseModel):
    status: str
    detail: Optional[str] = None


def _error_responses(*codes: int) -> dict[int, dict]:
    return {code: {"model": ErrorBody} for code in codes}


# ---------------------------------------------------------------------------------------------
# Models and encoding
# ---------------------------------------------------------------------------------------------

@dataclass
class RewardModels:
    """What the server scores with: both RMs (reward.scorer.RewardScorer), the gate's threshold, an
    optional fixed whitener (reward.combine.Whitener, mode "fixed"), and names for the responses."""

    helpful: Any
    safety: Any
    threshold: float = 0.15
    whitener: Any = None
    names: dict[str, str] = field(default_factory=dict)

    def trained_length(self) -> int:
        """The longest input both RMs were trained on (manifest max_length), else their position limit."""
        return min(s.max_length or s.model.config.max_position_embeddings for s in (self.helpful, self.safety))


def version_name(path: Path) -> str:
    manifest = path / "manifest.json"
    if manifest.exists():
        try:
            return str(json.loads(manifest.read_text()).get("id") or path)
        except (OSError, ValueError):
            pass
    return str(path)


def validation_whitening(helpful_dir: Path, safety_dir: Path) -> tuple[float, float]:
    """Fixed whitening statistics from the RMs' validation scores, as the reward stage wrote them in eval.json:
    the helpfulness RM's scores on its own test set and the safety RM's on its own (chosen and rejected
    answers), pooled. That is the mixture LOGIT(R_c) is made of: each prompt scored by its RM."""
    groups: list[tuple[int, float, float]] = []  # (count, mean, population std)
    for path, test_set in ((Path(helpful_dir), "helpful"), (Path(safety_dir), "safety")):
        report = path / "eval.json"
        try:
            metrics = json.loads(report.read_text())["test_sets"][test_set]
            n, scores = int(metrics["n"]), metrics["scores"]
            groups += [(n, float(scores["chosen_mean"]), float(scores["chosen_std"])),
                       (n, float(scores["rejected_mean"]), float(scores["rejected_std"]))]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ServerConfigError(
                f"whitening from validation scores needs {report} with test_sets.{test_set}.scores (written by the "
                f"reward stage); it could not be read ({type(err).__name__}: {err}). Give --whiten-mean and "
                "--whiten-std instead") from None
    total = sum(n for n, _, _ in groups)
    if total == 0:
        raise ServerConfigError(f"the test sets in {helpful_dir}/eval.json and {safety_dir}/eval.json are empty: no "
                                "validation statistics to whiten with; give --whiten-mean and --whiten-std")
    mean = sum(n * m for n, m, _ in groups) / total
    variance = sum(n * (s * s + (m - mean) ** 2) for n, m, s in groups) / total
    return mean, math.sqrt(variance)


def load_models(helpful_dir: Path, safety_dir: Path, threshold: float = 0.15, device: Optional[str] = None,
                batch_items: int = 64, whiten: Optional[tuple[float, float]] = None) -> RewardModels:
    """Both RMs from their directories (registry versions or any HF sequence-classification checkpoints)."""
    from reward.combine import Whitener
    from reward.scorer import load_scorer

    whitener = Whitener("fixed", mean=whiten[0], std=whiten[1]) if whiten is not None else None
    helpful = load_scorer(helpful_dir, batch_size=batch_items, device=device)
    safety = load_scorer(safety_dir, batch_size=batch_items, device=device)
    return RewardModels(helpful, safety, threshold, whitener,
                        {"helpful": version_name(Path(helpful_dir)), "safety": version_name(Path(safety_dir))})


class RejectedInput(Exception):
    """A request the API refuses (4xx) or gives up on (504): HTTP status and a message saying what to do."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass
class EncodedItem:
    """One (conversation, response) as token ids for each RM, ready to batch."""

    ids: tuple[list[int], list[int]]  # helpful RM's, safety RM's
    is_safety: bool
    truncated: bool

    @property
    def tokens(self) -> int:
        return max(len(self.ids[0]), len(self.ids[1]))


def end_of_turn(scorer: Any) -> str:
    """What the RM's chat template writes after an assistant message (ChatML: '<|im_end|>\\n')."""
    from data.templates import render

    sentinel = "\u2063chatalign-end-of-turn\u2063"
    text, _ = render(scorer.tokenizer, [{"role": "user", "content": "x"}, {"role": "assistant", "content": sentinel}],
                     scorer.template)
    return text.rsplit(sentinel, 1)[1] if sentinel in text else ""


def complete_turn(text: str, pad: Optional[str], eos: Optional[str], suffix: str) -> str:
    """A rendered prompt + response, as OpenRLHF decodes it (pad tokens around, the response ending with EOS
    or cut short), made to end like the RM's training data: pads stripped, the template's end of turn last."""
    while pad and text.startswith(pad):
        text = text[len(pad):]
    while pad and text.endswith(pad):
        text = text[:-len(pad)]
    if suffix and not text.endswith(suffix):
        if eos and text.endswith(eos):
            text = text[:-len(eos)]
        text += suffix
    return text


class Encoder:
    """Turns request items into token ids for both RMs and applies the token limit. One lock: HF fast
    tokenizers may not be entered from two threads at once."""

    def __init__(self, models: RewardModels, max_tokens: int, truncate: bool):
        self.models, self.max_tokens, self.truncate = models, max_tokens, truncate
        self.scorers = (models.helpful, models.safety)
        self.suffixes = tuple(end_of_turn(s) for s in self.scorers)
        self._lock = threading.Lock()

    def _limit(self, ids: list[int], where: str, rm: str) -> tuple[list[int], bool]:
        if len(ids) <= self.max_tokens:
            return ids, False
        if not self.truncate:
            raise RejectedInput(413, f"{where}: {len(ids)} tokens for the {rm} RM, more than max_tokens_per_item "
                                     f"{self.max_tokens}; shorten the conversation, or start the server with "
                                     "--truncate to drop the oldest tokens")
        return ids[-self.max_tokens:], True

    def _finish(self, per_rm: list[list[int]], where: str, is_safety: bool) -> EncodedItem:
        out, cut = [], False
        for ids, rm in zip(per_rm, ("helpful", "safety")):
            ids, truncated = self._limit(ids, where, rm)
            out.append(ids)
            cut |= truncated
        return EncodedItem((out[0], out[1]), is_safety, cut)

    def encode_items(self, items: list[ScoreItem]) -> list[EncodedItem]:
        from reward.model import encode_response

        encoded = []
        with self._lock:
            for i, item in enumerate(items):
                try:
                    per_rm = [encode_response(s.tokenizer, item.conversation(), item.response, s.template)[0]
                              for s in self.scorers]
                except ValueError as err:  # the chat template refused the conversation, pad token at the end
                    raise RejectedInput(422, f"items[{i}]: {err}") from None
                encoded.append(self._finish(per_rm, f"items[{i}]", item.is_safety))
        return encoded

    def encode_queries(self, request: RemoteRMRequest) -> list[EncodedItem]:
        flags = [prompt_tag(label, i) for i, label in enumerate(request.labels or [None] * len(request.query))]
        encoded = []
        with self._lock:
            for i, query in enumerate(request.query):
                if request.prompts is not None:
                    prompt = request.prompts[i]
                    if not query.startswith(prompt):
                        raise RejectedInput(422, f"query[{i}] does not start with prompts[{i}]: each query is the "
                                                 "prompt followed by the response")
                    response = query[len(prompt):]
                    for tok in (self.scorers[0].tokenizer.pad_token, self.scorers[0].tokenizer.eos_token):
                        response = response.replace(tok, "") if tok else response
                    if not response.strip():
                        raise RejectedInput(422, f"query[{i}] has an empty response after its prompt")
                elif not query.strip():
                    raise RejectedInput(422, f"query[{i}] is empty")
                per_rm = []
                for scorer, suffix in zip(self.scorers, self.suffixes):
                    tok = scorer.tokenizer
                    text = complete_turn(query, tok.pad_token, tok.eos_token, suffix)
                    ids = list(tok(text, add_special_tokens=False)["input_ids"])
                    if not ids or ids[-1] == tok.pad_token_id:
                        raise RejectedInput(422, f"query[{i}] encodes to no token to read a score at")
                    per_rm.append(ids)
                encoded.append(self._finish(per_rm, f"query[{i}]", flags[i]))
        return encoded


def prompt_tag(label: Any, i: int) -> bool:
    """OpenRLHF's per-prompt label read as the safety tag of the Llama 2 reward."""
    if label is None or isinstance(label, bool):
        return bool(label)
    tag = label.strip().lower()
    if tag in ("safety", "helpful", ""):
        return tag == "safety"
    raise RejectedInput(422, f"labels[{i}] is {label!r}: the labels tag each prompt, 'safety' for a safety prompt "
                             "and 'helpful' (or '', null) for the others")


# ---------------------------------------------------------------------------------------------
# Dynamic batching
# ---------------------------------------------------------------------------------------------

def length_batches(lengths: list[int], batch_tokens: int, max_items: int) -> list[list[int]]:
    """Indices grouped into model batches: sorted by length (less padding), each batch at most ``max_items``
    rows and ``batch_tokens`` padded tokens (rows x longest row); a row longer than the budget goes alone."""
    batches: list[list[int]] = []
    current: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        # sorted ascending, so lengths[i] is the longest row if i joins the batch
        if current and (len(current) + 1 > max_items or (len(current) + 1) * lengths[i] > batch_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


class BudgetScorer:
    """One RM as RewardFunction's Scorer over items the server has already encoded: its ``score`` gets the
    EncodedItems where a scorer would get conversations, and runs them as length-sorted model batches
    within the token budget (RewardScorer.score_ids does each batch in one forward pass)."""

    def __init__(self, scorer: Any, rm: int, batch_tokens: int, max_items: int, metrics: "Metrics"):
        self.scorer, self.rm, self.batch_tokens, self.max_items, self.metrics = (
            scorer, rm, batch_tokens, max_items, metrics)

    def score(self, items: list[EncodedItem], responses: Any = None) -> Any:
        import torch

        sequences = [item.ids[self.rm] for item in items]
        scores = torch.empty(len(sequences), dtype=torch.float32)
        for batch in length_batches([len(s) for s in sequences], self.batch_tokens, self.max_items):
            scores[batch] = self.scorer.score_ids([sequences[i] for i in batch])
            self.metrics.observe_batch(len(batch), len(batch) * max(len(sequences[i]) for i in batch),
                                       sum(len(sequences[i]) for i in batch))
        return scores


def score_rows(reward_fn: Any, whitener: Any, items: list[EncodedItem]) -> list[dict[str, Any]]:
    """The reward of each encoded item (runs in the model thread)."""
    import torch

    rewards = reward_fn(items, [None] * len(items), [item.is_safety for item in items])
    whitened = whitener.whiten(rewards.combined, update=False).tolist() if whitener is not None else None
    safety_probability = torch.sigmoid(rewards.safety.double()).tolist()
    rows = rewards.rows()
    for i, (row, item) in enumerate(zip(rows, items)):
        row.update(safety_probability=safety_probability[i], reward_whitened=whitened[i] if whitened else None,
                   decided_by="safety" if item.is_safety or row["unsafe"] else "helpful",
                   tokens=item.tokens, truncated=item.truncated)
    return rows


class ScoringFailed(RuntimeError):
    """The model failed on a window (e.g. out of memory): a server error, reported to its requests."""


class Overloaded(Exception):
    def __init__(self, detail: str, retry_after_s: int):
        super().__init__(detail)
        self.detail, self.retry_after_s = detail, retry_after_s


@dataclass
class _Queued:
    item: EncodedItem
    future: "asyncio.Future"
    request: int
    enqueued: float


class Batcher:
    """Merges the items of concurrent requests into scoring windows and runs them on one model thread.

    The worker waits until the oldest queued item has waited ``max_wait_ms`` or a full batch is queued,
    then takes items in arrival order up to ``batch_tokens`` tokens and ``max_batch_items`` rows; the
    window is scored by length-sorted model batches (BudgetScorer). The queue is bounded: a request that
    does not fit is refused whole (Overloaded) rather than queued without bound. Items whose request gave
    up (timeout) are dropped when reached.
    """

    def __init__(self, score: Callable[[list[EncodedItem]], list[dict]], settings: ServerSettings,
                 metrics: "Metrics"):
        self.score, self.settings, self.metrics = score, settings, metrics
        self.pending: deque[_Queued] = deque()
        self.queued_items = self.queued_tokens = 0
        self.seconds_per_item = 0.0  # running estimate, for Retry-After
        self._arrived: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task] = None
        self._stopping = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chatalign-rm")

    def start(self) -> None:
        self._arrived = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Score everything still queued, then stop the worker."""
        self._stopping = True
        if self._task is not None:
            self._arrived.set()
            await self._task
        self._executor.shutdown(wait=True)

    def retry_after_s(self) -> int:
        return max(1, min(60, math.ceil(self.queued_items * self.seconds_per_item)))

    def submit(self, items: list[EncodedItem], request: int) -> list["asyncio.Future"]:
        if self._stopping:
            raise Overloaded("the server is shutting down; retry against another instance or after it restarts", 5)
        if self.queued_items + len(items) > self.settings.max_queue_items:
            raise Overloaded(f"the scoring queue is full ({self.queued_items} items waiting, at most "
                             f"{self.settings.max_queue_items}); retry after the Retry-After seconds",
                             self.retry_after_s())
        loop, now = asyncio.get_running_loop(), time.monotonic()
        futures = []
        for item in items:
            future = loop.create_future()
            self.pending.append(_Queued(item, future, request, now))
            futures.append(future)
            self.queued_tokens += item.tokens
        self.queued_items += len(items)
        self.metrics.queue_items.set(self.queued_items)
        self._arrived.set()
        return futures

    def _full(self) -> bool:
        return self.queued_tokens >= self.settings.batch_tokens or self.queued_items >= self.settings.max_batch_items

    def _take(self) -> list[_Queued]:
        window: list[_Queued] = []
        tokens = 0
        while self.pending and len(window) < self.settings.max_batch_items:
            head = self.pending[0]
            if window and tokens + head.item.tokens > self.settings.batch_tokens:
                break
            self.pending.popleft()
            self.queued_items -= 1
            self.queued_tokens -= head.item.tokens
            if head.future.done():  # its request timed out or was cancelled
                continue
            window.append(head)
            tokens += head.item.tokens
        self.metrics.queue_items.set(self.queued_items)
        return window

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        max_wait = self.settings.max_wait_ms / 1000
        while True:
            if not self.pending:
                if self._stopping:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            deadline = self.pending[0].enqueued + max_wait
            while not self._stopping and not self._full():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            window = self._take()
            if not window:
                continue
            self.metrics.batch_requests.observe(len({q.request for q in window}))
            started = time.monotonic()
            try:
                rows = await loop.run_in_executor(self._executor, self.score, [q.item for q in window])
            except Exception as err:  # a model failure fails this window's requests, never the worker
                log.exception("scoring a window of %d items failed", len(window))
                for queued in window:
                    if not queued.future.done():
                        queued.future.set_exception(ScoringFailed(f"scoring failed: {type(err).__name__}: {err}"))
                continue
            elapsed = time.monotonic() - started
            self.seconds_per_item = 0.8 * self.seconds_per_item + 0.2 * elapsed / len(window)
            for queued, row in zip(window, rows):
                if not queued.future.done():
                    queued.future.set_result(row)


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------

class Metrics:
    """Prometheus metrics of one app (its own registry, so several apps can live in one process)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry = CollectorRegistry()
        self.requests = Counter("chatalign_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=registry)
        self.latency = Histogram("chatalign_request_seconds", "HTTP request latency", ["endpoint"], registry=registry,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120))
        self.batch_items = Histogram("chatalign_batch_items", "rows of each model forward pass (each RM)",
                                     registry=registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
        self.batch_tokens = Histogram("chatalign_batch_padded_tokens",
                                      "padded tokens (rows x longest) of each model forward pass", registry=registry,
                                      buckets=(64, 256, 1024, 4096, 16384, 65536, 262144))
        self.batch_requests = Histogram("chatalign_batch_requests",
                                        "distinct HTTP requests whose items share one scoring window",
                                        registry=registry, buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64))
        self.queue_items = Gauge("chatalign_queue_items", "items waiting for a model batch", registry=registry)
        self.tokens = Counter("chatalign_tokens_scored", "tokens through the RMs, padding excluded (both RMs)",
                              registry=registry)
        self.items = Counter("chatalign_items_scored", "items scored", registry=registry)

    def observe_batch(self, rows: int, padded_tokens: int, tokens: int) -> None:
        self.batch_items.observe(rows)
        self.batch_tokens.observe(padded_tokens)
        self.tokens.inc(tokens)

    def endpoint(self, path: str) -> str:
        return path if path in ENDPOINTS else "other"  # bounded label values whatever paths clients try


# ---------------------------------------------------------------------------------------------
# The guard in front of every route
# ---------------------------------------------------------------------------------------------

class Guard:
    """Plain ASGI middleware: API key, body size and read timeout, UTF-8 JSON bodies, request metrics.

    Plain ASGI rather than a route dependency so that an oversized body is refused while it streams in,
    before anything buffers it, and malformed bytes get a message of their own instead of the
    framework's generic one.
    """

    def __init__(self, app: Any, settings: ServerSettings, metrics: Metrics):
        self.app, self.settings, self.metrics = app, settings, metrics
        key = settings.api_key
        self.key_digest = hashlib.sha256(key.encode()).digest() if key else None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint, started = self.metrics.endpoint(scope["path"]), time.monotonic()
        status = [500]

        async def send_recorded(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self._guarded(scope, receive, send_recorded)
        finally:
            self.metrics.requests.labels(endpoint, str(status[0])).inc()
            self.metrics.latency.labels(endpoint).observe(time.monotonic() - started)

    def _authorized(self, scope: dict) -> bool:
        if self.key_digest is None or scope["path"] in OPEN_PATHS:
            return True
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        # digests of equal length, compared in constant time: neither the key nor its length leaks
        return scheme.lower() == b"bearer" and hmac.compare_digest(hashlib.sha256(token.strip()).digest(),
                                                                   self.key_digest)

    async def _guarded(self, scope: dict, receive: Callable, send: Callable) -> None:
        if not self._authorized(scope):
            return await _send_error(scope, send, 401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                     {"www-authenticate": "Bearer"})
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        content_type = headers.get(b"content-type", b"application/json").split(b";")[0].strip().lower()
        if content_type != b"application/json" and not content_type.endswith(b"+json"):
            return await _send_error(scope, send, 415, f"Content-Type {content_type.decode('latin-1')!r}: the "
                                                       "API takes JSON; send 'Content-Type: application/json'")
        limit = self.settings.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return await _send_error(scope, send, 413, f"the body is {declared.decode('latin-1')} bytes, more than "
                                                       f"max_body_bytes {limit}; send fewer items per request")
        try:
            body = await asyncio.wait_for(_read_body(receive, limit), self.settings.request_timeout_s)
        except _BodyTooLarge:
            return await _send_error(scope, send, 413, f"the body is more than max_body_bytes {limit}; send fewer "
                                                       "items per request")
        except _ClientGone:
            return
        except asyncio.TimeoutError:
            return await _send_error(scope, send, 408, "the body did not arrive within "
                                                       f"{self.settings.request_timeout_s} s")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as err:
            return await _send_error(scope, send, 400, f"the body is not UTF-8: byte {body[err.start]:#04x} at offset "
                                                       f"{err.start} ({err.reason}); send JSON encoded as UTF-8")
        try:
            json.loads(text)
        except json.JSONDecodeError as err:
            return await _send_error(scope, send, 400, f"the body is not JSON: {err.msg} at line {err.lineno}, "
                                                       f"column {err.colno}")
        except ValueError as err:  # e.g. an integer of more digits than Python converts
            return await _send_error(scope, send, 400, f"the body's JSON cannot be read: {err}")
        except RecursionError:
            return await _send_error(scope, send, 400, "the body's JSON is nested too deeply")
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class _BodyTooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


async def _read_body(receive: Callable, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send_error(scope: dict, send: Callable, status: int, detail: str,
                      headers: Optional[dict[str, str]] = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    raw.append((b"connection", b"close"))  # the body may be partly unread: this connection cannot be reused
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------

class ScoringService:
    """The app's state: the models (loaded in a background thread after the server starts listening, so
    /healthz answers at once and /readyz tells when scoring can start), the encoder and the batcher."""

    def __init__(self, load: Callable[[], RewardModels], settings: ServerSettings, metrics: Metrics):
        self.load, self.settings, self.metrics = load, settings, metrics
        self.models: Optional[RewardModels] = None
        self.encoder: Optional[Encoder] = None
        self.batcher: Optional[Batcher] = None
        self.load_error: Optional[str] = None
        self.draining = False
        self.on_fatal: Callable[[], None] = lambda: None
        self._requests = 0
        self._loading: Optional[asyncio.Task] = None

    async def start(self) -> None:
        self._loading = asyncio.get_running_loop().create_task(self._load())

    async def _load(self) -> None:
        from reward.combine import RewardFunction

        s = self.settings
        try:
            models = await asyncio.to_thread(self.load)
            max_tokens = s.max_tokens_per_item or models.trained_length()
            encoder = Encoder(models, max_tokens, s.truncate)
            reward_fn = RewardFunction(
                BudgetScorer(models.helpful, 0, s.batch_tokens, s.max_batch_items, self.metrics),
                BudgetScorer(models.safety, 1, s.batch_tokens, s.max_batch_items, self.metrics),
                threshold=models.threshold)
        except Exception as err:
            log.exception("loading the reward models failed")
            self.load_error = f"{type(err).__name__}: {err}"
            self.on_fatal()
            return
        batcher = Batcher(lambda items: score_rows(reward_fn, models.whitener, items), s, self.metrics)
        batcher.start()
        self.models, self.encoder, self.batcher = models, encoder, batcher
        log.info("ready: helpful RM %s, safety RM %s, at most %d tokens per item", models.names.get("helpful"),
                 models.names.get("safety"), max_tokens)

    async def stop(self) -> None:
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
        if self.batcher is not None:
            await self.batcher.stop()

    def readiness(self) -> tuple[int, Health]:
        if self.load_error:
            return 503, Health(status="failed", detail=f"loading the reward models failed: {self.load_error}")
        if self.batcher is None:
            return 503, Health(status="loading")
        if self.draining:
            return 503, Health(status="draining")
        return 200, Health(status="ready")

    async def score(self, encode: Callable[[], list[EncodedItem]], started: float) -> list[dict]:
        from starlette.concurrency import run_in_threadpool

        if self.batcher is None:
            raise Overloaded("the reward models are still loading (see /readyz)", 5)
        encoded = await run_in_threadpool(encode)
        self._requests += 1
        futures = self.batcher.submit(encoded, self._requests)
        remaining = self.settings.request_timeout_s - (time.monotonic() - started)
        try:
            rows = await asyncio.wait_for(asyncio.gather(*futures), max(remaining, 0.001))
        except asyncio.TimeoutError:
            raise RejectedInput(504, f"scoring took longer than the request timeout "
                                     f"({self.settings.request_timeout_s} s): send fewer items per request or "
                                     "retry when the server is less busy") from None
        finally:
            for future in futures:  # a request that gave up leaves nothing for the model to do
                future.cancel()
        self.metrics.items.inc(len(rows))
        return rows


def create_app(load: Callable[[], RewardModels], settings: ServerSettings) -> Any:
    """The ASGI app. ``load`` builds the RewardModels (called once, in a thread, after startup)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response

    settings.check()
    metrics = Metrics()
    service = ScoringService(load, settings, metrics)

    @asynccontextmanager
    async def lifespan(app):
        await service.start()
        yield
        await service.stop()

    app = FastAPI(title="chatalign reward-model scoring API", version="1",
                  description="The Llama 2 reward from a helpfulness and a safety reward model (docs/SERVER.md).",
                  docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.service = service

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": _location(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        summary = "; ".join(f"{e['loc'] or 'body'}: {e['msg']}" for e in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        return JSONResponse({"detail": f"invalid request: {summary}{more}", "errors": errors}, status_code=422)

    @app.exception_handler(RejectedInput)
    async def rejected(request, exc: RejectedInput) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(Overloaded)
    async def overloaded(request, exc: Overloaded) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=503, headers={"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(ScoringFailed)
    async def failed(request, exc: ScoringFailed) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=500)

    errors = _error_responses(400, 401, 408, 413, 415, 422, 503, 504)

    @app.post("/v1/score", response_model=ScoreResponse, responses=errors,
              summary="Score responses with both RMs and the Llama 2 reward")
    async def score(body: ScoreRequest) -> ScoreResponse:
        started = time.monotonic()
        if len(body.items) > settings.max_items_per_request:
            raise RejectedInput(413, f"{len(body.items)} items, more than max_items_per_request "
                                     f"{settings.max_items_per_request}; split them over several requests")
        rows = await service.score(lambda: service.encoder.encode_items(body.items), started)
        return ScoreResponse(items=[ScoredItem(**row) for row in rows], threshold=service.models.threshold,
                             models=service.models.names)

    @app.post("/get_reward", response_model=RemoteRMResponse, responses=errors,
              summary="OpenRLHF's remote reward-model contract (--remote_rm_url)")
    async def get_reward(body: RemoteRMRequest) -> RemoteRMResponse:
        started = time.monotonic()
        if len(body.query) > settings.max_items_per_request:
            raise RejectedInput(413, f"{len(body.query)} queries, more than max_items_per_request "
                                     f"{settings.max_items_per_request}; split them over several requests")
        rows = await service.score(lambda: service.encoder.encode_queries(body), started)
        key = "reward_whitened" if service.models.whitener is not None else "reward"
        rewards = [row[key] for row in rows]
        return RemoteRMResponse(rewards=rewards, scores=rewards, extra_logs={
            "helpful": [row["helpful"] for row in rows], "safety": [row["safety"] for row in rows],
            "unsafe": [float(row["unsafe"]) for row in rows]})

    @app.get("/healthz", response_model=Health, response_model_exclude_none=True, summary="The process is up")
    async def healthz() -> Health:
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, responses={503: {"model": Health}},
             summary="The models are loaded and the server takes requests")
    async def readyz() -> JSONResponse:
        status, health = service.readiness()
        return JSONResponse(health.model_dump(exclude_none=True), status_code=status)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response,
             responses={200: {"content": {"text/plain": {}}}})
    async def prometheus_metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(Guard, settings=settings, metrics=metrics)
    return app


def _location(loc: tuple) -> str:
    parts = [p for p in loc if p != "body"]
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# ---------------------------------------------------------------------------------------------
# Running it
# ---------------------------------------------------------------------------------------------

def build_server(load: Callable[[], RewardModels], settings: ServerSettings) -> Any:
    """A uvicorn server for the app. On SIGINT/SIGTERM it stops listening, lets the requests in flight
    finish (up to the request timeout), scores what is still queued, then exits."""
    import uvicorn

    app = create_app(load, settings)
    service: ScoringService = app.state.service

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            service.draining = True  # /readyz turns 503 so load balancers stop sending
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info", access_log=False,
                            server_header=False, proxy_headers=False, timeout_keep_alive=5,
                            limit_concurrency=settings.max_connections,
                            timeout_graceful_shutdown=math.ceil(settings.request_timeout_s) + 5)
    server = DrainingServer(config)
    service.on_fatal = lambda: setattr(server, "should_exit", True)
    return server


def serve(load: Callable[[], RewardModels], settings: ServerSettings) -> None:
    """Run the server until SIGINT/SIGTERM. Raises ServerConfigError if the models could not be loaded."""
    server = build_server(load, settings)
    server.run()
    service: ScoringService = server.config.app.state.service
    if service.load_error:
        raise ServerConfigError(f"the server stopped: loading the reward models failed: {service.load_error}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `chatalign serve` (the CLI adds --recipe and resolves --helpful/--safety refs)."""
    d = ServerSettings()
    parser.add_argument("--helpful", default="rm-helpful@latest", help="helpfulness RM: registry ref or directory")
    parser.add_argument("--safety", default="rm-safety@latest", help="safety RM: registry ref or directory")
    parser.add_argument("--threshold", type=float, default=None,
                        help="safety gate on R_s (default: the recipe's rejection_sampling.safety_threshold)")
    parser.add_argument("--whiten", choices=["none", "validation"], default="none",
                        help="also return reward_whitened, with fixed statistics: 'validation' = the RMs' scores on "
                             "their test sets (eval.json); or give --whiten-mean and --whiten-std")
    parser.add_argument("--whiten-mean", type=float, default=None)
    parser.add_argument("--whiten-std", type=float, default=None)
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--host", default=d.host,
                        help=f"address to bind (default {d.host}; any other needs an API key)")
    parser.add_argument("--port", type=int, default=d.port)
    parser.add_argument("--api-key-file", default=None,
                        help=f"file holding the bearer token clients must send (or set ${API_KEY_ENV})")
    parser.add_argument("--cors-origin", dest="cors_origins", action="append", default=[], metavar="ORIGIN",
                        help="allow browser requests from this origin (repeatable; default: CORS off)")
    parser.add_argument("--max-items-per-request", type=int, default=d.max_items_per_request)
    parser.add_argument("--max-tokens-per-item", type=int, default=None,
                        help="token limit of one item (default: the max_length the RMs were trained with)")
    parser.add_argument("--truncate", action="store_true",
                        help="drop the oldest tokens of items over the limit instead of refusing them (413)")
    parser.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes)
    parser.add_argument("--batch-tokens", type=int, default=d.batch_tokens,
                        help="padded tokens (rows x longest row) of one model forward pass")
    parser.add_argument("--max-batch-items", type=int, default=d.max_batch_items,
                        help="rows of one model forward pass (1 = no batching)")
    parser.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms,
                        help="how long a queued item waits for others to share its batch")
    parser.add_argument("--max-queue-items", type=int, default=d.max_queue_items,
                        help="queued items beyond which requests get 503 with Retry-After")
    parser.add_argument("--request-timeout-s", type=float, default=d.request_timeout_s)
    parser.add_argument("--max-connections", type=int, default=d.max_connections)


def read_api_key(key_file: Optional[str]) -> Optional[str]:
    if key_file:
        try:
            key = Path(key_file).read_text().strip()
        except OSError as err:
            raise ServerConfigError(f"--api-key-file {key_file}: cannot read it ({err.strerror})") from None
        if not key:
            raise ServerConfigError(f"--api-key-file {key_file} is empty: put the bearer token in it")
        return key
    return os.environ.get(API_KEY_ENV) or None


def run_from_args(args: argparse.Namespace, helpful_dir: Path, safety_dir: Path, threshold: float) -> None:
    """`chatalign serve` once the CLI has resolved the two RMs to directories."""
    from importlib.util import find_spec

    missing = [name for name in ("fastapi", "uvicorn", "prometheus_client") if find_spec(name) is None]
    if missing:
        raise ServerConfigError(f"chatalign serve needs the 'serve' extra ({', '.join(missing)} missing): "
                                "pip install 'chatalign[serve]'")
    settings = ServerSettings(
        host=args.host, port=args.port, api_key=read_api_key(args.api_key_file), cors_origins=args.cors_origins,
        max_items_per_request=args.max_items_per_request, max_tokens_per_item=args.max_tokens_per_item,
        truncate=args.truncate, max_body_bytes=args.max_body_bytes, batch_tokens=args.batch_tokens,
        max_batch_items=args.max_batch_items, max_wait_ms=args.max_wait_ms, max_queue_items=args.max_queue_items,
        request_timeout_s=args.request_timeout_s, max_connections=args.max_connections)
    settings.check()
    whiten = None
    if (args.whiten_mean is None) != (args.whiten_std is None):
        raise ServerConfigError("give both --whiten-mean and --whiten-std, or neither")
    if args.whiten_mean is not None:
        if args.whiten != "none":
            raise ServerConfigError("--whiten validation and --whiten-mean/--whiten-std exclude each other")
        whiten = (args.whiten_mean, args.whiten_std)
    elif args.whiten == "validation":
        whiten = validation_whitening(helpful_dir, safety_dir)
    if whiten is not None:
        from reward.combine import Whitener

        try:
            Whitener("fixed", mean=whiten[0], std=whiten[1])
        except ValueError as err:
            raise ServerConfigError(str(err)) from None
        log.info("whitening rewards with fixed mean %.4f and std %.4f", *whiten)
    if not 0.0 <= threshold <= 1.0:
        raise ServerConfigError(f"--threshold: the safety gate's threshold is a probability in [0, 1], got {threshold}")
    serve(lambda: load_models(helpful_dir, safety_dir, threshold, args.device, args.max_batch_items, whiten),
          settings)
