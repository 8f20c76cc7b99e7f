"""bertcls serve: the same records as predict --json, batching, bad requests, metrics, readiness, graceful stop."""

import asyncio
import copy
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import pytest
from typer.testing import CliRunner

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from fastapi import HTTPException, Request  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

import bertcls  # noqa: E402
from bertcls import serve  # noqa: E402
from bertcls.cli import app as cli  # noqa: E402
from bertcls.errors import ModelError  # noqa: E402
from bertcls.predict import load_predictor  # noqa: E402
from bertcls.serve import ServeOptions, create_app, read_body, serve_in_thread  # noqa: E402

runner = CliRunner()
TEXTS = ["a wonderful film", "awful and boring", "the plot was really quite dull", "brilliant", "é ü 日本 😀"]


@pytest.fixture(scope="module")
def predictor(trained_run):
    return load_predictor(trained_run, device="cpu")


@pytest.fixture
def make_client(trained_run, predictor):
    """A TestClient on a fresh app (its own metrics) around the already loaded predictor; the app is ready."""
    clients = []

    def make(load=lambda: predictor, **options) -> TestClient:
        client = TestClient(create_app(ServeOptions(str(trained_run), **options), load=load))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client):
    return ready(make_client())


def ready(client: TestClient) -> TestClient:
    deadline = time.monotonic() + 30
    while client.get("/ready").status_code != 200:
        assert time.monotonic() < deadline, client.get("/ready").json()
        time.sleep(0.01)
    return client


