"""The Batcher: requests merged into model batches, each answered in its order, one failure kept to its request."""

import asyncio
import threading

from bertcls.batching import Batcher
from bertcls.predict import Prediction


def fake_predict(texts, pairs=None):
    """A model that fails on any batch holding 'boom'."""
    if any("boom" in text for text in texts):
        raise RuntimeError("boom inside the model")
    return [Prediction(label="x", score=1.0, probabilities={"x": 1.0}, truncated=len(text) > 10) for text in texts]


def recording():
    """A list of the batches the model was called with, and the fake model that fills it."""
    calls = []

    def predict(texts, pairs):
        calls.append(list(texts))
        return fake_predict(texts, pairs)

    return calls, predict


def test_a_failing_request_fails_alone_in_its_batch():
    calls, predict = recording()

    async def scenario():
        batcher = Batcher(predict, max_batch_size=64, max_wait_s=0.2)
        batcher.start()
        results = await asyncio.gather(batcher.submit(["one", "two"]), batcher.submit(["boom"]), batcher.submit(["three"]),
                                       return_exceptions=True)
        await batcher.close()
        return results

    good, bad, other = asyncio.run(scenario())
    assert [r.label for r in good] == ["x", "x"] and len(other) == 1
    assert isinstance(bad, RuntimeError) and str(bad) == "boom inside the model"
    assert calls == [["one", "two", "boom", "three"], ["one", "two"], ["boom"], ["three"]]  # merged, then each alone


def test_batches_keep_pairs_apart_and_respect_the_size_limit():
    calls = []

    def predict(texts, pairs):
        calls.append((len(texts), pairs is not None))
        return fake_predict(texts, pairs)

    async def scenario():
        batcher = Batcher(predict, max_batch_size=4, max_wait_s=0.2)
        batcher.start()
        await asyncio.gather(batcher.submit(["a", "b"]), batcher.submit(["c"], ["p"]), batcher.submit(["d", "e"]),
                             batcher.submit(["f"] * 6))
        await batcher.close()

    asyncio.run(scenario())
    # first batch: 2 + 1 texts (the next request would make 5), split by pairs; then 2; then the 6 alone
    assert calls == [(2, False), (1, True), (2, False), (6, False)]


def test_a_request_whose_client_left_leaves_the_queue_at_once_and_batching_goes_on():
    """At once, not when its turn comes: meanwhile it would count in the queue's depth, and fill the batch others wait to join."""
    calls, predict = recording()

    async def scenario():
        batcher = Batcher(predict, max_batch_size=64, max_wait_s=0.5)
        batcher.start()
        first = asyncio.create_task(batcher.submit(["first"]))
        left = asyncio.create_task(batcher.submit(["gone"]))
        await asyncio.sleep(0.05)  # both wait for the batch to fill
        left.cancel()  # as when the client disconnects while its request waits
        await asyncio.sleep(0.05)
        depth = len(batcher.waiting)
        await first
        later = await asyncio.wait_for(batcher.submit(["next"]), 5)
        await batcher.close()
        return depth, later

    depth, later = asyncio.run(scenario())
    assert depth == 1 and [r.label for r in later] == ["x"]
    assert calls == [["first"], ["next"]]


def test_a_bug_in_batching_fails_the_batch_not_the_server():
    def on_batch(results, seconds):
        if any(result.truncated for result in results):
            raise ValueError("a bug in the metrics")

    async def scenario():
        batcher = Batcher(fake_predict, max_batch_size=64, max_wait_s=0, on_batch=on_batch)
        batcher.start()
        failed = await asyncio.gather(batcher.submit(["a text over ten characters"]), return_exceptions=True)
        later = await batcher.submit(["fine"])
        await batcher.close()
        return failed[0], later

    failed, later = asyncio.run(scenario())
    assert isinstance(failed, ValueError) and [r.label for r in later] == ["x"]


def test_a_request_that_waited_while_a_batch_ran_does_not_wait_again():
    # max_wait_s counts from the oldest request's arrival: "b" waits it out behind a running batch, so the next batch
    # takes "b" at once. Counted from when that batch started, "b" would wait again, and "c", sent the moment the
    # first batch is answered, would join it.
    running, release, calls = threading.Event(), threading.Event(), []

    def predict(texts, pairs):
        calls.append(list(texts))
        running.set()
        release.wait(30)
        return fake_predict(texts, pairs)

    async def scenario():
        batcher = Batcher(predict, max_batch_size=2, max_wait_s=0.3)
        batcher.start()
        first = asyncio.create_task(batcher.submit(["a1", "a2"]))  # a full batch: runs at once
        await asyncio.to_thread(running.wait, 30)
        b = asyncio.create_task(batcher.submit(["b"]))
        await asyncio.sleep(0.6)  # twice max_wait_s, while the model still runs the first batch
        release.set()
        await first
        c = asyncio.create_task(batcher.submit(["c"]))
        await asyncio.gather(b, c)
        await batcher.close()

    asyncio.run(scenario())
    assert calls == [["a1", "a2"], ["b"], ["c"]]
