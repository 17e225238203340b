"""Server start-up over real HTTP (uvicorn in a thread, or the CLI in a subprocess): 503 until the model is warm,
AIP_STORAGE_URI downloads (confined to their folder, removed at shutdown), load failures that end the process,
safetensors only for both backends, adapter-only LoRA folders, the prediction deadline, and ServeSettings."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from tests.helpers.serve import Gate, make_talkative_model, save_lora_adapter, thread_server, wait_until
from flant5_lib.procs import free_port

from flant5_lib.config import Params
from flant5_lib.errors import CloudError, ModelError, ParamsError
from flant5_lib.serve.app import ServeSettings, create_app

DIALOGUE = "Tom: Are we meeting at 6?\nAnna: Yes, at the station.\nTom: Great, see you."


@pytest.fixture(scope="module")
def talk_model(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_talkative_model(tiny_model_dir, tmp_path_factory.mktemp("startup") / "talk")


def _direct_summary(model_dir: Path, dialogue: str, max_new_tokens: int) -> str:
    from flant5_lib.serve.backends import HFBackend
    from flant5_lib.preprocess import encode_sources

    backend = HFBackend(model_dir, device="cpu")
    ids, _ = encode_sources(backend.tokenizer, [dialogue], Params())
    return backend.generate(ids, {"max_new_tokens": max_new_tokens, "num_beams": 1, "do_sample": False})[0]


def test_health_is_503_until_the_model_is_warm(talk_model: Path) -> None:
    release = threading.Event()
    # transformers' engine: the summary is compared with its generate below
    settings = ServeSettings(model_dir=str(talk_model), load_hook=lambda: release.wait(30), params=Params(serve_backend="hf"))
    with thread_server(create_app(settings), free_port()) as base:
        assert httpx.get(base + "/live").status_code == 200  # liveness answers while loading
        r = httpx.get(base + "/health")
        assert r.status_code == 503 and "loading" in r.json()["error"] and r.headers["retry-after"] == "10"
        r = httpx.post(base + "/predict", json={"instances": [DIALOGUE]})
        assert r.status_code == 503 and "loading" in r.json()["error"]
        release.set()
        ready = wait_until(base + "/health", 200, timeout=60)
        assert ready.json()["backend"] == "hf"
        r = httpx.post(base + "/predict", json={"instances": [DIALOGUE], "parameters": {"max_new_tokens": 8}})
        assert r.status_code == 200
        assert r.json()["predictions"] == [_direct_summary(talk_model, DIALOGUE, 8)]


def test_model_from_aip_storage_uri(gcs_emulator: str, talk_model: Path) -> None:
    from flant5_lib import storage

    uri = "gs://serve-test-bucket/models/talk"
    storage.ensure_bucket(uri)
    storage.upload_dir(talk_model, uri)
    # transformers: the summary is compared with its generate below (int8 output varies with the CPU)
    app = create_app(ServeSettings(storage_uri=uri, exit_on_failure=False, params=Params(serve_backend="hf")))
    with thread_server(app, free_port()) as base:
        ready = wait_until(base + "/health", 200, timeout=60)
        assert "serve-test-bucket" not in ready.text and "flant5-serve-" not in ready.text  # no bucket, no local path
        r = httpx.post(base + "/predict", json={"instances": [{"dialogue": DIALOGUE}], "parameters": {"max_new_tokens": 8}})
        assert r.json()["predictions"] == [_direct_summary(talk_model, DIALOGUE, 8)]
        downloaded = app.state.serve.download_root
        assert (downloaded / "model" / "config.json").is_file()
    assert not downloaded.exists()  # removed at shutdown


class _Blob:
    def __init__(self, name: str, data: bytes) -> None:
        self.name, self.data = name, data

    def download_to_filename(self, path: str) -> None:
        Path(path).write_bytes(self.data)


class _NamesClient:
    """Stand-in for a Cloud Storage client (mock: the GCS emulator refuses object names with '..', real GCS stores
    them), so a hostile listing can be fed to storage.download_dir."""

    def __init__(self, names: list[str]) -> None:
        self.objects = {n: _Blob(n, b"x") for n in names}
        self.name = "bucket"

    def bucket(self, name: str) -> "_NamesClient":
        return self

    def blob(self, key: str) -> _Blob:
        return self.objects[key]

    def list_blobs(self, bucket: str, prefix: str = "") -> list[_Blob]:
        return [b for n, b in self.objects.items() if n.startswith(prefix)]


@pytest.mark.parametrize("name", ["m/../../escape.txt", "m/sub/../../../escape.txt", "m//etc/escape.txt"])
def test_a_hostile_object_name_cannot_leave_the_download_folder(tmp_path: Path, name: str) -> None:
    from flant5_lib import storage

    client = _NamesClient(["m/config.json", name])
    target = tmp_path / "dl" / "model"
    with pytest.raises(CloudError, match="leaves the download folder"):
        storage.download_dir("gs://bucket/m", target, client=client)
    assert not list(tmp_path.rglob("escape.txt")) and not Path("/etc/escape.txt").exists()
    assert not target.exists()  # nothing half-downloaded is left either
    ok = storage.download_dir("gs://bucket/m", target, client=_NamesClient(["m/config.json", "m/sub/../x.json"]))
    assert sorted(p.name for p in ok.rglob("*") if p.is_file()) == ["config.json", "x.json"]  # '..' inside is fine


def test_a_bad_storage_uri_ends_the_process_after_its_retries(gcs_emulator: str, tmp_path: Path) -> None:
    """The container must not stay alive-but-never-ready: Vertex fails the deployment, Kubernetes restarts the pod."""
    env = {**os.environ, "AIP_STORAGE_URI": "gs://no-such-bucket-here/model", "AIP_HTTP_PORT": str(free_port()),
           "FLANT5_SERVE_LOAD_RETRIES": "1", "STORAGE_EMULATOR_HOST": gcs_emulator, "TMPDIR": str(tmp_path)}
    env.pop("FLANT5_MODEL_DIR", None)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "flant5_lib", "serve"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    failure = [line for line in (proc.stdout + proc.stderr).splitlines() if "failed to load" in line]
    assert len(failure) == 1 and "after 2 attempts" in failure[0] and "retrying in 1 s" in proc.stdout + proc.stderr
    assert time.monotonic() - started < 60  # hang guard only: 2 attempts with a 1 s backoff, not a speed claim
    assert not list(tmp_path.glob("flant5-serve-*"))  # the download folder was removed on the way out


def _bin_only(src: Path, dst: Path) -> Path:
    """The model's weights as a pickled pytorch_model.bin, no safetensors (what an old export looks like)."""
    import shutil

    import torch
    from safetensors.torch import load_file

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save(load_file(str(next(src.glob("*.safetensors")))), dst / "pytorch_model.bin")
    return dst


