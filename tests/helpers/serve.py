"""Helpers for the serving tests: a tiny model that says something, real uvicorn servers, the Dockerfile's command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from flant5_lib.procs import stop_process, wait_for
from tests.helpers import REPO

DOCKERFILE = REPO / "serving" / "Dockerfile"


def save_lora_adapter(model_dir: Path, out: Path) -> Path:
    """An adapter-only LoRA export (adapter_config.json + adapter weights, no config.json) of `model_dir`, with
    B drawn at random so the adapter changes what the model says (B = 0, peft's default, would change nothing)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from flant5_lib.modeling import load_model_and_tokenizer

    base, _ = load_model_and_tokenizer(str(model_dir), device="cpu")
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q", "v"], task_type="SEQ_2_SEQ_LM"))
    with torch.no_grad():
        for name, weight in peft_model.named_parameters():
            if "lora_B" in name:
                weight.normal_(0, 2.0, generator=torch.Generator().manual_seed(1))
    peft_model.save_pretrained(out)
    return out


def make_talkative_model(src: Path, dst: Path) -> Path:
    """The tiny random model echoes its decoder start token (<pad>), so every summary is empty. Scaling the
    decoder's cross-attention and feed-forward outputs lets the encoded dialogue drive the next token, so greedy
    outputs are non-empty and differ per input: an equivalence or ordering test can then actually fail."""
    import torch

    from flant5_lib.modeling import load_model_and_tokenizer, save_model

    if (dst / "config.json").is_file():
        return dst
    model, tokenizer = load_model_and_tokenizer(str(src), device="cpu")
    with torch.no_grad():
        for block in model.decoder.block:
            block.layer[1].EncDecAttention.o.weight.mul_(4.0)
            block.layer[-1].DenseReluDense.wo.weight.mul_(4.0)
    return save_model(model, tokenizer, dst)


def dockerfile_cmd() -> tuple[str, str]:
    """(WORKDIR of the CMD, the shell command line the container runs), parsed from serving/Dockerfile."""
    workdir, cmd = "", ""
    for line in DOCKERFILE.read_text().splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "WORKDIR":
            workdir = rest.strip()
        elif word == "CMD":
            parts = json.loads(rest) if rest.strip().startswith("[") else ["sh", "-c", rest.strip()]
            assert parts[:2] == ["sh", "-c"], parts
            cmd = parts[2]
    return workdir, cmd.removeprefix("exec ").strip()


def wait_until(url: str, status: int = 200, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> httpx.Response:
    """The first response of `url` with `status` (the response itself, so a test can read its body)."""

    def answered() -> httpx.Response | None:
        try:
            resp = httpx.get(url, timeout=2)
        except httpx.TransportError:
            return None
        return resp if resp.status_code == status else None

    return wait_for(answered, timeout_s=timeout, what=f"{url} to answer {status}", proc=proc)


@contextmanager
def container_server(port: int, env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen]:
    """The Dockerfile's CMD, run from serving/ as in the container, but bound to 127.0.0.1 (tests only)."""
    _, cmd = dockerfile_cmd()
    assert "--host 0.0.0.0" in cmd
    cmd = cmd.replace("--host 0.0.0.0", "--host 127.0.0.1")
    full_env = {**os.environ, **env, "AIP_HTTP_PORT": str(port), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    with log_path.open("w") as log:
        proc = subprocess.Popen(["sh", "-c", f"exec {cmd}"], cwd=REPO / "serving", env=full_env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        stop_process(proc, timeout_s=15)


class Gate:
    """Holds every call of the functions it wraps, in the caller's thread, until the test opens it.

    Work then outlasts a deadline, or is still running while a probe is made, by construction rather than because the
    machine happened to be slow. Each call records the thread it ran on, so a test can also check *where* it ran."""

    def __init__(self, hang_guard_s: float = 120.0) -> None:
        self._open = threading.Event()
        self._cond = threading.Condition()
        self.threads: list[str] = []
        self.hang_guard_s = hang_guard_s  # only so a broken test cannot hang forever

    def wrap(self, fn: Any) -> Any:
        def gated(*args: Any, **kwargs: Any) -> Any:
            with self._cond:
                self.threads.append(threading.current_thread().name)
                self._cond.notify_all()
            if not self._open.wait(self.hang_guard_s):
                raise RuntimeError("the test never opened the gate")
            return fn(*args, **kwargs)

        return gated

    def wait_entered(self, n: int, timeout: float = 60.0) -> None:
        """Block until `n` calls are held (or have passed) at the gate."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.threads) >= n, timeout):
                raise AssertionError(f"only {len(self.threads)} of {n} calls reached the gate in {timeout:g} s (hang guard)")

    def open(self) -> None:
        self._open.set()


@contextmanager
def thread_server(app: Any, port: int) -> Iterator[str]:
    """A real uvicorn server in a thread of the test process (lets a test hold the model load with a hook)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    end = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > end or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


