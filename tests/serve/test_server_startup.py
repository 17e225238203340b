"""Server start-up over real HTTP (uvicorn in a thread): 503 until the model is warm, AIP_STORAGE_URI downloads,
load failures, the prediction deadline, and how ServeSettings reads the environment."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
from tests.helpers.serve import make_talkative_model, thread_server, wait_until
from flant5_lib.procs import free_port

from flant5_lib.config import Params
from flant5_lib.errors import ParamsError
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
    settings = ServeSettings(model_dir=str(talk_model), load_hook=lambda: release.wait(30))
    with thread_server(create_app(settings), free_port()) as base:
        assert httpx.get(base + "/live").status_code == 200  # liveness answers while loading
        r = httpx.get(base + "/health")
        assert r.status_code == 503 and "loading" in r.json()["error"]
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
    settings = ServeSettings(storage_uri=uri)
    with thread_server(create_app(settings), free_port()) as base:
        ready = wait_until(base + "/health", 200, timeout=60)
        assert ready.json()["model"] == uri
        r = httpx.post(base + "/predict", json={"instances": [{"dialogue": DIALOGUE}], "parameters": {"max_new_tokens": 8}})
        assert r.json()["predictions"] == [_direct_summary(talk_model, DIALOGUE, 8)]


def test_a_model_that_cannot_load_keeps_health_503_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    settings = ServeSettings(model_dir=str(tmp_path / "empty"))
    with thread_server(create_app(settings), free_port()) as base:
        r = wait_until(base + "/health", 503, timeout=30)
        end = time.monotonic() + 30
        while "failed" not in r.json()["error"] and time.monotonic() < end:
            time.sleep(0.1)
            r = httpx.get(base + "/health")
        assert "failed to load" in r.json()["error"] and "config.json" in r.json()["error"]
        assert httpx.post(base + "/predict", json={"instances": [DIALOGUE]}).status_code == 503


def test_deadline_gives_504_and_health_stays_responsive(talk_model: Path) -> None:
    params = Params(serve_deadline_s=0.2, serve_max_instances=16, serve_max_batch_size=16)
    with thread_server(create_app(ServeSettings(model_dir=str(talk_model), params=params)), free_port()) as base:
        wait_until(base + "/health", 200, timeout=60)
        body = {"instances": [DIALOGUE * 8] * 16, "parameters": {"max_new_tokens": 256, "min_new_tokens": 256, "num_beams": 2}}
        with httpx.Client(timeout=30) as client:
            started = time.monotonic()
            r = client.post(base + "/predict", json=body)
            assert r.status_code == 504 and "serve_deadline_s" in r.json()["error"]
            assert time.monotonic() - started < 5  # answered at the deadline, not after the generation
            t = time.monotonic()
            assert client.get(base + "/health").status_code == 200  # the event loop is free while the batch runs
            assert time.monotonic() - t < 1.0


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
