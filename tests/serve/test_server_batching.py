"""MicroBatcher: concurrent items share batches (bounded size), options never mix, order is kept, timeouts clean up;
and the server, over real HTTP, merges different clients' requests into one generate call."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from pathlib import Path

import httpx

from flant5_lib.serve.batching import MicroBatcher


class Recorder:
    """A generation function that answers from the inputs, so a mixed-up order would show, and records batches.

    `hold_first` keeps the first call waiting on an event the test sets, so the items submitted meanwhile are all
    queued when the worker forms its next batch: merging is then decided by the batcher, not by timing."""

    def __init__(self, hold_first: bool = False, delay: float = 0.0) -> None:
        self.batches: list[tuple[list[int], dict]] = []
        self.threads: set[str] = set()
        self.delay = delay
        self.entered = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()

    def __call__(self, ids: list, kwargs: dict) -> list[str]:
        self.threads.add(threading.current_thread().name)
        self.batches.append(([s[0] for s in ids], kwargs))
        self.entered.set()
        assert self.release.wait(60), "the test never released the first batch (hang guard)"
        time.sleep(self.delay)
        return [f"{s[0]}:{kwargs['max_new_tokens']}" for s in ids]


def test_concurrent_items_are_batched_across_clients_grouped_and_ordered() -> None:
    """Six clients' requests (two dialogues each, two option groups) queue behind a held batch; once it is released
    they go out in as few generate calls as the bound allows, mixing clients but never option groups."""
    rec = Recorder(hold_first=True)

    async def scenario() -> list[list[str]]:
        b = MicroBatcher(rec, max_batch_size=4, max_wait_s=0.05)
        b.start()
        try:
            first = asyncio.create_task(b.submit([[0]], {"max_new_tokens": 1}))  # a lone batch, held in the model
            await asyncio.to_thread(rec.entered.wait, 60)
            calls = [asyncio.create_task(b.submit([[i], [100 + i]], {"max_new_tokens": 1 + i % 2})) for i in range(1, 7)]
            await asyncio.sleep(0)  # each task has queued its items (submit queues before its first await)
            assert len(rec.batches) == 1  # nothing else reached the model while it was held
            rec.release.set()
            await first
            return await asyncio.gather(*calls)
        finally:
            await b.stop()

    out = asyncio.run(scenario())
    assert out == [[f"{i}:{1 + i % 2}", f"{100 + i}:{1 + i % 2}"] for i in range(1, 7)]
    later = rec.batches[1:]
    assert all(len(ids) <= 4 for ids, _ in later)
    for ids, kwargs in later:  # one options group per batch
        assert {i % 100 % 2 for i in ids} == {kwargs["max_new_tokens"] - 1}
    clients = [{i % 100 for i in ids} for ids, _ in later]
    assert any(len(c) > 1 for c in clients), f"no batch merged two clients' requests: {clients}"
    assert len(later) == 4  # 6 items per group, at most 4 per call: 2 calls per group (a non-merging batcher needs 6)
    assert all(name.startswith("generate") for name in rec.threads)  # off the event loop


def test_timed_out_items_are_dropped_and_errors_reach_the_caller() -> None:
    """The first batch is held in the model until the second request has timed out, so the second one is still
    queued when its caller gives up, on any machine."""
    rec = Recorder(hold_first=True)

    async def scenario() -> tuple[int, str]:
        b = MicroBatcher(rec, max_batch_size=1, max_wait_s=0)
        b.start()
        try:
            first = asyncio.create_task(b.submit([[1]], {"max_new_tokens": 1}))
            await asyncio.to_thread(rec.entered.wait, 60)
            try:
                await asyncio.wait_for(b.submit([[2]], {"max_new_tokens": 1}), 0.05)  # queued behind the held first
            except asyncio.TimeoutError:
                pass
            else:
                raise AssertionError("the second request finished while the first was still held")
            rec.release.set()
            await first
            third = await b.submit([[3]], {"max_new_tokens": 1})  # the worker has moved past the dropped item
            failing = MicroBatcher(lambda ids, kw: 1 / 0, max_batch_size=2, max_wait_s=0)
            failing.start()
            try:
                await failing.submit([[3]], {"max_new_tokens": 1})
            except ZeroDivisionError as err:
                message = type(err).__name__
            await failing.stop()
            assert third == ["3:1"]
            return len(rec.batches), message
        finally:
            await b.stop()

    n_batches, message = asyncio.run(scenario())
    assert n_batches == 2  # the first and the third: the timed-out item never reached the model
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


DIALOGUES = [
    "Amanda: I baked cookies. Do you want some?\nJerry: Sure!\nAmanda: I'll bring you tomorrow :-)",
    "Tom: Are we meeting at 6?\nAnna: Yes, at the station.\nTom: Great, see you.",
    "Kim: did you finish the report?\nLeo: almost, I need one more hour\nKim: ok, send it to me when done",
    "Mia: I lost my keys again\nNoah: check the kitchen\nMia: found them, thanks!",
]


def test_the_server_merges_requests_from_different_clients(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Over real HTTP: while one client's request is held in the model, three other clients' requests queue; the next
    generate call carries all three (so they were merged across connections), and each client gets its own summary."""
    from tests.helpers.serve import Gate, make_talkative_model, thread_server, wait_until

    from flant5_lib.config import Params
    from flant5_lib.procs import free_port
    from flant5_lib.serve.app import ServeSettings, create_app

    talk = make_talkative_model(tiny_model_dir, tmp_path / "talk")
    params = Params(serve_backend="hf", serve_max_batch_size=8, serve_max_queue_cost=10**9)  # hf: exact, like alone
    app = create_app(ServeSettings(model_dir=str(talk), params=params, exit_on_failure=False))
    body = lambda d: {"instances": [d], "parameters": {"max_new_tokens": 8}}  # noqa: E731

    with thread_server(app, free_port()) as base:
        wait_until(base + "/health", 200, timeout=60)
        alone = [httpx.post(base + "/predict", json=body(d), timeout=60).json()["predictions"][0] for d in DIALOGUES]
        assert len(set(alone)) == len(DIALOGUES)  # the outputs differ per dialogue, so a mix-up would show
        state, gate = app.state.serve, Gate()
        sizes: list[int] = []
        generate = state.backend.generate
        state.backend.generate = gate.wrap(lambda ids, kw: (sizes.append(len(ids)), generate(ids, kw))[1])
        submitted: list[int] = []
        submit = state.batcher.submit

        async def counted_submit(ids, kw):  # runs on the event loop; the items are queued before its first await
            submitted.append(len(ids))
            return await submit(ids, kw)

        state.batcher.submit = counted_submit

        async def clients() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=60) as c1, httpx.AsyncClient(timeout=60) as c2, \
                    httpx.AsyncClient(timeout=60) as c3, httpx.AsyncClient(timeout=60) as c4:
                held = asyncio.ensure_future(c1.post(base + "/predict", json=body(DIALOGUES[0])))
                await asyncio.to_thread(gate.wait_entered, 1)  # the first client's batch is in the model
                rest = [asyncio.ensure_future(c.post(base + "/predict", json=body(d)))
                        for c, d in zip((c2, c3, c4), DIALOGUES[1:])]
                end = time.monotonic() + 60  # hang guard only
                while len(submitted) < 4:
                    assert time.monotonic() < end and not any(r.done() for r in rest), "requests never queued"
                    await asyncio.sleep(0.01)
                gate.open()
                return [await held, *await asyncio.gather(*rest)]

        answers = asyncio.run(clients())
        assert [r.status_code for r in answers] == [200] * 4, [r.text for r in answers]
        assert [r.json()["predictions"][0] for r in answers] == alone  # each client got its own dialogue's summary
        assert sizes == [1, 3], sizes  # one generate call for the three queued clients
