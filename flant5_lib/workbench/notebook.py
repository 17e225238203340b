"""Helpers the notebooks call more than once: the run folder, the Vertex connection, a local server check.

Notebooks hand results to each other through files in the run folder. The offline Vertex stand-in is a
process, so a notebook finds it through `<run_dir>/localstack/state.json` (written by whoever started it:
`flant5 run`, or the first notebook that needed it); a notebook that had to start it stops it at its end.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flant5_lib.config import Params
from flant5_lib.errors import CloudError, ModelError, UserError

log = logging.getLogger(__name__)

STATE_FILE = Path("localstack") / "state.json"


# --- the run folder ------------------------------------------------------------------------------------


def require_file(path: str | os.PathLike[str], made_by: str) -> Path:
    """Fail with one line naming the notebook that writes `path` when that step was not run."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: not found; run {made_by} first with the same run_dir")
    return p


def trained_model_dir(run_dir: str | os.PathLike[str]) -> Path:
    """The model to evaluate: notebook 01's <run_dir>/model, else the Vertex job's copy fetched by notebook 02."""
    for candidate in (Path(run_dir) / "model", Path(run_dir) / "vertex" / "model"):
        if (candidate / "config.json").is_file():
            return candidate
    raise UserError(f"{Path(run_dir) / 'model'}: no trained model; run 01_finetune_local (or 02_vertex_training) first "
                    "with the same run_dir")


def clear_evaluations(run_dir: str | os.PathLike[str]) -> None:
    """Remove an earlier evaluation of this run folder, so no stale system (e.g. 'untuned') lingers in the tables."""
    import shutil

    shutil.rmtree(Path(run_dir) / "eval", ignore_errors=True)
    (Path(run_dir) / "metrics.json").unlink(missing_ok=True)


def record(params: Params, name: str, obj: Any) -> Path:
    """Keep a Vertex resource or request as <run_dir>/vertex/<name>.json (read by later notebooks and the index)."""
    from flant5_lib.fileio import write_json

    return write_json(Path(params.run_dir) / "vertex" / f"{name}.json", obj)


def recorded(params: Params, name: str) -> Any | None:
    path = Path(params.run_dir) / "vertex" / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def absolute_run_dir(params: Params) -> Params:
    """The same params with run_dir absolute: jobs and servers run in other folders."""
    return params.with_overrides(run_dir=str(Path(params.run_dir).expanduser().resolve()))


# --- the parameters cell ---------------------------------------------------------------------------

_KNOB_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}
PAPERMILL_HEADER = "# Parameters"  # the first line of the cell papermill injects after the `parameters` cell


def _assigned(source: str) -> dict[str, str | None]:
    """{name: annotation source or None} for the top-level assignments of one cell."""
    import ast

    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    names: dict[str, str | None] = {}
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = ast.unparse(node.annotation)
        elif isinstance(node, ast.Assign):
            names.update({t.id: None for t in node.targets if isinstance(t, ast.Name)})
    return names


def injected_parameters(history: Sequence[str]) -> tuple[dict[str, str | None], dict[str, str | None]]:
    """(declared, injected) from the kernel's input history: the notebook's `parameters` cell and the cell papermill
    ran right after it. Both empty when nothing was injected (JupyterLab, nbval)."""
    for i in range(len(history) - 1, 0, -1):
        if history[i].lstrip().startswith(PAPERMILL_HEADER):
            return _assigned(history[i - 1]), _assigned(history[i])
    return {}, {}


