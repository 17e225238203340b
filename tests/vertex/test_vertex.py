"""`flant5 vertex` without any server: dry-run requests, input checks, presets, estimates, the task launcher."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest
import yaml

from flant5_lib.cli import main
from flant5_lib.config import load_params
from flant5_lib.errors import CloudError
from flant5_lib.vertex import estimate, specs, task
from flant5_lib.vertex.presets import PRESETS, machine_problem

from tests.helpers import REPO
SHIPPED = sorted(p for p in (REPO / "params").glob("*.yaml") if p.name != "prices.yaml")  # tables/ is not globbed


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["vertex", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _dry(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    code, out, err = _run(capsys, *argv, "--dry-run")
    assert code == 0, err
    return json.loads(out)


CLOUD = ["--set", "vertex_mode=cloud", "--set", "gcp_project=proj-x", "--set", "staging_bucket=gs://bkt/pre",
         "--set", "service_account=sa@proj-x.iam.gserviceaccount.com", "--set", "serving_container_uri=reg/flant5-serve:1",
         "--set", "train_container_uri=reg/flant5-train:2",
         "--set", "tensorboard_resource=projects/1/locations/us-central1/tensorboards/9"]


def test_dry_run_train_carries_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    req = _dry(capsys, "train", *CLOUD, "--set", "scheduling_strategy=spot", "--set", "train_job_kind=script")
    assert req["url"].endswith("/v1/projects/proj-x/locations/us-central1/trainingPipelines")
    inputs = req["body"]["trainingTaskInputs"]
    (pool,) = inputs["worker_pool_specs"]
    assert pool["machine_spec"] == {"machine_type": "a2-highgpu-1g", "accelerator_type": "NVIDIA_TESLA_A100",
                                    "accelerator_count": 1}
    spec = pool["python_package_spec"]
    assert spec["executor_image_uri"] == "reg/flant5-train:2"
    assert spec["args"][:2] == ["--params", "gs://bkt/pre/params/flan-t5-samsum-train.yaml"]  # one prefix, not two
    assert spec["args"][spec["args"].index("--project-package") + 1] == req["uploads_first"]["project_package"]
    assert inputs["base_output_directory"] == {"output_uri_prefix": "gs://bkt/pre/runs/flan-t5-samsum-train"}
    assert inputs["service_account"] == "sa@proj-x.iam.gserviceaccount.com"
    assert inputs["tensorboard"] == "projects/1/locations/us-central1/tensorboards/9"
    assert inputs["scheduling"] == {"strategy": "SPOT"}
    assert req["body"]["modelToUpload"]["containerSpec"] == {
        "imageUri": "reg/flant5-serve:1", "ports": [{"containerPort": 8080}], "predictRoute": "/predict", "healthRoute": "/health"}
    # the job's requirements carry the project's exact torch (transformers 5 needs >= 2.6), not the image's
    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines() if "==" in line)
    assert f"torch=={pins['torch']}" in req["uploads_first"]["requirements"]
    assert f"transformers=={pins['transformers']}" in req["uploads_first"]["requirements"]
    assert req["estimate"]["usd"] > 0 and "prices_read_on" in req["estimate"]


@pytest.mark.parametrize("params_file", [None, *SHIPPED], ids=lambda p: p.name if p else "defaults")
def test_every_dry_run_works_with_shipped_params(capsys: pytest.CaptureFixture[str], params_file: Path | None) -> None:
    pf = ["--params", str(params_file)] if params_file else []
    commands = [["train"], ["upload"], ["deploy"], ["predict", "--dialogue", "A: hi\\nB: hello"],
                ["batch", "--input", "gs://b/in.jsonl", "--output", "gs://b/out"], ["cleanup"], ["artifacts", "download"]]
    for cmd in commands:
        req = _dry(capsys, *cmd, *pf)
        text = json.dumps(req)
        params = load_params(params_file)
        if params.gcp_project is None and cmd[0] not in ("artifacts",):
            assert "<gcp_project>" in text, cmd  # unset values are visible placeholders, not None
    pred = _dry(capsys, "predict", "--dialogue", "A: hi\\nB: hello", *pf)
    assert pred["body"] == {"instances": [{"dialogue": "A: hi\nB: hello"}]}
    assert pred["curl"].startswith("curl -X POST") and ":predict" in pred["curl"]


def test_presets_multi_gpu_multi_replica_and_container_kind(capsys: pytest.CaptureFixture[str]) -> None:
    req = _dry(capsys, "train", *CLOUD, "--set", "train_preset=a100-40gb-2x2", "--set", "train_job_kind=script")
    pools = req["body"]["trainingTaskInputs"]["worker_pool_specs"]
    assert [p["replica_count"] for p in pools] == [1, 1]  # chief + one worker = 2 replicas
    assert all(p["machine_spec"]["machine_type"] == "a2-highgpu-2g" and p["machine_spec"]["accelerator_count"] == 2
               for p in pools)
    args = pools[0]["python_package_spec"]["args"]
    assert args[args.index("--nproc-per-node") + 1] == "2" and args[args.index("--nnodes") + 1] == "2"

    req = _dry(capsys, "train", *CLOUD, "--set", "train_preset=a100-80gb")  # container is the default kind
    (pool,) = req["body"]["trainingTaskInputs"]["worker_pool_specs"]
    assert pool["machine_spec"]["machine_type"] == "a2-ultragpu-1g"
    assert pool["machine_spec"]["accelerator_type"] == "NVIDIA_A100_80GB"
    assert "command" not in pool["containerSpec"]  # the image's ENTRYPOINT runs the task
    assert pool["containerSpec"]["imageUri"] == "reg/flant5-train:2"
    assert "project_package" not in req["uploads_first"]  # the custom image already has the project
    for name, p in PRESETS.items():  # every preset passes its own machine check
        assert machine_problem(p.machine_type, p.accelerator_type, p.accelerator_count) is None, name


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["train"], "gcp_project"),
        (["train", "--set", "vertex_mode=cloud", "--set", "gcp_project=p"], "staging_bucket"),
        (["train", "--dry-run", "--set", "train_accelerator_type=NVIDIA_L4"], "train_accelerator_type"),
        (["train", "--dry-run", "--set", "train_accelerator_count=4"], "train_accelerator_count"),
        (["train", "--dry-run", "--set", "train_machine_type=z9-mega-1"], "train_machine_type"),
        (["train", "--dry-run", "--set", "train_preset=huge"], "train_preset"),
        (["train", "--dry-run", "--set", "staging_bucket=my-bucket"], "staging_bucket"),
        (["upload", "--dry-run", "--set", "model_artifact_uri=/tmp/model"], "model_artifact_uri"),
        (["deploy", "--dry-run", "--set", "deploy_machine_type=n1-standard-4", "--set",
          "deploy_accelerator_type=NVIDIA_TESLA_T4", "--set", "deploy_accelerator_count=3"], "deploy_accelerator_count"),
        (["batch", "--dry-run", "--input", "gs://b/i", "--output", "gs://b/o", "--set",
          "batch_machine_type=a2-highgpu-1g"], "batch_machine_type"),
        (["predict", "--local-stack", "/nonexistent/state.json", "--dialogue", "x"], "state"),
    ],
)
def test_bad_inputs_give_one_line_before_any_request(capsys: pytest.CaptureFixture[str], argv: list[str], field: str) -> None:
    code, out, err = _run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and field in err and "Traceback" not in err


def test_machine_table() -> None:
    assert machine_problem("a2-highgpu-4g", "NVIDIA_TESLA_A100", 4) is None
    assert machine_problem("n1-standard-8", "NVIDIA_TESLA_T4", 2) is None
    assert machine_problem("n1-standard-4", None, 0) is None
    assert "NVIDIA_A100_80GB" in machine_problem("a2-ultragpu-1g", "NVIDIA_TESLA_A100", 1)
    assert "counts 1, 2, 4" in machine_problem("n1-standard-8", "NVIDIA_TESLA_T4", 3)
    assert "takes no accelerator" in machine_problem("e2-standard-4", "NVIDIA_TESLA_T4", 1)


def test_estimate_follows_the_price_table(tmp_path: Path) -> None:
    table = yaml.safe_load((REPO / "params" / "prices.yaml").read_text())
    assert table["prices_read_on"] and "LIST PRICES TO CHECK" in (REPO / "params" / "prices.yaml").read_text()
    table.update(machine_per_hour={"a2-highgpu-4g": 2.0}, accelerator_per_hour={"NVIDIA_TESLA_A100": 3.0},
                 startup_minutes=6, multi_gpu_efficiency=0.5, spot_discount=0.25,
                 throughput_per_gpu={"flan-t5-base": {"NVIDIA_TESLA_A100": 10.0}})
    prices = tmp_path / "prices.yaml"
    prices.write_text(yaml.safe_dump(table))
    p = load_params(None, {"train_preset": "a100-40gb-x4", "num_train_epochs": 2, "max_train_samples": 5000})
    e = estimate.estimate(p, estimate.load_prices(prices))
    speed = 10.0 * (1 + 3 * 0.5)  # 4 GPUs at 50% efficiency for each extra one
    assert e["samples_per_s"] == speed and e["samples_seen"] == 10000
    hours = 10000 / speed / 3600 + 0.1
    assert e["total_hours"] == round(hours, 2) and e["usd_per_hour"] == 2.0 + 4 * 3.0
    assert abs(e["usd"] - hours * 14.0) < 0.02
    spot = estimate.estimate(p.with_overrides(scheduling_strategy="spot"), estimate.load_prices(prices))
    assert spot["usd_per_hour"] == round(14.0 * 0.25, 2)
    assert e["samples_seen"] == estimate.estimate(p, estimate.load_prices(prices), 5000)["samples_seen"]
    with pytest.raises(CloudError, match="model_name"):
        estimate.estimate(p.with_overrides(model_name="gpt2"), estimate.load_prices(prices))


def test_task_launcher_uses_torchrun_only_for_several_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    single = task.build_command(["--params", "gs://b/p.yaml"], 1, 1)
    assert single[1:] == ["-m", "flant5_lib.train", "--params", "gs://b/p.yaml"]
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setenv("CLUSTER_SPEC", json.dumps({"cluster": {"workerpool0": ["chief:2222"], "workerpool1": ["w1:2222"]},
                                                   "task": {"type": "workerpool1", "index": 0}}))
    multi = task.build_command(["--params", "gs://b/p.yaml"], 2, 2)
    assert multi[1:3] == ["-m", "torch.distributed.run"]
    assert {"--nnodes=2", "--node_rank=1", "--nproc_per_node=2", "--master_addr=chief"} <= set(multi)
    assert multi[-4:] == ["-m", "flant5_lib.train", "--params", "gs://b/p.yaml"]
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert "--master_addr=10.0.0.2" in task.build_command([], 4, 2)


def test_project_archive_is_reproducible_and_installable_layout(tmp_path: Path) -> None:
    (tmp_path / "flant5_lib" / "sub").mkdir(parents=True)
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (tmp_path / "flant5_lib" / "a.py").write_text("A = 1\n")
    (tmp_path / "flant5_lib" / "sub" / "b.py").write_text("B = 2\n")
    name1, data1 = specs.build_project_archive(tmp_path)
    os.utime(tmp_path / "flant5_lib" / "a.py", (0, 12345))  # a touched file with the same bytes: same archive
    name2, data2 = specs.build_project_archive(tmp_path)
    assert (name1, data1) == (name2, data2)
    (tmp_path / "flant5_lib" / "a.py").write_text("A = 3\n")
    assert specs.build_project_archive(tmp_path)[0] != name1  # changed sources get a new name
    top = name1.rsplit("-", 1)[0]
    with tarfile.open(fileobj=io.BytesIO(data1)) as tar:
        assert sorted(tar.getnames()) == sorted(f"{top}/{n}" for n in ("pyproject.toml", "README.md", "flant5_lib/a.py",
                                                                      "flant5_lib/sub/b.py"))
    name, data = specs.build_project_archive()  # the real checkout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
    top = name.rsplit("-", 1)[0]
    assert f"{top}/flant5_lib/train/loop.py" in names and f"{top}/flant5_lib/vertex/task.py" in names


def test_api_errors_become_one_line_with_what_to_check() -> None:
    from google.api_core import exceptions as gexc

    cases = {gexc.PermissionDenied("caller lacks aiplatform.customJobs.create"): "roles",
             gexc.ResourceExhausted("Quota exceeded for custom_model_training_nvidia_a100_gpus"): "quota",
             gexc.NotFound("Endpoint 12 not found\nmore detail"): "gcp_region",
             RuntimeError("Training failed with:\ncode: 13"): "logs"}
    for err, hint in cases.items():
        msg = str(specs.explain_api_error(err, "vertex train"))
        assert "\n" not in msg and hint in msg and msg.startswith("vertex train: ")


def test_a_real_launch_runs_preflight_before_any_request(capsys: pytest.CaptureFixture[str]) -> None:
    # no stand-in and no network: had preflight not stopped it, the SDK would fail on credentials instead
    code, out, err = _run(capsys, "train", "--set", "vertex_mode=cloud", "--set", "gcp_project=p", "--set",
                          "staging_bucket=gs://b", "--set", "tensorboard_resource=projects/p/locations/us-central1/tensorboards/1")
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.splitlines()[0].endswith("preflight found 1 problem(s):") and "service_account" in err.splitlines()[1]
