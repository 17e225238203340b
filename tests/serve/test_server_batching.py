"""MicroBatcher: concurrent items share batches (bounded size), options never mix, order is kept, timeouts clean up."""

from __future__ import annotations

import asyncio
import math
import threading
import time

from flant5_lib.serve.batching import MicroBatcher


class Recorder:
    """A generation function that answers from the inputs, so a mixed-up order would show, and records batches."""

    def __init__(self, delay: float = 0.05) -> None:
        self.batches: list[tuple[list[int], dict]] = []
        self.threads: set[str] = set()
        self.delay = delay

    def __call__(self, ids: list, kwargs: dict) -> list[str]:
        self.threads.add(threading.current_thread().name)
        self.batches.append(([s[0] for s in ids], kwargs))
        time.sleep(self.delay)
        return [f"{s[0]}:{kwargs['max_new_tokens']}" for s in ids]


def test_concurrent_items_are_batched_grouped_and_ordered() -> None:
    rec = Recorder()

    async def scenario() -> list[list[str]]:
        b = MicroBatcher(rec, max_batch_size=4, max_wait_s=0.05)
        b.start()
        try:
            await b.submit([[0]], {"max_new_tokens": 1})  # a first lone batch (no wait)
            calls = [b.submit([[i], [100 + i]], {"max_new_tokens": 1 + i % 2}) for i in range(1, 7)]
            return await asyncio.gather(*calls)
        finally:
            await b.stop()

    out = asyncio.run(scenario())
    assert out == [[f"{i}:{1 + i % 2}", f"{100 + i}:{1 + i % 2}"] for i in range(1, 7)]
    sizes = [len(ids) for ids, _ in rec.batches[1:]]
    assert max(sizes) <= 4 and len(rec.batches) - 1 < 12  # 12 items in fewer than 12 generate calls
    for ids, kwargs in rec.batches:  # one options group per batch
        assert all(((i % 100) % 2) == (kwargs["max_new_tokens"] - 1) for i in ids if i)
    assert all(name.startswith("generate") for name in rec.threads)  # off the event loop


def test_timed_out_items_are_dropped_and_errors_reach_the_caller() -> None:
    rec = Recorder(delay=0.3)

    async def scenario() -> tuple[int, str]:
        b = MicroBatcher(rec, max_batch_size=1, max_wait_s=0)
        b.start()
        try:
            first = asyncio.create_task(b.submit([[1]], {"max_new_tokens": 1}))
            await asyncio.sleep(0.05)
            try:
                await asyncio.wait_for(b.submit([[2]], {"max_new_tokens": 1}), 0.1)  # queued behind the first
            except asyncio.TimeoutError:
                pass
            await first
            await asyncio.sleep(0.4)
            failing = MicroBatcher(lambda ids, kw: 1 / 0, max_batch_size=2, max_wait_s=0)
            failing.start()
            try:
                await failing.submit([[3]], {"max_new_tokens": 1})
            except ZeroDivisionError as err:
                message = type(err).__name__
            await failing.stop()
            return len(rec.batches), message
        finally:
            await b.stop()

    n_batches, message = asyncio.run(scenario())
    assert n_batches == 1  # the timed-out item never reached the model
    assert message == "ZeroDivisionError"


def test_admission_bounds_dialogues_and_cost_and_says_when_to_retry() -> None:
    from flant5_lib.serve.batching import Admission, work_cost

    kw = {"max_new_tokens": 10, "num_beams": 2}
    assert work_cost(3, kw) == 60
    fixed = Admission(max_dialogues=4, max_cost=100, budget_s=10)
    assert fixed.admit(8, 300) is None  # a lone request is admitted over both limits (up to 3 x the cost budget)
    assert fixed.admit(1, 1).reason == "queue_dialogues"
    fixed.release(8, 300)
    assert fixed.admit(2, 60) is None and fixed.admit(2, 60).reason == "queue_cost"  # 120 > 100
    assert fixed.admit(2, 40) is None and (fixed.dialogues, fixed.cost) == (4, 100)
    fixed.release(2, 40)
    fixed.release(2, 60)
    assert (fixed.dialogues, fixed.cost) == (0, 0)

    batch = Admission(max_dialogues=8, max_cost=10, budget_s=10, free_dialogues=4)
    assert batch.admit(2, 20) is None and batch.admit(2, 20) is None  # one micro-batch's worth always fits
    assert batch.admit(1, 1).reason == "queue_cost"

    auto = Admission(max_dialogues=100, budget_s=10)
    auto.observe(cost=200, seconds=2.0)  # 100 decoder steps per second
    assert auto.max_cost == 1000  # what finishes in budget_s
    auto.observe(cost=400, seconds=2.0)
    assert 1000 < auto.max_cost < 2000  # smoothed towards 200 steps/s
    assert auto.admit(1, 900) is None
    refused = auto.admit(1, 900)
    assert refused is not None and refused.reason == "queue_cost"
    assert refused.retry_after_s == math.ceil(900 / auto.rate)  # when the queued work should be done
    auto.release(1, 900)
    assert auto.admit(1, 3 * auto.max_cost + 1).reason == "too_costly"  # even alone: it could only end in a 504
