"""The inputs of a run, checked by `flant5 run` before the first notebook starts: a mistake costs seconds, not a
training run.

The dataset (format, and the splits the selected notebooks read), the model and tokenizer (a local folder, gs://,
or a hub id that is cached or reachable), a trained model for notebooks that need one, and the Vertex settings
(the rule set of `flant5_lib.vertex.rules`, which `flant5 vertex preflight` runs). Every problem is one line naming the parameter and the `--set` that fixes it;
nothing heavy is imported (no torch, no transformers), so an offline hub id fails in well under 5 s.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from flant5_lib.config import SPLITS, Params
from flant5_lib.errors import DataError, ParamsError, UserError

log = logging.getLogger(__name__)

# Which splits each notebook reads (00 explores whatever is there).
SPLITS_READ = {"01": ("train", "validation"), "02": ("train", "validation"), "03": ("test",), "04": ("test",),
               "05": ("test",)}
VERTEX_NOTEBOOKS = ("02", "04", "05")


def _set(field: str, example: str) -> str:
    return f"--set {field}={example}"


def needed_splits(numbers: Sequence[str], params: Params) -> list[str]:
    needed = {s for n in numbers for s in SPLITS_READ.get(n, ())}
    if "03" in numbers:
        needed.add(params.eval_split)
    return [s for s in SPLITS if s in needed]


def check_dataset(params: Params, numbers: Sequence[str]) -> None:
    """Read a local dataset (folder or .7z) to check its format and splits; check a hub id is cached or reachable."""
    from flant5_lib.hub import looks_like_hub_id, require_hub

    spec = params.dataset
    needed = needed_splits(numbers, params)
    if spec == "synthetic" or spec.startswith("synthetic:") or not needed and "00" not in numbers:
        return
    if spec.startswith("gs://"):
        if params.vertex_mode == "local" and set(numbers) - set(VERTEX_NOTEBOOKS):
            log.info("dataset %s: read when a notebook needs it", spec)
        return
    path = Path(spec).expanduser()
    if not path.exists():
        if looks_like_hub_id(spec):
            cloud_only = params.vertex_mode == "cloud" and set(numbers) <= {"02"}
            if not cloud_only:  # a cloud job reads the hub from Google's network, not from here
                require_hub(spec, repo_type="dataset", field="dataset",
                            hint=f"point it at a local copy ({_set('dataset', '/path/to/samsum')})")
            return
        raise DataError(f"dataset: {spec!r}: no such file or folder ({_set('dataset', '/path/to/samsum')})")
    if params.vertex_mode == "cloud" and "02" in numbers:
        raise ParamsError(f"dataset: {spec!r} is a local path, but the Vertex job (02) runs on another machine; "
                          f"copy it to gs:// ({_set('dataset', 'gs://my-bucket/samsum')}) or use a hub id")
    from flant5_lib.data import Columns, load_splits

    have = list(load_splits(spec, missing_split="skip", seed=params.seed, columns=Columns.from_params(params)))  # DataError names a bad file or row
    absent = [s for s in needed if s not in have]
    if not absent:
        return
    if params.missing_split == "carve" and have:
        return
    fix = _set("missing_split", "carve") + " to take it from another split" if have else "add the split files"
    raise DataError(f"dataset: {spec!r} has no {' or '.join(absent)} split (it has {', '.join(have) or 'none'}), which "
                    f"notebook{'s' if len(numbers) > 1 else ''} {', '.join(numbers)} read; {fix}, or pick notebooks "
                    "with --only")


def check_model_spec(spec: str, field: str) -> None:
    """A local folder with config.json (or a tokenizer), gs:// (read later), 'tiny', or a cached/reachable hub id."""
    from flant5_lib.hub import looks_like_hub_id, require_hub

    if spec == "tiny" or spec.startswith("gs://"):
        return
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{field}: {spec!r} is a file; a model is a folder with config.json and *.safetensors")
        return
    if not looks_like_hub_id(spec):
        raise UserError(f"{field}: {spec!r}: no such folder ({_set(field, 'tiny')} or a hub id such as google/flan-t5-base)")
    require_hub(spec, field=field, hint=f"use a local folder ({_set(field, '/path/to/model')}) or {_set(field, 'tiny')}")


def has_trained_model(run_dir: Path) -> bool:
    return any((run_dir / sub / "config.json").is_file() for sub in ("model", "vertex/model"))


def check_models(params: Params, numbers: Sequence[str], run_dir: Path, *, fresh: bool = False) -> None:
    """The model and tokenizer the selected notebooks load, and the trained model the later ones read (`fresh`: the
    run folder is cleared first, so a model in it does not count)."""
    local_model = {"00", "01"} & set(numbers) or ("03" in numbers and params.compare_untuned) or (
        "02" in numbers and params.vertex_mode == "local")
    if local_model:
        check_model_spec(params.model_name, "model_name")
    if params.tokenizer_name and local_model:
        check_model_spec(params.tokenizer_name, "tokenizer_name")
    trains = {"01", "02"} & set(numbers)
    readers = [n for n in numbers if n in ("03", "04", "05")]
    if readers and not trains and params.vertex_mode == "local" and (fresh or not has_trained_model(run_dir)):
        if fresh:
            raise UserError(f"{run_dir}: --fresh clears the trained model notebook {readers[0]} reads; add 01 to "
                            "--only, or pass --resume")
        raise UserError(f"{run_dir}: no trained model for notebook {readers[0]}; add 01 to --only (or run it first "
                        "with the same --out, then this with --resume)")


def check_vertex(params: Params, numbers: Sequence[str], source: str) -> None:
    """The Vertex rule set (machines, GPUs per region, images, TensorBoard, settings) for the Vertex notebooks."""
    if not set(numbers) & set(VERTEX_NOTEBOOKS):
        return
    from flant5_lib.vertex import rules

    found = rules.problems(params)
    if found:
        raise ParamsError(f"{source}: " + "; ".join(found))


def check_inputs(params: Params, numbers: Sequence[str], run_dir: Path, source: str = "params", *,
                 fresh: bool = False) -> None:
    """Every check above, cheapest first; the first problem stops the run with one line."""
    check_vertex(params, numbers, source)
    check_models(params, numbers, run_dir, fresh=fresh)
    check_dataset(params, numbers)
