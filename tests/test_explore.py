"""Dataset exploration: statistics, size buckets, suggested lengths, the `flant5 data` command."""

from __future__ import annotations

import json

import pytest

from flant5_lib.cli import main
from flant5_lib.config import build_params
from flant5_lib.data import load_splits
from flant5_lib.explore import (
    dataset_stats,
    explore,
    percentile,
    round_up,
    speakers,
    suggest_max_lengths,
    summarise,
)


def test_percentile_matches_numpy_and_rounding():
    import numpy as np

    values = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]
    for q in (0, 50, 90, 95, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert round_up(1, 16) == 16 and round_up(16, 16) == 16 and round_up(16.2, 16) == 32 and round_up(250, 8) == 256
    s = summarise(values)
    assert s["min"] == 1 and s["max"] == 9 and s["n"] == len(values)


def test_speakers_in_order_of_first_turn():
    assert speakers("Amanda: hi\nJerry: hey\nAmanda: ok\nno colon here\nLarry: yo") == ["Amanda", "Jerry", "Larry"]


def test_suggested_lengths_cover_the_percentile():
    src = list(range(1, 201))  # 1..200 tokens
    tgt = [10] * 99 + [100]
    g = suggest_max_lengths(src, tgt, source_percentile=95, target_percentile=99, multiple=16)
    assert g["max_source_length"] % 16 == 0 and g["max_source_length"] >= percentile(src, 95)
    assert g["max_source_length"] - 16 < percentile(src, 95)  # the smallest multiple that covers it
    assert g["source_truncated_pct"] == pytest.approx(100 * sum(n > g["max_source_length"] for n in src) / len(src))
    assert g["max_target_length"] % 16 == 0


def test_synthetic_stats_and_plots(tmp_path, tiny_model_dir):
    params = build_params({"dataset": "synthetic:200", "model_name": str(tiny_model_dir)})
    stats = explore(params, out_dir=tmp_path / "explore")
    dd = load_splits("synthetic:200")
    for split, ds in dd.items():
        s = stats["splits"][split]
        assert s["n"] == len(ds)
        assert sum(s["buckets"].values()) == len(ds)
        assert sum(s["speaker_counts"].values()) == len(ds)
        assert s["turns"]["min"] >= 3 and s["turns"]["max"] <= 30
        # source = format_source output: the prefix adds words, so it is longer than the raw dialogue
        assert s["source_tokens"]["p50"] > s["target_tokens"]["p50"]
    assert stats["suggested"]["basis_split"] == "train"
    on_disk = json.loads((tmp_path / "explore" / "stats.json").read_text())
    assert "series" not in on_disk and on_disk["suggested"] == stats["suggested"]
    for name in ("turns", "speakers", "lengths_words", "lengths_tokens", "buckets"):
        png = tmp_path / "explore" / f"{name}.png"
        assert png.read_bytes()[:4] == b"\x89PNG"


def test_without_tokenizer_no_token_stats():
    params = build_params({"dataset": "synthetic:50"})
    stats = dataset_stats(load_splits("synthetic:50"), params, tokenizer=None)
    assert "source_tokens" not in stats["splits"]["train"] and "suggested" not in stats


@pytest.mark.samsum
def test_real_samsum_counts_and_buckets(samsum_dir):
    params = build_params({"dataset": str(samsum_dir)})
    stats = dataset_stats(load_splits(str(samsum_dir), missing_split="skip"), params, tokenizer=None)
    assert stats["splits"]["validation"]["n"] == 818 and stats["splits"]["test"]["n"] == 819
    for split in ("validation", "test"):
        s = stats["splits"][split]
        assert sum(s["buckets"].values()) == s["n"]
        assert list(s["buckets"]) == ["3-6", "7-12", "13-18", "19-30"]
        assert all(v > 50 for v in s["buckets"].values())  # SAMSum fills every bucket
        assert s["speakers"]["min"] >= 1 and s["turns"]["max"] <= 30
        assert sum(s["speaker_counts"].values()) == s["n"]


@pytest.mark.samsum
def test_real_samsum_token_lengths_with_the_t5_vocabulary(samsum_dir, t5_tokenizer_dir):
    from flant5_lib.explore import load_tokenizer_for

    params = build_params({"dataset": str(samsum_dir)})
    splits = load_splits(str(samsum_dir), missing_split="skip")
    stats = dataset_stats(splits, params, load_tokenizer_for(params, t5_tokenizer_dir), source_percentile=95)
    # Some SAMSum dialogues exceed 512 T5 tokens; the p95 suggestion covers 95% of the basis split.
    assert stats["splits"]["test"]["source_tokens"]["max"] > 512
    g = stats["suggested"]
    assert g["basis_split"] == "validation" and g["source_truncated_pct"] <= 5 and g["max_source_length"] % 16 == 0
    assert g["max_target_length"] <= 128


def test_cli_explore_and_show(tmp_path, capsys, tiny_model_dir):
    out = tmp_path / "ex"
    rc = main(["data", "explore", "--dataset", "synthetic:100", "--tokenizer", str(tiny_model_dir), "--out", str(out),
               "--source-percentile", "95", "--multiple", "8"])
    text = capsys.readouterr().out
    assert rc == 0 and "source_tokens" in text and "suggested" in text and "p95/p99" in text
    suggested = json.loads((out / "stats.json").read_text())["suggested"]
    assert suggested["max_source_length"] % 8 == 0 and suggested["source_percentile"] == 95

    rc = main(["data", "show", "--dataset", "synthetic:100", "--split", "test", "-n", "3"])
    text = capsys.readouterr().out
    assert rc == 0 and text.count(">>> Summary:") == 3
    test_ids = load_splits("synthetic:100")["test"]["id"][:3]
    assert all(i in text for i in test_ids)


def test_cli_bad_input_is_one_line(capsys):
    assert main(["data", "show", "--dataset", "/no/such/folder"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "/no/such/folder" in err
    assert main(["data", "explore", "--dataset", "synthetic:100", "--no-tokens", "--source-percentile", "0"]) == 2
    assert "--source-percentile" in capsys.readouterr().err


def test_unloadable_tokenizer_says_how_to_go_on(capsys):
    rc = main(["data", "explore", "--dataset", "synthetic:50", "--set", "model_name=/no/such/model"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "--tokenizer DIR" in err and "--no-tokens" in err
