"""One loader for SAMSum (or any dialogue dataset) wherever it lives: synthetic, a local folder, the release archive,
gs://, or the hub.

Every source ends as a `datasets.DatasetDict` with splits among train/validation/test and the columns
`id`, `dialogue`, `summary`, line endings normalised to `\\n`. Files whose columns have other names (DialogSum's
`fname`, in-house data) are read through `Columns` (the `text_column` / `summary_column` / `id_column` params).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flant5_lib.config import SPLITS
from flant5_lib.errors import DataError

if TYPE_CHECKING:
    import datasets

    from flant5_lib.config import Params

log = logging.getLogger(__name__)

COLUMNS = ("id", "dialogue", "summary")
DEFAULT_SYNTHETIC_SIZE = 2000
# File names each split may have in a folder, in order of preference.
SPLIT_FILES = {
    "train": ["train.json", "samsum-train.csv", "train.jsonl", "train.parquet", "train.csv", "dialogsum.train.jsonl"],
    "validation": ["val.json", "samsum-validation.csv", "validation.jsonl", "validation.parquet", "validation.csv",
                   "validation.json", "val.jsonl", "val.parquet", "val.csv", "dev.jsonl", "dev.json",
                   "dialogsum.dev.jsonl"],
    "test": ["test.json", "samsum-test.csv", "test.jsonl", "test.parquet", "test.csv", "dialogsum.test.jsonl"],
}
HUB_COLUMN_ALIASES = {"Dialogue": "dialogue", "Summary": "summary"}
# A speaker tag inside a line ("... #Person2#: ..."): DialogSum-style turns that arrive without line breaks.
# The lookbehind anchors a match at the start of a blank run: without it the regex retries from every blank of a long
# run and takes quadratic time (8,000 blanks: 0.7 s; 50,000: minutes), a denial of service for any loader or server.
_INLINE_SPEAKER_TAG = re.compile(r"(?<!\s)\s+(?=#[A-Za-z]+\d*#:)")


@dataclass(frozen=True)
class Columns:
    """Which columns of a dataset file hold the dialogue, the reference summary and the row id."""

    text: str = "dialogue"
    summary: str = "summary"
    id: str = "id"

    @classmethod
    def from_params(cls, params: Params) -> Columns:
        return cls(params.text_column, params.summary_column, params.id_column)

    def pick(self, row: dict[str, Any]) -> dict[str, Any]:
        """The row under the project's names (`id`, `dialogue`, `summary`); other columns are dropped."""
        mine = {self.text, self.summary, self.id}
        row = {(k if k in mine else HUB_COLUMN_ALIASES.get(k, k)): v for k, v in row.items()}
        names = {"dialogue": self.text, "summary": self.summary, "id": self.id}
        return {ours: row[theirs] for ours, theirs in names.items() if theirs in row}


DEFAULT_COLUMNS = Columns()


def normalise_text(text: str) -> str:
    """`\\r\\n` and lone `\\r` become `\\n` (the original release mixes them); outer blanks go."""
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def split_turns(dialogue: str) -> list[str]:
    """The dialogue's non-empty utterances: one per line (SAMSum, DialogSum), and a DialogSum speaker tag
    (`#Person2#:`) met inside a line starts a new one."""
    turns = []
    for line in normalise_text(dialogue).split("\n"):
        turns += [t.strip() for t in _INLINE_SPEAKER_TAG.split(line)]
    return [t for t in turns if t]


# --- reading one file --------------------------------------------------------------------------


