"""Micro-batching for the prediction server: concurrent requests share one `generate` call.

On CPU (and even more on a GPU) one batch of 16 dialogues costs far less than 16 single calls, so the
server gathers items for at most `max_wait_s` (or until `max_batch_size`), groups them by generation
options (only identical options can share a `generate` call) and runs each batch in ONE worker thread,
so the event loop keeps answering health checks while the model works.
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

    def __init__(self, run_batch: RunBatch, *, max_batch_size: int, max_wait_s: float) -> None:
        self.run_batch = run_batch
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
            try:
                texts = await loop.run_in_executor(self.executor, self.run_batch, [i.ids for i in batch], gen_kwargs)
            except Exception as err:  # a failed batch fails its requests, never the loop
                log.exception("generation failed for a batch of %d", len(batch))
                for i in batch:
                    if not i.future.done():
                        i.future.set_exception(err)
                continue
            self.batches_run += 1
            for i, text in zip(batch, texts):
                if not i.future.done():
                    i.future.set_result(text)
