"""Load test for `bertcls serve`: concurrent clients against the server with dynamic batching, the same
server with batching off (--max-batch-size 1), and transformers.pipeline behind a minimal FastAPI endpoint.

    python scripts/load_test.py --model /tmp/sample-run [--clients 64] [--requests 20]

Each server is started on 127.0.0.1 (a free port) as its own process. Every client sends one text per
request, one request after another, over its own keep-alive connection; first one client alone measures
the single-request latency, then --clients clients together measure throughput and p50/p99 latency.
Bounded: --requests per client, and --time-limit seconds per measurement (what finished by then is
reported, marked). Prints a markdown table and the batched-vs-unbatched ratios. A benchmark, not a
test: the figures depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

HOST = "127.0.0.1"  # never anything else: this script only ever talks to servers it started itself
WORDS = ("the film was great and the acting superb but the plot felt long in places while the music "
         "carried every scene a tedious hour of clumsy dialogue a charming cast brilliant moving awful").split()


@dataclass
class Result:
    name: str
    clients: int
    latencies: list[float]  # seconds, one per answered request
    seconds: float
    timed_out: bool = False
    mean_batch: float | None = None  # texts per model batch, from the server's /metrics (bertcls serve only)

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def texts_for(n: int, seed: int = 0) -> list[str]:
    """n review-like texts of 6 to 24 words."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(6, 24))) for _ in range(n)]