def _one_line_user_errors() -> None:
    """In a notebook, a `UserError` (a mistake the user can fix) shows as one line, as the CLI prints it, instead of a
    40-line traceback; any other exception keeps its traceback. Other cells and kernels are unaffected."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return

    def handler(shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: int | None = None) -> list[str]:
        stb = [f"{etype.__name__}: {value}"]
        shell._showtraceback(etype, value, stb)
        return stb

    shell.set_custom_exc((UserError,), handler)


def notebook_params(namespace: dict[str, Any]) -> Params:
    """The notebook's `Params`, after checking what papermill injected against the notebook's `parameters` cell.

    papermill only warns about a name the cell does not declare and injects values of any type, so a typo'd
    `-p learnin_rate 1e-3` would be silently ignored and `-p n_examples three` fail cells later. Here each is one
    line naming the parameter: an unknown name (with the closest known one), a wrong type, a bad Params value.
    """
    import difflib

    from flant5_lib.config import params_from_namespace
    from flant5_lib.errors import ParamsError

    _one_line_user_errors()
    declared, injected = injected_parameters(list(namespace.get("In") or namespace.get("_ih") or []))
    known = [*declared, *Params.model_fields]
    problems = []
    for name in injected:
        if name not in declared and name not in Params.model_fields:
            close = difflib.get_close_matches(name, known, n=1)
            problems.append(f"{name}: not a parameter of this notebook" + (f" (did you mean {close[0]}?)" if close else ""))
    for name, annotation in declared.items():
        expected = _KNOB_TYPES.get(annotation or "")
        if name in Params.model_fields or name not in injected or not expected:
            continue  # Params validates its own fields below
        value = namespace.get(name)
        if not isinstance(value, expected) or (bool not in expected and isinstance(value, bool)):
            problems.append(f"{name}: {value!r} is not a valid {annotation}")
    if problems:
        raise ParamsError("notebook parameters: " + "; ".join(problems))
    return params_from_namespace(namespace)


# --- tables that read at a glance ---------------------------------------------------------------------------

_TEXT_STYLE = {"text-align": "left", "white-space": "pre-wrap", "vertical-align": "top", "max-width": "420px"}


def text_table(df: Any, decimals: int = 1) -> Any:
    """A pandas Styler for tables of dialogues and summaries: text left-aligned and wrapped with its line breaks
    kept and HTML-escaped (SAMSum's `<file_photo>` is text, not a tag), numbers with `decimals` decimals, no index."""
    numeric = list(df.select_dtypes("number").columns)
    text = [c for c in df.columns if c not in numeric]
    styler = df.style.hide(axis="index").format(precision=decimals, escape="html")
    if text:
        styler = styler.set_properties(subset=text, **_TEXT_STYLE)
    return styler.set_table_styles([{"selector": "th", "props": [("text-align", "left")]},
                                    {"selector": "td", "props": [("vertical-align", "top")]}])


def run_predictions(run_dir: str | os.PathLike[str]) -> dict[str, list[dict[str, Any]]]:
    """{system: its predictions.jsonl rows} for every evaluation in the run folder (per-bucket intervals, samples)."""
    from flant5_lib.evaluate import load_predictions

    return {p.parent.name: load_predictions(p.parent) for p in sorted(Path(run_dir, "eval").glob("*/predictions.jsonl"))}


def results_table(metrics_by_name: Mapping[str, Mapping[str, Any]]) -> Any:
    """`comparison_table` with one unit per length column (words for every system, tokens for models) and one decimal."""
    from flant5_lib.evaluate import comparison_table

    df = comparison_table(metrics_by_name)
    if df.empty:
        return df
    words = {n: m.get("gen_words", m.get("gen_len") if m.get("gen_len_unit") == "words" else None)
             for n, m in metrics_by_name.items()}
    tokens = {n: m.get("gen_len") if str(m.get("gen_len_unit", "")).startswith("tokens") else None
              for n, m in metrics_by_name.items()}
    df = df.drop(columns=[c for c in ("gen_len", "gen_len_unit") if c in df.columns])
    df["summary words"] = [words.get(n) for n in df.index]
    df["summary tokens"] = [tokens.get(n) for n in df.index]
    return df.style.format(precision=1, na_rep="–")


# --- the Vertex connection ---------------------------------------------------------------------------


def state_path(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / STATE_FILE


@dataclass
class VertexSession:
    """Params pointing at Vertex AI (cloud) or the stand-in (local), and the stand-in if this kernel started it."""

    params: Params
    stack: Any = None  # a LocalStack started here; None when attached to someone else's or in cloud mode
    state_file: Path | None = None

    @property
    def started_here(self) -> bool:
        return self.stack is not None

    def close(self, keep: bool = False) -> str:
        """Stop the stand-in if this notebook started it (unless `keep`); say what happened."""
        if self.stack is None:
            if self.params.vertex_mode == "cloud":
                return "cloud mode: nothing local to stop"
            return "the stand-in was started by `flant5 run` (or another notebook): it stops it"
        if keep:
            return f"stand-in left running at {self.stack.api_endpoint} (state file {self.state_file})"
        self.stack.stop()
        if self.state_file is not None:
            self.state_file.unlink(missing_ok=True)
        self.stack = None
        return "stand-in stopped"


def start_stack(run_dir: str | os.PathLike[str]) -> tuple[Any, Path]:
    """Start the stand-in with its files under <run_dir>/localstack and write its state file."""
    from flant5_lib.vertex.localstack import start_local_stack

    path = state_path(run_dir)
    stack = start_local_stack(Path(run_dir) / "localstack")
    stack.write_state(path)
    return stack, path


def connect_vertex(params: Params) -> VertexSession:
    """Cloud: check the settings. Local: attach to the running stand-in, or start one for this notebook."""
    params = absolute_run_dir(params)
    if params.vertex_mode == "cloud":
        from flant5_lib.vertex import rules

        rules.check_request(params)
        return VertexSession(params)
    from flant5_lib.vertex.localstack import attach

    path = state_path(params.run_dir)
    if path.is_file():
        overrides = attach(path, require_alive=True)
        if overrides is not None:
            return VertexSession(params.with_overrides(**overrides), None, path)
    stack, path = start_stack(params.run_dir)
    return VertexSession(params.with_overrides(**stack.params_overrides()), stack, path)


def job_params(params: Params) -> Params:
    """The params the training job gets: its own run folder, and no model registration (notebook 04 registers).

    In the cloud the job runs on another machine, where this run folder does not exist. The local stand-in runs it
    here, and a shared folder would let the job resume from notebook 01's checkpoints and overwrite its model.
    """
    job_dir = Path(params.run_dir) / "vertex" / "job" if params.vertex_mode == "local" else Path("/tmp/flant5-run")
    return params.with_overrides(run_dir=str(job_dir), serving_container_uri=None)


# --- model artefacts and a local server check ---------------------------------------------------------------


def fetch_model_artifacts(params: Params, local_dir: str | os.PathLike[str] | None = None) -> tuple[Path, str]:
    """(local folder, gs:// URI) of the trained model: the training job's output when there is one, else the
    locally fine-tuned <run_dir>/model uploaded to where the job would have written it."""
    from flant5_lib import storage
    from flant5_lib.vertex import jobs, specs

    uri = specs.model_artifact_uri(params)
    local = Path(local_dir or Path(params.run_dir) / "vertex" / "model")
    if storage.list_blobs(uri):
        return jobs.download_artifacts(params, uri, str(local)), uri
    own = Path(params.run_dir) / "model"
    if (own / "config.json").is_file():
        log.info("no model at %s: uploading %s there", uri, own)
        jobs.upload_artifacts(params, str(own), uri)
        return own, uri
    raise CloudError(f"{uri}: no trained model there, nor in {own}; run notebook 02 (or 01) first")


@contextlib.contextmanager
def local_server(model_dir: str | os.PathLike[str], params: Params, timeout_s: float = 180.0) -> Iterator[str]:
    """Run the prediction server (`python -m flant5_lib serve`, the container's entry point) on 127.0.0.1 with the
    AIP_* variables Vertex sets; yields its base URL and always stops it."""
    from flant5_lib.procs import free_port, stop_process, wait_for_http

    port = free_port()
    env = {**os.environ, "AIP_HTTP_PORT": str(port), "AIP_HEALTH_ROUTE": params.serving_health_route,
           "AIP_PREDICT_ROUTE": params.serving_predict_route, "PYTHONUNBUFFERED": "1"}
    log_path = Path(params.run_dir) / "vertex" / "local-server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "flant5_lib", "serve", "--model", str(model_dir), "--host", "127.0.0.1", "--port", str(port)]
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_for_http(url + params.serving_health_route, timeout_s=timeout_s, proc=proc)
        except RuntimeError:
            tail = " | ".join(log_path.read_text(errors="replace").strip().splitlines()[-3:])
            raise ModelError(f"the prediction server exited with code {proc.returncode}: {tail} (log: {log_path})") from None
        except TimeoutError:
            raise ModelError(f"the prediction server was not healthy after {timeout_s:.0f} s (log: {log_path})") from None
        yield url
    finally:
        stop_process(proc)


def ensure_endpoint(session: VertexSession) -> Any:
    """The endpoint with a deployed model. On a fresh local stand-in (a notebook run on its own) the model is
    uploaded and deployed again from the run folder; in the cloud a missing deployment is an error to fix."""
    from flant5_lib.vertex import jobs as vertex_jobs

    params = session.params
    for endpoint in vertex_jobs.find_endpoints(params):
        if endpoint.list_models():
            return endpoint
    if params.vertex_mode == "cloud":
        raise CloudError(f"endpoint_display_name: nothing deployed on {params.endpoint_display_name!r}; run notebook 04 first")
    log.info("no deployed model on this stand-in: uploading and deploying the run's model again")
    _, uri = fetch_model_artifacts(params)
    model = vertex_jobs.upload_model(params, uri)
    return vertex_jobs.deploy_model(params, model)


def rest_predict(params: Params, request: dict[str, Any]) -> tuple[int, Any]:
    """Send a `vertex.predict_request` over plain HTTPS with httpx: what the `curl` line does, from Python.

    Cloud: a bearer token from Application Default Credentials (as `gcloud auth print-access-token`);
    the local stand-in takes no token.
    """
    import httpx

    headers = {"Content-Type": "application/json"}
    if params.vertex_mode == "cloud":
        import google.auth
        from google.auth.transport.requests import Request

        creds, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
        creds.refresh(Request())
        headers["Authorization"] = f"Bearer {creds.token}"
    r = httpx.post(request["url"], json=request["body"], headers=headers, timeout=request.get("timeout_s", 60))
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, r.text
