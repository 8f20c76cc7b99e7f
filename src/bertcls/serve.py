"""Serving: a trained model behind HTTP (FastAPI on uvicorn; the `serve` extra).

In: a run folder, model folder or exported ONNX folder, loaded once at start in the background by
`predict.load_predictor` (the engine, device and precision `bertcls predict` would use), and JSON requests
`POST /predict {"texts": [...], "pairs"?: [...], "top_k"?: k}`.
Out: `{"predictions": [...]}`, one `Prediction.record` per text in input order (the records `bertcls predict
--json` prints); `GET /health` (alive), `/ready` (503 until the model is loaded), `/info`, `/metrics`
(Prometheus), `/docs` (OpenAPI), and a page at `/` to try the model.

Requests that arrive together are merged (`bertcls.batching`): up to max_batch_size texts, waiting at
most max_wait_ms after the first arrived, run by one model thread off the event loop; each request gets its
own predictions back. Every request is checked before it is queued, so a bad one fails alone with a
4xx and a one-line JSON `detail`; if the model fails on a merged batch, each request in it is retried
alone and only those that fail alone get a 500.
"""

import asyncio
import copy
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from bertcls import machine, runs
from bertcls.batching import MODEL_THREAD, Batcher
from bertcls.errors import BertclsError, ConfigError, ModelError, first_line
from bertcls.predict import pairing_problem, text_problem

try:
    import uvicorn
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
    from starlette.requests import ClientDisconnect
except ModuleNotFoundError as exc:  # an optional extra: say how to get it instead of a traceback
    raise ModelError(f'bertcls serve needs {exc.name}, which is not installed; install the extra with: pip install -e ".[serve]"') from None

log = logging.getLogger("bertcls.serve")

