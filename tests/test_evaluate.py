"""`evaluate_model` / `flant5 evaluate` / `flant5 baseline` on the tiny model: files, contract keys, user errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from flant5_lib import cli
from flant5_lib.config import build_params
from flant5_lib.evaluate import (
    comparison_table,
    evaluate_model,
    load_metrics,
    load_predictions,
    model_selection,
    sample_table,
)
from flant5_lib.metrics import BUCKETS, ROUGE_KEYS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FILES = ("metrics.json", "predictions.jsonl", "rouge_comparison.png", "rouge_by_bucket.png", "score_histogram.png")
FAST = {"dataset": "synthetic:60", "max_new_tokens": 8, "bootstrap_samples": 100}


def _check_eval_dir(folder: Path, name: str) -> dict:
    for f in FILES:
        assert (folder / f).is_file(), f
    for f in FILES[2:]:
        assert (folder / f).read_bytes()[:8] == PNG_MAGIC
    m = json.loads((folder / "metrics.json").read_text())
    for key in ("rouge1", "rouge2", "rougeL", "rougeLsum", "n", "gen_len", "dataset", "split", "name", "ci", "buckets"):
        assert key in m, key
    assert m["name"] == name
    for key in ROUGE_KEYS:
        assert isinstance(m[key], float) and 0.0 <= m[key] <= 100.0
        lo, hi = m["ci"][key]
        assert lo <= m[key] <= hi
    assert list(m["buckets"]) == list(BUCKETS)
    assert sum(b["n"] for b in m["buckets"].values()) == m["n"]
    rows = load_predictions(folder)
    assert len(rows) == m["n"]
    for row in rows:
        assert {"id", "dialogue", "reference", "prediction", *ROUGE_KEYS} <= set(row)
    return m


@pytest.fixture(scope="module")
def evaluated(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("run")
    params = build_params({**FAST, "run_dir": str(run_dir)})
    return run_dir, evaluate_model(params, tiny_model_dir, split="test")


def test_evaluate_model_writes_contract_files(evaluated: tuple[Path, dict], tiny_model_dir: Path) -> None:
    run_dir, result = evaluated
    m = _check_eval_dir(run_dir / "eval" / "finetuned", "finetuned")
    assert m == json.loads(json.dumps(result))
    assert m["n"] == 6 and m["split"] == "test" and m["dataset"] == "synthetic:60"
    assert m["model"] == str(tiny_model_dir)
    assert 0 < m["gen_len"] <= 8 * 3  # re-tokenised generations of at most 8 new tokens
    assert set(m["baselines"]) == {"lead3", "longest3"}
    for b in m["baselines"].values():
        assert b["n"] == m["n"] and b["gen_len_unit"] == "words" and b["rouge1"] > 0
    assert not [p for p in (run_dir / "eval").iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_load_metrics_and_tables(evaluated: tuple[Path, dict]) -> None:
    run_dir, result = evaluated
    loaded = load_metrics(run_dir)
    assert set(loaded) == {"finetuned", "lead3", "longest3"}  # baselines embedded in finetuned's metrics.json
    table = comparison_table(loaded)
    assert list(table.index) == ["finetuned", "lead3", "longest3"]
    assert table.loc["lead3", "rouge1"] == pytest.approx(result["baselines"]["lead3"]["rouge1"], abs=0.01)
    rows = load_predictions(run_dir / "eval" / "finetuned")
    rows = [{**r, "rougeL": float(i)} for i, r in enumerate(rows)]  # distinct scores make the order checkable
    assert list(sample_table(rows, 2, "best")["rougeL"]) == [5.0, 4.0]
    assert list(sample_table(rows, 2, "worst")["rougeL"]) == [0.0, 1.0]
    assert len(sample_table(rows, 3, "random")) == 3


def test_cli_evaluate_and_baseline(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sets = ["--set", "max_new_tokens=4", "--set", "bootstrap_samples=50", "--set", "baselines=[lead3]"]
    rc = cli.main(["evaluate", "--model", str(tiny_model_dir), "--dataset", "synthetic:40", "--split", "validation",
                   "--out", str(tmp_path / "ev"), "--name", "untuned", *sets])
    assert rc == 0
    m = _check_eval_dir(tmp_path / "ev", "untuned")
    assert m["split"] == "validation" and m["n"] == 4 and set(m["baselines"]) == {"lead3"}
    rc = cli.main(["baseline", "--method", "longest3", "--dataset", "synthetic:40", "--out", str(tmp_path / "bl"),
                   "--set", "bootstrap_samples=50"])
    assert rc == 0
    m = _check_eval_dir(tmp_path / "bl", "longest3")
    assert m["model"] is None and m["split"] == "test"
    assert "longest3 on synthetic:40 test (n=4)" in capsys.readouterr().out


def _write(folder: Path, name: str, text: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text, encoding="utf-8")
    return str(folder)


GOOD = json.dumps({"id": "1", "dialogue": "A: hi\nB: hello", "summary": "A greets B."})
ERROR_CASES = {
    "missing model": (lambda tmp, model: ["--model", str(tmp / "no-such-model"), "--dataset", "synthetic:20"], "no-such-model"),
    "missing dataset": (lambda tmp, model: ["--model", model, "--dataset", str(tmp / "nowhere")], "nowhere"),
    "bad json": (lambda tmp, model: ["--model", model, "--dataset", _write(tmp / "d", "test.jsonl", GOOD + "\n{oops\n")],
                 "test.jsonl:2"),
    "missing column": (lambda tmp, model: ["--model", model, "--dataset",
                                           _write(tmp / "d", "test.jsonl", json.dumps({"id": "1", "dialogue": "A: hi"}))],
                       "summary"),
    "empty dialogue": (lambda tmp, model: ["--model", model, "--dataset",
                                           _write(tmp / "d", "test.jsonl", json.dumps({"id": "7", "dialogue": " ", "summary": "x"}))],
                       "empty dialogue"),
    "unknown split": (lambda tmp, model: ["--model", model, "--dataset", "synthetic:20", "--split", "dev"], "dev"),
}


@pytest.mark.parametrize(
    "command, case",
    [("evaluate", c) for c in ERROR_CASES] + [("baseline", c) for c in ERROR_CASES if c != "missing model"],
)
def test_cli_user_errors_exit_2_one_line_nothing_written(
    case: str, command: str, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    build, fragment = ERROR_CASES[case]
    argv = build(tmp_path, str(tiny_model_dir))
    if command == "baseline":
        argv = ["--method", "lead3", *argv[2:]]
    out = tmp_path / "out" / "eval"
    rc = cli.main([command, *argv, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert fragment in err
    assert not (tmp_path / "out").exists()


def test_cli_subprocess_exit_code(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "flant5_lib.cli", "baseline", "--method", "lead3", "--dataset", str(tmp_path / "none"),
         "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "none" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_evaluation_feeds_the_model_the_preprocessing_it_was_trained_with(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The effect, not the echo: the token ids the encoder actually received are those of the model folder's
    preprocessing (its prefix, its max_source_length), not of the evaluation's own params."""
    import shutil

    from flant5_lib import modeling
    from flant5_lib.config import save_params
    from flant5_lib.preprocess import encode_sources

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    trained = build_params({"source_prefix": "Summarize this chat: ", "max_source_length": 24})
    save_params(trained, model / "flant5_params.yaml")
    seen: list[list[int]] = []
    real_load = modeling.load_model_and_tokenizer

    def load_and_watch(*args, **kwargs):  # a spy on the real model: records what its encoder is fed
        m, tok = real_load(*args, **kwargs)

        def record(_module, call_args, call_kwargs):
            ids, mask = call_kwargs["input_ids"], call_kwargs["attention_mask"]
            seen.extend([int(t) for t, keep in zip(row, keep_row) if keep] for row, keep_row in zip(ids, mask))

        m.get_encoder().register_forward_pre_hook(record, with_kwargs=True)
        return m, tok

    monkeypatch.setattr(modeling, "load_model_and_tokenizer", load_and_watch)
    params = build_params({"dataset": "synthetic:30", "max_new_tokens": 4, "bootstrap_samples": 10, "baselines": []})
    evaluate_model(params, model, split="test", out_dir=tmp_path / "eval")

    tok = modeling.load_tokenizer(str(model))
    dialogues = [r["dialogue"] for r in load_predictions(tmp_path / "eval")]
    expected, cut = encode_sources(tok, dialogues, trained)
    untrained_way, _ = encode_sources(tok, dialogues, params)
    assert sorted(seen) == sorted(expected) and any(cut)
    assert sorted(seen) != sorted(untrained_way)


