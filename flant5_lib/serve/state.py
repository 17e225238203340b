"""The model holder: loads the model in a thread at start-up (download, backend, warm-up), then parses, tokenises and
batches each request's work. Routes reach it through a FastAPI dependency (`routes.get_state`)."""

import asyncio
import contextvars
import copy
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import ValidationError

from flant5_lib.errors import ModelError
from flant5_lib.serve.schemas import ClientError, gen_kwargs, request_model, validation_message
from flant5_lib.serve.settings import DEFAULT_MODEL_DIRS, ServeSettings
from flant5_lib.serve.telemetry import Metrics

log = logging.getLogger(__name__)

CHARS_PER_TOKEN_CUT = 10  # text past max_source_length x this many characters is cut before tokenising (see _cut)
_BLANK_RUN = re.compile(r"[ \t]{2,}")
EXIT_LOAD_FAILED = 1
WARMUP_DIALOGUE = "Anna: Are we still on for lunch?\nBen: Yes, see you at noon."
T = TypeVar("T")


def one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}".splitlines()[0]


@dataclass
class Job:
    """A parsed request: its dialogues in order, how they map back to instances, and what generation costs."""

    dialogues: list[str]
    shape: list[int | None]  # per instance: None = one dialogue, n = a list of n dialogues
    gen_kwargs: dict[str, Any]
    cost: int


def _cut(dialogue: str, max_chars: int) -> str:
    """The head of an over-long dialogue, ending at a word boundary, so its tokens are those of the full text."""
    if len(dialogue) <= max_chars:
        return dialogue
    head = dialogue[:max_chars]
    space = max(head.rfind(c) for c in " \n\t")
    return head[:space] if space > 0 else head


