"""`flant5 summarize`: summarise a file of dialogues with the same preprocessing and generation as evaluation."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from flant5_lib.config import load_params, parse_set
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
    p.add_argument("--batch-size", type=int, help="dialogues per generate call (default per_device_eval_batch_size)")
    p.add_argument("--max-new-tokens", type=int, help="most tokens per summary")
    p.add_argument("--num-beams", type=int, help="beam width (1 = greedy)")
    p.set_defaults(func=_summarize)


def summarize_file(model: str, input_path: str, output_path: str, params_file: str | None = None,
                   overrides: dict | None = None, *, batch_size: int | None = None,
                   max_new_tokens: int | None = None, num_beams: int | None = None) -> Path:
    """Read dialogues, summarise them in length-sorted batches, write one JSON object per input row."""
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
                                     [r["dialogue"] for r in rows], params, batch_size=batch_size,
                                     max_new_tokens=max_new_tokens, num_beams=num_beams)
    write_jsonl(out, [{"id": r["id"], "dialogue": r["dialogue"], "summary": s} for r, s in zip(rows, summaries)])
    log.info("wrote %d summaries to %s", len(rows), out)
    return out


def _summarize(args: argparse.Namespace) -> int:
    for flag in ("batch_size", "max_new_tokens", "num_beams"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise DataError(f"--{flag.replace('_', '-')} {value}: must be >= 1")
    out = summarize_file(args.model, args.input, args.output, args.params, parse_set(args.set),
                         batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, num_beams=args.num_beams)
    print(out)
    return 0
