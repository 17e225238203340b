"""gs:// helpers against the real google-cloud-storage client and gcp-storage-emulator."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from flant5_lib import storage
from flant5_lib.errors import CloudError


@pytest.fixture()
def bucket(gcs_emulator: str) -> str:
    uri = f"gs://test-{uuid.uuid4().hex[:10]}"
    storage.ensure_bucket(uri)
    return uri


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_split_and_join() -> None:
    assert storage.is_gcs("gs://b/x") and not storage.is_gcs("/tmp/x") and not storage.is_gcs(None)
    assert storage.split_gcs("gs://bucket/a/b/") == ("bucket", "a/b")
    assert storage.split_gcs("gs://bucket") == ("bucket", "")
    assert storage.join_gcs("gs://b/a/", "/c/", "d") == "gs://b/a/c/d"
    for bad in ("bucket/a", "s3://b/a", "gs:///a"):
        with pytest.raises(CloudError, match="gs://BUCKET"):
            storage.split_gcs(bad)


def test_client_is_anonymous_against_the_emulator(gcs_emulator: str) -> None:
    from google.auth.credentials import AnonymousCredentials

    client = storage.storage_client()
    assert isinstance(client._credentials, AnonymousCredentials)
    assert gcs_emulator in client._connection.API_BASE_URL


def test_text_round_trip_and_ensure_bucket_is_idempotent(bucket: str) -> None:
    uri = f"{bucket}/params/run.yaml"
    storage.write_text(uri, "model_name: tiny  # é\n")
    assert storage.read_text(uri) == "model_name: tiny  # é\n"
    assert storage.ensure_bucket(f"{bucket}/anything") == bucket  # second call: no error
    assert storage.exists(uri) and storage.exists(f"{bucket}/params") and not storage.exists(f"{bucket}/nope")


def test_dir_round_trip_keeps_nested_files(bucket: str, tmp_path: Path) -> None:
    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text('{"d_model": 8}')
    (src / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 10)
    uri = storage.upload_dir(src, f"{bucket}/runs/a/model/")
    assert uri == f"{bucket}/runs/a/model"
    assert sorted(storage.list_blobs(uri)) == ["config.json", "sub/weights.bin"]
    out = storage.download_dir(uri, tmp_path / "copy")
    assert _tree(out) == _tree(src)


def test_download_dir_replaces_atomically_and_keeps_old_copy_on_failure(bucket: str, tmp_path: Path) -> None:
    dest = tmp_path / "serving" / "model"
    dest.mkdir(parents=True)
    (dest / "old.txt").write_text("old")
    with pytest.raises(CloudError, match="no files found"):
        storage.download_dir(f"{bucket}/missing", dest)
    assert (dest / "old.txt").read_text() == "old"  # a failed download leaves the old folder alone
    storage.write_text(f"{bucket}/m/new.txt", "new")
    storage.download_dir(f"{bucket}/m", dest)
    assert _tree(dest) == {"new.txt": b"new"}  # replaced whole, not merged
    assert [p.name for p in dest.parent.iterdir()] == ["model"]  # no temp folders left behind


def test_file_round_trip_and_missing_object_is_one_line(bucket: str, tmp_path: Path) -> None:
    local = tmp_path / "a.jsonl"
    local.write_text('{"dialogue": "A: hi"}\n')
    storage.upload_file(local, f"{bucket}/data/a.jsonl")
    assert storage.download_file(f"{bucket}/data/a.jsonl", tmp_path / "b.jsonl").read_text() == local.read_text()
    with pytest.raises(CloudError) as err:
        storage.read_text(f"{bucket}/data/none.jsonl")
    assert "\n" not in str(err.value) and "none.jsonl" in str(err.value) and "check" in str(err.value)
    with pytest.raises(CloudError, match="object path"):
        storage.upload_file(local, bucket)
    with pytest.raises(CloudError, match="folder not found"):
        storage.upload_dir(tmp_path / "nope", f"{bucket}/x")


def test_no_google_credentials_is_one_line_naming_the_fix(tmp_path: Path) -> None:
    """A fresh process with no emulator and no Application Default Credentials reads a gs:// params file: exit 2 and
    one line saying how to log in or go offline, no traceback."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in (storage.EMULATOR_ENV, "GOOGLE_APPLICATION_CREDENTIALS")}
    # no gcloud config, and no GCE metadata server asked (on a Cloud Build or GCE machine it would hand out credentials)
    env.update(HOME=str(tmp_path), CLOUDSDK_CONFIG=str(tmp_path / "gcloud"), NO_GCE_CHECK="True")
    proc = subprocess.run([sys.executable, "-m", "flant5_lib", "params", "check", "gs://some-bucket/params.yaml"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("flant5 params: error: Cloud Storage client could not start (DefaultCredentialsError")
    assert "gcloud auth application-default login" in err and "flant5 vertex local-stack" in err
