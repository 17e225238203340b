"""The real Vertex SDK and storage client against the local stand-in and the GCS emulator.

Nothing is mocked: training runs `flant5_lib.train` in a subprocess, deployment starts `python -m flant5_lib serve`,
and predictions come from the tiny model it trained.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from flant5_lib import storage
from flant5_lib.vertex import images
from flant5_lib.vertex import specs as vertex
from flant5_lib.vertex import jobs as vertex_jobs
from flant5_lib.config import load_params
from flant5_lib.vertex.localstack import LocalStack
from tests.helpers.vertex import vertex_cli

QUICK_TRAIN = {"dataset": "synthetic:64", "model_name": "tiny", "max_steps": 5, "eval_strategy": "no",
               "per_device_train_batch_size": 8, "logging_steps": 1}




def _ints(obj: object) -> object:
    """The SDK sends numbers in Struct fields as floats (1.0); compare them as the integers they are."""
    return json.loads(json.dumps(obj), parse_float=lambda x: int(float(x)) if float(x).is_integer() else float(x))



def _ok(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[dict, str]:
    code, out, err = vertex_cli(capsys, *argv)
    assert code == 0, err[-2000:]
    return json.loads(out), err


@pytest.mark.slow
def test_failing_training_job_raises_the_sdks_error(stack: LocalStack) -> None:
    stack.clear_requests()
    params = load_params(None, {**stack.params_overrides(), **QUICK_TRAIN, "dataset": "synthetic:3",
                                "train_preset": "a100-40gb-2x2", "train_display_name": "bad-job",
                                "train_job_kind": "container", "train_container_uri": "registry.local/flant5-train:1"})
    with pytest.raises(RuntimeError, match="Training failed") as err:
        vertex_jobs.run_training(params)
    assert "non-zero status" in str(err.value) and "synthetic" in str(err.value)  # the trainer's own message
    (req,) = stack.requests("/trainingPipelines", method="POST")
    pools = req["body"]["trainingTaskInputs"]["worker_pool_specs"]
    assert len(pools) == 2 and all(p["machine_spec"]["machine_type"] == "a2-highgpu-2g" for p in pools)
    assert all(p["machine_spec"]["accelerator_type"] == "NVIDIA_TESLA_A100" for p in pools)
    assert all(int(p["machine_spec"]["accelerator_count"]) == 2 for p in pools)
    spec = pools[0]["containerSpec"]
    assert spec["imageUri"] == "registry.local/flant5-train:1"
    assert "command" not in spec  # the image's ENTRYPOINT (training/Dockerfile) ran the task, as on Vertex
    assert spec["args"][spec["args"].index("--nnodes") + 1] == "2"
    assert "params/bad-job.yaml" in storage.list_blobs(stack.bucket)  # the job read its params from there
    assert _ints(req["body"]) == _ints(vertex.training_request(params)["body"])  # --dry-run shows exactly this


@pytest.mark.slow
def test_deploying_a_model_that_cannot_load_raises_the_sdks_error(stack: LocalStack,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from google.api_core import exceptions as gexc

    p = load_params(None, {**stack.params_overrides(), "model_display_name": "broken",
                           "endpoint_display_name": "broken-ep", "model_artifact_uri": f"{stack.bucket}/empty/model"})
    model = vertex_jobs.upload_model(p)
    assert model.supported_deployment_resources_types  # so the SDK sends dedicated resources
    stack.clear_requests()
    # answer with a pending operation: the SDK must poll it and raise its error (restored after the test)
    monkeypatch.setattr(stack.backend, "sync_wait_s", 0)
    with pytest.raises(gexc.FailedPrecondition, match="Model server (failed to start|stopped)") as err:
        vertex_jobs.deploy_model(p, model)
    log_path = re.search(r"log: (\S+?)\)", str(err.value)).group(1)
    assert "no files found" in Path(log_path).read_text()  # the server's log says why
    monkeypatch.undo()
    assert stack.requests("/ui/projects/local-project/locations/us-central1/operations/", method="GET")
    (endpoint,) = vertex_jobs.find_endpoints(p)
    assert endpoint.list_models() == [] and not stack.backend.deployments
    assert vertex_jobs.cleanup(p) == {"endpoints": [endpoint.resource_name], "models": [model.resource_name]}


@pytest.mark.slow
def test_local_stack_command_dry_runs_send_nothing_and_api_errors_are_one_line(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("STORAGE_EMULATOR_HOST", None)
    proc = subprocess.Popen([sys.executable, "-m", "flant5_lib", "vertex", "local-stack", "--workdir",
                             str(tmp_path / "work"), "--state-file", str(state)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while not state.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.2)
        settings = json.loads(state.read_text())
        api = settings["api_endpoint"]
        assert api.startswith("http://127.0.0.1:") and settings["env"]["STORAGE_EMULATOR_HOST"].startswith("http://127.0.0.1:")
        flant5 = [sys.executable, "-m", "flant5_lib", "vertex"]
        for cmd in (["train"], ["upload"], ["deploy"], ["predict", "--dialogue", "A: hi"], ["cleanup"],
                    ["batch", "--input", "gs://flant5-local/in.jsonl", "--output", "gs://flant5-local/out"]):
            r = subprocess.run([*flant5, *cmd, "--dry-run", "--local-stack", str(state)], env=env,
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stderr
            assert api in json.dumps(json.loads(r.stdout))  # the request is aimed at the stand-in...
        assert httpx.get(f"{api}/_local/requests").json() == []  # ...and none was sent
        r = subprocess.run([*flant5, "upload", "--local-stack", str(state), "--set", "gcp_project=someone-else"],
                           env=env, capture_output=True, text=True, timeout=120)
        (line,) = [x for x in r.stderr.splitlines() if x.startswith("flant5 vertex")]  # one line, no traceback
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert "Forbidden" in line and "gcp_project" in line  # REST maps 403 to Forbidden
        assert len(httpx.get(f"{api}/_local/requests").json()) == 1
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and not state.exists()


@pytest.mark.slow
def test_train_upload_deploy_predict_batch_cleanup(stack: LocalStack, state_file: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    params_file = tmp_path / "quick.yaml"
    params_file.write_text(yaml.safe_dump(QUICK_TRAIN))
    common = ["--params", str(params_file), "--local-stack", state_file]
    p = load_params(params_file, stack.params_overrides())
    stack.clear_requests()

    trained, err = _ok(capsys, "train", *common)
    assert "estimate:" in err and "list prices to check" in err
    (req,) = stack.requests("/trainingPipelines", method="POST")
    inputs, body = req["body"]["trainingTaskInputs"], req["body"]
    (pool,) = inputs["worker_pool_specs"]
    assert pool["machine_spec"]["machine_type"] == p.train_machine_type
    assert pool["machine_spec"]["accelerator_type"] == p.train_accelerator_type
    assert pool["containerSpec"]["imageUri"] == images.train_image(p)  # the project's image, its ENTRYPOINT ran
    assert inputs["service_account"] == p.service_account and inputs["tensorboard"] == p.tensorboard_resource
    out_dir = inputs["base_output_directory"]["output_uri_prefix"]
    assert out_dir == trained["output_dir"] == f"{p.staging_bucket}/runs/{p.train_display_name}"
    assert body["modelToUpload"]["containerSpec"] == {"imageUri": p.serving_container_uri, "ports": [{"containerPort": 8080}],
                                                      "predictRoute": "/predict", "healthRoute": "/health"}
    # the trainer wrote where Vertex told it to: AIP_MODEL_DIR, AIP_CHECKPOINT_DIR, AIP_TENSORBOARD_LOG_DIR
    assert "config.json" in storage.list_blobs(f"{out_dir}/model")
    assert any("model.safetensors" in n for n in storage.list_blobs(f"{out_dir}/model"))
    assert storage.list_blobs(f"{out_dir}/checkpoints") and storage.list_blobs(f"{out_dir}/logs")
    assert trained["model"]
    # the image already holds the project: only the params were staged, no source archive
    staged = storage.list_blobs(stack.bucket)
    assert "--project-package" not in pool["containerSpec"]["args"]
    assert f"params/{p.train_display_name}.yaml" in staged and not any("packages/" in n for n in staged)

    uploaded, _ = _ok(capsys, "upload", *common)
    (up,) = stack.requests("models:upload")
    assert up["body"] == vertex.upload_request(p)["body"]
    assert up["body"]["model"]["artifactUri"] == f"{out_dir}/model" == uploaded["artifact_uri"]
    assert up["body"]["model"]["containerSpec"]["imageUri"] == p.serving_container_uri

    deployed, _ = _ok(capsys, "deploy", *common)
    assert deployed["model"] == uploaded["model"]  # the newest model with that display name
    (dep,) = stack.requests(":deployModel")
    assert dep["body"] == vertex.deploy_request(p, deployed["endpoint"], deployed["model"] + "@1")["body"]
    res = dep["body"]["deployedModel"]["dedicatedResources"]
    assert res["machineSpec"] == {"machineType": p.deploy_machine_type}
    assert (res["minReplicaCount"], res["maxReplicaCount"]) == (p.deploy_min_replicas, p.deploy_max_replicas)
    assert dep["body"]["deployedModel"]["serviceAccount"] == p.service_account
    assert list(deployed["traffic_split"].values()) == [100]

    dialogue_file = tmp_path / "d.jsonl"
    dialogue_file.write_text(json.dumps({"dialogue": "Tom: Lunch at noon?\nAnn: Yes, see you there."}) + "\n")
    got, err = _ok(capsys, "predict", *common, "--dialogue", "Amy: Is the car fixed?\\nBen: Tomorrow.",
                   "--file", str(dialogue_file))
    assert len(got["predictions"]) == 2 and all(isinstance(s, str) and s.strip() for s in got["predictions"])
    assert "curl -X POST" in err and f"{got['endpoint']}:predict" in err
    (pred,) = stack.requests(":predict")
    assert pred["body"]["instances"][1] == {"dialogue": "Tom: Lunch at noon?\nAnn: Yes, see you there."}

    storage.write_text(f"{stack.bucket}/batch/in.jsonl", "".join(
        json.dumps({"dialogue": f"A: item {i}?\nB: ok {i}."}) + "\n" for i in range(3)))
    batch, _ = _ok(capsys, "batch", *common, "--input", f"{stack.bucket}/batch/in.jsonl",
                   "--output", f"{stack.bucket}/batch/out")
    assert batch["state"] == "JOB_STATE_SUCCEEDED"
    results = [json.loads(line) for name in storage.list_blobs(batch["output_dir"])
               for line in storage.read_text(f"{batch['output_dir']}/{name}").splitlines()]
    batch_dialogues = [f"A: item {i}?\nB: ok {i}." for i in range(3)]
    assert [r["instance"]["dialogue"] for r in results] == batch_dialogues
    assert all(isinstance(r["prediction"], str) and r["prediction"].strip() for r in results)  # a summary, not ""

    local = tmp_path / "serving" / "model"
    _ok(capsys, "artifacts", "download", *common, "--local", str(local))
    assert (local / "config.json").is_file()
    _ok(capsys, "artifacts", "upload", *common, "--local", str(local), "--uri", f"{stack.bucket}/copies/model")
    assert sorted(storage.list_blobs(f"{stack.bucket}/copies/model")) == sorted(storage.list_blobs(f"{out_dir}/model"))
    # the endpoint served this very model: the same dialogues summarised here, with the same engine (serve_backend's
    # default) and the model's own preprocessing and generation settings, give the same texts. Each is sent as the
    # endpoint and the batch job got it (one dialogue alone, three together): on x86 auto decodes a lone dialogue
    # with ONNX Runtime and a batch with CTranslate2, whose int8 rounding may break a near-tie differently.
    from flant5_lib.inference import summarize_batches
    from flant5_lib.preprocess import load_preprocessing
    from flant5_lib.serve.backends import load_backend

    one = "Amy: Is the car fixed?\nBen: Tomorrow, they said."
    endpoint = vertex_jobs.get_endpoint(p)
    (served,) = vertex_jobs.predict(p, endpoint, [one])
    here = load_preprocessing(local, load_params())
    engine = load_backend(local, here, device="cpu")
    def summarize(dialogues: list[str]) -> list[str]:
        return summarize_batches(lambda ids, kw: (engine.generate(ids, kw), [False] * len(ids)), engine.tokenizer,
                                 dialogues, here, progress=False)[0]

    assert summarize([one]) == [served]
    assert summarize(batch_dialogues) == [r["prediction"] for r in results]  # the batch job's summaries are this model's too

    deployed_ids = [d.id for d in endpoint.list_models()]
    assert len(deployed_ids) == 1
    cleaned, _ = _ok(capsys, "cleanup", *common)
    assert cleaned["endpoints"] == [endpoint.resource_name] and len(cleaned["models"]) == 2
    assert uploaded["model"] in cleaned["models"] and trained["model"] in cleaned["models"]
    for name in cleaned["endpoints"] + cleaned["models"]:  # this test's own resources are gone (others may exist)
        assert httpx.get(f"{stack.api_endpoint}/v1/{name}").status_code == 404, name
    assert not set(deployed_ids) & set(stack.backend.deployments)  # and its model server was stopped
    again, _ = _ok(capsys, "cleanup", *common)
    assert again == {"endpoints": [], "models": []}  # idempotent


def _one_error_line(err: str, command: str) -> str:
    """The CLI's answer to a user's mistake: no traceback, and its last stderr line is the one error line."""
    assert "Traceback" not in err, err[-2000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"flant5 {command}: error: "), err[-2000:]
    return line


def test_deploy_before_upload_and_predict_before_deploy_say_what_to_run_first(
        stack: LocalStack, state_file: str, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--local-stack", state_file, "--set", "model_display_name=never-uploaded",
              "--set", "endpoint_display_name=never-deployed"]
    stack.clear_requests()
    code, _, err = vertex_cli(capsys, "deploy", *common)
    line = _one_error_line(err, "vertex")
    assert code == 2 and "model_display_name: no model named 'never-uploaded'" in line and "flant5 vertex upload" in line
    code, _, err = vertex_cli(capsys, "predict", *common, "--dialogue", "A: hi\\nB: hello")
    line = _one_error_line(err, "vertex")
    assert code == 2 and "endpoint_display_name: no endpoint named 'never-deployed'" in line
    assert "flant5 vertex deploy" in line
    assert stack.requests(method="POST") == []  # only lookups were sent: no endpoint created, nothing deployed


def test_predict_without_dialogues_is_a_usage_error(state_file: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = vertex_cli(capsys, "predict", "--local-stack", state_file)
    line = _one_error_line(err, "vertex")
    assert code == 2 and out == "" and "--dialogue" in line and "--file" in line


@pytest.mark.parametrize(("content", "needle"), [("{not json", "invalid JSON"), ('{"env": {}}', "needs 'env' and 'params'"),
                                                  (None, "state file not found")], ids=["corrupt", "incomplete", "missing"])
def test_a_bad_local_stack_state_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   content: str | None, needle: str) -> None:
    state = tmp_path / "state.json"
    if content is not None:
        state.write_text(content)
    code, _, err = vertex_cli(capsys, "upload", "--local-stack", str(state))
    line = _one_error_line(err, "vertex")
    assert code == 2 and str(state) in line and needle in line