def _read_rows(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and "data" in data:
                data = data["data"]
            if not isinstance(data, list):
                raise DataError(f"{path}: expected a JSON list of {{id, summary, dialogue}} objects")
            return data
        if suffix == ".jsonl":
            rows = []
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise DataError(f"{path}:{n}: not valid JSON ({err.msg}); one JSON object per line") from None
            return rows
        if suffix == ".csv":
            with path.open(encoding="utf-8", newline="") as f:
                return list(csv.DictReader(f))
        if suffix == ".parquet":
            import pandas as pd

            return pd.read_parquet(path).to_dict(orient="records")
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    except DataError:
        raise
    except Exception as err:  # pyarrow / csv errors: name the file, keep it one line
        raise DataError(f"{path}: cannot be read ({type(err).__name__}: {err})") from None
    raise DataError(f"{path}: unsupported file type {suffix!r} (use .json, .jsonl, .csv or .parquet)")


def clean_rows(
    rows: list[dict[str, Any]], source: str, *, require_summary: bool = True, columns: Columns = DEFAULT_COLUMNS
) -> list[dict[str, str]]:
    """Check columns and values; name the first bad row. Ids are strings, texts normalised."""
    out = []
    flags = {"dialogue": ("text_column", columns.text), "summary": ("summary_column", columns.summary)}
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DataError(f"{source}: row {i} is not an object with {columns.id}, {columns.text}, {columns.summary}")
        original = row
        row = columns.pick(row)
        needed = ["dialogue", "summary"] if require_summary else ["dialogue"]
        missing = [c for c in needed if c not in row]
        if missing:
            fix = " and ".join(f"{flags[c][0]}=NAME" for c in missing)
            raise DataError(
                f"{source}: row {i} has no {', '.join(flags[c][1] for c in missing)} column "
                f"(columns: {', '.join(map(str, original))}); set {fix} to the column that holds it"
            )
        dialogue = row["dialogue"]
        if not isinstance(dialogue, str) or not dialogue.strip():
            raise DataError(f"{source}: row {i} (id {row.get('id', '?')}) has an empty dialogue; remove or fill it")
        summary = row.get("summary")
        if require_summary and (not isinstance(summary, str) or not summary.strip()):
            raise DataError(f"{source}: row {i} (id {row.get('id', '?')}) has an empty summary; remove or fill it")
        out.append({
            "id": str(row.get("id", i)),
            "dialogue": normalise_text(dialogue),
            "summary": normalise_text(summary) if isinstance(summary, str) else "",
        })
    if not out:
        raise DataError(f"{source}: no rows")
    return out


def read_dialogues_file(path: str | os.PathLike[str], columns: Columns = DEFAULT_COLUMNS) -> list[dict[str, str]]:
    """Dialogues to summarise (jsonl/csv/json/parquet with a dialogue column; id and summary optional)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found")
    return clean_rows(_read_rows(p), str(p), require_summary=False, columns=columns)


# --- whole datasets ----------------------------------------------------------------------------


def _from_synthetic(spec: str, seed: int) -> dict[str, list[dict[str, str]]]:
    from flant5_lib.synthetic import generate_records

    _, _, size = spec.partition(":")
    try:
        n = int(size) if size else DEFAULT_SYNTHETIC_SIZE
    except ValueError:
        raise DataError(f"dataset {spec!r}: the size after 'synthetic:' must be a whole number, e.g. synthetic:2000") from None
    if n < 10:
        raise DataError(f"dataset {spec!r}: needs at least 10 dialogues (train/validation/test are 80/10/10%)")
    rows = generate_records(n, seed=seed)
    n_val = n_test = max(1, n // 10)
    return {"train": rows[: n - n_val - n_test], "validation": rows[n - n_val - n_test : n - n_test], "test": rows[n - n_test :]}


def _from_folder(folder: Path, columns: Columns) -> dict[str, list[dict[str, str]]]:
    found: dict[str, list[dict[str, str]]] = {}
    for split, names in SPLIT_FILES.items():
        for name in names:
            matches = [p for p in folder.rglob(name) if p.is_file()]
            if matches:
                path = sorted(matches, key=lambda p: len(p.parts))[0]
                found[split] = clean_rows(_read_rows(path), str(path), columns=columns)
                break
    if not found:
        expected = "train.json/val.json/test.json, samsum-{train,validation,test}.csv or {split}.jsonl/.parquet"
        raise DataError(f"{folder}: no SAMSum files found (expected {expected})")
    return found


def _from_archive(path: Path, columns: Columns) -> dict[str, list[dict[str, str]]]:
    import py7zr

    with tempfile.TemporaryDirectory(prefix="samsum-7z-") as tmp:
        try:
            with py7zr.SevenZipFile(path, mode="r") as archive:
                archive.extractall(path=tmp)
        except (py7zr.exceptions.Bad7zFile, py7zr.exceptions.ArchiveError, EOFError, OSError) as err:
            raise DataError(f"{path}: unreadable 7z archive ({err}); download corpus.7z again") from None
        return _from_folder(Path(tmp), columns)


def _from_hub(spec: str, columns: Columns) -> dict[str, list[dict[str, str]]]:
    import datasets

    from flant5_lib.hub import require_hub

    require_hub(spec, repo_type="dataset", field="dataset", hint="point `dataset` at a local folder, a .7z archive or gs://")
    try:
        dd = datasets.load_dataset(spec)
    except Exception as err:  # offline, unknown id, gated...: one line with what to check
        raise DataError(
            f"dataset {spec!r}: not a local path and could not be loaded from the Hugging Face hub "
            f"({type(err).__name__}); check the id and your network, or point `dataset` at a local folder"
        ) from None
    out = {}
    for split, ds in dd.items():
        name = "validation" if split in ("val", "valid", "dev") else split
        out[name] = clean_rows(list(ds), f"{spec}[{split}]", columns=columns)
    return out


def _from_gcs(spec: str, columns: Columns) -> dict[str, list[dict[str, str]]]:
    from flant5_lib import storage

    local = Path(tempfile.mkdtemp(prefix="samsum-gcs-"))
    storage.download_dir(spec, local / "data")
    archives = list((local / "data").rglob("*.7z"))
    return _from_archive(archives[0], columns) if archives else _from_folder(local / "data", columns)


def _read_source(spec: str, seed: int, columns: Columns) -> dict[str, list[dict[str, str]]]:
    if spec == "synthetic" or spec.startswith("synthetic:"):
        return _from_synthetic(spec, seed)
    if spec.startswith("gs://"):
        return _from_gcs(spec, columns)
    path = Path(os.path.expanduser(spec))
    if path.is_dir():
        return _from_folder(path, columns)
    if path.is_file():
        if path.suffix == ".7z":
            return _from_archive(path, columns)
        raise DataError(f"{path}: a dataset is a folder, a .7z archive, 'synthetic[:N]' or a hub id, not a single file")
    if spec.startswith((".", "/", "~")) or os.sep in spec and not re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
        raise DataError(f"{spec}: no such file or folder")
    return _from_hub(spec, columns)


def _fill_missing(
    splits: dict[str, list[dict[str, str]]], spec: str, missing_split: str, fraction: float, seed: int
) -> dict[str, list[dict[str, str]]]:
    import random

    absent = [s for s in SPLITS if s not in splits]
    if not absent or missing_split == "skip":
        return splits
    if missing_split == "error":
        raise DataError(
            f"dataset {spec!r} has no {' or '.join(absent)} split (it has {', '.join(splits)}); "
            f"set missing_split=carve to take it from another split, or missing_split=skip"
        )
    for split in absent:  # carve
        donor = "train" if "train" in splits else "validation" if "validation" in splits else "test"
        rows = list(splits[donor])
        random.Random(seed).shuffle(rows)
        k = max(1, int(len(rows) * (fraction if split != "train" else 1 - fraction)))
        # A missing train split takes most of the donor; a missing evaluation split takes `fraction` of it.
        splits[split], splits[donor] = rows[:k], rows[k:]
        log.warning("dataset %s: carved %d %s dialogues out of %s", spec, k, split, donor)
    return splits


def load_splits(
    spec: str, *, missing_split: str = "error", carve_fraction: float = 0.1, seed: int = 42,
    columns: Columns = DEFAULT_COLUMNS,
) -> datasets.DatasetDict:
    """All splits of a dataset spec as a `DatasetDict` (see module docstring for the specs)."""
    import datasets

    splits = _fill_missing(_read_source(spec, seed, columns), spec, missing_split, carve_fraction, seed)
    features = datasets.Features({c: datasets.Value("string") for c in COLUMNS})
    return datasets.DatasetDict(
        {s: datasets.Dataset.from_list(splits[s], features=features) for s in SPLITS if s in splits}
    )


def load_split(spec: str, split: str, **kwargs: Any) -> datasets.Dataset:
    """One split; names the splits that exist when the asked one does not."""
    if split not in SPLITS:
        raise DataError(f"split {split!r}: must be one of {', '.join(SPLITS)}")
    dd = load_splits(spec, **{"missing_split": "skip", **kwargs})
    if split not in dd:
        raise DataError(f"dataset {spec!r} has no {split} split (it has {', '.join(dd)})")
    return dd[split]


def load_from_params(params: Params, split: str) -> datasets.Dataset:
    """A split as the params ask for it, with `max_train_samples` / `max_eval_samples` applied."""
    dd = load_splits(params.dataset, missing_split=params.missing_split, carve_fraction=params.carve_fraction,
                     seed=params.seed, columns=Columns.from_params(params))
    if split not in dd:
        raise DataError(f"dataset {params.dataset!r} has no {split} split (it has {', '.join(dd)}); see missing_split")
    ds = dd[split]
    limit = params.max_train_samples if split == "train" else params.max_eval_samples
    return ds.select(range(min(limit, len(ds)))) if limit else ds