def metric(client, name: str, **labels) -> float:
    """One sample of /metrics."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise AssertionError(f"no sample {name} {labels}")


@pytest.mark.parametrize("extra", [[], ["--top-k", "2"]], ids=["plain", "top_k"])
def test_answers_are_the_records_of_predict_json(client, trained_run, extra):
    result = runner.invoke(cli, ["predict", "--json", "-m", str(trained_run), *TEXTS, *extra])
    assert result.exit_code == 0, result.output
    expected = [json.loads(line) for line in result.stdout.splitlines()]
    body = {"texts": TEXTS}
    if "--top-k" in extra:
        body["top_k"] = 2
    answer = client.post("/predict", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"predictions": expected}


def test_hundred_concurrent_requests_are_batched_and_answered_in_order(trained_run, predictor):
    app = create_app(ServeOptions(str(trained_run), max_batch_size=64, max_wait_ms=20), load=lambda: predictor)
    url, stop = serve_in_thread(app)
    try:
        bodies = [[f"{i} a wonderful film", f"awful {i}", f"the plot {i}"][: 1 + i % 3] for i in range(100)]

        async def send_all():
            async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=100)) as http:
                while (await http.get("/ready")).status_code != 200:
                    await asyncio.sleep(0.01)
                return await asyncio.gather(*(http.post("/predict", json={"texts": texts}) for texts in bodies))

        answers = asyncio.run(send_all())
        expected = predictor.predict([t for texts in bodies for t in texts])
        got = [record for answer in answers for record in answer.json()["predictions"]]
        assert [a.status_code for a in answers] == [200] * 100
        assert [r["text"] for r in got] == [t for texts in bodies for t in texts]
        assert [r["label"] for r in got] == [p.label for p in expected]
        assert [r["score"] for r in got] == pytest.approx([p.score for p in expected], abs=1e-4)
        with httpx.Client(base_url=url) as http:
            batches, texts = metric(http, "bertcls_batch_size_count"), metric(http, "bertcls_batch_size_sum")
            up_to_4 = metric(http, "bertcls_batch_size_bucket", le="4.0")
        assert texts == sum(map(len, bodies))
        assert batches < 100 and up_to_4 < batches, "no requests were merged"  # one request holds at most 3 texts
    finally:
        stop()


def test_answers_are_not_held_back_by_nagle(trained_run, predictor):
    # With Nagle's algorithm on the server's connections, every answer waited ~40 ms for the client's delayed ACK.
    url, stop = serve_in_thread(create_app(ServeOptions(str(trained_run)), load=lambda: predictor))
    try:
        with httpx.Client(base_url=url) as http:
            seconds = []
            for _ in range(20):
                started = time.perf_counter()
                assert http.get("/health").status_code == 200
                seconds.append(time.perf_counter() - started)
        assert sorted(seconds)[10] < 0.02
    finally:
        stop()


def test_a_model_failure_is_a_500_with_a_message(make_client, predictor):
    class Failing:
        id2label, max_length, threshold, multi_label, engine, precision = predictor.id2label, 32, None, False, "fake", "fp32"

        def predict(self, texts, pairs=None):
            if "boom" in texts:
                raise RuntimeError("boom inside the model")
            return predictor.predict(texts, pairs)

    client = ready(make_client(load=Failing))
    answer = client.post("/predict", json={"texts": ["boom"]})
    assert answer.status_code == 500
    assert answer.json() == {"detail": "the model failed on this request: boom inside the model"}
    assert client.post("/predict", json={"texts": ["fine"]}).status_code == 200


def test_a_request_still_running_when_the_shutdown_grace_ends_gets_a_503_to_retry(predictor, trained_run, monkeypatch):
    entered, release = threading.Event(), threading.Event()

    class Stuck:
        id2label, max_length, threshold, multi_label, engine, precision = predictor.id2label, 32, None, False, "fake", "fp32"

        def predict(self, texts, pairs=None):
            entered.set()
            release.wait(30)
            return predictor.predict(texts, pairs)

    monkeypatch.setattr(serve, "GRACE_S", 0.5)
    url, stop = serve_in_thread(create_app(ServeOptions(str(trained_run)), load=Stuck))
    while httpx.get(f"{url}/ready").status_code != 200:
        time.sleep(0.01)
    answers = []
    request = threading.Thread(target=lambda: answers.append(httpx.post(f"{url}/predict", json={"texts": ["great"]}, timeout=30)))
    request.start()
    assert entered.wait(30)
    stopping = threading.Thread(target=stop)
    stopping.start()
    request.join(10)  # answered once the grace is over, while the model is still busy
    release.set()
    stopping.join(30)
    assert len(answers) == 1 and answers[0].status_code == 503, answers
    assert answers[0].json() == {"detail": serve.SHUTTING_DOWN} and answers[0].headers["retry-after"] == "1"


def test_a_request_whose_client_left_before_its_batch_is_never_computed(predictor, trained_run):
    entered, release, computed = threading.Event(), threading.Event(), []

    class Busy:
        id2label, max_length, threshold, multi_label, engine, precision = predictor.id2label, 32, None, False, "fake", "fp32"

        def predict(self, texts, pairs=None):
            computed.extend(texts)
            if texts == ["first"]:
                entered.set()
                release.wait(30)
            return predictor.predict(texts, pairs)

    url, stop = serve_in_thread(create_app(ServeOptions(str(trained_run), max_wait_ms=0), load=Busy))
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            while http.get("/ready").status_code != 200:
                time.sleep(0.01)
            first = threading.Thread(target=lambda: http.post("/predict", json={"texts": ["first"]}))
            first.start()
            assert entered.wait(30)
            with pytest.raises(httpx.ReadTimeout):  # a client (a load balancer) gives up while the model is busy
                httpx.post(f"{url}/predict", json={"texts": ["left"]}, timeout=0.5)
            deadline = time.monotonic() + 10
            while "bertcls_requests_total{endpoint=\"/predict\",status=\"499\"} 1.0" not in http.get("/metrics").text:
                assert time.monotonic() < deadline, "the server did not notice the client leave"
                time.sleep(0.02)
            release.set()
            first.join(30)
            assert http.post("/predict", json={"texts": ["after"]}).status_code == 200
        assert computed == ["first", "after"]  # "left" never reached the model
    finally:
        release.set()
        stop()


def test_a_server_stopped_while_its_model_loads_never_says_ready(predictor, trained_run, caplog):
    release = threading.Event()

    def slow_load():
        release.wait(30)
        return predictor

    url, stop = serve_in_thread(create_app(ServeOptions(str(trained_run)), load=slow_load))
    assert httpx.get(f"{url}/ready").status_code == 503
    stopping = threading.Thread(target=stop)
    with caplog.at_level("INFO", logger="bertcls.serve"):
        stopping.start()
        time.sleep(0.3)  # shutting down, waiting for the model thread
        release.set()
        stopping.join(30)
    assert not stopping.is_alive() and not [r for r in caplog.records if "ready" in r.getMessage()], caplog.text


TOO_DEEP = b"[" * 100_000 + b"]" * 100_000
LONG_NUMBER = "9" * 5000  # json.loads refuses integers of over sys.get_int_max_str_digits() digits
NON_STRINGS = b'{"texts": [' + b",".join([b"1"] * 500_000) + b"]}"  # just under 1 MiB


@pytest.mark.parametrize("body,status,detail", [
    (b'{"texts": [', 400, "the body is not valid JSON (Expecting value at line 1 column 12)"),
    (b"\xff\xfe{", 400, "the body is not UTF-8 text"),
    (TOO_DEEP, 400, "nested too deeply"),
    (b"[1, 2]", 422, "the body is a JSON array; send an object"),
    (b"null", 422, "the body is a JSON null; send an object"),
    (b'{"texts": ["ok", "a \\ud800 b"]}', 422, "texts[1] is not valid Unicode (a lone surrogate at character 3"),  # as pydantic counts
    (b'{"texts": ["ok", "b"], "pairs": ["c", "\\udfff"]}', 422, "pairs[1] is not valid Unicode (a lone surrogate at character 1"),
    (b'{"texts": []}', 422, "texts: List should have at least 1 item after validation, not 0"),
    (b'{"texts": "one text"}', 422, "texts: Input should be a valid list"),
    (b'{"texts": ["ok", 5]}', 422, "texts[1]: Input should be a valid string"),
    (b'{"text": ["ok"]}', 422, "text: unknown field (the fields are texts, pairs, top_k)"),
    (f'{{"texts": ["a"], "top_k": {LONG_NUMBER}}}'.encode(), 400, f"the body is not valid JSON (a number of over {sys.get_int_max_str_digits()} digits)"),
    (f'{{"texts": ["a", {LONG_NUMBER}]}}'.encode(), 400, f"the body is not valid JSON (a number of over {sys.get_int_max_str_digits()} digits)"),
    (json.dumps({"texts": ["x"] * 257}).encode(), 422, "texts: 257 texts in one request; send at most 256 per request"),
    (json.dumps({"texts": [1] * 257}).encode(), 422, "texts: 257 texts in one request; send at most 256 per request"),
    (NON_STRINGS, 422, "texts: 500000 texts in one request; send at most 256 per request"),
    (json.dumps({"texts": ["a"], "pairs": [1] * 257}).encode(), 422, "pairs: 257 pairs in one request; send at most 256 per request"),
    (json.dumps({"texts": ["a", "b"], "pairs": ["p"]}).encode(), 422, "pairs: 1 pair(s) for 2 text(s); give one pair per text"),
    (json.dumps({"texts": ["a"], "pairs": ["b"]}).encode(), 422,
     "pairs: the model was trained on single texts (column 'text'), not pairs; drop \"pairs\""),
    (json.dumps({"texts": ["a"], "top_k": 0}).encode(), 422, "top_k: Input should be greater than or equal to 1"),
    (json.dumps({"texts": ["a"], "top_k": 3}).encode(), 422, "top_k: 3 is more than the model's 2 labels; use 1 to 2"),
    (json.dumps({"texts": ["a"], "top_k": "2"}).encode(), 422, "top_k: Input should be a valid integer"),
    (json.dumps({"texts": ["a" * (1 << 20)]}).encode(), 413, "the body is over 1,048,576 bytes"),
], ids=["malformed", "not-utf8", "too-deep", "not-object", "null", "lone-surrogate", "lone-surrogate-pair", "empty", "string", "non-string", "unknown-field",
        "long-number-top_k", "long-number-text", "too-many", "too-many-non-strings", "half-a-million-non-strings", "too-many-pairs",
        "pairs-length", "pairs-to-single-text-model", "top_k-0", "top_k-above", "top_k-string", "too-large"])
def test_bad_requests_get_a_4xx_naming_the_problem(client, body, status, detail):
    answer = client.post("/predict", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert detail in answer.json()["detail"] and "\n" not in answer.json()["detail"]


@pytest.mark.parametrize("body,detail", [
    ({"texts": ["ok"] + [1] * 99_999}, "texts[1]: Input should be a valid string"),
    ({"texts": ["ok"], **{f"field{i}": 0 for i in range(50_000)}}, "field0: unknown field (the fields are texts, pairs, top_k)"),
], ids=["non-strings", "unknown-fields"])
def test_a_request_full_of_mistakes_names_the_first(make_client, body, detail):
    # One error, not one per item or key: pydantic building each held the event loop (and every other request) for seconds.
    answer = ready(make_client(max_texts=100_000)).post("/predict", json=body)
    assert answer.status_code == 422 and answer.json()["detail"] == detail


def test_a_body_over_the_limit_is_refused_before_it_is_read(make_client):
    client = ready(make_client(max_body_bytes=100))
    chunks = iter([b'{"texts": ["' + b"a" * 80, b"b" * 80 + b'"]}'])  # streamed: no Content-Length to trust
    answer = client.post("/predict", content=chunks)
    assert answer.status_code == 413 and answer.json()["detail"].startswith("the body is over 100 bytes")


@pytest.mark.parametrize("messages,status,detail", [
    ([{"type": "http.request", "body": b'{"texts"', "more_body": True}, {"type": "http.disconnect"}], 400,
     "the client closed the connection before the body was complete"),
    ([{"type": "http.request", "body": b'{"texts"', "more_body": True}], 408, "the body did not arrive within 0.2 s; send it whole"),
], ids=["client-left", "body-stalled"])
def test_a_body_that_never_completes_is_refused(messages, status, detail):
    async def receive():
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)  # the client sends nothing more

    request = Request({"type": "http", "method": "POST", "path": "/predict", "headers": []}, receive)
    with pytest.raises(HTTPException) as refused:
        asyncio.run(read_body(request, limit=1000, timeout_s=0.2))
    assert (refused.value.status_code, refused.value.detail) == (status, detail)


def test_metrics_count_requests_texts_and_truncation(client):
    assert client.post("/predict", json={"texts": ["great", "awful"]}).status_code == 200
    assert client.post("/predict", json={"texts": [" ".join(["word"] * 50)]}).status_code == 200  # over max_length 32
    assert client.post("/predict", json={"texts": []}).status_code == 422
    assert client.post("/predict", content=f'{{"texts": ["a"], "top_k": {LONG_NUMBER}}}').status_code == 400
    assert client.get("/nowhere").status_code == 404
    assert client.get("/redoc").status_code == 200 and client.get("/docs/oauth2-redirect").status_code == 200
    assert metric(client, "bertcls_requests_total", endpoint="/predict", status="200") == 2
    assert metric(client, "bertcls_requests_total", endpoint="/predict", status="422") == 1
    assert metric(client, "bertcls_requests_total", endpoint="/predict", status="400") == 1  # not a 500
    assert metric(client, "bertcls_requests_total", endpoint="other", status="404") == 1
    assert metric(client, "bertcls_requests_total", endpoint="/redoc", status="200") == 1
    assert metric(client, "bertcls_requests_total", endpoint="/docs/oauth2-redirect", status="200") == 1
    assert metric(client, "bertcls_request_seconds_count", endpoint="/predict") == 4
    assert metric(client, "bertcls_texts_total") == 3
    assert metric(client, "bertcls_texts_truncated_total") == 1
    assert metric(client, "bertcls_batch_size_count") == 2
    assert metric(client, "bertcls_queue_depth") == 0


def test_every_route_is_counted_by_its_name(client):
    assert {route.path for route in client.app.routes} == set(serve.ENDPOINTS)


@pytest.mark.parametrize("path", ["/", "/health", "/ready"])
def test_uptime_monitors_can_probe_with_head(client, path):
    answer = client.head(path)
    assert answer.status_code == 200 and answer.content == b""


def test_ready_only_once_the_model_is_loaded(make_client, predictor):
    loaded = threading.Event()

    def slow_load():
        loaded.wait(30)
        return predictor

    client = make_client(load=slow_load)
    assert client.get("/health").json() == {"status": "ok"}
    assert client.head("/ready").status_code == 503
    for endpoint in ("/ready", "/info"):
        answer = client.get(endpoint)
        assert answer.status_code == 503 and answer.json()["detail"].startswith("the model is still loading")
    assert client.post("/predict", json={"texts": ["great"]}).status_code == 503
    loaded.set()
    assert ready(client).post("/predict", json={"texts": ["great"]}).status_code == 200


def test_a_model_that_fails_to_load_leaves_the_app_unready(make_client):
    def broken():
        raise OSError("weights unreadable")

    client = make_client(load=broken)
    deadline = time.monotonic() + 30
    while (answer := client.get("/ready")).json()["detail"].startswith("the model is still loading"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert answer.status_code == 503 and answer.json()["detail"] == "the model failed to load: weights unreadable"


def test_info_describes_the_model(client, trained_run):
    info = client.get("/info").json()
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert info["name"] == trained_run.name and info["model"] == str(trained_run.resolve())
    assert info["labels"] == ["negative", "positive"] and info["multi_label"] is False
    assert (info["max_length"], info["engine"], info["precision"], info["text_columns"]) == (32, "torchscript", "fp32", ["text"])
    assert info["metrics"] == {"best_epoch": metrics["best_epoch"], "metric_for_best": "f1_macro", **{
        split: {key: metrics[split][key] for key in ("num_examples", "accuracy", "f1_macro", "f1_micro")} for split in ("validation", "test")}}


@pytest.mark.parametrize("damage", ["not json", "[1, 2]", '{"metric_for_best": ["a"], "validation": {}}'])
def test_a_run_whose_metrics_do_not_read_is_served_without_them(trained_run, predictor, tmp_path, damage):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "metrics.json").write_text(damage)
    with TestClient(create_app(ServeOptions(str(run)), load=lambda: predictor)) as client:
        info = ready(client).get("/info").json()
        assert info["metrics"] is None and info["labels"] == ["negative", "positive"]


def test_page_and_api_docs(client):
    page = client.get("/")
    assert page.status_code == 200 and 'id="classify"' in page.text and "fetch(\"/predict\"" in page.text
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) == {"texts", "pairs", "top_k"}
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize("args,message", [
    (["--model", "nowhere"], "Error: --model nowhere: no such folder"),
    (["--precision", "fp16", "--device", "cpu"], "Error: precision: fp16 needs a CUDA device"),
    (["--port", "70000"], "less than or equal to 65535"),
    (["--device", "tpu"], "Error: --device: 'tpu' is not a device; use one of auto, cpu, cuda, cuda:N"),
])
def test_serve_refuses_bad_options_before_starting(trained_run, args, message):
    model = [] if "--model" in args else ["--model", str(trained_run)]
    result = runner.invoke(cli, ["serve", *model, *args])
    assert result.exit_code == 2 and message in result.output


def test_serve_says_when_the_port_is_taken(trained_run):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = runner.invoke(cli, ["serve", "--model", str(trained_run), "--port", str(port)])
    assert result.exit_code == 2
    assert f"Error: cannot listen on 127.0.0.1:{port} (Address already in use); choose another --port or --host" in result.output


def test_serve_says_when_the_host_does_not_resolve(trained_run):
    result = runner.invoke(cli, ["serve", "--model", str(trained_run), "--host", "no-such-host.invalid", "--port", "0"])
    assert result.exit_code == 2
    error = result.stderr.splitlines()[-1]  # after the line naming the model
    assert error.startswith("Error: cannot listen on no-such-host.invalid:0 (--host does not resolve: ")
    assert error.endswith("); give an address of this machine, such as 127.0.0.1 or 0.0.0.0") and "Traceback" not in result.output


def test_serve_stops_with_the_error_when_the_model_cannot_load(trained_run, monkeypatch):
    def broken(options):
        raise ModelError(f"{options.model}: cannot load the model (weights unreadable)")

    monkeypatch.setattr(serve, "_load_predictor", broken)
    result = runner.invoke(cli, ["serve", "--model", str(trained_run), "--port", "0", "--no-access-log"])
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == f"Error: {trained_run}: cannot load the model (weights unreadable)"
    assert result.output.count("weights unreadable") == 1, result.output  # said once


def test_serve_without_the_extra_says_how_to_install_it(trained_run, monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "bertcls.serve")  # imported afresh (from the package's attribute, too)
    monkeypatch.delattr(bertcls, "serve")
    result = runner.invoke(cli, ["serve", "--model", str(trained_run)])
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == \
        'Error: bertcls serve needs fastapi, which is not installed; install the extra with: pip install -e ".[serve]"'


@pytest.mark.slow  # in CI's second pass: a server process stopped mid-request
def test_sigterm_answers_the_request_in_flight_then_exits_0(trained_run, tmp_path):
    # A long --max-wait-ms keeps the request waiting for its batch while SIGTERM arrives.
    process = subprocess.Popen([sys.executable, "-m", "bertcls", "serve", "--model", str(trained_run), "--port", "0",
                                "--max-wait-ms", "3000", "--no-access-log"], stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        url = server_url(process)
        answers = []
        sender = threading.Thread(target=lambda: answers.append(httpx.post(f"{url}/predict", json={"texts": TEXTS}, timeout=60)))
        with httpx.Client(base_url=url, timeout=60) as http:
            while http.get("/ready").status_code != 200:
                time.sleep(0.05)
            sender.start()
            while metric(http, "bertcls_queue_depth") != 1:
                time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        sender.join(60)
        assert process.wait(60) == 0, process.stderr.read()
        assert answers[0].status_code == 200
        assert [r["text"] for r in answers[0].json()["predictions"]] == TEXTS
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/health")
    finally:
        process.kill()
        process.wait()
        process.stderr.close()


@pytest.mark.slow  # in CI's second pass: a server process stopped twice
def test_a_second_ctrl_c_quits_without_claiming_a_busy_model(trained_run, tmp_path):
    """Also: the access log's stdout has lost its reader (`| head`): its lines go nowhere, without a traceback each."""
    read, write = os.pipe()
    os.close(read)
    process = subprocess.Popen([sys.executable, "-m", "bertcls", "serve", "--model", str(trained_run), "--port", "0"],
                               stdout=write, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    os.close(write)
    try:
        url = server_url(process)
        with httpx.Client(base_url=url, timeout=60) as http:
            while http.get("/ready").status_code != 200:
                time.sleep(0.05)
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as slow:  # a request still sending its body: the model idles
            slow.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            process.send_signal(signal.SIGINT)
            time.sleep(0.5)
            process.send_signal(signal.SIGINT)
            assert process.wait(60) == 0
        said = process.stderr.read()
        assert "abandoned" not in said and "Traceback" not in said and "Logging error" not in said, said
    finally:
        process.kill()
        process.wait()
        process.stderr.close()


def server_url(process: subprocess.Popen) -> str:
    """The URL `bertcls serve` says it listens on (its stderr)."""
    deadline = time.monotonic() + 120
    for line in process.stderr:
        found = re.search(r"serving .* at (http://\S+?);", line)
        if found:
            return found.group(1)
        assert time.monotonic() < deadline, "bertcls serve did not start"
    pytest.fail(f"bertcls serve exited ({process.wait()}) before listening")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_a_browser = pytest.mark.skipif(
    CHROMIUM is None or importlib.util.find_spec("playwright") is None,
    reason="needs chromium on PATH (apt-get install chromium) and playwright (pip install playwright; never `playwright install`)")


@contextmanager
def page_of(trained_run, predictor):
    """The page of a server around `predictor`, open in headless Chromium once it shows the model."""
    from playwright.sync_api import sync_playwright
    url, stop = serve_in_thread(create_app(ServeOptions(str(trained_run)), load=lambda: predictor))
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(url)
            page.wait_for_function("document.getElementById('model').textContent.startsWith('model:')")
            yield page
            browser.close()
    finally:
        stop()


def classify(page) -> None:
    """Click Classify and wait for its answer: a label or an error."""
    page.click("#classify")
    page.wait_for_function("document.getElementById('label').textContent !== '' || document.getElementById('error').textContent !== ''")


@pytest.mark.browser
@needs_a_browser
def test_the_page_in_a_real_browser(trained_run, predictor):
    text = "a wonderful and brilliant film"
    with page_of(trained_run, predictor) as page:
        assert page.text_content("#model") == f"model: {trained_run.name} (torchscript) — labels: negative, positive"
        assert not page.is_visible("#pair")  # a model of single texts takes no second text
        page.fill("#text", text)
        classify(page)
        assert page.text_content("#label") == predictor.predict([text])[0].label
        assert page.locator(".bar").evaluate_all("rows => rows.map(r => r.dataset.label)") == ["negative", "positive"]
        page.fill("#text", "x" * 1_100_000)  # over the body limit: the error, and no earlier answer beside it
        classify(page)
        assert page.text_content("#error").startswith("the body is over")
        assert page.text_content("#label") == "" and page.locator(".bar").count() == 0


@pytest.mark.browser
@needs_a_browser
def test_the_page_asks_a_model_trained_on_pairs_for_both_texts(trained_run, predictor):
    paired = copy.copy(predictor)
    paired.trained_on = ("premise", "hypothesis")  # as a run trained on text pairs records it
    text, pair = "a wonderful film", "awful and boring"
    with page_of(trained_run, paired) as page:
        assert page.is_visible("#pair") and page.get_attribute("#pair", "placeholder") == "Type the second text (hypothesis)"
        page.fill("#text", text)
        page.fill("#pair", pair)
        classify(page)
        assert page.text_content("#error") == ""
        assert page.text_content("#label") == paired.predict([text], [pair])[0].label
