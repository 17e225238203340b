"""The one preprocessing path. Training, evaluation and serving all import these functions, so a model
is never served inputs prepared differently from those it was trained on."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flant5_lib.config import GENERATION_FIELDS
from flant5_lib.data import split_turns
from flant5_lib.errors import ModelError, UserError

if TYPE_CHECKING:
    from transformers import DataCollatorForSeq2Seq, PreTrainedModel, PreTrainedTokenizerBase

    from flant5_lib.config import Params

log = logging.getLogger(__name__)

LABEL_PAD = -100  # ignored by the loss
# The model folder's contract, in two files. flant5_params.yaml carries the params the model was trained with:
# evaluation, serving and the batch CLI read the preprocessing fields back, whatever their own params say, so the
# model never sees inputs prepared differently from those it learned from. generation_config.json (transformers'
# own file, so `pipeline()` and CTranslate2 users get it too) carries the generation settings: those are only
# defaults, and a value the caller sets explicitly (params file, --set, a request parameter) wins.
MODEL_PARAMS_FILE = "flant5_params.yaml"
PREPROCESSING_FIELDS = ("source_prefix", "turn_separator", "max_source_length")
GENERATION_CONFIG_FILE = "generation_config.json"


def save_preprocessing(params: Params, folder: str | os.PathLike[str]) -> Path:
    """Write the resolved params (the preprocessing contract among them) and the generation settings into a model
    folder; the token ids already in its generation_config.json (decoder start, eos, pad) are kept."""
    from flant5_lib.config import save_params

    save_generation_config(params, folder)
    return save_params(params, Path(folder) / MODEL_PARAMS_FILE)


def save_generation_config(params: Params, folder: str | os.PathLike[str]) -> Path:
    """generation_config.json with every generation field written out (a missing key would mean transformers'
    default, not this run's choice). length_penalty is left out with greedy decoding, where transformers refuses it."""
    from transformers import GenerationConfig

    path = Path(folder) / GENERATION_CONFIG_FILE
    config = GenerationConfig.from_pretrained(folder) if path.is_file() else GenerationConfig()
    settings = {k: getattr(params, k) for k in GENERATION_FIELDS}
    if params.num_beams == 1:
        settings.pop("length_penalty")
        config.length_penalty = GenerationConfig().length_penalty
    config.update(**settings)
    try:
        config.validate(strict=True)  # the check save_pretrained makes; Params' own bounds already rule out most
    except ValueError as err:  # never lose a finished training run over it: say so, write the file anyway
        log.warning("%s: transformers objects to these generation settings: %s", path, str(err).splitlines()[1:2])
    data = {**config.to_diff_dict(), **settings}
    if "length_penalty" not in settings:
        data.pop("length_penalty", None)
    from flant5_lib.fileio import write_json

    return write_json(path, data)


def _saved_generation(folder: Path) -> dict[str, Any]:
    import json

    path = folder / GENERATION_CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ModelError(f"{path}: not valid JSON ({err.msg}); re-save the model") from None
    return {k: saved[k] for k in GENERATION_FIELDS if saved.get(k) is not None}


def load_preprocessing(folder: str | os.PathLike[str], params: Params) -> Params:
    """`params` as the model folder dictates: its preprocessing fields always, its saved generation settings for
    every generation field the caller did not set explicitly (unchanged when the files are absent)."""
    from flant5_lib.config import read_params_file

    folder = Path(folder)
    picked: dict[str, Any] = {}
    path = folder / MODEL_PARAMS_FILE
    if path.is_file():
        saved = read_params_file(path)
        picked = {k: saved[k] for k in PREPROCESSING_FIELDS if k in saved and saved[k] != getattr(params, k)}
    defaults = {k: v for k, v in _saved_generation(folder).items()
                if k not in params.model_fields_set and v != getattr(params, k)}
    if picked or defaults:
        log.info("from the model folder %s: %s", folder, ", ".join(f"{k}={v!r}" for k, v in {**picked, **defaults}.items()))
        try:
            params = params.with_overrides(**picked, **defaults)
        except UserError as err:  # a hand-edited file with an out-of-range value: name the folder, not "overrides"
            raise ModelError(f"model folder {folder}: {err}") from None
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
