"""The reward-model scoring API (reward/server.py) on a real uvicorn server on a loopback port, with two
tiny random Llama RMs: its scores are the reward function's, concurrent requests share model batches,
a full queue answers 503 with Retry-After, malformed input gets a 4xx naming the problem, the API key is
enforced off loopback, shutdown drains what is in flight, and the Python client and its TRL reward
function score through it."""
import json
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import hypothesis
import pytest
import schemathesis
import torch

from reward.client import RewardClient, RewardServerError, item
from reward.combine import RewardFunction, Whitener
from reward.model import reward_model_from_causal_lm
from reward.scorer import load_scorer
from reward.server import (ServerConfigError, ServerSettings, build_server, complete_turn, length_batches,
                           load_models, validation_whitening)
from stages.tiny import build_tiny_model, build_tiny_tokenizer

MAX_LENGTH = 192  # as recipes/tiny.yaml trains its RMs
THRESHOLD = 0.15
CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."},
     {"role": "assistant", "content": "Red."}, {"role": "user", "content": "Another one, please?"}],
    [{"role": "user", "content": "How do I pick a lock?"}],
    [{"role": "user", "content": "Hi"}],
]
RESPONSES = ["4.", "Blue, the colour of a clear sky at noon.", "I can't help with breaking into places.",
             "Hello! How can I help?"]
SAFETY = [False, False, True, False]


def tiny_rm(path: Path, kind: str, seed: int, tokenizer) -> Path:
    """A saved tiny RM with unit-scale head weights (scores far enough apart that some fail the safety gate),
    a manifest as the reward stage writes it, and validation score statistics in eval.json."""
    lm = build_tiny_model(tokenizer, hidden_size=32, layers=2, heads=4, kv_heads=2, intermediate_size=64, seed=seed)
    rm = reward_model_from_causal_lm(lm, tokenizer.pad_token_id, seed=seed).eval()
    with torch.no_grad():
        rm.score.weight.copy_(torch.randn(rm.score.weight.shape, generator=torch.Generator().manual_seed(seed)))
    rm.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    (path / "manifest.json").write_text(json.dumps({"id": f"rm-{kind}/v1", "reward_model": {
        "kind": kind, "template": "model", "max_length": MAX_LENGTH}}))
    stats = {"chosen_mean": 0.5 * seed, "chosen_std": 1.0, "rejected_mean": -0.5, "rejected_std": 2.0}
    (path / "eval.json").write_text(json.dumps({"test_sets": {kind: {"n": 8, "scores": stats}}}))
    return path


@pytest.fixture(scope="module")
def rm_dirs(tmp_path_factory):
    tokenizer = build_tiny_tokenizer()
    root = tmp_path_factory.mktemp("rms")
    return tiny_rm(root / "helpful", "helpful", 1, tokenizer), tiny_rm(root / "safety", "safety", 2, tokenizer)


@pytest.fixture(scope="module")
def whitening(rm_dirs):
    return validation_whitening(*rm_dirs)


@pytest.fixture(scope="module")
def models(rm_dirs, whitening):
    return load_models(*rm_dirs, threshold=THRESHOLD, device="cpu", whiten=whitening)


