"""gs:// helpers over google-cloud-storage, shared by data loading, training, serving and Vertex jobs.

The same code talks to real Cloud Storage and to the offline emulator: with `STORAGE_EMULATOR_HOST`
set, the client uses anonymous credentials and a placeholder project, exactly as the emulator expects.
Every download lands in a temporary folder first and is renamed into place, so a crash never leaves
half a model where a server would load it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from flant5_lib.errors import CloudError
from flant5_lib.fileio import atomic_path

log = logging.getLogger(__name__)

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
_EMULATOR_PROJECT = "local-emulator"  # any id works: the emulator does not check it


def is_gcs(uri: str | os.PathLike[str] | None) -> bool:
    """True for gs://bucket[/path] strings (the only remote scheme this project reads)."""
    return isinstance(uri, str) and uri.startswith("gs://")


def split_gcs(uri: str) -> tuple[str, str]:
    """'gs://bucket/a/b/' -> ('bucket', 'a/b'); raises CloudError for anything that is not gs://."""
    if not is_gcs(uri):
        raise CloudError(f"{uri!r}: not a Cloud Storage URI; write it as gs://BUCKET/PATH")
    rest = uri[len("gs://") :]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise CloudError(f"{uri!r}: bucket name missing; write it as gs://BUCKET/PATH")
    return bucket, prefix.strip("/")


def join_gcs(uri: str, *parts: str) -> str:
    """Join path parts onto a gs:// URI with single slashes."""
    out = uri.rstrip("/")
    for p in parts:
        p = p.strip("/")
        if p:
            out = f"{out}/{p}"
    return out


def storage_client() -> Any:
    """A google-cloud-storage Client; anonymous against the emulator, default credentials otherwise."""
    from google.cloud import storage

    if os.environ.get(EMULATOR_ENV):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=_EMULATOR_PROJECT, credentials=AnonymousCredentials())
    try:
        return storage.Client()
    except Exception as err:  # DefaultCredentialsError, missing project...
        raise CloudError(
            f"Cloud Storage client could not start ({type(err).__name__}: {str(err).splitlines()[0]}); "
            "run `gcloud auth application-default login` or start `flant5 vertex local-stack`"
        ) from None


def _api_error(err: Exception, uri: str, action: str) -> CloudError:
    """One line naming the URI and what to check, for the errors users actually meet."""
    from google.api_core import exceptions as gexc

    if isinstance(err, gexc.NotFound):
        hint = "check the bucket and path exist (gsutil ls)"
    elif isinstance(err, gexc.Forbidden):
        hint = "check the account has storage.objects permissions on the bucket"
    else:
        hint = "check the URI, your network and credentials"
    msg = str(err).splitlines()[0] if str(err) else type(err).__name__
    return CloudError(f"{uri}: {action} failed ({msg}); {hint}")


def _bucket(client: Any, uri: str) -> tuple[Any, str]:
    name, prefix = split_gcs(uri)
    return client.bucket(name), prefix


def upload_file(local: str | os.PathLike[str], uri: str, *, client: Any = None) -> str:
    """Upload one file to a gs:// object URI; returns the URI."""
    from google.api_core import exceptions as gexc

    client = client or storage_client()
    bucket, key = _bucket(client, uri)
    if not key:
        raise CloudError(f"{uri!r}: needs an object path after the bucket (gs://BUCKET/PATH/FILE)")
    try:
        bucket.blob(key).upload_from_filename(str(local))
    except gexc.GoogleAPIError as err:
        raise _api_error(err, uri, "upload") from None
    return f"gs://{bucket.name}/{key}"


def download_file(uri: str, local: str | os.PathLike[str], *, client: Any = None) -> Path:
    """Download one object to a local file, atomically."""
    from google.api_core import exceptions as gexc

    client = client or storage_client()
    bucket, key = _bucket(client, uri)
    try:
        with atomic_path(local) as tmp:
            bucket.blob(key).download_to_filename(str(tmp))
    except gexc.GoogleAPIError as err:
        raise _api_error(err, uri, "download") from None
    return Path(local)


