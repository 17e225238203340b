"""`flant5 vertex build`: the `gcloud builds submit` that builds and pushes the project's three images.

The URIs come from the same params the jobs read (`image_registry`, `image_tag`), so what is built is what
`vertex train` and `vertex upload` will ask Vertex to pull. cloudbuild.yaml holds the build steps.
"""

from __future__ import annotations

from pathlib import Path

from flant5_lib.config import Params
from flant5_lib.errors import CloudError
from flant5_lib.vertex import images
from flant5_lib.vertex.tables import PROJECT_ROOT


def image_uris(params: Params) -> dict[str, str]:
    """The three images cloudbuild.yaml pushes (training/Dockerfile, serving/Dockerfile's cpu and gpu variants)."""
    return {name: images.project_image_uri(params, name)
            for name in (images.TRAIN_IMAGE, images.SERVE_IMAGE, images.SERVE_GPU_IMAGE)}


def submit_command(params: Params, config: str = "cloudbuild.yaml") -> list[str]:
    """gcloud builds submit from the repository root (the Dockerfiles need pyproject.toml and flant5_lib/)."""
    subs = f"_REGISTRY={images.registry(params)},_TAG={params.image_tag}"
    return ["gcloud", "builds", "submit", str(PROJECT_ROOT), f"--config={config}",
            f"--project={params.gcp_project or '<gcp_project>'}", f"--region={params.gcp_region}",
            f"--substitutions={subs}"]


def check(params: Params, config: str = "cloudbuild.yaml") -> None:
    """What a build needs before it is submitted."""
    path = Path(config) if Path(config).is_absolute() else PROJECT_ROOT / config
    if not path.is_file():
        raise CloudError(f"--config: {path} not found (the repository ships cloudbuild.yaml at its root)")
    if not params.gcp_project or "<" in params.gcp_project or "<" in images.registry(params):
        raise CloudError("gcp_project: required to build (the images go to "
                         f"{images.registry(params)}); set it with --set gcp_project=MY_PROJECT")
