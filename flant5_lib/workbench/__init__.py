"""The notebook workbench: `flant5 run` (papermill runner), the run's index page, and helpers the notebooks call.

May import the core modules and `train`, `vertex` (it drives the whole chain); never `serve` internals or `commands`.
"""

from flant5_lib._lazy import lazy_exports

_NAMES = {
    "run": "flant5_lib.workbench.runner",
    "write_index": "flant5_lib.workbench.report",
    "write_run_metrics": "flant5_lib.workbench.report",
    "notebook_params": "flant5_lib.workbench.notebook",
    "record": "flant5_lib.workbench.notebook",
    "text_table": "flant5_lib.workbench.notebook",
    "results_table": "flant5_lib.workbench.notebook",
    "run_predictions": "flant5_lib.workbench.notebook",
    "trained_model_dir": "flant5_lib.workbench.notebook",
    "clear_evaluations": "flant5_lib.workbench.notebook",
    "connect_vertex": "flant5_lib.workbench.notebook",
    "job_params": "flant5_lib.workbench.notebook",
    "fetch_model_artifacts": "flant5_lib.workbench.notebook",
    "local_server": "flant5_lib.workbench.notebook",
    "ensure_endpoint": "flant5_lib.workbench.notebook",
    "rest_predict": "flant5_lib.workbench.notebook",
    "check_explore": "flant5_lib.workbench.checks",
    "check_training": "flant5_lib.workbench.checks",
    "check_vertex_training": "flant5_lib.workbench.checks",
    "check_evaluation": "flant5_lib.workbench.checks",
    "check_deployment": "flant5_lib.workbench.checks",
    "check_online_predictions": "flant5_lib.workbench.checks",
    "compare_runs": "flant5_lib.workbench.compare_page",
    "compare_lines": "flant5_lib.workbench.compare_page:summary_lines",
    "resolve_systems": "flant5_lib.workbench.compare_page",
    "difference_table": "flant5_lib.workbench.compare_page",
    "disagreement_table": "flant5_lib.workbench.compare_page",
}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = lazy_exports(__name__, _NAMES)