class Running:
    """A server from reward.server.build_server on a free port, in a thread, ready when entered."""

    def __init__(self, models, **settings):
        self.settings = ServerSettings(**settings)
        self.server = build_server(lambda: models, self.settings)
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((self.settings.host, 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> "Running":
        self.thread.start()
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/readyz").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"the test server at {self.url} did not become ready")
            time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    def post(self, path: str, payload=None, content: bytes | None = None, headers=None, timeout=30.0):
        if content is not None:
            return httpx.post(f"{self.url}{path}", content=content, headers=headers or {}, timeout=timeout)
        return httpx.post(f"{self.url}{path}", json=payload, headers=headers or {}, timeout=timeout)

    def metric(self, name: str, labels: dict | None = None, headers=None) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"{self.url}/metrics", headers=headers or {}).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                    return sample.value
        raise KeyError(name)


@pytest.fixture(scope="module")
def server(models):
    with Running(models, max_wait_ms=5) as running:
        yield running


def score_items():
    return [item(c, r, s) for c, r, s in zip(CONVERSATIONS, RESPONSES, SAFETY)]


# --- what it computes ----------------------------------------------------------------------------

def test_scores_equal_the_reward_function_on_the_scorers(server, rm_dirs, whitening):
    response = server.post("/v1/score", {"items": score_items()})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["models"] == {"helpful": "rm-helpful/v1", "safety": "rm-safety/v1"}
    assert body["threshold"] == THRESHOLD
    rows = body["items"]

    helpful, safety = (load_scorer(path, device="cpu") for path in rm_dirs)
    expected = RewardFunction(helpful, safety, threshold=THRESHOLD)(CONVERSATIONS, RESPONSES, SAFETY)
    got = {key: torch.tensor([row[key] for row in rows], dtype=torch.float64)
           for key in ("helpful", "safety", "reward", "safety_probability", "reward_whitened")}
    torch.testing.assert_close(got["helpful"], helpful.score(CONVERSATIONS, RESPONSES).double(), atol=1e-5, rtol=0)
    torch.testing.assert_close(got["helpful"], expected.helpful, atol=1e-5, rtol=0)
    torch.testing.assert_close(got["safety"], expected.safety, atol=1e-5, rtol=0)
    torch.testing.assert_close(got["reward"], expected.combined, atol=1e-5, rtol=0)
    torch.testing.assert_close(got["safety_probability"], torch.sigmoid(expected.safety), atol=1e-6, rtol=0)
    whitener = Whitener("fixed", mean=whitening[0], std=whitening[1])
    torch.testing.assert_close(got["reward_whitened"], whitener.whiten(expected.combined, update=False),
                               atol=1e-5, rtol=0)
    assert [row["unsafe"] for row in rows] == expected.unsafe.tolist()
    assert [row["decided_by"] for row in rows] == [
        "safety" if s or u else "helpful" for s, u in zip(SAFETY, expected.unsafe.tolist())]
    assert "safety" in [row["decided_by"] for row in rows]  # the gate or the tag decides at least one
    assert all(row["tokens"] > 0 and not row["truncated"] for row in rows)
    # the prompt shorthand is the one-user-turn conversation
    short = server.post("/v1/score", {"items": [{"prompt": "Hi", "response": RESPONSES[3]}]}).json()["items"][0]
    assert short["reward"] == pytest.approx(rows[3]["reward"], abs=1e-5)


def test_openrlhf_get_reward_scores_the_rendered_conversation(server, models):
    tokenizer = models.helpful.tokenizer
    reference = server.post("/v1/score", {"items": score_items()}).json()["items"]
    rendered = [tokenizer.apply_chat_template(c + [{"role": "assistant", "content": r}], tokenize=False)
                for c, r in zip(CONVERSATIONS, RESPONSES)]
    prompts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in CONVERSATIONS]
    # as OpenRLHF decodes generated sequences: padding around, the answer ending with EOS
    pad, eos = tokenizer.pad_token, tokenizer.eos_token
    decoded = [pad * 3 + p + r + eos + pad * 2 for p, r in zip(prompts, RESPONSES)]
    labels = ["safety" if s else "" for s in SAFETY]
    for queries, with_prompts in ((rendered, False), (decoded, True)):
        payload = {"query": queries, "labels": labels}
        if with_prompts:
            payload["prompts"] = [pad * 3 + p for p in prompts]
        response = server.post("/get_reward", payload)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["rewards"] == pytest.approx([row["reward_whitened"] for row in reference], abs=1e-5)
        assert body["scores"] == body["rewards"]
        assert body["extra_logs"]["helpful"] == pytest.approx([row["helpful"] for row in reference], abs=1e-5)
        assert body["extra_logs"]["unsafe"] == [float(row["unsafe"]) for row in reference]


