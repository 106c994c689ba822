"""Scoring-API load test: concurrent clients on loopback against `chatalign serve`, with dynamic batching
and with it off (max batch 1), the same clients, items, duration and machine.

Each run starts the server as its own process (`python -m stages serve`), waits for /readyz, warms it up,
then runs --clients threads for --duration seconds; each thread posts --items-per-request items to
POST /v1/score, waits for the answer and posts again (a closed loop: at most --clients requests in
flight). Items are built-in test pairs of both kinds (prompt + chosen answer; safety prompts tagged),
taken in turn. Latency is per request, client side; items/s = items answered with 200 / wall time of the
measured window. Any non-200 answer or transport error counts as an error, and the script exits 1 if
there was one. Mean rows per forward pass come from the server's /metrics.

    python bench/bench_server.py --helpful runs/smollm2-135m/rm-helpful/v1 \\
        --safety runs/smollm2-135m/rm-safety/v1 --clients 8 --duration 60
    ... --append-to docs/BENCHMARKS.md   (adds a dated section with the machine, command and table)
"""
from __future__ import annotations

import argparse
import datetime
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from record import command_line, machine

ROOT = Path(__file__).resolve().parent.parent
UNBATCHED = ["--max-batch-items", "1", "--max-wait-ms", "0"]


