"""Load any seq2seq checkpoint (hub id, folder, gs://) or build a tiny Flan-T5-family model offline.

Weights are read and written as safetensors only: a pickle in a model folder can run code on load.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flant5_lib.errors import ModelError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from flant5_lib.config import Params

log = logging.getLogger(__name__)

# Flan-T5 is T5 v1.1: gated-GELU feed-forward, an output layer of its own (not tied to the embeddings) and no
# decoder-output scaling (transformers 5 derives that from tie_word_embeddings=False), dropout off for the tiny models.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "tiny": dict(d_model=128, d_kv=32, d_ff=256, num_layers=2, num_decoder_layers=2, num_heads=4),
    "small": dict(d_model=256, d_kv=32, d_ff=512, num_layers=4, num_decoder_layers=4, num_heads=8),
    # google/flan-t5-base's shape (about 248M parameters), random weights: for benchmarks.
    "base-arch": dict(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12, num_heads=12),
}
TINY_VOCAB_SIZE = 2000
SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]


def pick_device() -> torch.device:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train_tokenizer(texts: list[str], vocab_size: int = TINY_VOCAB_SIZE) -> PreTrainedTokenizerBase:
    """A SentencePiece-style tokenizer (Metaspace pre-tokenizer, EOS appended) trained on `texts`.

    BPE rather than T5's Unigram: the Unigram trainer is not deterministic across runs, and the same seed
    must give the same tiny model (tests and distributed runs compare models built separately).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(r"\s+", " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", model_max_length=512
    )


def build_tiny_model(
    out_dir: str | os.PathLike[str], *, tokenizer_dir: str | None = None, seed: int = 0, size: str = "tiny"
) -> Path:
    """A randomly initialised T5 v1.1 (gated-gelu) plus tokenizer, saved in the normal HF layout.

    Without `tokenizer_dir` the tokenizer is trained here on synthetic dialogues, so no network is needed.
    """
    import torch
    from transformers import GenerationConfig, T5Config, T5ForConditionalGeneration

    if size not in ARCHITECTURES:
        raise ModelError(f"size {size!r}: choose one of {', '.join(ARCHITECTURES)}")
    if tokenizer_dir:
        tokenizer = load_tokenizer(tokenizer_dir)
    else:
        from flant5_lib.synthetic import generate_records

        rows = generate_records(3000, seed=seed)
        texts = [r["dialogue"] for r in rows] + [r["summary"] for r in rows] + ["summarize: | "] * 50
        tokenizer = train_tokenizer(texts)
    torch.manual_seed(seed)
    vocab = len(tokenizer)
    if size == "base-arch":
        vocab = max(vocab, 32128)  # flan-t5-base pads its embedding to 32128
    config = T5Config(
        vocab_size=vocab,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        **ARCHITECTURES[size],
    )
    model = T5ForConditionalGeneration(config)
    _init_output_layer(model)
    with torch.no_grad():
        model.shared.weight[config.pad_token_id].zero_()  # as nn.Embedding's padding_idx: the pad row carries nothing
    model.generation_config = GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    out = save_model(model, tokenizer, out_dir)
    log.info("built %s T5 (%.1fM parameters, vocab %d) in %s", size, model.num_parameters() / 1e6, vocab, out)
    return out


def _init_output_layer(model: PreTrainedModel) -> None:
    """Give a from-scratch model Flan-T5's own output layer, initialised for unit-scale logits.

    transformers 5 builds every T5 with the output layer tied to the embeddings (std 1.0) and, for v1.1, without the
    d_model**-0.5 rescaling that tying needs: logits start with std ~sqrt(d_model) and the first loss is 65-177
    instead of ln(vocab). An untied layer drawn with std d_model**-0.5 (mesh-tensorflow's fan-in init for T5 v1.1's
    logits layer) starts near ln(vocab), as the real architecture does.
    """
    import torch

    d_model, vocab = model.config.d_model, model.config.vocab_size
    head = torch.nn.Linear(d_model, vocab, bias=False)
    torch.nn.init.normal_(head.weight, mean=0.0, std=d_model**-0.5)
    model.lm_head = head
    keep_output_layer_untied(model)


def keep_output_layer_untied(model: PreTrainedModel) -> None:
    """Stop any later `tie_weights()` from copying the embeddings over a Flan-T5 output layer.

    transformers 5 forces `tie_word_embeddings=True` on every T5 config; from_pretrained keeps a checkpoint's own
    lm_head only because both tensors are in the file. A later `model.tie_weights()` (accelerate's FSDP2
    preparation, resize_token_embeddings) re-reads the forced flag and silently replaces the output layer with the
    embeddings: the fine-tune would start from a broken model. Dropping lm_head from this instance's tie map keeps
    the encoder/decoder embeddings tied to `shared`, as they must be.
    """
    tied = getattr(model, "_tied_weights_keys", None)
    head, shared = getattr(model, "lm_head", None), getattr(model, "shared", None)
    if not tied or "lm_head.weight" not in tied or head is None or shared is None or head.weight is shared.weight:
        return
    model._tied_weights_keys = {k: v for k, v in tied.items() if k != "lm_head.weight"}
    getattr(model, "all_tied_weights_keys", {}).pop("lm_head.weight", None)