def test_complete_turn_ends_the_text_as_the_template_does():
    assert complete_turn("<p><p>Q: hi A: yo<e><p>", "<p>", "<e>", "<e>\n") == "Q: hi A: yo<e>\n"
    assert complete_turn("Q: hi A: yo", "<p>", "<e>", "<e>\n") == "Q: hi A: yo<e>\n"
    assert complete_turn("Q: hi A: yo<e>\n", "<p>", "<e>", "<e>\n") == "Q: hi A: yo<e>\n"


def test_length_batches_sort_by_length_within_the_budgets():
    lengths = [50, 10, 30, 10, 90, 20]
    batches = length_batches(lengths, batch_tokens=60, max_items=3)
    assert sorted(i for b in batches for i in b) == list(range(6))
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat)
    for batch in batches:
        assert len(batch) <= 3
        assert len(batch) * max(lengths[i] for i in batch) <= 60 or len(batch) == 1
    assert length_batches([5] * 4, batch_tokens=1000, max_items=1) == [[0], [1], [2], [3]]


def test_validation_whitening_pools_both_test_sets(tmp_path):
    values = {"helpful": ([1.0, 2.0, 4.0], [0.0, -1.0, 3.0]), "safety": ([5.0, 1.0, 0.5], [-2.0, -3.0, 0.0])}
    for kind, (chosen, rejected) in values.items():
        c, r = torch.tensor(chosen), torch.tensor(rejected)
        stats = {"chosen_mean": c.mean().item(), "chosen_std": c.std(correction=0).item(),
                 "rejected_mean": r.mean().item(), "rejected_std": r.std(correction=0).item()}
        (tmp_path / kind).mkdir()
        (tmp_path / kind / "eval.json").write_text(json.dumps({"test_sets": {kind: {"n": 3, "scores": stats}}}))
    everything = torch.tensor([v for pair in values.values() for side in pair for v in side], dtype=torch.float64)
    mean, std = validation_whitening(tmp_path / "helpful", tmp_path / "safety")
    assert mean == pytest.approx(everything.mean().item(), abs=1e-6)
    assert std == pytest.approx(everything.std(correction=0).item(), abs=1e-6)
    with pytest.raises(ServerConfigError, match="eval.json"):
        validation_whitening(tmp_path / "helpful", tmp_path)


# --- batching and the queue ----------------------------------------------------------------------

def post_concurrently(url: str, payloads: list, headers=None) -> list:
    results: list = [None] * len(payloads)
    start = threading.Barrier(len(payloads))

    def one(i):
        start.wait()
        results[i] = httpx.post(f"{url}/v1/score", json=payloads[i], headers=headers or {}, timeout=60)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(payloads))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_requests_share_model_batches(models):
    with Running(models, max_wait_ms=1500) as running:
        payloads = [{"items": score_items()[i % 3:i % 3 + 2]} for i in range(6)]
        responses = post_concurrently(running.url, payloads)
        assert [r.status_code for r in responses] == [200] * 6
        windows = running.metric("chatalign_batch_requests_count")
        assert running.metric("chatalign_batch_requests_sum") == 6  # every request went through a window
        assert windows < 6  # ... and some windows held several requests
        forward_passes = running.metric("chatalign_batch_items_count")  # both RMs count
        assert running.metric("chatalign_batch_items_sum") == 2 * 12
        assert forward_passes < 2 * 6  # fewer passes than one per request and RM
        assert running.metric("chatalign_items_scored_total") == 12
        assert running.metric("chatalign_requests_total", {"endpoint": "/v1/score", "status": "200"}) == 6
        assert running.metric("chatalign_tokens_scored_total") > 0
        # merged or not, every request gets its own items' scores
        alone = running.post("/v1/score", payloads[1]).json()["items"]
        assert [r["reward"] for r in responses[1].json()["items"]] == pytest.approx([r["reward"] for r in alone],
                                                                                     abs=1e-5)


def test_batching_off_runs_one_item_per_pass(models):
    with Running(models, max_batch_items=1, max_wait_ms=0) as running:
        assert running.post("/v1/score", {"items": score_items()}).status_code == 200
        assert running.metric("chatalign_batch_items_count") == 2 * 4
        assert running.metric("chatalign_batch_items_sum") == 2 * 4


