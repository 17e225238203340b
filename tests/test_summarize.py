"""`flant5 summarize`: a file of dialogues in, one {id, dialogue, summary} per row out, same path as evaluation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from tests.helpers.serve import make_talkative_model

from flant5_lib.preprocess import load_preprocessing
from flant5_lib.cli import main
from flant5_lib.config import Params, save_params
from flant5_lib.inference import generate_summaries
from flant5_lib.modeling import load_model_and_tokenizer
from flant5_lib.synthetic import generate_records


@pytest.fixture(scope="module")
def talk_model(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_talkative_model(tiny_model_dir, tmp_path_factory.mktemp("summ") / "talk")


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# The engine transformers' own generate: these tests compare the CLI's summaries with it exactly (the default `auto`
# picks CTranslate2 int8 on a CPU, whose rounding flips near-ties of a random model).
EXACT = ["--set", "serve_backend=hf"]


@pytest.mark.parametrize("engine", [["serve_backend=hf"], ["serve_backend=ctranslate2", "serve_ct2_compute_type=float32"]],
                         ids=["transformers", "ctranslate2-float32"])
def test_summarize_jsonl_keeps_input_order_and_matches_generation(talk_model: Path, tmp_path: Path,
                                                                  engine: list[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`flant5 summarize` runs the serving engine (serve_backend); both exact engines give evaluation's summaries."""
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(talk_model, folder)
    monkeypatch.setenv("FLANT5_CACHE_DIR", str(tmp_path / "cache"))  # any conversion there was made by this run
    rows = generate_records(7, seed=11)
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": r["id"], "dialogue": r["dialogue"]}) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    sets = [a for s in engine for a in ("--set", s)]
    assert main(["summarize", "--model", str(folder), "--input", str(src), "--output", str(out),
                 "--max-new-tokens", "6", "--batch-size", "3", *sets]) == 0
    # The engine really ran: only CTranslate2 converts the model, into this test's own serving cache.
    converted = list((tmp_path / "cache" / "ct2").glob("*-float32-*"))
    if "ctranslate2" in engine[0]:
        from flant5_lib.serve.ct2 import SOURCE_FILE

        assert len(converted) == 1 and (converted[0] / "model.bin").is_file()
        assert json.loads((converted[0] / SOURCE_FILE).read_text())["source"] == str(folder.resolve())
    else:
        assert not converted
    got = _read_jsonl(out)
    assert [g["id"] for g in got] == [r["id"] for r in rows]
    assert [g["dialogue"] for g in got] == [r["dialogue"] for r in rows]
    model, tok = load_model_and_tokenizer(str(talk_model), device="cpu")
    expected = [generate_summaries(model, tok, [r["dialogue"]], Params(), max_new_tokens=6, progress=False)[0] for r in rows]
    assert [g["summary"] for g in got] == expected and len(set(expected)) >= 3
    assert not list(tmp_path.glob(".out.jsonl.tmp*"))  # written atomically, nothing left behind


def test_summarize_csv_and_model_preprocessing_params(talk_model: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    import shutil

    shutil.copytree(talk_model, model)
    save_params(Params(source_prefix="Summarize this chat: ", max_source_length=16), model / "flant5_params.yaml")
    assert load_preprocessing(model, Params()).source_prefix == "Summarize this chat: "  # training's preprocessing wins
    src = tmp_path / "in.csv"
    with src.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["dialogue"])
        w.writeheader()
        for r in generate_records(3, seed=5):
            w.writerow({"dialogue": r["dialogue"]})
    out = tmp_path / "out.jsonl"
    assert main(["summarize", "--model", str(model), "--input", str(src), "--output", str(out), "--max-new-tokens", "6",
                 *EXACT]) == 0
    got = _read_jsonl(out)
    assert [g["id"] for g in got] == ["1", "2", "3"] and all("summary" in g for g in got)
    m, tok = load_model_and_tokenizer(str(model), device="cpu")
    p = Params(source_prefix="Summarize this chat: ", max_source_length=16)
    dialogues = [g["dialogue"] for g in got]
    expected = generate_summaries(m, tok, dialogues, p, max_new_tokens=6, batch_size=1, progress=False)
    assert [g["summary"] for g in got] == expected
    assert expected != generate_summaries(m, tok, dialogues, Params(), max_new_tokens=6, batch_size=1, progress=False)


