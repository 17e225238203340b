"""The one preprocessing path (prefix, turn separator, truncation, dynamic padding, -100 labels) and the model folder's
contract (flant5_params.yaml + generation_config.json).

The tokenizer-level tests run on the tiny model's own tokenizer always, and on the real T5 vocabulary when ../shared
holds it (that case skips with the reason otherwise), so the contract is checked on a fresh clone too."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer, GenerationConfig

from flant5_lib.config import Params, build_params
from flant5_lib.errors import ModelError
from flant5_lib.inference import generation_kwargs
from flant5_lib.preprocess import (
    LABEL_PAD,
    encode_sources,
    format_source,
    load_preprocessing,
    make_collator,
    make_train_features,
    padding_fraction,
    save_generation_config,
    save_preprocessing,
)

DIALOGUE = "Amanda: I baked cookies. Do you want some?\r\nJerry: Sure!\n\nAmanda: I'll bring you tomorrow :-)"


@pytest.fixture(scope="module")
def t5_tokenizer(t5_tokenizer_dir):
    return AutoTokenizer.from_pretrained(t5_tokenizer_dir)


@pytest.fixture(scope="module", params=["tiny", pytest.param("t5", marks=pytest.mark.samsum)])
def tokenizer(request):
    """The tiny model's BPE tokenizer (always there) and the real T5 SentencePiece vocabulary (../shared)."""
    if request.param == "t5":
        return request.getfixturevalue("t5_tokenizer")
    return AutoTokenizer.from_pretrained(request.getfixturevalue("tiny_model_dir"))


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


def test_truncation_matches_the_tokenizer_and_is_reported(tokenizer):
    p = Params(max_source_length=12)
    ids, cut = encode_sources(tokenizer, [DIALOGUE, "A: hi"], p)
    expected = tokenizer(format_source(DIALOGUE, p), truncation=True, max_length=12)["input_ids"]
    assert ids[0] == expected and len(ids[0]) == 12 and ids[0][-1] == tokenizer.eos_token_id
    assert cut == [True, False]
    assert ids[1] == tokenizer(format_source("A: hi", p))["input_ids"]  # short inputs untouched, EOS appended


def test_train_features_and_collator_pad_dynamically_with_minus_100(tokenizer):
    p = Params(max_source_length=64, max_target_length=16)
    batch = {"dialogue": [DIALOGUE, "A: hi\nB: hello"], "summary": ["Amanda will bring Jerry cookies tomorrow.", "A greets B."]}
    feats = make_train_features(tokenizer, p)(batch)
    assert len(feats["input_ids"][0]) > len(feats["input_ids"][1])  # not padded yet
    assert feats["labels"][1] == tokenizer(text_target="A greets B.")["input_ids"]
    rows = [{k: feats[k][i] for k in feats} for i in range(2)]
    out = make_collator(tokenizer, None, p)(rows)
    width = max(len(r["input_ids"]) for r in rows)
    assert out["input_ids"].shape == (2, width)  # padded to the longest in the batch, not to max_source_length
    assert (out["labels"][1] == LABEL_PAD).sum() == len(rows[0]["labels"]) - len(rows[1]["labels"])
    assert out["attention_mask"][1].sum() == len(rows[1]["input_ids"])


def test_classic_pad_to_max_length(tokenizer):
    p = Params(max_source_length=64, max_target_length=16, pad_to_max_length=True)
    feats = make_train_features(tokenizer, p)({"dialogue": ["A: hi"], "summary": ["A says hi."]})
    assert len(feats["input_ids"][0]) == 64 and len(feats["labels"][0]) == 16
    assert feats["labels"][0][-1] == LABEL_PAD and sum(feats["attention_mask"][0]) < 64


def test_padding_fraction():
    assert padding_fraction([4, 4, 2, 2], batch_size=2) == 0.0
    assert padding_fraction([4, 2, 4, 2], batch_size=2) == pytest.approx(1 - 12 / 16)
    assert padding_fraction([4, 2], batch_size=2, pad_to=8) == pytest.approx(1 - 6 / 16)


