"""The serve app's dynamic batcher: concurrent requests that queue while a batch runs form the next batch, each
gets its own result in order, an error reaches exactly the requests of its batch, and the batched text search
returns what one-at-a-time search returns. No timing: the first batch blocks until the test has seen every other
request queued (a condition that stays true while the worker is held)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from fashiontune.serve.batching import Batcher


def hold_first_batch(n: int, run):
    """A 1-worker batcher whose first batch waits until n - 1 more requests are queued; then n submits."""
    release = threading.Event()
    calls: list[list] = []

    def wrapped(batch):
        calls.append(list(batch))
        if len(calls) == 1:
            release.wait(timeout=60)
        return run(batch)

    b = Batcher(wrapped, max_batch=16, workers=1)
    results: dict[int, object] = {}

    def client(i: int) -> None:
        try:
            results[i] = b.submit(i)
        except Exception as e:  # noqa: BLE001 - the test inspects it
            results[i] = e

    first = threading.Thread(target=client, args=(0,))
    first.start()
    while not calls:  # the worker holds request 0 (stays true until released)
        threading.Event().wait(0.01)
    rest = [threading.Thread(target=client, args=(i,)) for i in range(1, n)]
    for t in rest:
        t.start()
    while b._queue.qsize() < n - 1:  # every other request queued behind the held batch (stays true while held)
        threading.Event().wait(0.01)
    release.set()
    for t in [first, *rest]:
        t.join(timeout=60)
    return b, calls, results


def test_requests_queued_during_a_batch_run_as_one_batch_with_their_own_results():
    b, calls, results = hold_first_batch(6, lambda batch: [x * 10 for x in batch])
    assert calls[0] == [0] and sorted(calls[1]) == [1, 2, 3, 4, 5] and len(calls) == 2
    assert results == {i: i * 10 for i in range(6)}
    assert b.batch_sizes == {1: 1, 5: 1}


def test_an_error_reaches_the_requests_of_its_batch_and_the_worker_lives_on():
    def run(batch):
        if 3 in batch:
            raise ValueError("bad batch")
        return [x + 1 for x in batch]

    b, _, results = hold_first_batch(4, run)
    assert results[0] == 1
    assert all(isinstance(results[i], ValueError) for i in (1, 2, 3))
    assert b.submit(7) == 8  # the worker survived
    assert asyncio.run(b.submit_async(9)) == 10  # and serves an event loop too


def test_wrong_result_count_is_an_error_not_a_hang():
    b = Batcher(lambda batch: [], workers=1)
    with pytest.raises(RuntimeError, match="0 results for 1 items"):
        b.submit(1)