def list_blobs(uri: str, *, client: Any = None) -> list[str]:
    """Object names (relative to the URI's prefix) below a gs:// folder."""
    from google.api_core import exceptions as gexc

    client = client or storage_client()
    name, prefix = split_gcs(uri)
    base = f"{prefix}/" if prefix else ""
    try:
        blobs = list(client.list_blobs(name, prefix=base))
    except gexc.GoogleAPIError as err:
        raise _api_error(err, uri, "listing") from None
    return [b.name[len(base) :] for b in blobs if not b.name.endswith("/")]


def exists(uri: str, *, client: Any = None) -> bool:
    """True if the URI is an object or a non-empty folder."""
    client = client or storage_client()
    bucket, key = _bucket(client, uri)
    if key and bucket.blob(key).exists():
        return True
    return bool(list_blobs(uri, client=client))


def upload_dir(local: str | os.PathLike[str], uri: str, *, client: Any = None) -> str:
    """Upload every file under a local folder to gs://.../ keeping relative paths; returns the URI."""
    src = Path(local)
    if not src.is_dir():
        raise CloudError(f"{src}: folder not found; nothing to upload to {uri}")
    client = client or storage_client()
    split_gcs(uri)  # validate before any request
    files = sorted(p for p in src.rglob("*") if p.is_file())
    for path in tqdm(files, desc=f"upload {src.name}", unit="file", leave=False, disable=len(files) < 2):
        upload_file(path, join_gcs(uri, path.relative_to(src).as_posix()), client=client)
    log.info("uploaded %d files from %s to %s", len(files), src, uri)
    return uri.rstrip("/")


def download_dir(uri: str, local: str | os.PathLike[str], *, client: Any = None) -> Path:
    """Download a gs:// folder into `local` (replaced atomically: temp folder, then rename)."""
    from google.api_core import exceptions as gexc

    client = client or storage_client()
    bucket, prefix = _bucket(client, uri)
    names = list_blobs(uri, client=client)
    if not names:
        raise CloudError(f"{uri}: no files found; check the path (a model folder holds config.json)")
    base = f"{prefix}/" if prefix else ""
    with atomic_path(local) as tmp:
        root = Path(tmp).resolve()
        for rel in tqdm(names, desc=f"download {prefix or bucket.name}", unit="file", leave=False, disable=len(names) < 2):
            dest = (root / rel).resolve()
            if not dest.is_relative_to(root) or dest == root:  # an object named '../x' or '/x' must not escape
                raise CloudError(f"gs://{bucket.name}/{base}{rel}: object name leaves the download folder; refused")
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                bucket.blob(base + rel).download_to_filename(str(dest))
            except gexc.GoogleAPIError as err:
                raise _api_error(err, f"gs://{bucket.name}/{base}{rel}", "download") from None
    log.info("downloaded %d files from %s to %s", len(names), uri, local)
    return Path(local)


def read_text(uri: str, *, client: Any = None) -> str:
    """Read a small gs:// object as UTF-8 text (params files, metrics)."""
    from google.api_core import exceptions as gexc

    client = client or storage_client()
    bucket, key = _bucket(client, uri)
    try:
        return bucket.blob(key).download_as_bytes().decode("utf-8")
    except gexc.GoogleAPIError as err:
        raise _api_error(err, uri, "read") from None


def write_text(uri: str, text: str, *, client: Any = None) -> str:
    """Write text to a gs:// object (a single upload is atomic on GCS)."""
    from google.api_core import exceptions as gexc

    client = client or storage_client()
    bucket, key = _bucket(client, uri)
    try:
        bucket.blob(key).upload_from_string(text.encode("utf-8"), content_type="text/plain; charset=utf-8")
    except gexc.GoogleAPIError as err:
        raise _api_error(err, uri, "write") from None
    return uri


def ensure_bucket(uri: str, *, client: Any = None) -> str:
    """Create the URI's bucket if missing (for the emulator and local runs; cloud buckets are made by admins)."""
    from google.api_core import exceptions as gexc

    client = client or storage_client()
    name, _ = split_gcs(uri)
    try:
        if client.lookup_bucket(name) is None:
            client.create_bucket(name)
            log.info("created bucket gs://%s", name)
    except gexc.Conflict:
        pass  # created meanwhile by someone else
    except gexc.GoogleAPIError as err:
        raise _api_error(err, uri, "bucket creation") from None
    return f"gs://{name}"