@pytest.mark.parametrize(("args", "needle"), [
    (["--input", "missing.jsonl"], "file not found"),
    (["--output", "out.txt"], ".jsonl"),
    (["--num-beams", "0"], "--num-beams 0: Input should be greater than or equal to 1"),
    (["--min-new-tokens", "-1"], "--min-new-tokens -1"),
])
def test_summarize_user_mistakes_exit_2(talk_model: Path, tmp_path: Path, capsys, args: list[str], needle: str) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"dialogue": "a: hi\nb: hello"}) + "\n")
    base = {"--model": str(talk_model), "--input": str(src), "--output": str(tmp_path / "o.jsonl")}
    base.update({args[0]: str(tmp_path / args[1]) if args[0] in ("--input", "--output") else args[1]})
    argv = ["summarize"] + [x for kv in base.items() for x in kv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args", [["--num-beams", "99"], ["--set", "num_beams=99"]], ids=["flag", "set"])
def test_a_generation_option_out_of_bounds_exits_2_naming_the_field_and_bound(tmp_path: Path, args: list[str]) -> None:
    """The flag and --set hit the one bound (Params.num_beams <= 16), before any model is read: the folder is missing."""
    import subprocess
    import sys

    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"dialogue": "a: hi\nb: hello"}) + "\n")
    proc = subprocess.run([sys.executable, "-m", "flant5_lib.cli", "summarize", "--model", str(tmp_path / "no-model"),
                           "--input", str(src), "--output", str(tmp_path / "o.jsonl"), *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "num-beams 99" in line or "num_beams" in line
    assert "less than or equal to 16" in line and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.jsonl").exists()


def test_the_models_generation_config_is_the_default_and_set_overrides_it(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Effect on the outputs: the saved no_repeat_ngram_size breaks the untrained model's loops unless --set says 0."""
    import shutil

    from flant5_lib.metrics import repetition_share
    from flant5_lib.preprocess import save_generation_config

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    save_generation_config(Params(max_new_tokens=16, no_repeat_ngram_size=2), model)
    dialogues = [r["dialogue"] for r in generate_records(6, seed=11)]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"dialogue": d}) + "\n" for d in dialogues))
    assert main(["summarize", "--model", str(model), "--input", str(src), "--output", str(tmp_path / "saved.jsonl"),
                 *EXACT]) == 0
    assert main(["summarize", "--model", str(model), "--input", str(src), "--output", str(tmp_path / "plain.jsonl"),
                 "--set", "no_repeat_ngram_size=0", *EXACT]) == 0
    assert main(["summarize", "--model", str(model), "--input", str(src), "--output", str(tmp_path / "flag.jsonl"),
                 "--no-repeat-ngram-size", "0", *EXACT]) == 0  # the per-call flag: the same effect as --set
    m, tok = load_model_and_tokenizer(str(model), device="cpu")
    saved = generate_summaries(m, tok, dialogues, Params(max_new_tokens=16, no_repeat_ngram_size=2), progress=False)
    plain = generate_summaries(m, tok, dialogues, Params(max_new_tokens=16, no_repeat_ngram_size=0), progress=False)
    assert [g["summary"] for g in _read_jsonl(tmp_path / "saved.jsonl")] == saved
    assert [g["summary"] for g in _read_jsonl(tmp_path / "plain.jsonl")] == plain
    assert [g["summary"] for g in _read_jsonl(tmp_path / "flag.jsonl")] == plain
    assert repetition_share(plain) > repetition_share(saved)


def test_summarize_reads_other_column_names(talk_model: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"fname": "chat_7", "conversation": "#Person1#: Hi\n#Person2#: Hello"}) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["summarize", "--model", str(talk_model), "--input", str(src), "--output", str(out), "--max-new-tokens", "4",
                 "--set", "text_column=conversation", "--set", "id_column=fname"]) == 0
    got = _read_jsonl(out)
    assert [(g["id"], g["dialogue"]) for g in got] == [("chat_7", "#Person1#: Hi\n#Person2#: Hello")]
