"""Run the numbered notebooks in order with papermill, into one run folder, then write its index page.

Everything that can be checked is checked before the first notebook starts (params, the notebooks
asked for, their `parameters` cells, values the chosen mode needs, a run folder that already holds a run),
so a typo costs seconds, not a training run. papermill is imported inside functions: `flant5_lib` never
needs it at import time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from flant5_lib.config import Params, build_params, read_params_file, save_params
from flant5_lib.errors import Flant5Error, ParamsError, UserError
from flant5_lib.workbench.inputs import VERTEX_NOTEBOOKS, check_inputs

log = logging.getLogger(__name__)

NOTEBOOK_RE = re.compile(r"^(\d\d)_[\w-]+\.ipynb$")
KERNEL_NAME = "flant5"
RUN_FILE = "run.json"  # written first into every run folder: what marks a folder `flant5 run` made
Existing = Literal["stop", "resume", "fresh"]  # what to do with a run folder that already holds files
_PYTHON_NAMES = {"python", f"python{sys.version_info[0]}", f"python{sys.version_info[0]}.{sys.version_info[1]}"}


class NotebookFailed(Flant5Error):
    """A notebook raised; `exit_code` is 2 when the error inside was a user mistake, else 1."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class NotebookRun:
    number: str
    name: str
    source: str
    output: str
    status: str = "pending"  # pending | ok | failed
    seconds: float | None = None
    error: str | None = None


@dataclass
class RunInfo:
    run_dir: str
    params_file: str | None
    overrides: dict[str, Any]
    notebooks: list[NotebookRun] = field(default_factory=list)
    started_at: str = ""
    finished_at: str | None = None
    status: str = "running"  # running | ok | failed | interrupted
    seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# --- finding notebooks -----------------------------------------------------------------------------


def default_notebooks_dir() -> Path:
    """./notebooks when run from a checkout's root, else the checkout this package was installed from."""
    here = Path.cwd() / "notebooks"
    return here if here.is_dir() else Path(__file__).resolve().parents[2] / "notebooks"


def discover_notebooks(notebooks_dir: str | os.PathLike[str]) -> list[Path]:
    """`NN_name.ipynb` files in number order."""
    folder = Path(notebooks_dir)
    if not folder.is_dir():
        raise UserError(f"{folder}: notebooks folder not found (pass --notebooks DIR)")
    return sorted(p for p in folder.iterdir() if NOTEBOOK_RE.match(p.name))


def select_notebooks(notebooks: Sequence[Path], only: Sequence[str] | None) -> list[Path]:
    """Keep the notebooks named in `only` ('03', '3' or '03_evaluate'); unknown names stop the run."""
    if not only:
        if not notebooks:
            raise UserError("no NN_name.ipynb notebooks found")
        return list(notebooks)
    by_number = {NOTEBOOK_RE.match(p.name).group(1): p for p in notebooks}  # type: ignore[union-attr]
    picked: list[Path] = []
    for item in only:
        key = item.strip().removesuffix(".ipynb")
        number = key.split("_", 1)[0].zfill(2) if key[:2].isdigit() or key.isdigit() else key
        nb = by_number.get(number)
        if nb is None or ("_" in key and nb.stem != key):
            have = ", ".join(p.stem for p in notebooks) or "none"
            raise UserError(f"--only {item}: no such notebook (have: {have})")
        if nb not in picked:
            picked.append(nb)
    return sorted(picked, key=lambda p: p.name)


def parse_only(text: str | None) -> list[str] | None:
    return [s for s in (text or "").replace(" ", ",").split(",") if s] or None


def notebook_parameters(path: Path) -> dict[str, Any]:
    """The names and defaults of a notebook's one `parameters` cell (papermill's own parser)."""
    import nbformat
    import papermill

    _quiet_papermill()
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as err:  # not JSON, not a notebook
        raise UserError(f"{path}: not a readable notebook ({type(err).__name__}: {err})".splitlines()[0]) from None
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        raise UserError(f"{path.name}: needs exactly one cell tagged 'parameters', found {len(tagged)}")
    return {name: spec for name, spec in papermill.inspect_notebook(str(path)).items()}


def _quiet_papermill(verbose: bool = False) -> None:
    """papermill logs every notebook path at INFO and warns about parameters a notebook does not declare,
    which is expected here (params_from_namespace picks them up); keep the terminal for our own progress lines."""
    logging.getLogger("papermill").setLevel(logging.INFO if verbose else logging.ERROR)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the stand-in's health polls, one line each


# --- validation -----------------------------------------------------------------------------------


def resolve_run_dir(params_file: str | None, file_values: dict[str, Any], out: str | None) -> Path:
    """--out, else the file's run_dir, else runs/<params file name>; always absolute."""
    if out:
        return Path(out).expanduser().resolve()
    if "run_dir" in file_values:
        return Path(str(file_values["run_dir"])).expanduser().resolve()
    return (Path("runs") / (Path(params_file).stem if params_file else "latest")).resolve()