class Connection:
    """One keep-alive HTTP/1.1 connection; a tiny client, so that the clients cost the machine little."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: dict | None) -> tuple[int, bytes]:
        """POST `body` as JSON (None: GET) -> (status, response body)."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        data = json.dumps(body).encode() if body is not None else b""
        method = "POST" if body is not None else "GET"
        self.writer.write(f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def one_client(port: int, texts: list[str], latencies: list[float]) -> None:
    connection = Connection(port)
    try:
        for text in texts:
            started = time.perf_counter()
            status, body = await connection.post("/predict", {"texts": [text]})
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
            latencies.append(time.perf_counter() - started)
    finally:
        connection.close()


async def load(name: str, port: int, clients: int, requests: int, time_limit: float) -> Result:
    texts = texts_for(clients * requests, seed=clients)
    latencies: list[float] = []
    started = time.perf_counter()
    tasks = [asyncio.create_task(one_client(port, texts[i * requests:(i + 1) * requests], latencies)) for i in range(clients)]
    done, pending = await asyncio.wait(tasks, timeout=time_limit)
    for task in pending:
        task.cancel()
    for task in done:
        task.result()  # a failed request fails the benchmark
    return Result(name, clients, latencies, time.perf_counter() - started, timed_out=bool(pending))


async def batch_totals(port: int) -> tuple[float, float] | None:
    """(texts, model batches) so far, from the server's Prometheus metrics; None for a server without them."""
    connection = Connection(port)
    try:
        status, text = await connection.post("/metrics", None)
    finally:
        connection.close()
    found = dict(re.findall(rb"^bertcls_batch_size_(sum|count) (\S+)$", text, re.M)) if status == 200 else {}
    return (float(found[b"sum"]), float(found[b"count"])) if found else None


def start(command: list[str], pattern: str) -> tuple[subprocess.Popen, int]:
    """Start a server process; its port, read from the line of its stderr that matches `pattern`."""
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        found = re.search(pattern, line)
        if found:
            return process, int(found.group(1))
    raise SystemExit(f"{command[:4]} exited with {process.wait()} before listening")


def stop(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(60)
    finally:
        process.kill()
        process.stderr.close()


async def wait_ready(port: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status, _ = await Connection(port).post("/predict", {"texts": ["warm up"]})
            if status == 200:
                return
        except (OSError, asyncio.IncompleteReadError):
            pass
        await asyncio.sleep(0.2)
    raise SystemExit(f"the server on port {port} was not ready in {timeout:.0f} s")


def measure(name: str, command: list[str], pattern: str, args) -> list[Result]:
    process, port = start(command, pattern)
    try:
        asyncio.run(wait_ready(port))
        asyncio.run(load(name, port, 1, 20, args.time_limit))  # warm-up: first calls allocate and compile
        single = asyncio.run(load(name, port, 1, args.single_requests, args.time_limit))
        before = asyncio.run(batch_totals(port))
        loaded = asyncio.run(load(name, port, args.clients, args.requests, args.time_limit))
        after = asyncio.run(batch_totals(port))
        if before and after:
            loaded.mean_batch = (after[0] - before[0]) / (after[1] - before[1])
    finally:
        code = stop(process)
    print(f"{name}: {loaded.throughput:.0f} req/s at {args.clients} clients; stopped with exit {code}", file=sys.stderr, flush=True)
    return [single, loaded]


def pipeline_server(model: str, threads: int | None) -> None:
    """The baseline: transformers.pipeline behind a minimal FastAPI endpoint (FastAPI runs it in its thread pool)."""
    import torch
    import uvicorn
    from fastapi import FastAPI
    from transformers import pipeline

    from bertcls import runs
    from bertcls.serve import listen

    if threads:
        torch.set_num_threads(threads)
    classify = pipeline("text-classification", model=str(runs.model_dir(model)), device="cpu")
    app = FastAPI()

    @app.post("/predict")
    def predict(body: dict) -> dict:
        return {"predictions": classify(body["texts"])}

    sock = listen(HOST, 0)  # as bertcls serve listens (with TCP_NODELAY on its connections)
    print(f"pipeline server on port {sock.getsockname()[1]}", file=sys.stderr, flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


def table(results: list[Result], clients: int) -> str:
    rows = ["| server | clients | requests answered | throughput (req/s) | p50 latency (ms) | p99 latency (ms) | texts per batch |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        mark = " (time limit hit)" if r.timed_out else ""
        batch = f"{r.mean_batch:.1f}" if r.mean_batch is not None else ""
        rows.append(f"| {r.name} | {r.clients} | {len(r.latencies)}{mark} | {r.throughput:.0f} | "
                    f"{1000 * r.percentile(50):.1f} | {1000 * r.percentile(99):.1f} | {batch} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a run folder, model folder or exported ONNX folder")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=20, help="requests per client")
    parser.add_argument("--single-requests", type=int, default=100, help="requests of the lone client")
    parser.add_argument("--time-limit", type=float, default=120, help="seconds per measurement, at most")
    parser.add_argument("--max-wait-ms", type=float, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads in each server (default: torch's)")
    parser.add_argument("--precision", default="auto", help="bertcls serve --precision (the pipeline runs fp32)")
    parser.add_argument("--skip-pipeline", action="store_true", help="leave out the transformers.pipeline baseline")
    parser.add_argument("--pipeline-server", action="store_true", help=argparse.SUPPRESS)  # the baseline's own process
    args = parser.parse_args()
    if args.pipeline_server:
        return pipeline_server(args.model, args.threads)

    env_threads = {"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}
    os.environ.update(env_threads)
    serve = [sys.executable, "-m", "bertcls", "serve", "--model", args.model, "--host", HOST, "--port", "0", "--no-access-log",
             "--max-wait-ms", str(args.max_wait_ms), "--precision", args.precision]
    listening = r"serving .* at http://[^:]+:(\d+)"
    print(f"model {args.model} | {os.cpu_count()} CPUs | {args.clients} clients x {args.requests} requests of one text",
          file=sys.stderr, flush=True)
    results = measure("bertcls serve (batched)", serve, listening, args)
    results += measure("bertcls serve --max-batch-size 1", [*serve, "--max-batch-size", "1"], listening, args)
    if not args.skip_pipeline:
        command = [sys.executable, __file__, "--pipeline-server", "--model", args.model] + (["--threads", str(args.threads)] if args.threads else [])
        results += measure("transformers.pipeline + FastAPI", command, r"pipeline server on port (\d+)", args)

    print(table(results, args.clients))
    single, batched, _, unbatched = results[:4]
    print(f"\nat {args.clients} clients: batched / unbatched throughput {batched.throughput / unbatched.throughput:.1f}x (goal >= 4x); "
          f"batched p99 / single-request p50 {batched.percentile(99) / single.percentile(50):.1f}x (goal <= 2x); "
          f"single-request p50: batched {1000 * single.percentile(50):.1f} ms, unbatched {1000 * results[2].percentile(50):.1f} ms")
    print(f"median single-request latency check: {statistics.median(single.latencies) * 1000:.1f} ms", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