def _model_that_sometimes_stops(src: Path, dst: Path) -> Path:
    """The untrained tiny model never says </s>, so every summary would be capped. Giving </s> the output row of the
    token it generates most often makes it stop exactly where it would have said that token (argmax takes the lower
    id on a tie): some summaries end early, some run into max_new_tokens."""
    from collections import Counter

    import torch

    from flant5_lib.config import Params
    from flant5_lib.inference import generate_from_ids
    from flant5_lib.modeling import load_model_and_tokenizer, save_model
    from flant5_lib.preprocess import encode_sources
    from flant5_lib.synthetic import generate_records

    model, tok = load_model_and_tokenizer(str(src), device="cpu")
    ids, _ = encode_sources(tok, [r["dialogue"] for r in generate_records(20, seed=1)], Params())
    texts = generate_from_ids(model, tok, ids, {"max_new_tokens": 8, "num_beams": 1})
    common = Counter(t for text in texts for t in tok(text, add_special_tokens=False)["input_ids"]).most_common(1)[0][0]
    with torch.no_grad():
        model.lm_head.weight[tok.eos_token_id] = model.lm_head.weight[common]
    return save_model(model, tok, dst)


def test_capped_share_repetition_share_and_selection_split(tiny_model_dir: Path, tmp_path: Path) -> None:
    from flant5_lib.config import Params
    from flant5_lib.inference import generate_summaries
    from flant5_lib.metrics import repetition_loop
    from flant5_lib.modeling import load_model_and_tokenizer

    model = _model_that_sometimes_stops(tiny_model_dir, tmp_path / "model")
    (model / "train_metrics.json").write_text(json.dumps({"selection_split": "validation", "published_step": 40,
                                                         "metric_for_best_model": "eval_rougeLsum"}))
    params = build_params({"dataset": "synthetic:100", "max_new_tokens": 8, "bootstrap_samples": 10, "baselines": ["lead3"]})
    m = evaluate_model(params, model, split="test", out_dir=tmp_path / "test")
    rows = load_predictions(tmp_path / "test")

    # Oracle: greedy decoding is prefix-stable, so a summary was cut at 8 tokens exactly when a 9th token follows.
    lm, tok = load_model_and_tokenizer(str(model), device="cpu")
    longer = generate_summaries(lm, tok, [r["dialogue"] for r in rows], Params(max_new_tokens=9), progress=False)
    assert [r["capped"] for r in rows] == [r["prediction"] != t for r, t in zip(rows, longer)]
    assert 0 < m["capped_share"] < 1
    assert m["capped_share"] == pytest.approx(sum(r["capped"] for r in rows) / len(rows))
    assert m["repetition_share"] == pytest.approx(sum(repetition_loop(r["prediction"]) is not None for r in rows) / len(rows))
    assert [r["repetition"] for r in rows] == [repetition_loop(r["prediction"]) for r in rows]
    assert m["baselines"]["lead3"]["capped_share"] is None
    assert (m["selection_split"], m["reported_split"], m["selected_step"]) == ("validation", "test", 40)
    assert "selection_warning" not in m

    assert "validation split it is scored on" in model_selection(model, "validation")["selection_warning"]
    assert model_selection(tiny_model_dir, "test")["selection_split"] is None  # no training run: unknown, not guessed