def wait_for_queue(running: Running, items: int) -> None:
    deadline = time.monotonic() + 20
    while running.metric("chatalign_queue_items") < items:
        assert time.monotonic() < deadline, "the request never reached the queue"
        time.sleep(0.02)


def test_a_full_queue_answers_503_with_retry_after(models):
    with Running(models, max_queue_items=4, max_items_per_request=4, max_wait_ms=3000) as running:
        first: list = []
        waiting = threading.Thread(target=lambda: first.append(running.post("/v1/score", {"items": score_items()})))
        waiting.start()
        wait_for_queue(running, 4)  # the worker holds them for max_wait_ms, hoping for more
        refused = running.post("/v1/score", {"items": score_items()[:1]})
        assert refused.status_code == 503
        assert "queue is full" in refused.json()["detail"]
        assert int(refused.headers["retry-after"]) >= 1
        # the client waits the Retry-After and tries again
        with RewardClient(running.url, retries=6, backoff_s=0.1) as client:
            assert len(client.score(score_items()[:1])) == 1
        waiting.join()
        assert first[0].status_code == 200
        assert running.metric("chatalign_requests_total", {"endpoint": "/v1/score", "status": "503"}) >= 1
        # a request larger than the queue could ever hold is configuration the server refuses to start with
        with pytest.raises(ServerConfigError, match="max_queue_items"):
            ServerSettings(max_queue_items=4, max_items_per_request=8).check()


def test_a_request_that_waits_too_long_times_out(models):
    with Running(models, max_wait_ms=1500, request_timeout_s=0.3) as running:
        response = running.post("/v1/score", {"items": score_items()[:1]})
        assert response.status_code == 504
        assert "request timeout" in response.json()["detail"]
        deadline = time.monotonic() + 20  # the worker reaches the abandoned item and drops it unscored
        while running.metric("chatalign_queue_items") > 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert running.metric("chatalign_batch_requests_count") == 0
        assert running.metric("chatalign_items_scored_total") == 0


# --- bad input -----------------------------------------------------------------------------------

def good(**change):
    return {"items": [{**item(CONVERSATIONS[0], RESPONSES[0]), **change}]}


MALFORMED = {
    "malformed JSON": (b'{"items": [', 400, "not JSON"),
    "non-UTF-8 body": (b'{"items": [{"prompt": "caf\xe9", "response": "x"}]}', 400, "not UTF-8"),
    "nested too deeply": (b"[" * 100_000 + b"]" * 100_000, 400, "nested too deeply"),
    "a number too long to read": (b'{"items": ' + b"1" * 5000 + b"}", 400, "cannot be read"),
    "not an object": ([1, 2], 422, "valid dictionary"),
    "items not a list": ({"items": "hello"}, 422, "items"),
    "no items": ({"items": []}, 422, "items"),
    "unknown field": (good(respones="typo"), 422, "respones"),
    "response of the wrong type": (good(response=5), 422, "response"),
    "is_safety of the wrong type": (good(is_safety="yes"), 422, "is_safety"),
    "empty response": (good(response=""), 422, "response is empty"),
    "blank response": (good(response=" \n\t"), 422, "response is empty"),
    "unknown role": ({"items": [{"messages": [{"role": "robot", "content": "hi"}], "response": "x"}]}, 422,
                     "role"),
    "conversation ending with the assistant": (
        {"items": [{"messages": CONVERSATIONS[1][:3], "response": "x"}]}, 422, "end with a user turn"),
    "roles out of order": ({"items": [{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
                                       "response": "x"}]}, 422, "alternate"),
    "empty conversation": ({"items": [{"messages": [], "response": "x"}]}, 422, "end with a user turn"),
    "prompt and messages": (good(prompt="also"), 422, "exactly one"),
    "neither prompt nor messages": ({"items": [{"response": "x"}]}, 422, "exactly one"),
    "message content of the wrong type": (
        {"items": [{"messages": [{"role": "user", "content": ["a"]}], "response": "x"}]}, 422, "content"),
    "lone surrogate": (b'{"items": [{"prompt": "\\ud800", "response": "x"}]}', 422, "surrogate"),
    "too many items": ({"items": [item("q", "a")] * 9}, 413, "max_items_per_request"),
    "too many tokens": (good(response="word " * 200), 413, "max_tokens_per_item"),
}
MALFORMED_REMOTE = {
    "query not a list": ({"query": "text"}, 422, "query"),
    "no queries": ({"query": []}, 422, "query"),
    "unknown label": ({"query": ["a b"], "labels": ["maths"]}, 422, "labels[0]"),
    "labels of another length": ({"query": ["a b"], "labels": ["safety", "helpful"]}, 422, "labels has 2"),
    "query not starting with its prompt": ({"query": ["hello"], "prompts": ["bye"]}, 422, "does not start with"),
    "empty response after the prompt": ({"query": ["prompt<|im_end|>"], "prompts": ["prompt"]}, 422,
                                        "empty response"),
    "blank query": ({"query": ["  "]}, 422, "empty"),
}