class State:
    """Loads the model in a thread at start-up; health says 503 until one warm-up batch has run."""

    def __init__(self, settings: ServeSettings) -> None:
        from flant5_lib.serve.batching import Admission

        p = settings.params
        self.settings = settings
        self.status: Literal["loading", "ready", "failed"] = "loading"
        self.error: str | None = None
        self.backend: Any = None
        self.model_params = p
        self.batcher: Any = None
        self.metrics = Metrics()
        self.admission = Admission(max_dialogues=p.serve_max_queue_dialogues or 4 * p.serve_max_batch_size,
                                   max_cost=p.serve_max_queue_cost, budget_s=p.serve_deadline_s / 2,
                                   free_dialogues=p.serve_max_batch_size)
        self.metrics.queue_dialogues.set_function(lambda: self.admission.dialogues)
        self.metrics.queue_cost.set_function(lambda: self.admission.cost)
        self.metrics.queue_cost_limit.set_function(lambda: self.admission.max_cost)
        self.request_model = request_model(p)
        # Parsing and tokenising: off the event loop, two at a time (a 1.5 MB body takes milliseconds to seconds).
        self.cpu = ThreadPoolExecutor(max_workers=2, thread_name_prefix="parse")
        self._local = threading.local()  # a tokenizer copy per thread: Rust tokenizers must not be shared across threads
        self.download_root: Path | None = None
        self.exit_code = 0

    # loading

    def _download(self, uri: str) -> Path:
        """The gs:// folder in a temporary folder (removed at shutdown); transient failures retried with backoff."""
        from flant5_lib import storage

        self.download_root = Path(tempfile.mkdtemp(prefix="flant5-serve-"))
        attempts = self.settings.params.serve_load_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                log.info("downloading the model from AIP_STORAGE_URI (attempt %d of %d)", attempt, attempts)
                return storage.download_dir(uri, self.download_root / "model")
            except Exception as err:
                if attempt == attempts:
                    raise ModelError(f"model download failed after {attempts} attempts: {one_line(err)}") from err
                delay = min(2 ** (attempt - 1), 30)
                log.warning("model download failed (%s); retrying in %d s", one_line(err), delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _resolve_model_dir(self) -> Path:
        s = self.settings
        if s.model_dir:
            return Path(s.model_dir)
        if s.storage_uri:
            return self._download(s.storage_uri)
        for candidate in DEFAULT_MODEL_DIRS:
            if (Path(candidate) / "config.json").is_file() or (Path(candidate) / "adapter_config.json").is_file():
                return Path(candidate)
        raise ModelError(
            "no model: pass --model DIR, set FLANT5_MODEL_DIR or AIP_STORAGE_URI, or bake one into serving/model"
        )

    def _load_sync(self) -> None:
        from flant5_lib.preprocess import load_preprocessing
        from flant5_lib.serve.backends import load_backend

        if self.settings.load_hook is not None:
            self.settings.load_hook()
        started = time.monotonic()
        model_dir = self._resolve_model_dir()
        if not ((model_dir / "config.json").is_file() or (model_dir / "adapter_config.json").is_file()):
            raise ModelError(f"{model_dir}: no config.json (nor a LoRA adapter_config.json); is this a model folder?")
        self.model_params = load_preprocessing(model_dir, self.settings.params)
        self.backend = load_backend(model_dir, self.model_params, device=self.settings.device)
        log.info("loaded model %s on device %s with backend %s in %.1f s",
                 model_dir, self.backend.device, self.backend.name, time.monotonic() - started)

    async def load(self) -> None:
        from flant5_lib.serve.batching import MicroBatcher

        p = self.settings.params
        try:
            await asyncio.to_thread(self._load_sync)
            self.batcher = MicroBatcher(self._run_batch, max_batch_size=p.serve_max_batch_size,
                                        max_wait_s=p.serve_max_wait_ms / 1000, on_batch=self._on_batch)
            self.batcher.start()
            started = time.monotonic()
            # Warm-up: a first call pays the one-time costs; then one batch like the real ones gives the admission
            # limit its first throughput figure.
            for n, tokens in ((1, 2), (min(8, p.serve_max_batch_size), 8)):
                self.admission.rate = None  # only the last warm-up batch counts
                ids, _ = await self.off_loop(self.encode, [WARMUP_DIALOGUE] * n)
                await self.batcher.submit(ids, {"max_new_tokens": tokens, "min_new_tokens": tokens, "num_beams": 1,
                                                "do_sample": False})
            self.status = "ready"
            self.metrics.ready.set(1)
            log.info("warm-up done in %.2f s; ready (batch <= %d, wait <= %g ms, queue <= %d dialogues / %d decoder steps)",
                     time.monotonic() - started, p.serve_max_batch_size, p.serve_max_wait_ms,
                     self.admission.max_dialogues, self.admission.max_cost)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            self.status, self.error = "failed", type(err).__name__
            log.debug("model load traceback", exc_info=True)
            if not self.settings.exit_on_failure:
                log.error("model failed to load: %s", one_line(err))
                return
            log.error("model failed to load, exiting with code %d: %s", EXIT_LOAD_FAILED, one_line(err))
            self.exit_code = EXIT_LOAD_FAILED
            os.kill(os.getpid(), signal.SIGTERM)  # uvicorn shuts down; the lifespan then exits with the code

    def close(self) -> None:
        self.cpu.shutdown(wait=False, cancel_futures=True)
        if self.download_root is not None:
            shutil.rmtree(self.download_root, ignore_errors=True)  # a downloaded model is never left behind

    # per request

    async def off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """Run CPU work in the parse pool, keeping the request's context (its id in the log lines)."""
        ctx = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(self.cpu, ctx.run, fn, *args)

    def _tokenizer(self) -> Any:
        tok = getattr(self._local, "tokenizer", None)
        if tok is None:
            tok = self._local.tokenizer = copy.deepcopy(self.backend.tokenizer)
        return tok

    def parse(self, raw: bytes) -> Job:
        """The body validated against the request model, flattened to dialogues (a ClientError when it is bad)."""
        if not raw.strip():
            raise ClientError(400, 'request body is empty; send {"instances": ["dialogue", ...], "parameters": {...}}')
        try:
            body: Any = self.request_model.model_validate_json(raw)
        except ValidationError as err:
            raise ClientError(*validation_message(err.errors(include_url=False))) from None
        dialogues: list[str] = []
        shape: list[int | None] = []
        for inst in body.instances:
            if isinstance(inst, list):
                shape.append(len(inst))
                dialogues.extend(inst)
            else:
                shape.append(None)
                dialogues.append(inst if isinstance(inst, str) else inst.dialogue)
        limit = self.settings.params.serve_max_instances
        if len(dialogues) > limit:
            raise ClientError(422, f"instances: {len(dialogues)} dialogues in all; at most {limit} per request")
        from flant5_lib.serve.batching import work_cost

        kw = gen_kwargs(body.parameters, self.model_params, self.settings.params)
        return Job(dialogues, shape, kw, work_cost(len(dialogues), kw))

    def encode(self, dialogues: list[str]) -> tuple[list[list[int]], list[bool]]:
        """Token ids as training made them. Text far past max_source_length is cut by characters first (the tokens
        past the limit are dropped anyway); if a cut text no longer reaches the limit, the full text is used."""
        from flant5_lib.preprocess import encode_sources

        tok, p = self._tokenizer(), self.model_params
        chars = p.max_source_length * CHARS_PER_TOKEN_CUT
        cut = [_cut(d, chars) for d in dialogues]
        ids, truncated = encode_sources(tok, cut, p)
        for i, (full, short) in enumerate(zip(dialogues, cut)):
            if short is not full and not truncated[i]:
                # The cut text fell short of the limit: the tokenizer collapses runs of blanks. Squeeze them (the same
                # tokens for such a tokenizer) and cut again, so megabytes of blanks never reach the slow path.
                squeezed = _BLANK_RUN.sub(" ", full)
                (ids[i],), (truncated[i],) = encode_sources(tok, [_cut(squeezed, chars)], p)
                if not truncated[i] and len(squeezed) > chars:
                    (ids[i],), (truncated[i],) = encode_sources(tok, [squeezed], p)
        return ids, truncated

    def _run_batch(self, ids: list[Sequence[int]], gen_kwargs: dict[str, Any]) -> list[str]:
        texts = self.backend.generate(ids, gen_kwargs)
        self._generated = sum(len(t) for t in self._tokenizer()(texts, add_special_tokens=False)["input_ids"])
        return texts

    def _on_batch(self, size: int, gen_kwargs: dict[str, Any], seconds: float) -> None:
        from flant5_lib.serve.batching import work_cost

        self.admission.observe(work_cost(size, gen_kwargs), seconds)
        self.metrics.batch_size.observe(size)
        self.metrics.batch_seconds.observe(seconds)
        generated = getattr(self, "_generated", 0)
        self.metrics.generated_tokens.inc(generated)
        self.metrics.tokens_per_second.set(generated / seconds if seconds > 0 else 0)