def load_items(n: int) -> list[dict]:
    """Built-in test pairs of both RMs as /v1/score items: the prompt and its chosen answer."""
    from data.sources import load_preferences
    from reward.client import item
    from stages.recipe import DataSource

    items = []
    for kind in ("helpful", "safety"):
        pairs = load_preferences([DataSource(source="builtin", n=n, split="test")], 0, f"bench.{kind}", kind=kind)
        items += [item(p.prompt, p.chosen, is_safety=kind == "safety") for p in pairs]
    return items


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, extra: list[str]) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    command = [sys.executable, "-m", "stages", "serve", "--recipe", args.recipe, "--helpful", args.helpful,
               "--safety", args.safety, "--port", str(port), *(["--device", args.device] if args.device else []),
               *args.server_args, *extra]
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + args.startup_timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}:\n{server.stderr.read()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return server, url
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    server.kill()
    raise SystemExit(f"the server was not ready within {args.startup_timeout} s")


def stop_server(server: subprocess.Popen) -> int:
    """SIGTERM: the server drains, then dies of the signal uvicorn re-raises (exit status -SIGTERM)."""
    server.send_signal(signal.SIGTERM)
    try:
        return server.wait(60)
    except subprocess.TimeoutExpired:
        server.kill()
        return -9


def metric_sum_count(url: str, name: str) -> tuple[float, float]:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    values = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for sample in family.samples:
            values[sample.name] = sample.value
    return values.get(f"{name}_sum", 0.0), values.get(f"{name}_count", 0.0)


def load(url: str, items: list[dict], clients: int, per_request: int, duration: float) -> dict:
    """--clients closed-loop clients for ``duration`` seconds; latencies of the 200s, errors of the rest."""
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    answered = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + duration

    def client(index: int) -> None:
        position = index * per_request
        with httpx.Client(base_url=url, timeout=300) as http:
            while time.monotonic() < stop_at:
                batch = [items[(position + k) % len(items)] for k in range(per_request)]
                position += clients * per_request
                started = time.monotonic()
                try:
                    response = http.post("/v1/score", json={"items": batch})
                    ok = response.status_code == 200 and len(response.json()["items"]) == per_request
                    problem = "" if ok else f"{response.status_code}: {response.text[:200]}"
                except httpx.HTTPError as err:
                    problem = f"{type(err).__name__}: {err}"
                elapsed = time.monotonic() - started
                with lock:
                    if problem:
                        errors.append(problem)
                    else:
                        latencies.append(elapsed)
                        answered[0] += per_request

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started  # includes the requests in flight at the deadline
    latencies.sort()

    def percentile(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")

    return {"requests": len(latencies), "items": answered[0], "errors": len(errors), "first_errors": errors[:3],
            "seconds": wall, "items_per_s": answered[0] / wall, "p50_ms": 1000 * percentile(0.50),
            "p99_ms": 1000 * percentile(0.99), "mean_ms": 1000 * statistics.fmean(latencies) if latencies else 0.0}


def run(args, name: str, extra: list[str], items: list[dict]) -> dict:
    server, url = start_server(args, extra)
    try:
        load(url, items, args.clients, args.items_per_request, args.warmup)
        rows_before = metric_sum_count(url, "chatalign_batch_items")
        result = load(url, items, args.clients, args.items_per_request, args.duration)
        rows_after = metric_sum_count(url, "chatalign_batch_items")
        passes = rows_after[1] - rows_before[1]
        result["rows_per_pass"] = (rows_after[0] - rows_before[0]) / passes if passes else float("nan")
    finally:
        result_code = stop_server(server)
    result["exit_code"] = result_code
    print(f"{name}: {result['items']} items in {result['requests']} requests, {result['seconds']:.1f} s, "
          f"{result['items_per_s']:.1f} items/s, p50 {result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms, "
          f"{result['rows_per_pass']:.1f} rows per forward pass, {result['errors']} errors, server exit "
          f"{result_code}", flush=True)
    for problem in result["first_errors"]:
        print(f"  error: {problem}", flush=True)
    return result


def section(results: dict, args) -> str:
    lines = [f"## Scoring API under load: dynamic batching vs max batch 1 ({datetime.date.today().isoformat()})", "",
             f"- machine: {machine()}",
             f"- server: `chatalign serve` on loopback, helpful RM `{args.helpful}`, safety RM `{args.safety}`; "
             f"batching off = `{' '.join(UNBATCHED)}`",
             f"- load: {args.clients} closed-loop clients, {args.items_per_request} items per request, "
             f"{args.duration:.0f} s measured after a {args.warmup:.0f} s warm-up; built-in test pairs of both kinds",
             f"- command: `{command_line()}`", "",
             "| server | requests | items | errors | items/s | p50 latency (ms) | p99 latency (ms) "
             "| rows per forward pass |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['requests']} | {r['items']} | {r['errors']} | {r['items_per_s']:.1f} | "
                     f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['rows_per_pass']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--helpful", required=True, help="helpfulness RM: directory or registry ref")
    parser.add_argument("--safety", required=True, help="safety RM: directory or registry ref")
    parser.add_argument("--recipe", default="recipes/smollm2-135m.yaml", help="recipe (registry, safety threshold)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (requests in flight)")
    parser.add_argument("--items-per-request", type=int, default=2)
    parser.add_argument("--duration", type=float, default=60.0, help="measured seconds per server")
    parser.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds before each measurement")
    parser.add_argument("--pairs", type=int, default=64, help="built-in test pairs of each kind to draw items from")
    parser.add_argument("--only", choices=["batched", "unbatched"], default=None)
    parser.add_argument("--startup-timeout", type=float, default=600.0)
    parser.add_argument("--server-arg", dest="server_args", action="append", default=[],
                        help="extra `chatalign serve` flag for both servers (repeatable, e.g. --server-arg=--truncate)")
    parser.add_argument("--append-to", default=None, metavar="FILE", help="append a dated section to FILE")
    args = parser.parse_args()
    if min(args.clients, args.items_per_request) < 1 or args.duration <= 0:
        parser.error("--clients and --items-per-request must be >= 1 and --duration > 0")

    items = load_items(args.pairs)
    print(f"{len(items)} items; {args.clients} clients x {args.items_per_request} items per request for "
          f"{args.duration:.0f} s per server", flush=True)
    results = {}
    for name, extra in (("batched", []), ("unbatched", UNBATCHED)):
        if args.only in (None, name):
            results[name] = run(args, "batching on (defaults)" if name == "batched" else "max batch 1", extra, items)
    labels = {"batched": "dynamic batching (defaults)", "unbatched": "max batch 1, no wait"}
    named = {labels[k]: v for k, v in results.items()}
    text = section(named, args)
    print(text)
    failed = any(r["errors"] or r["exit_code"] not in (0, -signal.SIGTERM) for r in results.values())
    if failed:
        print("FAILED: errors or an unclean server exit; nothing appended", file=sys.stderr)
        return 1
    if args.append_to:
        with Path(args.append_to).open("a") as f:
            f.write("\n" + text)
        print(f"appended to {args.append_to}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
