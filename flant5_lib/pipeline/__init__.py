"""The release pipeline: train, evaluate the candidate and the incumbent on the same test examples, gate on the
paired comparison, register a new version of the same model, canary, smoke tests, promote. See
docs/release-pipeline.md.

`gate` and `registry` are plain Python (fast to test); `steps` is what each pipeline step runs; `serving` moves the
endpoint's traffic (and puts it back on failure); `graph` turns the steps into Kubeflow Pipelines v2 components on
the project's training image and compiles them; `runner` runs the graph offline with `kfp.local` or submits it to
Vertex AI Pipelines; `page` and `figure` show a run and the graph. This room sits above `train` and `vertex`:
nothing in the package imports it but the CLI (and notebook 07, through the names below).
"""

from flant5_lib._lazy import lazy_exports

_NAMES = {
    "compile_spec": "flant5_lib.pipeline.graph",
    "draw_graph": "flant5_lib.pipeline.figure:draw",
    "gate_table": "flant5_lib.pipeline.page",
    "run_local": "flant5_lib.pipeline.runner",
    "status": "flant5_lib.pipeline.runner",
    "versions": "flant5_lib.pipeline.registry",
}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = lazy_exports(__name__, _NAMES)