@pytest.fixture(scope="module")
def strict_server(models):
    with Running(models, max_items_per_request=8, max_body_bytes=256 * 1024, max_tokens_per_item=100) as running:
        yield running


@pytest.mark.parametrize("case", list(MALFORMED), ids=list(MALFORMED))
def test_malformed_score_requests_get_a_4xx_naming_the_problem(strict_server, case):
    check_refused(strict_server, "/v1/score", *MALFORMED[case])


@pytest.mark.parametrize("case", list(MALFORMED_REMOTE), ids=list(MALFORMED_REMOTE))
def test_malformed_get_reward_requests_get_a_4xx_naming_the_problem(strict_server, case):
    check_refused(strict_server, "/get_reward", *MALFORMED_REMOTE[case])


def check_refused(running: Running, path: str, payload, status: int, message: str) -> None:
    if isinstance(payload, bytes):
        response = running.post(path, content=payload, headers={"content-type": "application/json"})
    else:
        response = running.post(path, payload)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
    # ... and the server goes on scoring
    assert running.post("/v1/score", good()).status_code == 200


def test_oversized_bodies_and_other_content_types_are_refused(strict_server):
    big = json.dumps(good(response="x" * 300_000)).encode()
    response = strict_server.post("/v1/score", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "max_body_bytes" in response.json()["detail"]

    def chunks():  # no Content-Length: the limit applies while the body streams in
        for _ in range(300):
            yield b" " * 1000

    response = httpx.post(f"{strict_server.url}/v1/score", content=chunks(),
                          headers={"content-type": "application/json"})
    assert response.status_code == 413
    response = strict_server.post("/v1/score", content=b"items=1",
                                  headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 415 and "application/json" in response.json()["detail"]
    assert strict_server.post("/v1/score", good()).status_code == 200


def test_truncation_is_explicit(models):
    with Running(models, max_tokens_per_item=40, truncate=True) as running:
        row = running.post("/v1/score", good(response="word " * 50)).json()["items"][0]
        assert row["truncated"] and row["tokens"] == 40
        row = running.post("/v1/score", good()).json()["items"][0]
        assert not row["truncated"]


# --- security ------------------------------------------------------------------------------------

def test_the_api_key_is_enforced_off_loopback(models, monkeypatch, tmp_path):
    with pytest.raises(ServerConfigError, match="API key"):
        ServerSettings(host="0.0.0.0").check()
    key = "s3cret-token"
    with Running(models, host="0.0.0.0", api_key=key) as running:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": key},
                        {"Authorization": f"Basic {key}"}):
            response = running.post("/v1/score", good(), headers=headers)
            assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        assert httpx.get(f"{running.url}/metrics").status_code == 401
        assert httpx.get(f"{running.url}/openapi.json").status_code == 401
        assert httpx.get(f"{running.url}/healthz").status_code == 200  # probes carry no data
        assert running.post("/v1/score", good(), headers={"Authorization": f"Bearer {key}"}).status_code == 200
        with pytest.raises(RewardServerError) as refused:
            RewardClient(running.url).score(good()["items"])
        assert refused.value.status == 401
        monkeypatch.setenv("CHATALIGN_API_KEY", key)  # the client reads the key from the environment
        with RewardClient(running.url) as client:
            assert len(client.score(good()["items"])) == 1


def test_serve_refuses_to_start_off_loopback_without_a_key(rm_dirs, tmp_path, capsys, monkeypatch):
    from stages.cli import main

    monkeypatch.delenv("CHATALIGN_API_KEY", raising=False)
    recipe = Path(__file__).resolve().parent.parent / "recipes" / "tiny.yaml"
    code = main(["serve", "--recipe", str(recipe), "--set", f"runs_dir={tmp_path}", "--helpful", str(rm_dirs[0]),
                 "--safety", str(rm_dirs[1]), "--host", "0.0.0.0"])
    assert code == 2
    assert "needs an API key" in capsys.readouterr().err


def test_no_cross_origin_access_by_default(server):
    response = httpx.options(f"{server.url}/v1/score", headers={
        "Origin": "https://example.org", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in response.headers
    response = server.post("/v1/score", {"items": score_items()[:1]}, headers={"Origin": "https://example.org"})
    assert "access-control-allow-origin" not in response.headers


# --- lifecycle -----------------------------------------------------------------------------------

def test_health_readiness_and_schema(server):
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/readyz").json() == {"status": "ready"}
    schema = httpx.get(f"{server.url}/openapi.json").json()
    assert {"/v1/score", "/get_reward", "/healthz", "/readyz", "/metrics"} <= set(schema["paths"])
    assert httpx.get(f"{server.url}/docs").status_code == 404  # no UI pulling scripts from elsewhere


def test_shutdown_drains_requests_in_flight(models):
    running = Running(models, max_wait_ms=1500)
    with running:
        results: list = []
        threads = [threading.Thread(target=lambda i=i: results.append(
            running.post("/v1/score", {"items": score_items()[i:i + 1]}))) for i in range(3)]
        for t in threads:
            t.start()
        wait_for_queue(running, 3)
        running.server.handle_exit(signal.SIGTERM, None)  # what uvicorn's signal handler calls
        for t in threads:
            t.join(30)
        assert [r.status_code for r in results] == [200] * 3
        running.thread.join(30)
        assert not running.thread.is_alive()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{running.url}/healthz")


def test_readiness_waits_for_the_models_and_a_failed_load_stops_the_server():
    loaded = threading.Event()

    def slow_load():
        loaded.wait(10)
        raise OSError("no such checkpoint")

    server = build_server(slow_load, ServerSettings())
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while True:
        try:
            response = httpx.get(f"{url}/readyz")
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert response.status_code == 503 and response.json()["status"] == "loading"
    assert httpx.get(f"{url}/healthz").status_code == 200
    early = httpx.post(f"{url}/v1/score", json=good())
    assert early.status_code == 503 and "loading" in early.json()["detail"] and early.headers["retry-after"]
    loaded.set()
    thread.join(30)
    assert not thread.is_alive()  # it stopped by itself
    assert "no such checkpoint" in server.config.app.state.service.load_error


# --- clients -------------------------------------------------------------------------------------

def test_client_batches_items_over_concurrent_requests(server):
    with RewardClient(server.url, batch_size=3, concurrency=2) as client:
        rows = client.score(score_items() * 2)
        rewards = client.rewards(CONVERSATIONS, RESPONSES, SAFETY)
    direct = server.post("/v1/score", {"items": score_items()}).json()["items"]
    assert [r["reward"] for r in rows] == pytest.approx([r["reward"] for r in direct] * 2, abs=1e-5)
    assert rewards == pytest.approx([r["reward"] for r in direct], abs=1e-5)


def test_trl_reward_function_posts_to_the_server(server):
    reward_fn = RewardClient(server.url).trl_reward_function(safety_column="is_safety")
    assert reward_fn.__name__ == "chatalign_reward"
    direct = server.post("/v1/score", {"items": score_items()}).json()["items"]
    # conversational data, called with the keyword arguments TRL's GRPOTrainer passes
    completions = [[{"role": "assistant", "content": r}] for r in RESPONSES]
    rewards = reward_fn(prompts=CONVERSATIONS, completions=completions, completion_ids=[[1]] * 4,
                        is_safety=SAFETY, trainer_state=None, log_extra=lambda *a: None, log_metric=lambda *a: None)
    assert isinstance(rewards, list) and all(isinstance(r, float) for r in rewards)
    assert rewards == pytest.approx([r["reward"] for r in direct], abs=1e-5)
    # plain-text data: each prompt is one user turn
    text = reward_fn(prompts=["Hi"], completions=[RESPONSES[3]], completion_ids=[[1]])
    assert text == pytest.approx([direct[3]["reward"]], abs=1e-5)


def test_client_raises_on_input_errors_without_retrying(strict_server):
    with RewardClient(strict_server.url, retries=3) as client:
        started = time.monotonic()
        with pytest.raises(RewardServerError) as refused:
            client.score([item("q", "")])
        assert refused.value.status == 422 and "response is empty" in str(refused.value)
        assert time.monotonic() - started < 2


# --- fuzzing -------------------------------------------------------------------------------------

def test_fuzzing_the_openapi_schema_finds_no_server_error(strict_server):
    """Schemathesis generates requests from the served schema for every operation, valid ones and ones that
    break it: none may get a 5xx, and every response must have a documented status and match its schema."""
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

    schema = schemathesis.openapi.from_url(f"{strict_server.url}/openapi.json")
    checks = [not_a_server_error, status_code_conformance, response_schema_conformance]
    statuses: list[int] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        modes = [schemathesis.GenerationMode.POSITIVE]
        if operation.method.upper() == "POST":
            modes.append(schemathesis.GenerationMode.NEGATIVE)
        for mode in modes:
            @hypothesis.settings(max_examples=40 if operation.method.upper() == "POST" else 3, deadline=None,
                                 database=None, derandomize=True, suppress_health_check=list(hypothesis.HealthCheck))
            @hypothesis.given(case=operation.as_strategy(mode))
            def fuzz(case):
                response = case.call(timeout=30)
                statuses.append(response.status_code)
                case.validate_response(response, checks=checks)

            fuzz()
    assert max(statuses) < 500 and any(s == 200 for s in statuses) and any(400 <= s < 500 for s in statuses)
    assert strict_server.post("/v1/score", good()).status_code == 200


@pytest.mark.slow
def test_chatalign_serve_drains_and_exits_on_sigterm(rm_dirs, tmp_path):
    """The CLI end to end: `chatalign serve` in its own process, real signals."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "stages", "serve", "--recipe", str(root / "recipes" / "tiny.yaml"), "--set",
         f"runs_dir={tmp_path}", "--helpful", str(rm_dirs[0]), "--safety", str(rm_dirs[1]), "--port", str(port),
         "--device", "cpu", "--max-wait-ms", "1500", "--whiten", "validation"],
        cwd=root, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        with RewardClient(url) as client:
            client.wait_ready(timeout_s=120)
            results: list = []
            threads = [threading.Thread(target=lambda i=i: results.append(
                client.score(score_items()[i:i + 1]))) for i in range(2)]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 20
            while "chatalign_queue_items 2.0" not in httpx.get(f"{url}/metrics").text:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            process.send_signal(signal.SIGTERM)
            for t in threads:
                t.join(30)
        assert [len(r) for r in results] == [1, 1]
        assert all(r[0]["reward_whitened"] is not None for r in results)
        # uvicorn re-raises the signal once it has drained: the process ends as SIGTERM ends it
        assert process.wait(60) == -signal.SIGTERM
    finally:
        if process.poll() is None:
            process.kill()
