"""CTranslate2 backend: converted from the saved HF model (with the transformers-5 T5 fix), same summaries as
the transformers backend, conversions cached outside the model folder by its content, and a real server on it."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from tests.helpers.serve import make_talkative_model, save_lora_adapter, thread_server, wait_until
from flant5_lib.procs import free_port

from flant5_lib.serve.backends import HFBackend
from flant5_lib.serve.cache import cache_root
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
    assert ct2.path.parent == cache_root() / "ct2" and not ct2.path.is_relative_to(talk_model)
    # How many of a random model's greedy summaries survive int8 depends on the CPU's int8 kernels (2 of 16 on an AMD
    # EPYC, over half on an AVX-512 VNNI Xeon): not a count to assert. What must hold on any CPU is the rule below.
    assert len(ct2.generate(ids, GREEDY)) == len(ids)
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


@pytest.fixture
def conversions(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """The output folder of each real CTranslate2 conversion, into a serving cache of this test's own."""
    from ctranslate2.converters import TransformersConverter

    monkeypatch.setenv("FLANT5_CACHE_DIR", str(tmp_path / "cache"))
    calls: list[str] = []
    real = TransformersConverter.convert

    def counted(self, output_dir: str, *args, **kwargs):
        calls.append(output_dir)
        return real(self, output_dir, *args, **kwargs)

    monkeypatch.setattr(TransformersConverter, "convert", counted)
    return calls


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_a_read_only_model_folder_converts_into_the_cache_and_serves(talk_model: Path, tmp_path: Path, encoded,
                                                                     conversions: list[str]) -> None:
    """A `/gcs/` mount or a model baked into an image: nothing is written beside the model, the second load reuses
    the conversion. (As root the chmod is not enforced; the unchanged folder is what this asserts everywhere.)"""
    import shutil

    from flant5_lib.serve.backends import load_backend

    hf, ids = encoded
    model = tmp_path / "read-only"
    shutil.copytree(talk_model, model)
    for p in [*model.iterdir(), model]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    before = _snapshot(model)
    params = Params(serve_backend="ctranslate2", serve_ct2_compute_type="float32")
    try:
        first = load_backend(model, params, device="cpu")
        assert first.path.is_relative_to(tmp_path / "cache" / "ct2") and len(conversions) == 1
        assert first.generate(ids[:3], GREEDY) == hf.generate(ids[:3], GREEDY)
        second = load_backend(model, params, device="cpu")
        assert second.path == first.path and len(conversions) == 1  # reused, not converted again
        assert _snapshot(model) == before
        assert not [p for p in (tmp_path / "cache" / "ct2").iterdir() if p.name.startswith(".")]  # no temp left
    finally:
        for p in [model, *model.iterdir()]:
            p.chmod(0o755 if p.is_dir() else 0o644)


def test_the_cache_key_is_the_content_not_the_mtimes(talk_model: Path, tmp_path: Path, conversions: list[str]) -> None:
    import os
    import shutil

    from flant5_lib.serve.ct2 import SOURCE_FILE, convert_model, fingerprint

    model = tmp_path / "m"
    shutil.copytree(talk_model, model)
    first = convert_model(model, "int8")
    assert json.loads((first / SOURCE_FILE).read_text()) == {"source": str(model.resolve()), "fingerprint": fingerprint(model),
                                                             "compute_type": "int8"}
    for p in model.iterdir():  # a fresh copy of the same model (gsutil cp, docker COPY): new mtimes, same bytes
        os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    assert convert_model(model, "int8") == first and len(conversions) == 1
    weights = next(model.glob("*.safetensors"))
    stat = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of the last tensor: same size, and the mtime is put back
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = convert_model(model, "int8")
    assert again != first and len(conversions) == 2 and first.is_dir()  # a new key; the old entry is left alone
    assert convert_model(model, "float32") not in (first, again)  # the compute type is part of the key


def test_an_adapter_only_lora_folder_is_merged_into_the_cache_once(talk_model: Path, tmp_path: Path, encoded,
                                                                    conversions: list[str]) -> None:
    from flant5_lib.serve.backends import load_backend

    hf, ids = encoded
    adapter = save_lora_adapter(talk_model, tmp_path / "adapter")
    before = _snapshot(adapter)
    params = Params(serve_backend="ctranslate2", serve_ct2_compute_type="float32")
    first = load_backend(adapter, params, device="cpu")
    merged = list((tmp_path / "cache" / "merged").iterdir())
    assert len(merged) == 1 and len(conversions) == 1 and _snapshot(adapter) == before
    assert first.generate(ids[:3], GREEDY) == HFBackend(adapter, device="cpu").generate(ids[:3], GREEDY)
    assert first.generate(ids[:3], GREEDY) != hf.generate(ids[:3], GREEDY)  # the adapter was applied
    stamp = merged[0].stat().st_ino
    load_backend(adapter, params, device="cpu")
    assert [p.stat().st_ino for p in (tmp_path / "cache" / "merged").iterdir()] == [stamp] and len(conversions) == 1


def test_two_processes_building_one_entry_both_get_it(tmp_path: Path) -> None:
    """Both builds are inside at once (a barrier); the second finishes only after the first has returned its entry,
    which may already be serving: the second discards its own copy instead of replacing that folder."""
    import threading

    from flant5_lib.serve.cache import build_once

    entry, inside, first_done = tmp_path / "ct2" / "key", threading.Barrier(2, timeout=30), threading.Event()
    results: dict[str, tuple[Path, int]] = {}

    def run(name: str) -> None:
        def build(tmp: Path) -> None:
            inside.wait()
            if name == "second":
                assert first_done.wait(timeout=30)
            (tmp / "done.json").write_text(name)

        path = build_once(entry, build, complete="done.json")
        results[name] = (path, path.stat().st_ino)
        if name == "first":
            first_done.set()

    threads = [threading.Thread(target=run, args=(name,)) for name in ("first", "second")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["first"] == results["second"] == (entry, entry.stat().st_ino)  # one folder, never swapped
    assert (entry / "done.json").read_text() == "first"
    assert sorted(p.name for p in entry.parent.iterdir()) == ["key"]  # the loser's copy is gone


def test_the_cache_folder_is_flant5_cache_dir_or_xdg_and_an_unwritable_one_is_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flant5_lib.errors import ModelError
    from flant5_lib.serve.cache import build_once, cache_root

    monkeypatch.delenv("FLANT5_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "flant5"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == Path.home() / ".cache" / "flant5"
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("FLANT5_CACHE_DIR", str(tmp_path / "a-file" / "cache"))
    assert cache_root() == tmp_path / "a-file" / "cache"
    with pytest.raises(ModelError, match=r"^FLANT5_CACHE_DIR=.*set FLANT5_CACHE_DIR to a writable folder$") as err:
        build_once(cache_root() / "ct2" / "key", lambda tmp: None, complete="x")
    assert "\n" not in str(err.value)


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
