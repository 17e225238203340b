"""The data tables shipped under params/ (prices, known images, GPUs per region): one reader that names a missing
file or key, and the one place that knows where the checkout (and so params/) is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from flant5_lib.errors import CloudError

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the checkout: params/, the Dockerfiles, pyproject.toml


def load_table(path: Path, required: tuple[str, ...], shipped_as: str) -> dict[str, Any]:
    """The YAML mapping at `path`, checked to hold every `required` key (a user's copy may predate one)."""
    if not path.is_file():
        raise CloudError(f"{path}: table not found (it ships as {shipped_as})")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    for key in required:
        if key not in data:
            raise CloudError(f"{path}: missing '{key}' (see the shipped {shipped_as})")
    return data
