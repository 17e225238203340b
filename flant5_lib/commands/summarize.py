"""`flant5 summarize`: summarise a file of dialogues with the same preprocessing and generation as evaluation."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, get_args

from flant5_lib.config import GenerationOverrides, generation_overrides, load_params, parse_set
from flant5_lib.errors import DataError

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "summarize", help="summarise a .jsonl/.csv/.json file of dialogues into a .jsonl file",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Summarise a file of dialogues with the same preprocessing and generation as evaluation and serving: the\n"
        "model's flant5_params.yaml sets the preprocessing, its generation_config.json the generation defaults (flags\n"
        "and --set override those).",
        epilog="examples:\n  flant5 summarize --model runs/latest/model --input chats.jsonl --output summaries.jsonl\n"
        "  flant5 summarize --model runs/latest/model --input chats.csv --output out.jsonl --num-beams 4 "
        "--set text_column=conversation",
    )
    p.add_argument("--model", required=True, help="model folder (its flant5_params.yaml sets the preprocessing)")
    p.add_argument("--input", required=True, help="file with a dialogue column (text_column) and optional id (id_column)")
    p.add_argument("--output", required=True, help="JSONL written atomically: one {id, dialogue, summary} per row")
    p.add_argument("--params", help="YAML params file (generation: num_beams, max_new_tokens, no_repeat_ngram_size...)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a params field (repeatable)")
    p.add_argument("--batch-size", type=int, dest="per_device_eval_batch_size", metavar="N",
                   help="dialogues per generate call (= --set per_device_eval_batch_size=N)")
    # One flag per generation option, checked against the same bounds as --set and a request's `parameters`.
    for field, info in GenerationOverrides.model_fields.items():
        kind = _number_type(info.annotation)
        p.add_argument("--" + field.replace("_", "-"), type=kind, dest=field, metavar="N" if kind is int else "X",
                       help=(info.description or "").split(". ")[0].rstrip(".") + " (default: the model's generation_config.json)")
    p.set_defaults(func=_summarize)


def _number_type(annotation: Any) -> type:
    """int or float from a GenerationOverrides field's `Annotated[int, Field(...)] | None`."""
    for arg in get_args(annotation):
        base = (get_args(arg) or (arg,))[0]
        if base in (int, float):
            return base
    raise TypeError(f"not a number field: {annotation}")


def summarize_file(model: str, input_path: str, output_path: str, params_file: str | None = None,
                   overrides: dict | None = None, **options: Any) -> Path:
    """Read dialogues, summarise them in length-sorted batches, write one JSON object per input row. `options`:
    per-call generation options (`config.GenerationOverrides`)."""
    from flant5_lib.data import Columns, read_dialogues_file
    from flant5_lib.fileio import write_jsonl
    from flant5_lib.inference import summarize_batches
    from flant5_lib.modeling import resolve_model_path
    from flant5_lib.preprocess import load_preprocessing
    from flant5_lib.serve.backends import load_backend

    out = Path(output_path)
    if out.suffix.lower() != ".jsonl":
        raise DataError(f"--output {out}: must end in .jsonl (one JSON object per line)")
    params = load_preprocessing(model, load_params(params_file, overrides))
    rows = read_dialogues_file(input_path, Columns.from_params(params))
    # The serving engine (serve_backend: auto picks CTranslate2 int8 on a CPU), so a batch job costs what the endpoint
    # costs and gives what it gives.
    path = resolve_model_path(params, model)
    if not Path(path).is_dir():  # a hub id: CTranslate2 converts local folders only
        params = params.with_overrides(serve_backend="hf")
    backend = load_backend(path, params)
    summaries, _ = summarize_batches(lambda ids, kw: (backend.generate(ids, kw), [False] * len(ids)), backend.tokenizer,
                                     [r["dialogue"] for r in rows], params, **options)
    write_jsonl(out, [{"id": r["id"], "dialogue": r["dialogue"], "summary": s} for r, s in zip(rows, summaries)])
    log.info("wrote %d summaries to %s", len(rows), out)
    return out


def _summarize(args: argparse.Namespace) -> int:
    sets = parse_set(args.set)
    if args.per_device_eval_batch_size is not None:
        sets["per_device_eval_batch_size"] = args.per_device_eval_batch_size
    options = {field: getattr(args, field) for field in GenerationOverrides.model_fields}
    generation_overrides(as_flags=True, **options)  # a bad flag fails before the (slow) model load
    print(summarize_file(args.model, args.input, args.output, args.params, sets, **options))
    return 0
