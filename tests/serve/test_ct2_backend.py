"""CTranslate2 backend: converted from the saved HF model (with the transformers-5 T5 fix), same summaries as
the transformers backend, cached conversions, and a real server running on it."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from tests.helpers.serve import make_talkative_model, thread_server, wait_until
from flant5_lib.procs import free_port

from flant5_lib.serve.backends import HFBackend
from flant5_lib.config import Params
from flant5_lib.preprocess import encode_sources
from flant5_lib.synthetic import generate_records


@pytest.fixture(scope="module")
def talk_model(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_talkative_model(tiny_model_dir, tmp_path_factory.mktemp("ct2") / "talk")


@pytest.fixture(scope="module")
def encoded(talk_model: Path):
    hf = HFBackend(talk_model, device="cpu")
    dialogues = [r["dialogue"] for r in generate_records(16, seed=3)]
    ids, _ = encode_sources(hf.tokenizer, dialogues, Params())
    return hf, ids


GREEDY = {"max_new_tokens": 8, "min_new_tokens": 8, "num_beams": 1, "do_sample": False}


def test_float32_conversion_matches_transformers_exactly(talk_model: Path, encoded) -> None:
    from flant5_lib.serve.ct2 import CT2Backend

    hf, ids = encoded
    ct2 = CT2Backend(talk_model, compute_type="float32", device="cpu")
    for kwargs in (GREEDY, {"max_new_tokens": 10, "num_beams": 1, "do_sample": False},
                   {"max_new_tokens": 8, "num_beams": 3, "do_sample": False},
                   # a model's saved generation config (generation_config.json) reaches CTranslate2 too
                   {"max_new_tokens": 12, "num_beams": 1, "do_sample": False, "no_repeat_ngram_size": 2}):
        expected = hf.generate(ids, kwargs)
        assert sum(bool(t) for t in expected) >= 12 and len(set(expected)) >= 4  # non-trivial outputs
        assert ct2.generate(ids, kwargs) == expected, kwargs


def test_int8_greedy_matches_transformers_up_to_rounding_ties(talk_model: Path, encoded) -> None:
    """int8 (the serving default) gives the same greedy summaries, except where the float model's own top two logits
    are closer than int8 rounding: a random model has many such near-ties, a trained one few. At the first token
    where int8 differs, the float model must rate int8's choice within 3% of its logit range of its own choice."""
    import torch

    from flant5_lib.serve.ct2 import CT2Backend

    hf, ids = encoded
    ct2 = CT2Backend(talk_model, compute_type="int8", device="cpu")
    assert ct2.path == talk_model / "ct2-int8"
    expected, got = hf.generate(ids, GREEDY), ct2.generate(ids, GREEDY)
    assert sum(a == b for a, b in zip(expected, got)) >= len(ids) // 2
    results = ct2.translator.translate_batch([hf.tokenizer.convert_ids_to_tokens(s) for s in ids], beam_size=1,
                                             max_decoding_length=8, min_decoding_length=8, max_input_length=0)
    start = hf.model.generation_config.decoder_start_token_id
    for source, result in zip(ids, results):
        int8_ids = hf.tokenizer.convert_tokens_to_ids(result.hypotheses[0])
        with torch.no_grad():
            logits = hf.model(input_ids=torch.tensor([source]), decoder_input_ids=torch.tensor([[start, *int8_ids]])).logits[0].clone()
        logits[:, hf.tokenizer.eos_token_id] = -1e9  # min_new_tokens: EOS was not allowed
        for step, token in enumerate(int8_ids):
            row = logits[step]
            if int(row.argmax()) != token:
                gap = float(row.max() - row[token]) / float(row.max() - row.min())
                assert gap < 0.03, f"int8 picked a clearly worse token at step {step} (gap {gap:.1%})"
                break


def test_conversion_is_cached_and_refreshed_when_the_model_changes(talk_model: Path, tmp_path: Path) -> None:
    import shutil

    from flant5_lib.serve.ct2 import SOURCE_FILE, convert_model

    model = tmp_path / "m"
    shutil.copytree(talk_model, model, ignore=shutil.ignore_patterns("ct2-*"))
    first = convert_model(model, "int8")
    stamp = (first / "model.bin").stat().st_mtime_ns
    assert convert_model(model, "int8") == first and (first / "model.bin").stat().st_mtime_ns == stamp
    (model / "config.json").write_text((model / "config.json").read_text() + "\n")  # the source changed
    again = convert_model(model, "int8")
    assert (again / "model.bin").stat().st_mtime_ns != stamp
    assert json.loads((again / SOURCE_FILE).read_text())["source"] == str(model.resolve())


def test_transformers5_t5_config_gets_no_output_rescaling(talk_model: Path) -> None:
    """transformers 5 forces tie_word_embeddings=True; the stock loader would rescale Flan-T5's decoder output."""
    from transformers import AutoConfig

    from flant5_lib.serve.ct2 import _fixed_t5_loader

    config = AutoConfig.from_pretrained(talk_model)
    assert config.tie_word_embeddings is True and config.scale_decoder_outputs is False  # why the fix is needed
    from ctranslate2.converters import transformers as ct2t
    from transformers import T5ForConditionalGeneration

    model = T5ForConditionalGeneration.from_pretrained(talk_model)
    stock = ct2t._MODEL_LOADERS["T5Config"].get_model_spec(model)
    with _fixed_t5_loader():
        fixed = ct2t._MODEL_LOADERS["T5Config"].get_model_spec(model)
    assert stock.decoder.scale_outputs != "__optional" and fixed.decoder.scale_outputs == "__optional"


def test_server_with_ctranslate2_backend(talk_model: Path, encoded) -> None:
    from flant5_lib.serve.app import ServeSettings, create_app

    hf, ids = encoded
    settings = ServeSettings(model_dir=str(talk_model), params=Params(serve_backend="ctranslate2", serve_ct2_compute_type="float32"))
    with thread_server(create_app(settings), free_port()) as base:
        assert wait_until(base + "/health", 200, timeout=60).json()["backend"] == "ctranslate2"
        dialogues = [r["dialogue"] for r in generate_records(16, seed=3)][:3]
        r = httpx.post(base + "/predict", json={"instances": dialogues, "parameters": {"max_new_tokens": 8, "min_new_tokens": 8}})
        assert r.json()["predictions"] == hf.generate(ids[:3], GREEDY)


def test_saved_generation_settings_change_what_ct2_generates(talk_model: Path, encoded) -> None:
    """The check above is only worth something if the option bites: on this model it must change some summaries."""
    from flant5_lib.serve.ct2 import CT2Backend

    hf, ids = encoded
    ct2 = CT2Backend(talk_model, compute_type="float32", device="cpu")
    plain = {"max_new_tokens": 12, "num_beams": 1, "do_sample": False}
    assert ct2.generate(ids, {**plain, "no_repeat_ngram_size": 2}) != ct2.generate(ids, plain)
    assert ct2.generate(ids, {**plain, "repetition_penalty": 2.0}) != ct2.generate(ids, plain)
