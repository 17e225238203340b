"""Batched summary generation shared by evaluation, the batch CLI and the prediction server."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from flant5_lib.config import GENERATION_FIELDS, generation_overrides
from flant5_lib.preprocess import encode_sources

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from flant5_lib.config import Params

log = logging.getLogger(__name__)


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped so each batch holds similar lengths (longest first: memory errors show up at once)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def generation_kwargs(params: Params, **overrides: Any) -> dict[str, Any]:
    """The one place generation settings are resolved: a per-call value (checked against the bounds of the Params
    fields, `config.generation_overrides`), else `params` (which `preprocess.load_preprocessing` filled from the
    model's generation_config.json). min_new_tokens is clamped to max_new_tokens. Options at their neutral value are
    left out, so a backend that lacks one (CTranslate2) still serves the settings it has."""
    given = generation_overrides(**overrides).model_dump(exclude_none=True)
    chosen = {name: given.get(name, getattr(params, name)) for name in GENERATION_FIELDS}
    kwargs: dict[str, Any] = {"max_new_tokens": chosen["max_new_tokens"], "num_beams": chosen["num_beams"], "do_sample": False}
    if given.get("min_new_tokens"):
        kwargs["min_new_tokens"] = min(given["min_new_tokens"], chosen["max_new_tokens"])
    if chosen["num_beams"] == 1:
        chosen["length_penalty"] = NEUTRAL["length_penalty"]  # greedy: no effect, and transformers refuses it
    kwargs.update({k: chosen[k] for k in NEUTRAL if chosen[k] != NEUTRAL[k]})
    return kwargs


# transformers' values that change nothing. `generate_from_ids` passes them for every option left out, so the
# model's own generation_config.json can never slip in a setting that `generation_kwargs` did not choose.
NEUTRAL: dict[str, Any] = {"length_penalty": 1.0, "no_repeat_ngram_size": 0, "repetition_penalty": 1.0}


def generate_from_ids(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    input_ids: Sequence[Sequence[int]],
    gen_kwargs: dict[str, Any],
) -> list[str]:
    """One padded batch through `generate`; returns the decoded summaries in the same order."""
    return _generate_batch(model, tokenizer, input_ids, gen_kwargs)[0]


def _generate_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    input_ids: Sequence[Sequence[int]],
    gen_kwargs: dict[str, Any],
) -> tuple[list[str], list[bool]]:
    """Decoded summaries, and which of them were cut by max_new_tokens (no end-of-sequence token generated)."""
    import torch

    width = max(len(s) for s in input_ids)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([list(s) + [pad] * (width - len(s)) for s in input_ids], device=model.device)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in input_ids], device=model.device)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, **{**NEUTRAL, **gen_kwargs})
    capped = (out[:, 1:] != tokenizer.eos_token_id).all(dim=1).tolist()  # column 0 is the decoder start token
    return [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True)], capped


def generate_summaries(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dialogues: Sequence[str],
    params: Params,
    *,
    batch_size: int | None = None,
    progress: bool = True,
    **overrides: Any,
) -> list[str]:
    """Summaries in input order, generated in length-sorted batches (far less padding than input order).
    `overrides`: per-call generation options (`config.GenerationOverrides`), e.g. max_new_tokens=8."""
    return generate_summaries_capped(model, tokenizer, dialogues, params, batch_size=batch_size, progress=progress,
                                     **overrides)[0]


def generate_summaries_capped(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dialogues: Sequence[str],
    params: Params,
    *,
    batch_size: int | None = None,
    progress: bool = True,
    **overrides: Any,
) -> tuple[list[str], list[bool]]:
    """`generate_summaries`, plus which summaries hit max_new_tokens before ending: a cut summary scores ROUGE
    on a truncated text, so evaluation reports their share (`capped_share` in metrics.json)."""
    return summarize_batches(lambda ids, kwargs: _generate_batch(model, tokenizer, ids, kwargs), tokenizer, dialogues,
                             params, batch_size=batch_size, progress=progress, **overrides)


def summarize_batches(
    generate_batch: Callable[[list[Sequence[int]], dict[str, Any]], tuple[list[str], list[bool]]],
    tokenizer: PreTrainedTokenizerBase,
    dialogues: Sequence[str],
    params: Params,
    *,
    batch_size: int | None = None,
    progress: bool = True,
    **overrides: Any,
) -> tuple[list[str], list[bool]]:
    """The one batch loop: encode with the shared preprocessing, generate in length-sorted batches with any engine
    (`generate_batch(ids, gen_kwargs) -> (texts, capped)`: transformers here, a serving backend for `flant5
    summarize`), and put the summaries back in input order."""
    from tqdm.auto import tqdm

    gen_kwargs = generation_kwargs(params, **overrides)  # first: a bad option fails before any work
    if not dialogues:
        return [], []
    input_ids, truncated = encode_sources(tokenizer, dialogues, params)
    if any(truncated):
        log.info("%d of %d dialogues were truncated to %d tokens", sum(truncated), len(dialogues), params.max_source_length)
    results: list[str] = [""] * len(dialogues)
    capped: list[bool] = [False] * len(dialogues)
    batches = length_sorted_batches([len(s) for s in input_ids], batch_size or params.per_device_eval_batch_size)
    with tqdm(total=len(dialogues), desc="generating", unit="dlg", disable=not progress) as bar:
        for batch in batches:
            texts, cut = generate_batch([input_ids[i] for i in batch], gen_kwargs)
            for i, text, c in zip(batch, texts, cut):
                results[i], capped[i] = text, c
            bar.update(len(batch))
    return results, capped