@pytest.mark.parametrize("backend", ["hf", "ctranslate2"])
def test_bin_only_folders_are_refused_by_every_backend(talk_model: Path, tmp_path: Path, backend: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from flant5_lib.serve.backends import load_backend

    monkeypatch.setenv("FLANT5_CACHE_DIR", str(tmp_path / "cache"))
    folder = _bin_only(talk_model, tmp_path / "bin-only")
    with pytest.raises(ModelError, match="safetensors"):
        load_backend(folder, Params(serve_backend=backend), device="cpu")
    assert not (tmp_path / "cache").exists()  # nothing was converted from the pickle


def test_an_adapter_only_lora_folder_serves(talk_model: Path, tmp_path: Path) -> None:
    adapter = save_lora_adapter(talk_model, tmp_path / "adapter")
    assert not (adapter / "config.json").exists() and (adapter / "adapter_config.json").is_file()
    expected = _direct_summary(adapter, DIALOGUE, 8)  # load_model_and_tokenizer merges the adapter
    assert expected != _direct_summary(talk_model, DIALOGUE, 8)  # the adapter changes what the model says
    settings = ServeSettings(model_dir=str(adapter), exit_on_failure=False, params=Params(serve_backend="hf"))
    with thread_server(create_app(settings), free_port()) as base_url:
        wait_until(base_url + "/health", 200, timeout=60)
        r = httpx.post(base_url + "/predict", json={"instances": [DIALOGUE], "parameters": {"max_new_tokens": 8}})
        assert r.status_code == 200 and r.json()["predictions"] == [expected]


def test_a_model_that_cannot_load_keeps_health_503_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    settings = ServeSettings(model_dir=str(tmp_path / "empty"), exit_on_failure=False)
    with thread_server(create_app(settings), free_port()) as base:
        r = wait_until(base + "/health", 503, timeout=30)
        end = time.monotonic() + 30
        while "failed" not in r.json()["error"] and time.monotonic() < end:
            time.sleep(0.1)
            r = httpx.get(base + "/health")
        assert "failed to load (ModelError)" in r.json()["error"] and str(tmp_path) not in r.text
        assert httpx.post(base + "/predict", json={"instances": [DIALOGUE]}).status_code == 503


def test_deadline_gives_504_and_health_stays_responsive(talk_model: Path) -> None:
    """The generation is held at a gate the test controls, so it outlasts serve_deadline_s on any machine."""
    params = Params(serve_deadline_s=0.2, serve_max_queue_cost=10**9,  # a fixed budget: admitted, so the deadline stops it
                    serve_backend="hf")  # transformers: the summary is compared with its generate below
    app = create_app(ServeSettings(model_dir=str(talk_model), params=params))
    body = {"instances": [DIALOGUE], "parameters": {"max_new_tokens": 8}}
    with thread_server(app, free_port()) as base:
        wait_until(base + "/health", 200, timeout=60)
        backend, gate = app.state.serve.backend, Gate()
        backend.generate = gate.wrap(backend.generate)  # the real backend, held until the gate opens
        with httpx.Client(timeout=60) as client:
            r = client.post(base + "/predict", json=body)
            # Answered while the generation is still held: at the deadline, not after the generation.
            assert r.status_code == 504 and "serve_deadline_s=0.2" in r.json()["error"], r.text
            gate.wait_entered(1)  # the batch did reach the model; it is still running
            assert client.get(base + "/health").status_code == 200  # the event loop is free while the batch runs
            metrics = client.get(base + "/metrics").text
            assert 'flant5_rejected_requests_total{reason="deadline"} 1.0' in metrics
            gate.open()
            r = client.post(base + "/predict", json=body)
    assert r.status_code == 200 and r.json()["predictions"] == [_direct_summary(talk_model, DIALOGUE, 8)]


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    params_file = tmp_path / "serve.yaml"
    params_file.write_text("serve_max_batch_size: 4\nserve_backend: ctranslate2\n")
    monkeypatch.setenv("AIP_HTTP_PORT", "9123")
    monkeypatch.setenv("AIP_HEALTH_ROUTE", "/hc")
    monkeypatch.setenv("AIP_PREDICT_ROUTE", "/pr")
    monkeypatch.setenv("AIP_STORAGE_URI", "gs://b/m")
    monkeypatch.setenv("FLANT5_PARAMS", str(params_file))
    monkeypatch.setenv("FLANT5_SERVE_MAX_WAIT_MS", "2.5")
    s = ServeSettings.from_env({"serve_max_instances": 3})
    assert (s.http_port, s.health_route, s.predict_route, s.storage_uri) == (9123, "/hc", "/pr", "gs://b/m")
    assert (s.params.serve_max_batch_size, s.params.serve_backend) == (4, "ctranslate2")
    assert (s.params.serve_max_wait_ms, s.params.serve_max_instances) == (2.5, 3)
    monkeypatch.setenv("FLANT5_SERVE_MAX_BATCH_SIZE", "0")
    with pytest.raises(ParamsError, match="serve_max_batch_size"):
        ServeSettings.from_env()


def test_serve_command_without_a_model_exits_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    from flant5_lib.cli import main

    for var in ("FLANT5_MODEL_DIR", "AIP_STORAGE_URI", "FLANT5_PARAMS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["serve"]) == 2
    assert "no model" in capsys.readouterr().err
    assert main(["serve", "--model", str(tmp_path)]) == 2
    assert "config.json" in capsys.readouterr().err
    assert main(["serve", "--model", str(tmp_path), "--set", "serve_max_batch_size=0"]) == 2
    assert "serve_max_batch_size" in capsys.readouterr().err


def test_serve_command_listens_on_loopback_and_shows_an_example(capsys) -> None:
    from flant5_lib.cli import build_parser

    assert build_parser().parse_args(["serve", "--model", "m"]).host == "127.0.0.1"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    assert "flant5 serve --model runs/x/model" in capsys.readouterr().out
