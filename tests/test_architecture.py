"""The package's rooms and the one-way imports between them (issue: one house with rooms)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

PKG = REPO / "flant5_lib"
SUBPACKAGES = ("train", "serve", "vertex", "workbench")
# What each room may not import (beyond the rule that nothing imports `commands`).
FORBIDDEN = {
    "core": ("flant5_lib.train", "flant5_lib.serve", "flant5_lib.vertex", "flant5_lib.workbench"),
    "train": ("flant5_lib.serve", "flant5_lib.vertex", "flant5_lib.workbench"),
    "serve": ("flant5_lib.train", "flant5_lib.vertex", "flant5_lib.workbench"),
    "vertex": ("flant5_lib.train", "flant5_lib.serve", "flant5_lib.workbench"),
    "workbench": ("flant5_lib.serve.",),  # it may start the server as a process, never import its internals
}
# The CLI layer and the package's front door may reach every room.
ENTRY_POINTS = {"cli.py", "__main__.py", "__init__.py"}


def imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return names


def room(path: Path) -> str:
    rel = path.relative_to(PKG).parts
    return rel[0] if len(rel) > 1 else "core"


def violations() -> list[str]:
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        r = room(path)
        if r == "commands" or (r == "core" and path.name in ENTRY_POINTS):
            continue
        for mod in imported_modules(path):
            if mod.startswith("flant5_lib.commands"):
                bad.append(f"{path.relative_to(REPO)} imports {mod} (nothing imports the CLI layer)")
            if any(mod == f.rstrip(".") or mod.startswith(f if f.endswith(".") else f + ".") for f in FORBIDDEN[r]):
                bad.append(f"{path.relative_to(REPO)} ({r}) imports {mod}")
    return bad


def test_imports_point_one_way() -> None:
    assert violations() == []


def test_the_checker_catches_a_wrong_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rule above must be able to fail: a core module importing `train` is reported."""
    fake = tmp_path / "flant5_lib"
    (fake / "serve").mkdir(parents=True)
    (fake / "metrics.py").write_text("from flant5_lib.train.loop import train\n")
    (fake / "serve" / "app.py").write_text("import flant5_lib.vertex.jobs\nfrom flant5_lib.commands import run\n")
    monkeypatch.setattr(sys.modules[__name__], "PKG", fake)
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    found = violations()
    assert any("metrics.py (core) imports flant5_lib.train.loop" in v for v in found)
    assert any("serve/app.py (serve) imports flant5_lib.vertex.jobs" in v for v in found)
    assert any("nothing imports the CLI layer" in v for v in found)


def test_every_room_says_what_lives_there_and_what_it_may_import() -> None:
    for name in (*SUBPACKAGES, "vertex/localstack"):
        doc = ast.get_docstring(ast.parse((PKG / name / "__init__.py").read_text(encoding="utf-8"))) or ""
        assert doc, f"flant5_lib/{name}/__init__.py has no docstring"
        if "/" not in name:
            assert "import" in doc, f"flant5_lib/{name}/__init__.py does not say what it may import"
    assert not list(PKG.glob("train_*.py")) and not list(PKG.glob("vertex_*.py")), "a prefix is a folder asking to exist"


def test_importing_the_package_or_the_server_loads_no_training_or_notebook_stack() -> None:
    """`import flant5_lib.serve.app` (the container's import) must not drag in the training, Vertex or Jupyter code."""
    code = ("import sys, flant5_lib, flant5_lib.serve.app\n"
            "heavy = ['flant5_lib.train', 'flant5_lib.vertex', 'flant5_lib.workbench', 'papermill', 'nbformat',\n"
            "         'google.cloud.aiplatform', 'datasets', 'matplotlib', 'peft', 'tensorboard', 'IPython']\n"
            "print(','.join(m for m in heavy if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "", f"loaded by the server import: {out.stdout.strip()}"


def test_public_face_names_resolve() -> None:
    import flant5_lib
    import flant5_lib.train
    import flant5_lib.vertex
    import flant5_lib.workbench

    for module in (flant5_lib, flant5_lib.train, flant5_lib.vertex, flant5_lib.workbench):
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{module.__name__}.{name}"


def test_notebooks_import_only_public_faces() -> None:
    import json

    faces = {"flant5_lib", "flant5_lib.train", "flant5_lib.vertex", "flant5_lib.workbench"}
    for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        for cell in cells:
            if cell["cell_type"] != "code":
                continue
            src = "".join(cell["source"])
            try:
                tree = ast.parse(src)
            except SyntaxError:  # IPython magics
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("flant5_lib"):
                    assert node.module in faces, f"{nb.name} imports the deep path {node.module}"
