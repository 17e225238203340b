"""Micro-batching for the prediction server: concurrent requests share one `generate` call.

On CPU (and even more on a GPU) one batch of 16 dialogues costs far less than 16 single calls, so the
server gathers items for at most `max_wait_s` (or until `max_batch_size`), groups them by generation
options (only identical options can share a `generate` call) and runs each batch in ONE worker thread,
so the event loop keeps answering health checks while the model works. `Admission` bounds what may wait
in front of that worker, so overload is refused at once (429) instead of queued past the deadline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

RunBatch = Callable[[list[Sequence[int]], dict[str, Any]], list[str]]
OnBatch = Callable[[int, dict[str, Any], float], None]  # (batch size, generation options, seconds)


def kwargs_key(gen_kwargs: dict[str, Any]) -> Hashable:
    """Items may share a batch only when every generation option is the same."""
    return tuple(sorted(gen_kwargs.items()))


@dataclass
class _Item:
    ids: Sequence[int]
    future: asyncio.Future[str]
    arrived: float = field(default_factory=time.monotonic)


class MicroBatcher:
    """Queue items per generation-options key; one worker loop forms batches and runs them off the event loop."""

    def __init__(
        self, run_batch: RunBatch, *, max_batch_size: int, max_wait_s: float, on_batch: OnBatch | None = None
    ) -> None:
        self.run_batch = run_batch
        self.on_batch = on_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.queues: OrderedDict[Hashable, tuple[dict[str, Any], list[_Item]]] = OrderedDict()
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_batch_size = 0
        self.batches_run = 0

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="micro-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, input_ids: Sequence[Sequence[int]], gen_kwargs: dict[str, Any]) -> list[str]:
        """Summaries for these encoded dialogues, in order. Cancelling the caller drops its queued items."""
        assert self._wakeup is not None, "MicroBatcher.start() was not called"
        loop = asyncio.get_running_loop()
        key = kwargs_key(gen_kwargs)
        items = [_Item(ids, loop.create_future()) for ids in input_ids]
        self.queues.setdefault(key, (gen_kwargs, []))[1].extend(items)
        self._wakeup.set()
        try:
            return list(await asyncio.gather(*(i.future for i in items)))
        finally:
            for i in items:  # a timed-out request leaves nothing behind for the worker
                if not i.future.done():
                    i.future.cancel()

    def _pending(self, key: Hashable) -> list[_Item]:
        items = self.queues[key][1]
        items[:] = [i for i in items if not i.future.done()]
        return items

    def _oldest_key(self) -> Hashable | None:
        for key in list(self.queues):
            if self._pending(key):
                return key
            del self.queues[key]
        return None

    async def _loop(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            key = self._oldest_key()
            if key is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # Wait for company only if the last batch had some: a lone client pays no batching delay.
            if self._last_batch_size > 1:
                deadline = self.queues[key][1][0].arrived + self.max_wait_s
                while len(self._pending(key)) < self.max_batch_size and (left := deadline - time.monotonic()) > 0:
                    self._wakeup.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), left)
            if not self._pending(key):
                continue
            gen_kwargs, items = self.queues.pop(key)
            batch, rest = items[: self.max_batch_size], items[self.max_batch_size :]
            if rest:  # leftovers keep their place at the front of the line
                self.queues[key] = (gen_kwargs, rest)
                self.queues.move_to_end(key, last=False)
            self._last_batch_size = len(batch)
            started = time.monotonic()
            try:
                texts = await loop.run_in_executor(self.executor, self.run_batch, [i.ids for i in batch], gen_kwargs)
            except Exception as err:  # a failed batch fails its requests, never the loop
                log.exception("generation failed for a batch of %d", len(batch))
                for i in batch:
                    if not i.future.done():
                        i.future.set_exception(err)
                continue
            self.batches_run += 1
            if self.on_batch is not None:
                self.on_batch(len(batch), gen_kwargs, time.monotonic() - started)
            for i, text in zip(batch, texts):
                if not i.future.done():
                    i.future.set_result(text)


def work_cost(dialogues: int, gen_kwargs: dict[str, Any]) -> int:
    """Decoder steps a request may take: what generation time grows with (dialogues x beams x new tokens)."""
    return dialogues * int(gen_kwargs.get("num_beams", 1)) * int(gen_kwargs["max_new_tokens"])


@dataclass
class Rejection:
    """Why a request was refused, and when to try again (seconds, for the Retry-After header)."""

    reason: str
    message: str
    retry_after_s: int


class Admission:
    """A bound on queued + in-flight work, checked before any CPU is spent on a request (TorchServe's job queue
    size, KServe's containerConcurrency). Two limits: dialogues, and cost in decoder steps. The cost limit may be
    automatic: the work this server finishes in `budget_s`, from a throughput measured on every batch, so what is
    admitted can finish before the deadline. A lone request is admitted (refusing it would never help), and so is
    anything while no more than `free_dialogues` (one full micro-batch) are queued: the server is built to run those
    together, and a throughput measured on small batches underrates it. Only a request that alone costs well over
    what fits before the deadline is refused whatever the queue (`too_costly`): it could only end in a 504."""

    def __init__(self, *, max_dialogues: int, max_cost: int = 0, budget_s: float, free_dialogues: int = 0,
                 smoothing: float = 0.3) -> None:
        self.max_dialogues = max_dialogues
        self.free_dialogues = free_dialogues
        self.fixed_cost = max_cost
        self.budget_s = budget_s
        self.smoothing = smoothing
        self.rate: float | None = None  # decoder steps per second, smoothed over batches
        self.dialogues = 0
        self.cost = 0

    @property
    def max_cost(self) -> int:
        if self.fixed_cost:
            return self.fixed_cost
        return max(1, int((self.rate or 0.0) * self.budget_s))

    def observe(self, cost: int, seconds: float) -> None:
        """One finished batch: update the throughput estimate behind the automatic cost limit."""
        if seconds <= 0 or cost <= 0:
            return
        rate = cost / seconds
        self.rate = rate if self.rate is None else (1 - self.smoothing) * self.rate + self.smoothing * rate

    def retry_after(self) -> int:
        """Seconds until the queued work should be done (at least 1)."""
        return max(1, min(60, int(-(-self.cost // max(self.rate or 1.0, 1e-9)))))

    def check(self, dialogues: int, cost: int) -> Rejection | None:
        """Why a request of this size would be refused now, or None; reserves nothing."""
        if cost > 3 * self.max_cost:  # over 1.5 x what this server generates within the deadline: it cannot finish
            return Rejection("too_costly", f"this request needs {cost} decoder steps (dialogues x num_beams x "
                             f"max_new_tokens), more than this server generates before its deadline; send fewer "
                             "instances or lower max_new_tokens / num_beams", 0)
        if self.dialogues and self.dialogues + dialogues > self.free_dialogues:
            if self.dialogues + dialogues > self.max_dialogues:
                return Rejection("queue_dialogues", f"server busy: {self.dialogues} dialogues queued "
                                 f"(limit {self.max_dialogues}); retry later or send fewer instances", self.retry_after())
            if self.cost + cost > self.max_cost:
                return Rejection("queue_cost", f"server busy: queued work is at its limit ({self.cost} + {cost} > "
                                 f"{self.max_cost} decoder steps); retry later, or lower max_new_tokens / num_beams",
                                 self.retry_after())
        return None

    def admit(self, dialogues: int, cost: int) -> Rejection | None:
        """Reserve room for a request (release it with `release`), or say why not."""
        if (refused := self.check(dialogues, cost)) is not None:
            return refused
        self.dialogues += dialogues
        self.cost += cost
        return None

    def release(self, dialogues: int, cost: int) -> None:
        self.dialogues -= dialogues
        self.cost -= cost