def _earlier_run(run_dir: Path) -> str:
    """' (ok, notebooks 00-05, started ...)' from the folder's run.json; '' when it has none or cannot be read."""
    import json

    try:
        info = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
        numbers = [n["number"] for n in info["notebooks"]]
        return f" ({info['status']}, notebooks {numbers[0]}-{numbers[-1]}, started {info['started_at']})"
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return ""


def check_run_folder(run_dir: Path, existing: Existing, keep: Sequence[Path] = ()) -> None:
    """A run folder that already holds files stops the run, unless `existing` says what to do with it: 'resume' runs
    into it again (its model and checkpoints are picked up, as a rerun always did), 'fresh' clears it first.

    'fresh' clears only a folder `flant5 run` made (it holds run.json), never the working directory or a folder
    holding `keep` (the notebooks and the params file this run reads): `--out .` must not delete a checkout."""
    if existing == "resume" or not run_dir.is_dir() or not any(run_dir.iterdir()):
        return
    if existing == "stop":
        raise UserError(f"{run_dir}: already holds a run{_earlier_run(run_dir) or ' (files from an earlier run)'}; "
                        "pass --resume to run into it again (its model and checkpoints are reused) or --fresh to "
                        "clear it first")
    if not (run_dir / RUN_FILE).is_file():
        raise UserError(f"--fresh: {run_dir} has no {RUN_FILE}, so `flant5 run` did not make it and it is left "
                        "alone; remove it yourself, pick another --out, or pass --resume")
    for path in (Path.cwd(), *keep):
        if path.resolve().is_relative_to(run_dir):
            raise UserError(f"--fresh: {run_dir} holds {path}, which this run needs; pick another --out")


def clear_run_folder(run_dir: Path) -> None:
    """Move the folder aside, then delete it: a clear that fails half-way leaves no half-cleared run folder behind."""
    if not run_dir.exists():
        return
    aside = run_dir.with_name(f".{run_dir.name}.cleared-{os.getpid()}")
    run_dir.rename(aside)
    try:
        shutil.rmtree(aside)
    except OSError as err:
        log.warning("%s: could not delete the cleared run folder (%s); remove it yourself", aside, err)
    log.info("cleared %s (--fresh)", run_dir)


@dataclass
class Plan:
    params: Params
    explicit: dict[str, Any]  # what the file and --set changed, plus run_dir
    run_dir: Path
    notebooks: list[Path]
    nb_params: dict[str, dict[str, Any]]
    params_file: str | None = None
    notebook_overrides: dict[str, Any] = field(default_factory=dict)  # --set of notebook-only knobs (n_examples...)
    fresh: bool = False  # clear the run folder before the first notebook (--fresh)


_TYPES = {"int": int, "float": (int, float), "bool": bool, "str": str}


