"""The SIGTERM save of a flan-t5-base-sized model: does it fit Compute Engine's 30 s Spot notice window?

Builds a random model with flan-t5-base's shapes (248M parameters; no download), trains it for a step on CPU, sends
the trainer SIGTERM as a preemption notice does, and reads the save's duration from the trainer's own clock
(`flant5_lib.train.preemption.SaveClock`): once to local disk, once to AIP_CHECKPOINT_DIR in the GCS emulator
(local write + upload, marker last). A checkpoint holds the weights, the AdamW state (2 x the weights) and the RNG.

    .venv/bin/python benchmarks/spot_save_bench.py
    .venv/bin/python benchmarks/spot_save_bench.py --targets local

Prints a table, then (last) one JSON line with the load average.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BASE_SHAPE = dict(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12, num_heads=12,
                  vocab_size=32128, feed_forward_proj="gated-gelu", tie_word_embeddings=False)


def base_sized_model(folder: Path) -> Path:
    """The tiny model's tokenizer and preprocessing files with flan-t5-base-shaped random weights."""
    from transformers import T5Config, T5ForConditionalGeneration

    from flant5_lib.modeling import build_tiny_model

    tiny = build_tiny_model(folder / "tiny", seed=0)
    out = folder / "base-sized"
    shutil.copytree(tiny, out)
    for p in out.glob("model*.safetensors"):
        p.unlink()
    cfg = T5Config.from_pretrained(tiny)
    for k, v in BASE_SHAPE.items():
        setattr(cfg, k, v)
    T5ForConditionalGeneration(cfg).save_pretrained(out, safe_serialization=True)
    return out


def one_save(model: Path, work: Path, checkpoint_uri: str | None) -> dict:
    from transformers import TrainerCallback

    from flant5_lib.config import build_params
    from flant5_lib.train.loop import finish, fit, prepare
    from flant5_lib.train.preemption import NOTICE_WINDOW_S, SaveClock

    class Notice(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # type: ignore[override]
            if state.global_step == 1:
                os.kill(os.getpid(), signal.SIGTERM)
            return control

    if checkpoint_uri:
        os.environ["AIP_CHECKPOINT_DIR"] = checkpoint_uri
    else:
        os.environ.pop("AIP_CHECKPOINT_DIR", None)
    params = build_params(dict(run_dir=str(work), model_name=str(model), dataset="synthetic:40", max_steps=5,
                               per_device_train_batch_size=1, max_source_length=32, max_target_length=16,
                               save_steps=1000, save_every_minutes=None, eval_strategy="no", logging_steps=1))
    prep = prepare(params, callbacks=[Notice()])
    output, wall = fit(prep)
    finish(prep, output, wall)
    (clock,) = [c for c in prep.trainer.callback_handler.callbacks if isinstance(c, SaveClock)]
    row = clock.saves[-1]
    ckpt = next((work / "checkpoints").glob("checkpoint-*"))
    size = sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
    return {"target": "gcs-emulator" if checkpoint_uri else "local", "checkpoint_mb": round(size / 2**20),
            "save_s": row["save_s"], "since_sigterm_s": row["since_sigterm_s"], "notice_window_s": NOTICE_WINDOW_S,
            "fits": row["since_sigterm_s"] <= NOTICE_WINDOW_S}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default="local,gcs", help="comma-separated: local, gcs")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = []
    with tempfile.TemporaryDirectory(prefix="spot-save-bench-") as tmp:
        root = Path(tmp)
        model = base_sized_model(root)
        targets = args.targets.split(",")
        if "local" in targets:
            rows.append(one_save(model, root / "local", None))
        if "gcs" in targets:
            from flant5_lib import storage
            from flant5_lib.vertex.localstack.emulator import start_gcs_emulator

            emu = start_gcs_emulator()
            os.environ["STORAGE_EMULATOR_HOST"] = emu.url
            try:
                bucket = f"gs://spot-bench-{uuid.uuid4().hex[:8]}"
                storage.ensure_bucket(bucket)
                rows.append(one_save(model, root / "gcs", f"{bucket}/checkpoints/"))
            finally:
                emu.stop()
    print(f"{'target':14s} {'checkpoint':>11s} {'save':>8s} {'since SIGTERM':>14s} {'window':>7s}  fits")
    for r in rows:
        print(f"{r['target']:14s} {r['checkpoint_mb']:>8d} MB {r['save_s']:>7.2f}s {r['since_sigterm_s']:>13.2f}s "
              f"{r['notice_window_s']:>6.0f}s  {r['fits']}")
    print(json.dumps({"bench": "spot_save", "rows": rows, "date": time.strftime("%Y-%m-%d"),
                      "loadavg": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
                      "machine": platform.machine(), "python": platform.python_version()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
