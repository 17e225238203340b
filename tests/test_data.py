"""Every dataset source ends as the same three columns; every bad input is named in one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest

from flant5_lib.data import load_split, load_splits, normalise_text, read_dialogues_file, split_turns
from flant5_lib.errors import DataError
from flant5_lib.synthetic import generate_records


def _write_original(folder: Path, splits: dict[str, list[dict]], newline: str = "\n") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    names = {"train": "train.json", "validation": "val.json", "test": "test.json"}
    for split, rows in splits.items():
        rows = [{**r, "dialogue": r["dialogue"].replace("\n", newline)} for r in rows]
        (folder / names[split]).write_text(json.dumps(rows), encoding="utf-8")
    return folder


@pytest.fixture()
def records() -> list[dict]:
    return generate_records(30, seed=7)


def test_synthetic_is_deterministic_and_split_80_10_10():
    a, b = load_splits("synthetic:200"), load_splits("synthetic:200")
    assert {k: len(v) for k, v in a.items()} == {"train": 160, "validation": 20, "test": 20}
    assert a["test"][:] == b["test"][:]
    assert a.column_names["train"] == ["id", "dialogue", "summary"]
    assert load_splits("synthetic:200", seed=1)["test"][0] != a["test"][0]


def test_synthetic_shape_looks_like_samsum():
    rows = generate_records(400, seed=3)
    turns = [len(split_turns(r["dialogue"])) for r in rows]
    speakers = [len({t.split(":")[0] for t in split_turns(r["dialogue"])}) for r in rows]
    assert min(turns) >= 3 and max(turns) <= 30
    assert set(speakers) <= {1, 2, 3, 4} and max(speakers) >= 3
    # the summary talks about people who speak in the dialogue
    for r in rows[:50]:
        first_name = r["summary"].split()[0].rstrip(",")
        assert first_name in r["dialogue"]


def test_real_samsum_original_layout(samsum_dir):
    dd = load_splits(str(samsum_dir / "original"), missing_split="skip")
    assert {k: len(v) for k, v in dd.items()} == {"validation": 818, "test": 819}
    row = dd["test"][0]
    assert row["dialogue"] and row["summary"] and "\r" not in row["dialogue"]


def test_real_samsum_csv_layout_matches_original(samsum_dir):
    csv_test = load_split(str(samsum_dir / "csv"), "test")
    json_test = load_split(str(samsum_dir / "original"), "test")
    assert len(csv_test) == 819
    assert csv_test["id"] == json_test["id"]
    assert csv_test["summary"] == json_test["summary"]


def test_missing_split_is_reported_with_the_fix(samsum_dir):
    with pytest.raises(DataError, match=r"has no train split .*missing_split=carve"):
        load_splits(str(samsum_dir / "original"))


def test_missing_split_carve_takes_train_from_validation(tmp_path, records):
    folder = _write_original(tmp_path / "d", {"validation": records[:20], "test": records[20:]})
    dd = load_splits(str(folder), missing_split="carve", carve_fraction=0.25)
    assert len(dd["train"]) + len(dd["validation"]) == 20
    assert len(dd["train"]) == 15
    assert not set(dd["train"]["id"]) & set(dd["validation"]["id"])


def test_crlf_and_lone_cr_are_normalised(tmp_path, records):
    folder = _write_original(tmp_path / "d", {"train": records[:10], "validation": records[10:20], "test": records[20:]}, "\r\n")
    dd = load_splits(str(folder))
    assert all("\r" not in d for d in dd["train"]["dialogue"])
    assert dd["train"]["dialogue"] == [r["dialogue"] for r in records[:10]]
    assert normalise_text("a\rb\r\nc\n") == "a\nb\nc"


@pytest.mark.parametrize("ext", ["jsonl", "parquet", "csv"])
def test_jsonl_parquet_csv_folders(tmp_path, records, ext):
    folder = tmp_path / ext
    folder.mkdir()
    for split, rows in {"train": records[:10], "validation": records[10:20], "test": records[20:]}.items():
        path = folder / f"{split}.{ext}"
        if ext == "jsonl":
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        elif ext == "parquet":
            pd.DataFrame(rows).to_parquet(path)
        else:
            pd.DataFrame(rows).to_csv(path, index=False)
    dd = load_splits(str(folder))
    assert {k: len(v) for k, v in dd.items()} == {"train": 10, "validation": 10, "test": 10}
    assert dd["test"]["summary"] == [r["summary"] for r in records[20:]]


def test_release_archive_corpus_7z(tmp_path, records):
    import py7zr

    folder = _write_original(tmp_path / "corpus", {"train": records[:10], "validation": records[10:20], "test": records[20:]}, "\r\n")
    archive = tmp_path / "corpus.7z"
    with py7zr.SevenZipFile(archive, "w") as z:
        for f in folder.iterdir():
            z.write(f, arcname=f.name)
    dd = load_splits(str(archive))
    assert len(dd["train"]) == 10 and "\r" not in dd["train"][0]["dialogue"]


def test_unreadable_archive(tmp_path):
    bad = tmp_path / "corpus.7z"
    bad.write_bytes(b"not a 7z file at all")
    with pytest.raises(DataError, match=r"corpus.7z: unreadable 7z archive"):
        load_splits(str(bad))


def test_bad_json_names_the_file(tmp_path):
    (tmp_path / "test.json").write_text('[{"id": 1, "dialogue": "A: hi",')
    with pytest.raises(DataError, match=r"test.json: not valid JSON \(line 1"):
        load_splits(str(tmp_path), missing_split="skip")


def test_bad_jsonl_names_the_line(tmp_path):
    (tmp_path / "test.jsonl").write_text('{"id": 1, "dialogue": "A: hi", "summary": "x"}\n{oops\n')
    with pytest.raises(DataError, match=r"test.jsonl:2: not valid JSON"):
        load_splits(str(tmp_path), missing_split="skip")


def test_missing_column_names_row_and_column(tmp_path):
    with (tmp_path / "samsum-test.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "dialogue"])
        w.writerow(["1", "A: hi"])
    with pytest.raises(DataError, match=r"samsum-test.csv: row 1 has no summary column"):
        load_splits(str(tmp_path), missing_split="skip")


def test_empty_dialogue_names_the_row(tmp_path, records):
    rows = records[:3] + [{"id": "x9", "dialogue": "  \r\n ", "summary": "s"}]
    (tmp_path / "test.json").write_text(json.dumps(rows))
    with pytest.raises(DataError, match=r"row 4 \(id x9\) has an empty dialogue"):
        load_splits(str(tmp_path), missing_split="skip")


def test_missing_folder_and_bad_specs(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        load_splits(str(tmp_path / "nope"))
    with pytest.raises(DataError, match="no SAMSum files found"):
        load_splits(str(tmp_path))
    with pytest.raises(DataError, match="whole number"):
        load_splits("synthetic:lots")
    with pytest.raises(DataError, match="must be one of"):
        load_split("synthetic:100", "dev")


def test_hub_id_offline_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match=r"knkarthick/samsum.*hub.*local folder"):
        load_splits("knkarthick/samsum")


def test_read_dialogues_file_without_summaries(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"dialogue": "A: hi\\r\\nB: hello"}\n{"id": "b", "dialogue": "C: yo"}\n')
    rows = read_dialogues_file(path)
    assert rows == [
        {"id": "1", "dialogue": "A: hi\nB: hello", "summary": ""},
        {"id": "b", "dialogue": "C: yo", "summary": ""},
    ]
    with pytest.raises(DataError, match="file not found"):
        read_dialogues_file(tmp_path / "missing.csv")


def test_gcs_folder_through_the_emulator(gcs_emulator, tmp_path, records):
    from flant5_lib import storage

    folder = _write_original(tmp_path / "up", {"train": records[:10], "validation": records[10:20], "test": records[20:]})
    storage.ensure_bucket("gs://data-bucket")
    storage.upload_dir(folder, "gs://data-bucket/samsum")
    dd = load_splits("gs://data-bucket/samsum")
    assert {k: len(v) for k, v in dd.items()} == {"train": 10, "validation": 10, "test": 10}
    assert dd["test"]["id"] == [r["id"] for r in records[20:]]


DIALOGSUM_ROWS = [
    {"fname": "train_0", "dialogue": "#Person1#: Hi, Mr. Smith. I'm Doctor Hawkins.\n#Person2#: I found it would be a good idea "
     "to get a check-up.\n#Person1#: Yes, well, you haven't had one for 5 years.", "summary": "Mr. Smith's getting a check-up.",
     "topic": "get a check-up"},
    {"fname": "train_1", "dialogue": "#Person1#: Do you have any plans? #Person2#: I'm going to the cinema. #Person1#: Enjoy!",
     "summary": "#Person2# is going to the cinema.", "topic": "plans"},
]


@pytest.mark.parametrize("layout", ["hf-csv", "original-jsonl"])
def test_dialogsum_shaped_files_load_with_column_params(tmp_path, layout):
    """DialogSum: `dialogue`, `summary`, `topic` columns, `#PersonN#:` speaker tags, ids in `fname` (original JSONL)
    or `id` (the hub's CSV). Turns on one line are split at each speaker tag."""
    from flant5_lib.data import Columns

    if layout == "hf-csv":
        rows = [{"id": r["fname"], **{k: r[k] for k in ("dialogue", "summary", "topic")}} for r in DIALOGSUM_ROWS]
        for split in ("train", "validation", "test"):
            pd.DataFrame(rows).to_csv(tmp_path / f"{split}.csv", index=False)
        columns = Columns()
    else:
        for split in ("train", "dev", "test"):
            (tmp_path / f"dialogsum.{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in DIALOGSUM_ROWS))
        columns = Columns(id="fname")
    dd = load_splits(str(tmp_path), columns=columns)
    assert set(dd) == {"train", "validation", "test"}
    assert dd["test"].column_names == ["id", "dialogue", "summary"]  # topic dropped
    assert dd["train"]["id"] == ["train_0", "train_1"]
    assert dd["train"]["summary"][1] == "#Person2# is going to the cinema."
    assert [split_turns(d) for d in dd["train"]["dialogue"]] == [
        ["#Person1#: Hi, Mr. Smith. I'm Doctor Hawkins.", "#Person2#: I found it would be a good idea to get a check-up.",
         "#Person1#: Yes, well, you haven't had one for 5 years."],
        ["#Person1#: Do you have any plans?", "#Person2#: I'm going to the cinema.", "#Person1#: Enjoy!"],
    ]


def test_column_params_rename_any_file_and_reach_every_loader(tmp_path, records):
    from flant5_lib.config import build_params
    from flant5_lib.data import load_from_params

    renamed = [{"conv_id": r["id"], "conversation": r["dialogue"], "abstract": r["summary"]} for r in records]
    folder = tmp_path / "inhouse"
    folder.mkdir()
    for split, rows in {"train": renamed[:10], "validation": renamed[10:20], "test": renamed[20:]}.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    params = build_params({"dataset": str(folder), "text_column": "conversation", "summary_column": "abstract",
                           "id_column": "conv_id", "max_eval_samples": 3})
    test = load_from_params(params, "test")
    assert test["id"] == [r["id"] for r in records[20:23]]
    assert test["dialogue"] == [r["dialogue"] for r in records[20:23]]
    assert test["summary"] == [r["summary"] for r in records[20:23]]
    with pytest.raises(DataError, match=r"train.jsonl: row 1 has no dialogue, summary column \(columns: conv_id, "
                                        r"conversation, abstract\); set text_column=NAME and summary_column=NAME"):
        load_splits(str(folder), missing_split="skip")


def test_split_turns_is_linear_on_long_blank_runs() -> None:
    """A hostile dialogue (a huge run of blanks, no speaker tag) must not make the turn splitter quadratic."""
    import time

    from flant5_lib.data import split_turns

    hostile = "Amanda: hi" + " " * 200_000 + "there"
    start = time.perf_counter()
    assert split_turns(hostile) == [hostile.strip()]
    assert time.perf_counter() - start < 20  # hang guard, not a speed claim: quadratic takes minutes, linear ms
    assert split_turns("#Person1#: hi   #Person2#: hello") == ["#Person1#: hi", "#Person2#: hello"]