def _split_overrides(
    overrides: dict[str, Any], nb_params: dict[str, dict[str, Any]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """--set keys that are notebook-only parameters (not Params fields) go to the notebooks that declare them."""
    to_notebooks: dict[str, Any] = {}
    for key, value in overrides.items():
        if key in Params.model_fields:
            continue
        declared = {nb: spec[key] for nb, spec in nb_params.items() if key in spec}
        if not declared:
            continue  # Params validation names it as an unknown key
        for nb, spec in declared.items():
            expected = _TYPES.get(str(spec.get("inferred_type_name")))
            if expected and (not isinstance(value, expected) or (expected is not bool and isinstance(value, bool))):
                raise ParamsError(f"--set {key}={value!r}: {nb} declares {key} as {spec['inferred_type_name']}")
        to_notebooks[key] = value
    return {k: v for k, v in overrides.items() if k not in to_notebooks}, to_notebooks


def plan_run(
    params_file: str | None,
    overrides: dict[str, Any] | None = None,
    *,
    out: str | None = None,
    only: Sequence[str] | None = None,
    notebooks_dir: str | os.PathLike[str] | None = None,
    existing: Existing = "stop",
) -> Plan:
    """Validate everything before anything runs; every problem is a one-line `UserError`. Reads the params file
    once; `existing` says what to do with a run folder that already holds files (see `check_run_folder`)."""
    file_values = read_params_file(params_file) if params_file else {}
    source = params_file or "params"
    run_dir = resolve_run_dir(params_file, file_values, out)
    folder = Path(notebooks_dir or default_notebooks_dir())
    notebooks = select_notebooks(discover_notebooks(folder), only)
    overrides = overrides or {}
    # The input checks first, on the Params fields alone: they import nothing heavy, so a mistake costs seconds
    # (reading notebooks imports nbformat, whose jsonschema dependency alone takes 1-4 s to import).
    fields = {k: v for k, v in overrides.items() if k in Params.model_fields}
    params = build_params({**file_values, **fields, "run_dir": str(run_dir)}, source=source)
    check_run_folder(run_dir, existing, keep=[folder, *([Path(params_file)] if params_file else [])])
    numbers = [NOTEBOOK_RE.match(nb.name).group(1) for nb in notebooks]  # type: ignore[union-attr]
    check_inputs(params, numbers, run_dir, source, fresh=existing == "fresh")
    nb_params = {nb.name: notebook_parameters(nb) for nb in notebooks}
    params_overrides, nb_overrides = _split_overrides(overrides, nb_params)
    if params_overrides != fields:  # a --set key that is neither a Params field nor a notebook's parameter
        build_params({**file_values, **params_overrides, "run_dir": str(run_dir)}, source=source)  # names it
    explicit = {**file_values, **params_overrides, "run_dir": str(run_dir)}
    for nb, names in nb_params.items():
        if "run_dir" not in names:
            raise UserError(f"{nb}: its parameters cell has no run_dir (every notebook writes into the run folder)")
    return Plan(params, explicit, run_dir, notebooks, nb_params, params_file, nb_overrides, existing == "fresh")


def notebook_inputs(plan: Plan, notebook: Path) -> dict[str, Any]:
    """Resolved values for every Params field the notebook declares, plus what the user set explicitly.

    Passing resolved values (not just the file's keys) means a notebook's own defaults, which are the
    local-smoke values, never leak into a run with another params file.
    """
    resolved = plan.params.model_dump(mode="json")
    declared = plan.nb_params[notebook.name]
    values = {k: resolved[k] for k in sorted(set(declared) & set(Params.model_fields))}
    values.update({k: resolved[k] for k in plan.explicit if k in resolved})
    values.update({k: v for k, v in plan.notebook_overrides.items() if k in declared})
    return values


# --- kernel ----------------------------------------------------------------------------------------


def _uses_this_python(argv: Sequence[str]) -> bool:
    """True when a kernelspec's command runs this interpreter (same venv, not just the same base Python)."""
    if not argv:
        return False
    if argv[0] in _PYTHON_NAMES:  # jupyter_client swaps these for the launching interpreter
        return True
    exe, here = Path(argv[0]), Path(sys.executable)
    with contextlib.suppress(OSError):
        return exe.name.startswith("python") and exe.parent.resolve() == here.parent.resolve()
    return False


def ensure_kernel() -> str:
    """A kernelspec that runs this interpreter: the registered 'flant5' one, 'python3', or a private one."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    ksm = KernelSpecManager()
    for name in (KERNEL_NAME, "python3"):
        try:
            spec = ksm.get_kernel_spec(name)
        except NoSuchKernel:
            continue
        if _uses_this_python(spec.argv):
            return name
    # Nothing registered uses this venv (fresh machine, or a system-wide python3 spec): register one privately.
    from ipykernel.kernelspec import install

    prefix = Path(tempfile.gettempdir()) / f"flant5-kernel-{os.getuid()}"
    install(kernel_name=KERNEL_NAME, display_name="Python (flant5)", prefix=str(prefix))
    jupyter_path = str(prefix / "share" / "jupyter")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (jupyter_path, os.environ.get("JUPYTER_PATH")) if p)
    log.info("registered kernel %r for %s under %s", KERNEL_NAME, sys.executable, prefix)
    return KERNEL_NAME


# --- execution -------------------------------------------------------------------------------------


def _is_user_error(ename: str) -> bool:
    def names(cls: type) -> set[str]:
        return {cls.__name__}.union(*(names(c) for c in cls.__subclasses__()))

    return ename in names(UserError)


def _failure_message(nb: Path, output: Path, err: Any) -> str:
    code = " ".join((err.source or "").split())
    code = code if len(code) <= 60 else code[:57] + "..."
    evalue = " ".join(str(err.evalue).split())
    cell = err.exec_count if err.exec_count is not None else err.cell_index
    return f"{nb.name}: cell {cell} [{code}] failed: {err.ename}: {evalue} (executed copy: {output})"


@contextlib.contextmanager
def vertex_stack(plan: Plan) -> Iterator[Any]:
    """Start the offline Vertex stand-in once for the whole chain when a Vertex notebook runs in local mode.

    Notebooks attach to it through <run_dir>/localstack/state.json; it stops when the run ends, even on failure.
    """
    numbers = {NOTEBOOK_RE.match(nb.name).group(1) for nb in plan.notebooks}  # type: ignore[union-attr]
    if plan.params.vertex_mode != "local" or not numbers & set(VERTEX_NOTEBOOKS):
        yield None
        return
    from flant5_lib.workbench.notebook import start_stack

    shutil.rmtree(plan.run_dir / "localstack", ignore_errors=True)  # scratch space of the previous run's stand-in
    stack, state = start_stack(plan.run_dir)
    try:
        yield stack
    finally:
        stack.stop()
        state.unlink(missing_ok=True)


def _progress_bar(live: bool, label: str) -> dict[str, Any] | bool:
    """papermill's per-cell tqdm bar as one updating line `[2/6] 01_finetune_local.ipynb: cell 5/10, 00:42 elapsed`
    on a terminal; nothing when the output is a log file or a pipe (the start and end lines are printed anyway)."""
    if not live:
        return False
    return {"desc": label, "bar_format": "{desc}: cell {n_fmt}/{total_fmt}, {elapsed} elapsed", "leave": False,
            "file": sys.stderr}


def run_plan(
    plan: Plan, *, kernel_name: str | None = None, log_output: bool = False, echo: Any = None, live: bool = False
) -> RunInfo:
    """Execute the planned notebooks in order; write run.json, metrics.json and index.html whatever happens.

    `live`: show the cell being run and the elapsed time on one updating line (for a terminal).
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from flant5_lib.workbench import report
    from flant5_lib.fileio import write_json

    echo = echo or (lambda msg: log.info("%s", msg))
    run_dir = plan.run_dir
    if plan.fresh:
        clear_run_folder(run_dir)
    info = RunInfo(
        run_dir=str(run_dir),
        params_file=plan.params_file,
        overrides={k: v for k, v in plan.explicit.items()},
        notebooks=[NotebookRun(NOTEBOOK_RE.match(nb.name).group(1), nb.stem, str(nb), str(run_dir / "notebooks" / nb.name))  # type: ignore[union-attr]
                   for nb in plan.notebooks],
        started_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )
    write_json(run_dir / RUN_FILE, info.to_json())  # first: the folder is a run folder from now on
    (run_dir / "notebooks").mkdir(parents=True, exist_ok=True)
    save_params(plan.params, run_dir / "params.yaml")
    kernel = kernel_name or ensure_kernel()
    _quiet_papermill(log_output)
    t_run = time.perf_counter()
    failure: NotebookFailed | None = None
    try:
        with vertex_stack(plan):
            for i, (nb, rec) in enumerate(zip(plan.notebooks, info.notebooks), start=1):
                if not live:
                    echo(f"[{i}/{len(plan.notebooks)}] {nb.name} ...")
                t0 = time.perf_counter()
                try:
                    papermill.execute_notebook(
                        str(nb), rec.output, parameters=notebook_inputs(plan, nb), kernel_name=kernel,
                        cwd=os.getcwd(), log_output=log_output,
                        progress_bar=_progress_bar(live and not log_output, f"[{i}/{len(plan.notebooks)}] {nb.name}"),
                        # the kernel's own log is noise on this terminal (a start-up warning about unencrypted TCP on
                        # 127.0.0.1, "KeyboardInterrupt caught in kernel" at shutdown); cell errors come as messages
                        extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
                    )
                    rec.status = "ok"
                except PapermillExecutionError as err:
                    rec.status, rec.error = "failed", _failure_message(nb, Path(rec.output), err)
                    failure = NotebookFailed(rec.error, 2 if _is_user_error(err.ename) else 1)
                except Exception as err:  # kernel died, could not start...: still one line
                    rec.status = "failed"
                    rec.error = f"{nb.name}: {type(err).__name__}: {' '.join(str(err).split())[:300]}"
                    failure = NotebookFailed(rec.error, 1)
                rec.seconds = round(time.perf_counter() - t0, 1)
                echo(f"[{i}/{len(plan.notebooks)}] {nb.name} {rec.status} in {rec.seconds:.1f} s")
                write_json(run_dir / RUN_FILE, info.to_json())
                if failure:
                    break
    finally:
        pending = any(rec.status == "pending" for rec in info.notebooks)
        info.status = "failed" if failure else "interrupted" if pending else "ok"
        info.finished_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        info.seconds = round(time.perf_counter() - t_run, 1)
        write_json(run_dir / RUN_FILE, info.to_json())
        report.write_run_metrics(run_dir)
        report.write_index(run_dir, info.to_json())
    if failure:
        raise failure
    return info


def run(
    params_file: str | None,
    overrides: dict[str, Any] | None = None,
    *,
    log_output: bool = False,
    echo: Any = None,
    live: bool = False,
    **plan_options: Any,
) -> RunInfo:
    """Validate, then run the notebooks; `plan_options` (out, only, notebooks_dir, existing) go to `plan_run`."""
    plan = plan_run(params_file, overrides, **plan_options)
    return run_plan(plan, log_output=log_output, echo=echo, live=live)
