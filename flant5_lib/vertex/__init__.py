"""Vertex AI: request builders (`specs`), SDK calls (`jobs`), the rule set checked before paying (`rules`; the
`flant5 vertex preflight` command), the images jobs and deployments use (`images`, built by `build`), machine presets
and hardware rules (`presets`), cost estimates, hyperparameter tuning (`tune`), the job entry point (`task`) and
`localstack`, the offline stand-in of the Vertex API and Cloud Storage.

May import the core modules of `flant5_lib`; never `train`, `serve`, `workbench` or `commands` (a job or a deployment
runs those as processes, not imports).
"""

from flant5_lib._lazy import lazy_exports

_NAMES = {
    "resolve": "flant5_lib.vertex.presets",
    "api_base": "flant5_lib.vertex.specs",
    "curl_command": "flant5_lib.vertex.specs",
    "deploy_request": "flant5_lib.vertex.specs",
    "model_artifact_uri": "flant5_lib.vertex.specs",
    "predict_request": "flant5_lib.vertex.specs",
    "train_output_dir": "flant5_lib.vertex.specs",
    "training_request": "flant5_lib.vertex.specs",
    "upload_request": "flant5_lib.vertex.specs",
    "run_training": "flant5_lib.vertex.jobs",
    "run_tuning": "flant5_lib.vertex.tune",  # hyperparameter tuning over a space file (`flant5 vertex tune`)
    "tuning_summary": "flant5_lib.vertex.tune:summarize",
    "upload_model": "flant5_lib.vertex.jobs",
    "deploy_model": "flant5_lib.vertex.jobs",
    "predict": "flant5_lib.vertex.jobs",
    "batch_predict": "flant5_lib.vertex.jobs",
    "cleanup": "flant5_lib.vertex.jobs",
    "latest_model": "flant5_lib.vertex.jobs",
    "get_endpoint": "flant5_lib.vertex.jobs",
    "download_artifacts": "flant5_lib.vertex.jobs",
    "estimate_cost": "flant5_lib.vertex.estimate:estimate",
    "format_estimate": "flant5_lib.vertex.estimate",
    "load_prices": "flant5_lib.vertex.estimate",
    "PRESETS": "flant5_lib.vertex.presets",
    "start_local_stack": "flant5_lib.vertex.localstack",
    "preflight_problems": "flant5_lib.vertex.rules:problems",  # named after `flant5 vertex preflight`
    "require_preflight": "flant5_lib.vertex.rules:require",
    "train_image": "flant5_lib.vertex.images",
    "serving_image": "flant5_lib.vertex.images",
}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = lazy_exports(__name__, _NAMES)
