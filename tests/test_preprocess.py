"""The one preprocessing path: prefix, turn separator, truncation, dynamic padding, -100 labels."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from flant5_lib.config import Params
from flant5_lib.preprocess import (
    LABEL_PAD,
    encode_sources,
    format_source,
    make_collator,
    make_train_features,
    padding_fraction,
)

DIALOGUE = "Amanda: I baked cookies. Do you want some?\r\nJerry: Sure!\n\nAmanda: I'll bring you tomorrow :-)"


@pytest.fixture(scope="module")
def t5_tokenizer(t5_tokenizer_dir):
    return AutoTokenizer.from_pretrained(t5_tokenizer_dir)


def test_format_source_uses_prefix_and_separator():
    p = Params(source_prefix="summarize: ", turn_separator=" | ")
    assert format_source(DIALOGUE, p) == (
        "summarize: Amanda: I baked cookies. Do you want some? | Jerry: Sure! | Amanda: I'll bring you tomorrow :-)"
    )


def test_newline_separator_vanishes_in_t5_vocabulary_but_bar_survives(t5_tokenizer):
    """Why turn_separator exists: T5's SentencePiece folds '\\n' into a space, so turn boundaries are lost."""
    nl = t5_tokenizer(format_source(DIALOGUE, Params(turn_separator="\n")))["input_ids"]
    space = t5_tokenizer(format_source(DIALOGUE, Params(turn_separator=" ")))["input_ids"]
    bar = t5_tokenizer(format_source(DIALOGUE, Params(turn_separator=" | ")))["input_ids"]
    assert nl == space
    assert t5_tokenizer.convert_tokens_to_ids("▁|") in bar


def test_truncation_matches_the_tokenizer_and_is_reported(t5_tokenizer):
    p = Params(max_source_length=12)
    ids, cut = encode_sources(t5_tokenizer, [DIALOGUE, "A: hi"], p)
    expected = t5_tokenizer(format_source(DIALOGUE, p), truncation=True, max_length=12)["input_ids"]
    assert ids[0] == expected and len(ids[0]) == 12 and ids[0][-1] == t5_tokenizer.eos_token_id
    assert cut == [True, False]


def test_train_features_and_collator_pad_dynamically_with_minus_100(t5_tokenizer):
    p = Params(max_source_length=64, max_target_length=16)
    batch = {"dialogue": [DIALOGUE, "A: hi\nB: hello"], "summary": ["Amanda will bring Jerry cookies tomorrow.", "A greets B."]}
    feats = make_train_features(t5_tokenizer, p)(batch)
    assert len(feats["input_ids"][0]) > len(feats["input_ids"][1])  # not padded yet
    rows = [{k: feats[k][i] for k in feats} for i in range(2)]
    out = make_collator(t5_tokenizer, None, p)(rows)
    width = max(len(r["input_ids"]) for r in rows)
    assert out["input_ids"].shape == (2, width)  # padded to the longest in the batch, not to max_source_length
    assert (out["labels"][1] == LABEL_PAD).sum() == len(rows[0]["labels"]) - len(rows[1]["labels"])
    assert out["attention_mask"][1].sum() == len(rows[1]["input_ids"])


def test_classic_pad_to_max_length(t5_tokenizer):
    p = Params(max_source_length=64, max_target_length=16, pad_to_max_length=True)
    feats = make_train_features(t5_tokenizer, p)({"dialogue": ["A: hi"], "summary": ["A says hi."]})
    assert len(feats["input_ids"][0]) == 64 and len(feats["labels"][0]) == 16
    assert feats["labels"][0][-1] == LABEL_PAD and sum(feats["attention_mask"][0]) < 64


def test_padding_fraction():
    assert padding_fraction([4, 4, 2, 2], batch_size=2) == 0.0
    assert padding_fraction([4, 2, 4, 2], batch_size=2) == pytest.approx(1 - 12 / 16)
    assert padding_fraction([4, 2], batch_size=2, pad_to=8) == pytest.approx(1 - 6 / 16)