def test_speaker_tags_inside_a_line_start_new_turns():
    """DialogSum turns sometimes arrive on one line; each `#PersonN#:` tag then starts a turn, a mention does not."""
    p = Params(source_prefix="", turn_separator=" | ")
    one_line = "#Person1#: Hi, Mr. Smith. #Person2#: Hello, #Person1#'s friend! #Person1#: Bye."
    assert format_source(one_line, p) == "#Person1#: Hi, Mr. Smith. | #Person2#: Hello, #Person1#'s friend! | #Person1#: Bye."
    assert format_source(one_line.replace(" #Person2#", "\n#Person2#"), p) == format_source(one_line, p)


# --- the model folder's generation settings -------------------------------------------------------------------------

TUNED = {"num_beams": 4, "max_new_tokens": 40, "length_penalty": 0.8, "no_repeat_ngram_size": 3, "repetition_penalty": 1.2}


def _folder_with_token_ids(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    GenerationConfig(decoder_start_token_id=0, eos_token_id=1, pad_token_id=0).save_pretrained(folder)
    return folder


def test_generation_config_round_trips_and_keeps_the_token_ids(tmp_path):
    folder = _folder_with_token_ids(tmp_path)
    save_preprocessing(build_params(TUNED), folder)
    saved = json.loads((folder / "generation_config.json").read_text())
    assert {k: saved[k] for k in TUNED} == TUNED and saved["decoder_start_token_id"] == 0 and saved["eos_token_id"] == 1
    loaded = GenerationConfig.from_pretrained(folder)  # transformers itself accepts the file
    assert (loaded.num_beams, loaded.no_repeat_ngram_size, loaded.length_penalty) == (4, 3, 0.8)
    assert {k: getattr(load_preprocessing(folder, Params()), k) for k in TUNED} == TUNED


def test_explicit_settings_and_per_call_values_beat_the_saved_ones(tmp_path):
    folder = _folder_with_token_ids(tmp_path)
    save_generation_config(build_params(TUNED), folder)
    mine = load_preprocessing(folder, build_params({"num_beams": 2, "no_repeat_ngram_size": 0}))  # e.g. --set
    assert (mine.num_beams, mine.no_repeat_ngram_size, mine.max_new_tokens, mine.repetition_penalty) == (2, 0, 40, 1.2)
    assert generation_kwargs(mine) == {"max_new_tokens": 40, "num_beams": 2, "do_sample": False, "length_penalty": 0.8,
                                       "repetition_penalty": 1.2}
    per_call = generation_kwargs(mine, num_beams=1, max_new_tokens=7, repetition_penalty=1.0, no_repeat_ngram_size=2)
    assert per_call == {"max_new_tokens": 7, "num_beams": 1, "do_sample": False, "no_repeat_ngram_size": 2}


def test_greedy_settings_save_without_length_penalty(tmp_path):
    """transformers refuses a length_penalty with num_beams=1; it has no effect there, so it is left out."""
    folder = _folder_with_token_ids(tmp_path)
    save_generation_config(build_params({"length_penalty": 2.0}), folder)
    assert "length_penalty" not in json.loads((folder / "generation_config.json").read_text())
    GenerationConfig.from_pretrained(folder)
    assert generation_kwargs(build_params({"length_penalty": 2.0})) == {"max_new_tokens": 96, "num_beams": 1, "do_sample": False}


def test_a_broken_saved_generation_config_is_named(tmp_path):
    folder = _folder_with_token_ids(tmp_path)
    (folder / "generation_config.json").write_text(json.dumps({"num_beams": 99}))
    with pytest.raises(ModelError, match=r"model folder .*model: .*num_beams"):
        load_preprocessing(folder, Params())
    (folder / "generation_config.json").write_text("{oops")
    with pytest.raises(ModelError, match="generation_config.json: not valid JSON"):
        load_preprocessing(folder, Params())
