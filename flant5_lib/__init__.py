"""Fine-tune Flan-T5 on SAMSum and serve it on Vertex AI: the library behind the notebooks and the CLI.

Layout (imports point one way, enforced by tests/test_architecture.py):
  core modules (flat)  config, errors, fileio, procs, storage, data, synthetic, preprocess, metrics, baselines,
                       modeling, inference, evaluate, explore, plots; they never import the subpackages.
  train/               fine-tuning: loop, set-up, trainer, checkpoints (`python -m flant5_lib.train`).
  serve/               the prediction server; imports only the core.
  vertex/              Vertex AI requests, SDK calls, presets, estimates, the job entry point, the local stand-in.
  workbench/           the notebook runner, the run page and notebook helpers.
  commands/            the `flant5` CLI; nothing imports it.

The names below are what notebooks and users call; they load on first use, so `import flant5_lib` stays light.
"""

from flant5_lib._lazy import lazy_exports

__version__ = "0.1.0"

_PUBLIC = {
    # parameters and errors
    "Params": "flant5_lib.config",
    "load_params": "flant5_lib.config",
    "params_from_namespace": "flant5_lib.config",
    "Flant5Error": "flant5_lib.errors",
    "UserError": "flant5_lib.errors",
    "CloudError": "flant5_lib.errors",
    # data
    "load_splits": "flant5_lib.data",
    "load_split": "flant5_lib.data",
    "load_from_params": "flant5_lib.data",
    # models and generation
    "load_model_and_tokenizer": "flant5_lib.modeling",
    "build_tiny_model": "flant5_lib.modeling",
    "pick_device": "flant5_lib.modeling",
    "generate_summaries": "flant5_lib.inference",
    # exploration, evaluation, plots
    "explore_dataset": "flant5_lib.explore",  # not "explore": that name is the submodule
    "format_dialogues": "flant5_lib.explore",
    "format_table": "flant5_lib.explore",
    "sample_dialogues": "flant5_lib.explore",
    "evaluate_model": "flant5_lib.evaluate",
    "run_baseline": "flant5_lib.evaluate",
    "comparison_table": "flant5_lib.evaluate",
    "load_metrics": "flant5_lib.evaluate",
    "load_predictions": "flant5_lib.evaluate",
    "sample_table": "flant5_lib.evaluate",
}
__all__ = ["__version__", *_PUBLIC]
__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
