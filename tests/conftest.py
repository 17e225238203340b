"""Shared fixtures: a tiny model built once per session, the GCS emulator, the real SAMSum folder and T5 vocabulary."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import SAMSUM_DIR, T5_TOKENIZER_DIR

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`samsum` marks every test that reads ../shared (through these fixtures), so `-m "not samsum"` is exact and
    no test can forget its marker."""
    for item in items:
        if {"samsum_dir", "t5_tokenizer_dir"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.samsum)


@pytest.fixture(scope="session", autouse=True)
def _kernel_state_in_tmp(tmp_path_factory: pytest.TempPathFactory):
    """Kernels that papermill or JupyterLab start write IPython history and Jupyter's secret and signature database
    under ~: the tests keep them in their own temporary folder (kernelspecs are still found in sys.prefix)."""
    home = tmp_path_factory.mktemp("jupyter-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IPYTHONDIR", str(home / "ipython"))
        mp.setenv("JUPYTER_DATA_DIR", str(home / "data"))
        yield


@pytest.fixture(scope="session", autouse=True)
def _serving_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory):
    """CTranslate2 conversions and merged adapters go to the serving cache (FLANT5_CACHE_DIR), not to ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLANT5_CACHE_DIR", str(tmp_path_factory.mktemp("flant5-cache")))
        yield


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Flan-T5-family model with a locally trained tokenizer (read-only: copy before changing it)."""
    from flant5_lib.modeling import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny", seed=0)


@pytest.fixture(scope="session")
def gcs_emulator():
    """A real gcp-storage-emulator on 127.0.0.1 (random port, in memory); STORAGE_EMULATOR_HOST points at it."""
    from flant5_lib.vertex.localstack.emulator import start_gcs_emulator

    emu = start_gcs_emulator()
    old = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = emu.url
    try:
        yield emu.url
    finally:
        emu.stop()
        if old is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = old


@pytest.fixture(scope="session")
def samsum_dir() -> Path:
    if not (SAMSUM_DIR / "original" / "test.json").is_file():
        pytest.skip(f"real SAMSum splits not found in {SAMSUM_DIR} (they live in ../shared beside the checkout)")
    return SAMSUM_DIR


@pytest.fixture(scope="session")
def t5_tokenizer_dir() -> Path:
    if not (T5_TOKENIZER_DIR / "tokenizer.json").is_file():
        pytest.skip(f"T5 vocabulary not found in {T5_TOKENIZER_DIR}")
    return T5_TOKENIZER_DIR
