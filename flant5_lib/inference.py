"""Batched summary generation shared by evaluation, the batch CLI and the prediction server."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from flant5_lib.preprocess import encode_sources

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from flant5_lib.config import Params

log = logging.getLogger(__name__)


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped so each batch holds similar lengths (longest first: memory errors show up at once)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def generation_kwargs(
    params: Params, *, max_new_tokens: int | None = None, min_new_tokens: int | None = None, num_beams: int | None = None
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens or params.max_new_tokens,
        "num_beams": num_beams or params.num_beams,
        "do_sample": False,
    }
    if min_new_tokens:
        kwargs["min_new_tokens"] = min_new_tokens
    return kwargs


def generate_from_ids(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    input_ids: Sequence[Sequence[int]],
    gen_kwargs: dict[str, Any],
) -> list[str]:
    """One padded batch through `generate`; returns the decoded summaries in the same order."""
    import torch

    width = max(len(s) for s in input_ids)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([list(s) + [pad] * (width - len(s)) for s in input_ids], device=model.device)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in input_ids], device=model.device)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, **gen_kwargs)
    return [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True)]


def generate_summaries(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dialogues: Sequence[str],
    params: Params,
    *,
    batch_size: int | None = None,
    max_new_tokens: int | None = None,
    min_new_tokens: int | None = None,
    num_beams: int | None = None,
    progress: bool = True,
) -> list[str]:
    """Summaries in input order, generated in length-sorted batches (far less padding than input order)."""
    from tqdm.auto import tqdm

    if not dialogues:
        return []
    input_ids, truncated = encode_sources(tokenizer, dialogues, params)
    if any(truncated):
        log.info("%d of %d dialogues were truncated to %d tokens", sum(truncated), len(dialogues), params.max_source_length)
    gen_kwargs = generation_kwargs(params, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, num_beams=num_beams)
    results: list[str] = [""] * len(dialogues)
    batches = length_sorted_batches([len(s) for s in input_ids], batch_size or params.per_device_eval_batch_size)
    with tqdm(total=len(dialogues), desc="generating", unit="dlg", disable=not progress) as bar:
        for batch in batches:
            for i, text in zip(batch, generate_from_ids(model, tokenizer, [input_ids[i] for i in batch], gen_kwargs)):
                results[i] = text
            bar.update(len(batch))
    return results
