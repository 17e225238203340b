"""A package face's public name must not also be one of its submodules.

`from flant5_lib import explore` first imports the submodule `flant5_lib.explore`, and the import system then binds
the package attribute to that module, so the lazy re-export of the function is shadowed: the notebook gets a module
and fails with "'module' object is not callable" (it happened to `explore` and to `vertex.estimate`).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

FACES = ["flant5_lib", "flant5_lib.train", "flant5_lib.vertex", "flant5_lib.workbench"]


@pytest.mark.parametrize("face", FACES)
def test_no_public_name_is_a_submodule(face):
    package = importlib.import_module(face)
    folder = Path(package.__file__).parent
    clashes = [n for n in package.__all__ if (folder / f"{n}.py").is_file() or (folder / n / "__init__.py").is_file()]
    assert not clashes, f"{face}: public names shadowed by submodules of the same name: {clashes}"


@pytest.mark.parametrize("face", FACES)
def test_every_public_name_resolves_to_what_it_names(face):
    package = importlib.import_module(face)
    for name in package.__all__:
        if name == "__version__":
            continue
        assert getattr(package, name) is not None, name  # imports and exists
