"""The release pipeline as a Kubeflow Pipelines v2 graph: one lightweight component per step of `steps`, on the
project's training image (which has flant5_lib and kfp installed, so `install_kfp_package=False`).

The component functions are written without `from __future__ import annotations`: kfp reads their annotations
as types to build the component interface.
"""

import os
from typing import Any, Callable

from kfp import dsl  # the exit handler's annotation (dsl.PipelineTaskFinalStatus) is read at definition time

from flant5_lib.config import Params

STEPS = ("preflight", "train", "evaluate-candidate", "evaluate-incumbent", "gate", "register", "import-evaluation",
         "canary", "smoke", "promote", "stopped", "finish")


def preflight_op(params_yaml: str, work_dir: str) -> str:
    from flant5_lib.pipeline import steps
    return steps.preflight(params_yaml, work_dir)


def train_op(params_yaml: str, work_dir: str) -> str:
    from flant5_lib.pipeline import steps
    return steps.train(params_yaml, work_dir)


def evaluate_candidate_op(params_yaml: str, work_dir: str, model: str) -> str:
    from flant5_lib.pipeline import steps
    return steps.evaluate(params_yaml, work_dir, model, steps.CANDIDATE)


def evaluate_incumbent_op(params_yaml: str, work_dir: str, incumbent: str) -> str:
    from flant5_lib.pipeline import steps
    return steps.evaluate_incumbent(params_yaml, work_dir, incumbent)


def gate_op(params_yaml: str, work_dir: str, candidate_eval: str, incumbent_eval: str) -> str:
    from flant5_lib.pipeline import steps
    return steps.gate(params_yaml, work_dir, candidate_eval, incumbent_eval)


def register_op(params_yaml: str, work_dir: str, model: str, incumbent: str) -> str:
    from flant5_lib.pipeline import steps
    return steps.register(params_yaml, work_dir, model, incumbent)


def import_evaluation_op(params_yaml: str, work_dir: str, version_name: str, candidate_eval: str) -> str:
    from flant5_lib.pipeline import steps
    return steps.import_evaluation(params_yaml, work_dir, version_name, candidate_eval)


def canary_op(params_yaml: str, work_dir: str, version_name: str, deploy: bool) -> str:
    from flant5_lib.pipeline import steps
    return steps.canary(params_yaml, work_dir, version_name, deploy)


def smoke_op(params_yaml: str, work_dir: str, version_name: str, canary: str) -> str:
    from flant5_lib.pipeline import steps
    return steps.smoke(params_yaml, work_dir, version_name, canary)


def promote_op(params_yaml: str, work_dir: str, version_name: str, canary: str) -> str:
    from flant5_lib.pipeline import steps
    return steps.promote(params_yaml, work_dir, version_name, canary)


def finish_op(params_yaml: str, work_dir: str, status: dsl.PipelineTaskFinalStatus) -> str:
    from flant5_lib.pipeline import steps
    return steps.finish(params_yaml, work_dir, status.state)


def stopped_op(params_yaml: str, work_dir: str) -> str:
    from flant5_lib.pipeline import steps
    return steps.stopped(params_yaml, work_dir)


def image(params: Params) -> str:
    """Every step runs on the project's training image (`train_container_uri`, else flant5-train in image_registry)."""
    from flant5_lib.vertex import images

    return images.train_image(params)


def build(params: Params) -> Callable[..., Any]:
    """The @dsl.pipeline function, its components on `image(params)`."""
    base = image(params)

    def comp(fn: Callable[..., Any]) -> Any:
        return dsl.component(fn, base_image=base, install_kfp_package=False)

    preflight, train, ev_c, ev_i, gate, register, import_ev, canary, smoke, promote, stopped, finish = map(comp, (
        preflight_op, train_op, evaluate_candidate_op, evaluate_incumbent_op, gate_op, register_op,
        import_evaluation_op, canary_op, smoke_op, promote_op, stopped_op, finish_op))

    @dsl.pipeline(name=params.pipeline_display_name,
                  description="Train, evaluate against the incumbent, gate, register a new version, canary, promote.")
    def release(params_yaml: str, work_dir: str, deploy: bool = True) -> None:
        # the exit handler runs whatever happens inside: it restores serving after a failure and writes release.md
        done = finish(params_yaml=params_yaml, work_dir=work_dir).set_display_name("finish")
        done.set_caching_options(False)
        with dsl.ExitHandler(done, name="release"):
            pre = preflight(params_yaml=params_yaml, work_dir=work_dir).set_display_name("preflight")
            cand = train(params_yaml=params_yaml, work_dir=work_dir).after(pre).set_display_name("train")
            ev_cand = ev_c(params_yaml=params_yaml, work_dir=work_dir, model=cand.output)
            ev_cand.set_display_name("evaluate-candidate")
            ev_inc = ev_i(params_yaml=params_yaml, work_dir=work_dir, incumbent=pre.output)
            ev_inc.set_display_name("evaluate-incumbent")
            decision = gate(params_yaml=params_yaml, work_dir=work_dir, candidate_eval=ev_cand.output,
                            incumbent_eval=ev_inc.output).set_display_name("gate")
            for task in (pre, cand, ev_cand, ev_inc, decision):
                task.set_caching_options(False)
            with dsl.If(decision.output == "pass", name="gate-passed"):
                reg = register(params_yaml=params_yaml, work_dir=work_dir, model=cand.output, incumbent=pre.output)
                reg.set_display_name("register").set_caching_options(False)
                imported = import_ev(params_yaml=params_yaml, work_dir=work_dir, version_name=reg.output,
                                     candidate_eval=ev_cand.output)
                imported.set_display_name("import-evaluation").set_caching_options(False)
                placed = canary(params_yaml=params_yaml, work_dir=work_dir, version_name=reg.output, deploy=deploy)
                placed.after(imported).set_display_name("canary").set_caching_options(False)
                smoked = smoke(params_yaml=params_yaml, work_dir=work_dir, version_name=reg.output,
                               canary=placed.output).set_display_name("smoke").set_caching_options(False)
                promote(params_yaml=params_yaml, work_dir=work_dir, version_name=reg.output,
                        canary=placed.output).after(smoked).set_display_name("promote").set_caching_options(False)
            with dsl.Else(name="gate-stopped"):
                stopped(params_yaml=params_yaml, work_dir=work_dir).set_display_name("stopped").set_caching_options(False)

    return release


def compile_spec(params: Params, path: str | os.PathLike[str]) -> str:
    """Write the pipeline spec YAML (what `aiplatform.PipelineJob(template_path=...)` submits)."""
    import tempfile
    from pathlib import Path

    from kfp import compiler

    from flant5_lib.fileio import write_text

    with tempfile.TemporaryDirectory() as tmp:  # kfp wants a .yaml name; the final file is written atomically
        out = Path(tmp) / "pipeline.yaml"
        compiler.Compiler().compile(build(params), package_path=str(out))
        write_text(path, out.read_text(encoding="utf-8"))
    return str(path)
