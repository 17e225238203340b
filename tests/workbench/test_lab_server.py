"""`./workbench.sh lab`: a real JupyterLab server on 127.0.0.1 runs notebook 00 on the "Python (flant5)" kernel.

The notebook is executed through the server's own REST and websocket API (a session, then execute_request per
cell), which is what JupyterLab's "Run All" does: the interactive path, not papermill.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from flant5_lib.procs import free_port, stop_process, wait_for_http

from tests.helpers import REPO

NOTEBOOK = "00_explore_samsum.ipynb"


def _execute(ws: Any, session: str, code: str, timeout_s: float = 300) -> list[dict[str, Any]]:
    """Send one execute_request over the kernel's websocket; return its iopub outputs once the kernel is idle."""
    msg_id = uuid.uuid4().hex
    ws.send(json.dumps({
        "header": {"msg_id": msg_id, "username": "test", "session": session, "msg_type": "execute_request",
                   "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True},
    }))
    outputs: list[dict[str, Any]] = []
    idle = replied = False
    ws.settimeout(timeout_s)
    while not (idle and replied):
        msg = json.loads(ws.recv())
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind = msg["header"]["msg_type"]
        if msg["channel"] == "shell" and kind == "execute_reply":
            replied = True
        elif kind == "status":
            idle = msg["content"]["execution_state"] == "idle"
        elif kind in ("stream", "display_data", "execute_result", "error"):
            outputs.append({"type": kind, **msg["content"]})
    return outputs


@pytest.mark.slow
def test_lab_runs_notebook_00_on_the_project_kernel(tmp_path):
    import websocket  # websocket-client, a JupyterLab dependency

    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "HF_HUB_OFFLINE": "1",
           "HOME": str(tmp_path / "home"),  # IPython history, Jupyter's secret and signatures, npm logs: not in ~
           "FLANT5_SKIP_SETUP": "1"}  # the test runs in this .venv: never `pip install -e` it because a stamp is stale
    log_path = tmp_path / "lab.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["./workbench.sh", "lab", "--no-browser", f"--port={port}", f"--IdentityProvider.token={token}",
             "--ServerApp.port_retries=0"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base, headers = f"http://127.0.0.1:{port}", {"Authorization": f"token {token}"}
    session_id = None
    try:
        wait_for_http(f"{base}/api/status?token={token}", timeout_s=180, proc=proc,
                      on_exit=lambda rc: log_path.read_text(errors="replace")[-2000:])
        assert httpx.get(f"{base}/api/status", timeout=10).status_code == 403  # no token, no access
        specs = httpx.get(f"{base}/api/kernelspecs", headers=headers, timeout=10).json()
        assert specs["default"] == "flant5" and specs["kernelspecs"]["flant5"]["spec"]["display_name"] == "Python (flant5)"
        nb = httpx.get(f"{base}/api/contents/{NOTEBOOK}", headers=headers, timeout=10).json()["content"]
        assert nb["metadata"]["kernelspec"]["name"] == "flant5"
        # What opening the notebook in JupyterLab does: a session on the kernel its metadata names.
        session = httpx.post(f"{base}/api/sessions", headers=headers, timeout=120, json={
            "path": NOTEBOOK, "type": "notebook", "name": NOTEBOOK, "kernel": {"name": nb["metadata"]["kernelspec"]["name"]},
        }).json()
        session_id, kernel = session["id"], session["kernel"]
        assert kernel["name"] == "flant5"
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}/api/kernels/{kernel['id']}/channels?token={token}",
                                         timeout=120)
        run_dir = tmp_path / "run"
        outputs: list[dict[str, Any]] = []
        try:
            for cell in nb["cells"]:
                if cell["cell_type"] != "code":
                    continue
                outputs += _execute(ws, uuid.uuid4().hex, cell["source"])
                if "parameters" in cell["metadata"].get("tags", []):  # what a user edits: here, the run folder
                    outputs += _execute(ws, uuid.uuid4().hex, f"# Parameters\nrun_dir = {str(run_dir)!r}\n")
                errors = [o for o in outputs if o["type"] == "error"]
                assert not errors, f"{cell['source'][:80]!r}: {errors[0]['ename']}: {errors[0]['evalue']}"
            where = _execute(ws, uuid.uuid4().hex, "import sys; print(sys.executable)")
        finally:
            ws.close()
        stats = json.loads((run_dir / "explore" / "stats.json").read_text())
        assert stats["dataset"] == "synthetic:1000" and set(stats["splits"]) == {"train", "validation", "test"}
        text = "".join(o.get("text", "") for o in outputs if o["type"] == "stream")
        assert f"run folder: {run_dir}" in text and "suggested (from train" in text
        images = [o for o in outputs if o["type"] == "display_data" and "image/png" in o["data"]]
        assert len(images) >= 5  # turns, speakers, two length histograms, buckets
        tables = [o for o in outputs if o["type"] == "execute_result" and "text/html" in o["data"]]
        assert tables, "pandas tables render as HTML"
        assert Path(where[0]["text"].strip()).parent == (REPO / ".venv" / "bin").absolute() or \
            Path(where[0]["text"].strip()).resolve().parent == (REPO / ".venv" / "bin").resolve()
    finally:
        if session_id:
            httpx.delete(f"{base}/api/sessions/{session_id}", headers=headers, timeout=30)
        stop_process(proc, timeout_s=20)