# Seconds uvicorn waits for requests in flight after SIGTERM/SIGINT before it cancels them.
GRACE_S = 30
# What a request still running when the grace runs out is answered (503).
SHUTTING_DOWN = "the server is shutting down and stopped this request before answering it; retry it"
# uvicorn --workers > 1 starts fresh processes, which rebuild the app from these options (JSON).
OPTIONS_ENV = "BERTCLS_SERVE_OPTIONS"
PAGE = "serve_page.html"  # in this package
# Every route of the app: the request metrics count each by name, and any other path as "other".
ENDPOINTS = ("/", "/predict", "/health", "/ready", "/info", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")


@dataclass
class ServeOptions:
    """What `bertcls serve` was asked for."""

    model: str
    device: str = "auto"
    precision: str = "auto"
    max_batch_size: int = 64  # texts per merged batch, and per forward pass
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for others
    max_texts: int = 256  # texts in one request
    max_body_bytes: int = 1 << 20
    body_timeout_s: float = 30.0  # a body that has not fully arrived by then is refused (408)


# --- requests --------------------------------------------------------------------------------------------


class PredictRequest(BaseModel):
    """The body of POST /predict."""

    model_config = ConfigDict(extra="forbid")
    # fail_fast: stop at the first bad item, so a list of non-strings costs one error, not one per item.
    texts: list[StrictStr] = Field(min_length=1, fail_fast=True, description="The texts to classify (at most --max-texts per request).")
    pairs: list[StrictStr] | None = Field(None, fail_fast=True, description="Sentence-pair models: the second segment, one per text.")
    top_k: StrictInt | None = Field(None, ge=1, description="Also give the K most probable labels (1 to the number of labels).")


class TopLabel(BaseModel):
    label: str
    score: float


class PredictionRecord(BaseModel):
    """One text's prediction: `bertcls predict --json` prints the same record."""

    text: str
    label: str = Field(description="The most probable label.")
    score: float = Field(description="Its probability.")
    probabilities: dict[str, float] = Field(description="Every label's probability.")
    labels: list[str] | None = Field(None, description="Multi-label models only: every label at or above the threshold.")
    top_k: list[TopLabel] | None = Field(None, description="With top_k: the K most probable labels, best first.")


class PredictResponse(BaseModel):
    predictions: list[PredictionRecord] = Field(description="One record per text, in the order of the request.")


def parse_request(body: bytes, options: ServeOptions, n_labels: int) -> PredictRequest:
    """The checked request, or an HTTPException (4xx) whose detail names the problem."""
    try:
        raw = json.loads(body)
    except UnicodeDecodeError:
        raise HTTPException(400, "the body is not UTF-8 text; send JSON like {\"texts\": [\"...\"]}") from None
    except json.JSONDecodeError as exc:
        raise HTTPException(400, f"the body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise HTTPException(400, "the body is JSON nested too deeply; send {\"texts\": [\"...\"]}") from None
    except ValueError:  # json's only other error: an integer longer than Python converts
        raise HTTPException(400, f"the body is not valid JSON (a number of over {sys.get_int_max_str_digits()} digits)") from None
    if not isinstance(raw, dict):
        kind = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(raw), "null")
        raise HTTPException(422, f"the body is a JSON {kind}; send an object like {{\"texts\": [\"...\"]}}")
    # Before pydantic, which reports every unknown key: a body of them would hold the event loop.
    if unknown := [key for key in raw if key not in PredictRequest.model_fields]:
        raise HTTPException(422, f"{unknown[0]}: unknown field (the fields are {', '.join(PredictRequest.model_fields)})")
    for name in ("texts", "pairs"):
        if isinstance(raw.get(name), list) and len(raw[name]) > options.max_texts:
            raise HTTPException(422, f"{name}: {len(raw[name])} {name} in one request; send at most {options.max_texts} per request")
    try:
        request = PredictRequest.model_validate(raw)
    except ValidationError as exc:
        raise HTTPException(422, "; ".join(_describe(error) for error in exc.errors()[:3])) from None
    if request.pairs is not None and len(request.pairs) != len(request.texts):
        raise HTTPException(422, f"pairs: {len(request.pairs)} pair(s) for {len(request.texts)} text(s); give one pair per text")
    if request.top_k is not None and request.top_k > n_labels:
        raise HTTPException(422, f"top_k: {request.top_k} is more than the model's {n_labels} labels; use 1 to {n_labels}")
    for name, column in (("texts", request.texts), ("pairs", request.pairs or ())):  # here, not in the batch: a text the
        for index, text in enumerate(column):  # model cannot read fails its own request only
            if problem := text_problem(text):
                raise HTTPException(422, f"{name}[{index}] {problem}")
    return request


def _describe(error: dict) -> str:
    """A pydantic error as `texts[2]: Input should be a valid string`."""
    where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"]).lstrip(".") or "the body"
    return f"{where}: {error['msg']}"


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The body; a 413 as soon as it is known to be over `limit` bytes, a 408 if it is not complete within `timeout_s`."""
    try:
        return await asyncio.wait_for(_read_body(request, limit), timeout_s)
    except asyncio.TimeoutError:
        raise HTTPException(408, f"the body did not arrive within {timeout_s:g} s; send it whole") from None
    except ClientDisconnect:
        raise HTTPException(400, "the client closed the connection before the body was complete") from None


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    too_big = HTTPException(413, f"the body is over {limit:,} bytes; send fewer or shorter texts per request")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_big
    return bytes(body)


# --- metrics ---------------------------------------------------------------------------------------------


class Metrics:
    """The server's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("bertcls_requests", "HTTP requests answered, by endpoint and status code", ["endpoint", "status"], registry=r)
        self.latency = Histogram("bertcls_request_seconds", "Time to answer an HTTP request, by endpoint", ["endpoint"], registry=r,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.batch_size = Histogram("bertcls_batch_size", "Texts per merged call of the model (requests run together; one call "
                                    "may take several forward passes)", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
        self.batch_seconds = Histogram("bertcls_batch_seconds", "Model time per merged call (tokenising included)", registry=r,
                                       buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
        self.texts = Counter("bertcls_texts", "Texts predicted", registry=r)
        self.truncated = Counter("bertcls_texts_truncated", "Texts longer than the model's max_length: truncated, or read by head and tail or in windows, as the model's long_text says", registry=r)
        self.queue_depth = Gauge("bertcls_queue_depth", "Requests waiting for the model", registry=r)

    def batch(self, results: list, seconds: float) -> None:
        self.batch_size.observe(len(results))
        self.batch_seconds.observe(seconds)
        self.texts.inc(len(results))
        self.truncated.inc(sum(result.truncated for result in results))


class _Observe:
    """ASGI middleware: count each HTTP request by endpoint and status, and time it."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"  # unknown paths: one label, not one each
        status = 500  # unless a response starts: an exception that escaped the app
        begun = False

        async def send_observed(message) -> None:
            nonlocal status, begun
            if message["type"] == "http.response.start":
                status, begun = message["status"], True
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_observed)
        except asyncio.CancelledError:
            # uvicorn cancels the requests still running when its shutdown grace runs out (or on a second Ctrl-C): their
            # clients get a 503 to retry, not its plain-text 500, and the log no traceback per request
            if begun:  # nothing else can be sent
                raise
            await send_observed({"type": "http.response.start", "status": 503, "headers": [
                (b"content-type", b"application/json"), (b"retry-after", b"1"), (b"connection", b"close")]})
            await send_observed({"type": "http.response.body", "body": json.dumps({"detail": SHUTTING_DOWN}).encode()})
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)


# --- the app ---------------------------------------------------------------------------------------------


@dataclass
class _State:
    """The app's model, once loaded; `error` says why it is not."""

    options: ServeOptions
    metrics: Metrics
    predictor: Any = None
    info: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    batcher: Batcher | None = None
    stopping: bool = False  # the server is shutting down: a model that loads now serves nothing

    def ready(self) -> Any:
        """The predictor, or a 503 that says why there is none yet."""
        if self.predictor is None:
            detail = f"the model failed to load: {self.error}" if self.error else "the model is still loading; retry when GET /ready answers 200"
            raise HTTPException(503, detail, headers={"Retry-After": "1"})
        return self.predictor


def create_app(options: ServeOptions, load: Callable[[], Any] | None = None, on_load_error: Callable[[BaseException], None] | None = None) -> FastAPI:
    """The app for `options`. `load` makes the predictor (default: `load_predictor` as `bertcls predict` would); it runs
    in the model thread when the app starts, and `on_load_error` hears if it fails (the app then stays unready)."""
    state = _State(options, Metrics())
    load = load or (lambda: _load_predictor(options))
    page_html = resources.files("bertcls").joinpath(PAGE).read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.batcher = Batcher(lambda texts, pairs: state.predictor.predict(texts, pairs), options.max_batch_size,
                                options.max_wait_ms / 1000, state.metrics.batch)
        state.metrics.queue_depth.set_function(lambda: len(state.batcher.waiting))
        state.batcher.start()
        loading = asyncio.get_running_loop().run_in_executor(state.batcher.executor, _timed, load)
        loading.add_done_callback(lambda done: _loaded(state, done, on_load_error))
        try:
            yield
        except asyncio.CancelledError:  # a second Ctrl-C: uvicorn quits at once, without the shutdown below
            state.stopping = True
            state.batcher.executor.shutdown(wait=False, cancel_futures=True)  # an idle model thread ends now
            return
        state.stopping = True
        await state.batcher.close()  # uvicorn has answered every request in flight: nothing is waiting

    app = FastAPI(title="bertcls", summary="A bertcls text classifier over HTTP", lifespan=lifespan)
    app.add_middleware(_Observe, metrics=state.metrics)

    @app.post("/predict", response_model=PredictResponse, responses={
        400: {"description": "The body is not JSON"}, 408: {"description": "The body did not arrive in time"},
        413: {"description": "The body is too large"}, 422: {"description": "The request is not one the model can answer: `detail` says why"},
        500: {"description": "The model failed on this request"}, 503: {"description": "The model is not loaded yet"}},
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": PredictRequest.model_json_schema()}}}})
    async def predict(request: Request) -> Response:
        """Classify texts: one record per text, in the order given. Requests arriving together are batched."""
        predictor = state.ready()
        body = parse_request(await read_body(request, options.max_body_bytes, options.body_timeout_s), options, len(predictor.id2label))
        if problem := pairing_problem(predictor, body.pairs is not None, '"pairs"'):  # as predict and evaluate refuse them
            raise HTTPException(422, f"pairs: {problem}")
        try:
            results = await _unless_client_leaves(request, state.batcher.submit(body.texts, body.pairs))
        except _ClientLeft:  # its texts were not computed if their batch had not begun; nobody reads this answer
            return Response(status_code=CLIENT_LEFT)
        except Exception as exc:
            log.exception("the model failed on a request of %d text(s)", len(body.texts))
            raise HTTPException(500, f"the model failed on this request: {first_line(exc)}") from None
        records = [result.record(text, body.top_k) for text, result in zip(body.texts, results, strict=True)]
        return JSONResponse({"predictions": records})

    @app.get("/health")
    @app.head("/health", include_in_schema=False)  # uptime monitors probe with HEAD
    async def health() -> dict:
        """Alive: the server answers (the model may still be loading)."""
        return {"status": "ok"}

    @app.get("/ready", responses={503: {"description": "The model is not loaded (yet)"}})
    @app.head("/ready", include_in_schema=False)
    async def ready() -> dict:
        """Ready: the model is loaded and /predict answers."""
        state.ready()
        return {"status": "ready"}

    @app.get("/info")
    async def info() -> dict:
        """The model: name, path, labels, max_length, engine, precision, and the run's headline metrics."""
        state.ready()
        return state.info

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus metrics (text format)."""
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    @app.head("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(page_html)

    return app


class _ClientLeft(Exception):
    pass


CLIENT_LEFT = 499  # nginx's code for a request whose client closed the connection before the answer: in /metrics


async def _unless_client_leaves(request: Request, work: Awaitable) -> Any:
    """What `work` returns; when the client closes the connection first, `work` is cancelled (a request still waiting
    for its batch leaves the queue) and it is _ClientLeft."""
    job, left = asyncio.ensure_future(work), asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({job, left}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # the request itself cancelled (the server stopping): so is its work
        job.cancel()
        raise
    finally:
        left.cancel()
    if not job.done():
        job.cancel()
        raise _ClientLeft
    return job.result()


async def _disconnected(request: Request) -> None:
    """Return once the client has gone. The body is read already, so the next ASGI message is the disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _load_predictor(options: ServeOptions):
    from bertcls.predict import load_predictor

    return load_predictor(options.model, device=options.device, batch_size=options.max_batch_size, precision=options.precision)


def _timed(load: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    return load(), time.perf_counter() - started


def _loaded(state: _State, done: asyncio.Future, on_load_error) -> None:
    """When loading ends: make the app ready, or keep it unready with the reason."""
    if done.cancelled() or state.stopping:
        return
    try:
        predictor, seconds = done.result()
        state.info = model_info(state.options.model, predictor)
    except Exception as exc:  # asyncio would swallow it here, and leave the app "still loading" for ever
        state.error = first_line(exc)
        if on_load_error is not None:
            if not isinstance(exc, BertclsError):  # the CLI prints a BertclsError as its one line, a bug with its traceback
                log.error("the model failed to load: %s", state.error)
            on_load_error(exc)
        elif isinstance(exc, BertclsError):
            log.error("Error: %s", exc)
        else:
            log.error("the model failed to load", exc_info=exc)
        return
    state.predictor = predictor
    log.info("loaded %s (%s, %s) in %.1f s: ready", state.options.model, predictor.engine, state.info["precision"], seconds)


def model_info(path: str | Path, predictor) -> dict[str, Any]:
    """What GET /info tells: the model, how it runs, and the run's headline metrics when it has a metrics.json."""
    from bertcls.predict import ONNX_META

    path = Path(path)
    precision = getattr(predictor, "precision", None)
    if (path / ONNX_META).is_file():  # an exported folder: fp32 or int8 weights, as exported
        precision = json.loads((path / ONNX_META).read_text(encoding="utf-8")).get("quantize") or "fp32"
    columns = getattr(predictor, "trained_on", None)
    return {"name": path.resolve().name, "model": str(path.resolve()), "labels": [predictor.id2label[i] for i in sorted(predictor.id2label)],
            "multi_label": predictor.multi_label, "max_length": predictor.max_length, "engine": predictor.engine,
            "precision": precision, "text_columns": list(columns) if columns else None, "metrics": headline_metrics(path)}


def headline_metrics(path: Path) -> dict[str, Any] | None:
    """From the run's metrics.json: the best epoch, and per split the examples, accuracy, F1 and the metric the
    run chose its best epoch by (None for a folder without one, or with one that does not read: the model serves)."""
    file = path / runs.METRICS_FILE
    if not file.is_file():
        return None
    try:
        saved = json.loads(file.read_text(encoding="utf-8"))
        if not isinstance(saved, dict):
            raise ValueError(f"a JSON {type(saved).__name__}, not an object")
        headline = {key: saved[key] for key in ("best_epoch", "metric_for_best") if key in saved}
        keys = ("num_examples", "accuracy", "f1_macro", "f1_micro", saved.get("metric_for_best"))
        for split in ("validation", "test"):
            if isinstance(saved.get(split), dict):
                headline[split] = {key: saved[split][key] for key in dict.fromkeys(keys) if key in saved[split]}
    except (OSError, ValueError, TypeError) as exc:  # TypeError: a metric_for_best that is no name
        log.warning("%s does not read (%s): /info shows no metrics", file, first_line(exc))
        return None
    return headline


# --- running it ------------------------------------------------------------------------------------------


def check(options: ServeOptions) -> None:
    """Refuse what would fail later, before the server starts: no such model, a precision the device lacks."""
    from bertcls.predict import resolve_device_precision

    if options.max_wait_ms < 0 or options.max_batch_size < 1 or options.max_texts < 1 or options.max_body_bytes < 1:
        raise ConfigError("--max-batch-size, --max-texts and --max-body-bytes must be at least 1, --max-wait-ms at least 0")
    machine.check_device(options.device, "--device")  # as predict: also for an export, which runs on the CPU whatever it says
    runs.model_dir(options.model)
    resolve_device_precision(options.model, options.device, options.precision)


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one), or a one-line error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not the default 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say they are
    # TCP, and with Nagle on, each answer (headers, then body) waited 40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        return sock
    except socket.gaierror as exc:  # its errno is the resolver's (EAI_*), which os.strerror does not know
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} (--host does not resolve: {exc.strerror}); "
                          "give an address of this machine, such as 127.0.0.1 or 0.0.0.0") from None
    except OSError as exc:
        sock.close()
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ConfigError(f"cannot listen on {host}:{port} ({reason}); choose another --port or --host") from None


def run(options: ServeOptions, host: str = "127.0.0.1", port: int = 8000, workers: int = 1, access_log: bool = True) -> None:
    """Serve until SIGTERM/SIGINT, then stop taking connections, answer the requests in flight and return.

    Raises the model's load error (a BertclsError: the CLI prints it) if it cannot be loaded.
    """
    check(options)
    sock = listen(host, port)
    _log_lines_may_go_nowhere()
    common = {"log_config": _log_config(), "access_log": access_log, "timeout_graceful_shutdown": GRACE_S}
    if workers > 1:
        from uvicorn.supervisors import Multiprocess

        os.environ[OPTIONS_ENV] = json.dumps(asdict(options))  # the workers are fresh processes: they read it
        config = uvicorn.Config("bertcls.serve:app_from_environment", factory=True, workers=workers, **common)
        _say_serving(options, sock, workers)
        Multiprocess(config, sockets=[sock]).run()
        return
    failed: list[BaseException] = []

    def stop(exc: BaseException) -> None:
        failed.append(exc)
        server.should_exit = True

    server = uvicorn.Server(uvicorn.Config(create_app(options, on_load_error=stop), **common))
    _say_serving(options, sock, workers)
    with _signals_ignored_after_shutdown():
        server.run(sockets=[sock])
    if failed:
        raise failed[0]
    _abandon_the_model_thread()


def _abandon_the_model_thread() -> None:
    """Exit now if the model is still loading, or running a batch whose clients were answered 503 when the grace ran out:
    a forward pass cannot be stopped, and Python would wait for it at exit. Serving writes no file: nothing is lost."""
    busy = [thread for thread in threading.enumerate() if thread.name.startswith(MODEL_THREAD)]
    for thread in busy:
        thread.join(timeout=1)  # an idle one ends at once: the executor was shut down
    if any(thread.is_alive() for thread in busy):
        log.info("stopped; the model was still loading or running a batch, which is abandoned")
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _say_serving(options: ServeOptions, sock: socket.socket, workers: int) -> None:
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    processes = f" ({workers} worker processes)" if workers > 1 else ""
    log.info("serving %s at http://%s:%d%s; the page: /, API docs: /docs", options.model, host, port, processes)


def app_from_environment() -> FastAPI:
    """The app of one of several worker processes (uvicorn's factory), from the options the parent left."""
    _log_lines_may_go_nowhere()
    return create_app(ServeOptions(**json.loads(os.environ[OPTIONS_ENV])))


@contextmanager
def _signals_ignored_after_shutdown() -> Iterator[None]:
    # uvicorn stops gracefully on SIGTERM/SIGINT, then raises the signal again with the handlers it found, which
    # would end a clean stop with status 143 (or 130). It finds these: the signal is taken, the process exits 0.
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _log_lines_may_go_nowhere() -> None:
    """A log line that cannot be written (the access log's stdout whose reader went away) is dropped: serving goes on,
    without logging's traceback on stderr for every request."""
    logging.raiseExceptions = False


def _log_config() -> dict:
    """uvicorn's logging, with this module's logger on the same handler."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["loggers"]["bertcls"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


def serve_in_thread(app: FastAPI, host: str = "127.0.0.1") -> tuple[str, Callable[[], None]]:
    """Start `app` on a free port in a background thread: (its base URL, a function that stops it). For tests
    and benchmarks that need a real server in this process."""
    sock = listen(host, 0)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, timeout_graceful_shutdown=GRACE_S))  # logging as the caller set it
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.01)

    def stop() -> None:
        server.should_exit = True
        thread.join()

    return f"http://{host}:{sock.getsockname()[1]}", stop
