"""Fine-tuning: the training loop (prepare / fit / finish), its set-up, the Trainer subclass and atomic checkpoints.

May import the core modules of `flant5_lib`; never `serve`, `vertex`, `workbench` or `commands`.
`python -m flant5_lib.train` runs the same entry point as `flant5 train` (a Vertex job runs it).
"""

from flant5_lib._lazy import lazy_exports

__all__ = ["TrainResult", "train", "main", "eval_history", "NonFiniteError"]
__getattr__, __dir__ = lazy_exports(__name__, {
    "TrainResult": "flant5_lib.train.loop", "train": "flant5_lib.train.loop", "main": "flant5_lib.train.loop",
    "eval_history": "flant5_lib.train.loop", "NonFiniteError": "flant5_lib.train.trainer",
})
