"""CTranslate2 backend: the saved Hugging Face model converted once (int8 on CPU by default), then cached.

Why a custom T5 loader: transformers 5.x always sets `T5Config.tie_word_embeddings = True` and records the real
T5 v1.1 / Flan-T5 behaviour in `scale_decoder_outputs` (False: no d_model**-0.5 rescaling before the LM head).
ctranslate2 4.8.5's stock `T5Loader` still reads `tie_word_embeddings`, so it would rescale Flan-T5's decoder
output. Greedy argmax is unchanged by a positive scale, but the probabilities (beam search, scores) are not.
`_FixedT5Loader` reads `scale_decoder_outputs` when present and is swapped in only for the conversion.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from flant5_lib.errors import ModelError
from flant5_lib.serve.cache import build_once, cache_root, content_hash

log = logging.getLogger(__name__)

SOURCE_FILE = "flant5_source.json"  # written last: the HF folder a conversion came from, and its fingerprint
# CPU: a micro-batch arrives in request order, so one long dialogue pads every other to its length (56% of the
# encoder's work for 16 SAMSum test dialogues; the encoder is 91% of a 16-token summary's FLOPs). CTranslate2 sorts
# by length before cutting a batch into sub-batches; 4 beat 1, 2, 8 and whole batches of 16 there.
CPU_SUB_BATCH = 4


def fingerprint(model_dir: Path) -> str:
    """The model's content hash: changes whenever what is converted changes (the config, the weights or the
    vocabulary: a SentencePiece `spiece.model` is copied into the conversion too), so a stale conversion is never
    served, and a copy of the same model (new mtimes) reuses its conversion."""
    return content_hash(model_dir)


@contextlib.contextmanager
def _fixed_t5_loader() -> Iterator[None]:
    from ctranslate2.converters import transformers as ct2t
    from ctranslate2.specs import model_spec

    class _FixedT5Loader(ct2t.T5Loader):
        def get_model_spec(self, model: Any) -> Any:
            spec = super().get_model_spec(model)
            scale = getattr(model.config, "scale_decoder_outputs", model.config.tie_word_embeddings)
            if not scale:
                spec.decoder.scale_outputs = model_spec.OPTIONAL  # the spec's default: no rescaling
            return spec

    key = "T5Config"
    old = ct2t._MODEL_LOADERS.get(key)
    ct2t._MODEL_LOADERS[key] = _FixedT5Loader()
    try:
        yield
    finally:
        if old is not None:
            ct2t._MODEL_LOADERS[key] = old


def convert_model(model_dir: str | os.PathLike[str], compute_type: str = "int8") -> Path:
    """Convert a HF T5 folder to CTranslate2 (weights quantized to `compute_type`) once; later calls reuse it.

    The conversion lives in the serving cache, never in the (maybe read-only) model folder, keyed by the model's
    content, the compute type and the ctranslate2 version (another version converts anew rather than trust old files).
    """
    import ctranslate2

    src = Path(model_dir)
    if not (src / "config.json").is_file():
        raise ModelError(f"{src}: no config.json; CTranslate2 converts a saved Hugging Face model folder")
    if not any(src.glob("*.safetensors")):  # the converter would torch.load a pytorch_model.bin (pickle)
        raise ModelError(f"{src}: no .safetensors weights; only safetensors are loaded (re-save with safe_serialization=True)")
    fp = fingerprint(src)
    entry = cache_root() / "ct2" / f"{fp}-{compute_type}-ct2-{ctranslate2.__version__}"

    def convert(tmp: Path) -> None:
        from ctranslate2.converters import TransformersConverter

        quant = None if compute_type == "float32" else compute_type
        with _fixed_t5_loader():
            TransformersConverter(str(src)).convert(str(tmp), quantization=quant, force=True)
        (tmp / SOURCE_FILE).write_text(json.dumps({"source": str(src.resolve()), "fingerprint": fp,
                                                   "compute_type": compute_type}))
        log.info("converted %s to CTranslate2 (%s) in %s", src, compute_type, entry)

    return build_once(entry, convert, complete=SOURCE_FILE)


_SAME_NAME_OPTIONS = ("length_penalty", "no_repeat_ngram_size", "repetition_penalty")


class CT2Backend:
    """Same inputs (token ids from encode_sources) and same decoding as `HFBackend`, run by CTranslate2.

    On CPU a batch of several dialogues is cut into length-sorted sub-batches (`CPU_SUB_BATCH`) shared among
    `threads` single-threaded replicas that decode in parallel (CTranslate2's `inter_threads`): less padding, and one
    decoding step is a handful of small matrix products that two OpenMP threads share badly. A lone dialogue (nothing
    to split) runs on one replica using all threads, for the lowest latency. Each extra replica costs one copy of the weights
    (about 200 MB for flan-t5-base in int8); `split_batches=False` keeps one replica and whole batches.
    """

    name = "ctranslate2"

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        compute_type: str = "int8",
        device: str | None = None,
        threads: int = 0,
        *,
        split_batches: bool = True,
        env: dict[str, str] | None = None,
    ) -> None:
        # Before the first Translator: CTranslate2 reads CT2_* settings (CT2_FORCE_CPU_ISA) once per process.
        for key, value in (env or {}).items():
            os.environ.setdefault(key, value)
        import ctranslate2

        from flant5_lib.modeling import load_tokenizer
        from flant5_lib.serve.hardware import usable_cores

        if device is None or device == "auto":
            device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        device = device.split(":")[0]
        self.device = device
        self.compute_type = compute_type
        self.tokenizer = load_tokenizer(str(model_dir))
        self.path = convert_model(model_dir, compute_type)
        # One thread per core we may use (ctranslate2's default of 4 oversubscribes small serving VMs).
        self.threads = threads or usable_cores()
        cpu = device == "cpu"
        self.translator = ctranslate2.Translator(
            str(self.path), device=device, compute_type=compute_type, intra_threads=self.threads if cpu else 0
        )
        self.split_batches = cpu and split_batches
        self.batch_translator = None
        if self.split_batches and self.threads > 1:
            self.batch_translator = ctranslate2.Translator(
                str(self.path), device=device, compute_type=compute_type, intra_threads=1, inter_threads=self.threads
            )

    def _translate(self, input_ids: Sequence[Sequence[int]], **options: Any) -> list[list[int]]:
        tokens = [self.tokenizer.convert_ids_to_tokens(list(s)) for s in input_ids]
        options["max_input_length"] = 0  # inputs are already truncated by encode_sources
        if self.split_batches and len(tokens) > 1:
            translator = self.batch_translator or self.translator
            results = translator.translate_batch(tokens, max_batch_size=CPU_SUB_BATCH, batch_type="examples", **options)
        else:
            results = self.translator.translate_batch(tokens, **options)
        return [self.tokenizer.convert_tokens_to_ids(r.hypotheses[0]) for r in results]

    def greedy_ids(self, input_ids: Sequence[Sequence[int]], max_new_tokens: int, min_new_tokens: int = 0) -> list[list[int]]:
        """Greedy token ids (no decoder start token): what agreement checks compare with transformers' `generate`."""
        return self._translate(input_ids, beam_size=1, max_decoding_length=max_new_tokens, min_decoding_length=min_new_tokens)

    def generate(self, input_ids: Sequence[Sequence[int]], gen_kwargs: dict[str, Any]) -> list[str]:
        # The settings a model's generation_config.json may carry (inference.generation_kwargs) have the same names
        # and meaning in CTranslate2's translate_batch; anything else is refused rather than silently ignored.
        passed = {k: gen_kwargs[k] for k in _SAME_NAME_OPTIONS if k in gen_kwargs}
        unknown = set(gen_kwargs) - {"max_new_tokens", "min_new_tokens", "num_beams", "do_sample", *_SAME_NAME_OPTIONS}
        if unknown or gen_kwargs.get("do_sample"):
            raise ValueError(f"CTranslate2 backend: unsupported generation options {sorted(unknown) or ['do_sample']}")
        ids = self._translate(
            input_ids,
            beam_size=gen_kwargs.get("num_beams", 1),
            max_decoding_length=gen_kwargs["max_new_tokens"],
            min_decoding_length=gen_kwargs.get("min_new_tokens") or 0,
            **passed,
        )
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]