def write_model_folder(
    out_dir: str | os.PathLike[str],
    write_weights: Callable[[Path], None],
    tokenizer: PreTrainedTokenizerBase,
    params: Params | None = None,
) -> Path:
    """The one definition of a saved model folder, written atomically (a reader never sees half of it):
    weights (safetensors, by `write_weights`, which also writes config.json / generation_config.json), the tokenizer,
    and the resolved params that carry the preprocessing contract."""
    from flant5_lib.fileio import atomic_path
    from flant5_lib.preprocess import save_preprocessing

    with atomic_path(out_dir) as tmp:
        write_weights(Path(tmp))
        tokenizer.save_pretrained(tmp)
        if params is not None:
            save_preprocessing(params, tmp)
    return Path(out_dir)


def save_model(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: str | os.PathLike[str], params: Params | None = None
) -> Path:
    """A full model (or a PEFT adapter) with its tokenizer and params: see `write_model_folder`."""
    return write_model_folder(out_dir, lambda tmp: model.save_pretrained(tmp, safe_serialization=True), tokenizer, params)


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    from flant5_lib.hub import looks_like_hub_id, require_hub

    if looks_like_hub_id(name_or_path):
        require_hub(name_or_path, field="tokenizer", hint="use a local tokenizer or model folder")
    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except Exception as err:
        raise ModelError(f"tokenizer {name_or_path!r}: cannot be loaded ({type(err).__name__}: {err})".split("\n")[0]) from None


def resolve_model_path(params: Params, name: str | None = None) -> str:
    """Turn the `model_name` spec into something `from_pretrained` can open.

    'tiny' builds (once) a tiny random model into <run_dir>/base-model; gs:// folders are downloaded.
    """
    name = name or params.model_name
    if name == "tiny":
        target = Path(params.run_dir) / "base-model"
        if not (target / "config.json").is_file():
            build_tiny_model(target, tokenizer_dir=params.tokenizer_name, seed=params.seed)
        return str(target)
    if name.startswith("gs://"):
        from flant5_lib import storage

        local = Path(tempfile.mkdtemp(prefix="flant5-model-")) / "model"
        storage.download_dir(name, local)
        return str(local)
    return name


def load_model_and_tokenizer(
    name_or_path: str, tokenizer_name: str | None = None, device: torch.device | str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A seq2seq model and its tokenizer; safetensors weights only; LoRA adapter folders are merged on load."""
    from transformers import AutoModelForSeq2SeqLM

    path = Path(name_or_path)
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"{path}: a model is a folder with config.json and model.safetensors")
        if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
            return _load_adapter(path, tokenizer_name, device)
        if not (path / "config.json").is_file():
            raise ModelError(f"{path}: no config.json; is this a model folder? (build one with `flant5 model init-tiny`)")
        if not any(path.glob("*.safetensors")):
            raise ModelError(f"{path}: no .safetensors weights; only safetensors are loaded (re-save with safe_serialization=True)")
    elif name_or_path.startswith((".", "/", "~")):
        raise ModelError(f"{name_or_path}: no such model folder")
    else:
        from flant5_lib.hub import require_hub

        require_hub(name_or_path, field="model", hint="use a local model folder, a gs:// folder or 'tiny'")
    try:
        with _quiet_untied_head_warning():
            model = AutoModelForSeq2SeqLM.from_pretrained(name_or_path, use_safetensors=True)
    except OSError as err:
        raise ModelError(
            f"model {name_or_path!r}: cannot be loaded ({str(err).splitlines()[0]}); check the hub id and network, or use a "
            "local folder / 'tiny'"
        ) from None
    keep_output_layer_untied(model)
    tokenizer = load_tokenizer(tokenizer_name or name_or_path)
    model.to(device or pick_device())
    model.eval()
    return model, tokenizer


class _UntiedHeadFilter(logging.Filter):
    """transformers 5 warns on every Flan-T5 load that lm_head and the embeddings differ and tells the user to set
    tie_word_embeddings=False, which its T5 config then ignores: for this model family the message is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("lm_head.weight" in message and "will NOT tie them" in message)


@contextlib.contextmanager
def _quiet_untied_head_warning() -> Iterator[None]:
    target = logging.getLogger("transformers.modeling_utils")
    quiet = _UntiedHeadFilter()
    target.addFilter(quiet)
    try:
        yield
    finally:
        target.removeFilter(quiet)


def _load_adapter(
    path: Path, tokenizer_name: str | None, device: torch.device | str | None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """An adapter-only export: load its base model, apply the adapter and merge it for fast inference."""
    import json

    from peft import PeftModel

    base = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
    model, tokenizer = load_model_and_tokenizer(base, tokenizer_name or (str(path) if (path / "tokenizer_config.json").is_file() else None), "cpu")
    model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    model.to(device or pick_device())
    model.eval()
    return model, tokenizer
