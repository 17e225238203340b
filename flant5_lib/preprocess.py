"""The one preprocessing path. Training, evaluation and serving all import these functions, so a model
is never served inputs prepared differently from those it was trained on."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flant5_lib.data import split_turns

if TYPE_CHECKING:
    from transformers import DataCollatorForSeq2Seq, PreTrainedModel, PreTrainedTokenizerBase

    from flant5_lib.config import Params

log = logging.getLogger(__name__)

LABEL_PAD = -100  # ignored by the loss
# The preprocessing contract: a model folder carries the params it was trained with in this file, and evaluation,
# serving and the batch CLI read these fields back, whatever their own params say, so the model never sees inputs
# prepared differently from those it learned from.
MODEL_PARAMS_FILE = "flant5_params.yaml"
PREPROCESSING_FIELDS = ("source_prefix", "turn_separator", "max_source_length")


def save_preprocessing(params: Params, folder: str | os.PathLike[str]) -> Path:
    """Write the resolved params (the preprocessing contract among them) into a model folder."""
    from flant5_lib.config import save_params

    return save_params(params, Path(folder) / MODEL_PARAMS_FILE)


def load_preprocessing(folder: str | os.PathLike[str], params: Params) -> Params:
    """`params` with the preprocessing fields replaced by those saved in the model folder (unchanged when absent)."""
    from flant5_lib.config import read_params_file

    path = Path(folder) / MODEL_PARAMS_FILE
    if not path.is_file():
        return params
    saved = read_params_file(path)
    picked = {k: saved[k] for k in PREPROCESSING_FIELDS if k in saved and saved[k] != getattr(params, k)}
    if picked:
        log.info("preprocessing from %s: %s", path, ", ".join(f"{k}={v!r}" for k, v in picked.items()))
        params = params.with_overrides(**picked)
    return params


def format_source(dialogue: str, params: Params) -> str:
    """Prefix + turns joined by `turn_separator` (T5's vocabulary would fold a plain newline into a space)."""
    return params.source_prefix + params.turn_separator.join(split_turns(dialogue))


def encode_sources(
    tokenizer: PreTrainedTokenizerBase, dialogues: Sequence[str], params: Params
) -> tuple[list[list[int]], list[bool]]:
    """Token ids truncated to `max_source_length`, and which dialogues were cut (serving reports it)."""
    texts = [format_source(d, params) for d in dialogues]
    # verbose=False: over-long inputs are expected here and cut below, so no "longer than 512" warning.
    full = tokenizer(texts, truncation=False, add_special_tokens=True, verbose=False)["input_ids"]
    limit = params.max_source_length
    ids, cut = [], []
    for seq in full:
        if len(seq) > limit:
            # Same result as tokenizer(truncation=True): keep the head, end with EOS.
            seq = seq[: limit - 1] + [tokenizer.eos_token_id]
            cut.append(True)
        else:
            cut.append(False)
        ids.append(seq)
    return ids, cut


def make_train_features(
    tokenizer: PreTrainedTokenizerBase, params: Params
) -> Callable[[dict[str, list[Any]]], dict[str, list[Any]]]:
    """A batched `Dataset.map` function: input_ids, attention_mask and labels, truncated, unpadded."""

    def features(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        input_ids, _ = encode_sources(tokenizer, batch["dialogue"], params)
        labels = tokenizer(text_target=batch["summary"], max_length=params.max_target_length, truncation=True)["input_ids"]
        if params.pad_to_max_length:  # the classic recipe, kept for benchmarks
            input_ids = [s + [tokenizer.pad_token_id] * (params.max_source_length - len(s)) for s in input_ids]
            labels = [s + [tokenizer.pad_token_id] * (params.max_target_length - len(s)) for s in labels]
            labels = [[t if t != tokenizer.pad_token_id else LABEL_PAD for t in s] for s in labels]
        mask = [[1 if (t != tokenizer.pad_token_id or not params.pad_to_max_length) else 0 for t in s] for s in input_ids]
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}

    return features


def make_collator(
    tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | None, params: Params, pad_to_multiple_of: int | None = None
) -> DataCollatorForSeq2Seq:
    """Dynamic padding per batch; labels padded with -100 so padding never counts in the loss."""
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(
        tokenizer,
        model=model,
        padding="longest",
        label_pad_token_id=LABEL_PAD,
        pad_to_multiple_of=pad_to_multiple_of,
    )


def padding_fraction(lengths: Sequence[int], batch_size: int, pad_to: int | None = None) -> float:
    """Share of pad tokens when `lengths` are batched in order (each batch padded to its longest, or to `pad_to`)."""
    real = padded = 0
    for i in range(0, len(lengths), batch_size):
        chunk = lengths[i : i + batch_size]
        width = pad_to or max(chunk)
        real += sum(chunk)
        padded += width * len(chunk)
    return 0.0 if padded == 0 else 1 - real / padded
