"""Generation backends for serving and the batch CLI: one interface, three engines (transformers, CTranslate2, ONNX
Runtime), and `auto`'s routing of a lone greedy dialogue to ONNX Runtime (onnx_engine.RoutedBackend).

All take token ids made by `preprocess.encode_sources`, so every engine sees exactly the inputs training saw.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from flant5_lib.config import Params

log = logging.getLogger(__name__)

class Backend(Protocol):
    """What the server and the batch CLI need from an engine."""

    name: str
    tokenizer: PreTrainedTokenizerBase
    device: str

    def generate(self, input_ids: Sequence[Sequence[int]], gen_kwargs: dict[str, Any]) -> list[str]:
        """Summaries for one batch of encoded dialogues, in order."""
        ...


class HFBackend:
    """transformers `generate` through `inference.generate_from_ids` (the path evaluation uses)."""

    name = "hf"

    def __init__(self, model_dir: str | os.PathLike[str], device: str | None = None, threads: int = 0) -> None:
        from flant5_lib.modeling import load_model_and_tokenizer

        self.threads = threads
        self._thread_state = threading.local()
        self._use_threads()
        self.model, self.tokenizer = load_model_and_tokenizer(str(model_dir), device=device)
        self.device = str(self.model.device)

    def _use_threads(self) -> None:
        # OpenMP's thread count is per calling thread: set it in every thread that runs the model (the server's worker).
        if self.threads and not getattr(self._thread_state, "done", False):
            import torch

            torch.set_num_threads(self.threads)
            self._thread_state.done = True

    def generate(self, input_ids: Sequence[Sequence[int]], gen_kwargs: dict[str, Any]) -> list[str]:
        from flant5_lib.inference import generate_from_ids

        self._use_threads()
        return generate_from_ids(self.model, self.tokenizer, input_ids, gen_kwargs)


def _merged_adapter(adapter_dir: Path) -> Path:
    """A full model folder for an adapter-only LoRA export (CTranslate2 converts full models only): merged once into
    the serving cache, keyed on the adapter's content (the adapter folder may be read-only)."""
    from flant5_lib.modeling import load_model_and_tokenizer, save_model
    from flant5_lib.serve.cache import build_once, cache_root, content_hash

    def merge(tmp: Path) -> None:
        model, tokenizer = load_model_and_tokenizer(str(adapter_dir), device="cpu")
        save_model(model, tokenizer, tmp / "model")
        log.info("merged the LoRA adapter %s", adapter_dir)

    entry = cache_root() / "merged" / content_hash(adapter_dir, ("*",))
    return build_once(entry, merge, complete="model/config.json") / "model"


def load_backend(model_dir: str | os.PathLike[str], params: Params, device: str | None = None) -> Backend:
    """The engine `params.serve_backend` names, loaded from a local model folder (or an adapter-only LoRA export,
    merged into its recorded base model at load). `auto` is resolved from the detected hardware, and the choice logged."""
    from flant5_lib.serve.hardware import ort_compute_type, resolve_backend

    choice = resolve_backend(params, device)
    if choice.backend == "hf":
        return HFBackend(model_dir, device=device, threads=params.serve_threads)
    folder = Path(model_dir)  # CTranslate2 and the ONNX export start from a full model folder
    if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
        folder = _merged_adapter(folder)
    if choice.backend == "onnxruntime":
        from flant5_lib.serve.onnx_engine import OrtBackend

        return OrtBackend(folder, compute_type=choice.compute_type, threads=choice.threads)
    from flant5_lib.serve.ct2 import CT2Backend

    batch = CT2Backend(folder, compute_type=choice.compute_type, device=device, threads=choice.threads,
                       split_batches=params.serve_ct2_split_batches, env=choice.env)
    if choice.single == "onnxruntime" and batch.device == "cpu":
        from flant5_lib.serve.onnx_engine import MAX_PARAMETERS, OrtBackend, RoutedBackend, fits

        if fits(folder):
            return RoutedBackend(batch, OrtBackend(folder, compute_type=ort_compute_type(params), threads=choice.threads))
        log.info("serving backend: CTranslate2 decodes lone dialogues too (the model has more than the %dM parameters "
                 "the ONNX export's single-file graphs hold)", MAX_PARAMETERS // 10**6)
    return batch
