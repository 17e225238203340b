"""The package's rooms, the one-way imports between them, and no import circle anywhere in `flant5_lib`.

Both rules read every import statement, those inside functions included (`ast.walk` visits every node), and a
`from PACKAGE import name` that a package's lazy face re-exports counts as an import of the module behind the name.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

PKG = REPO / "flant5_lib"
SUBPACKAGES = ("train", "serve", "vertex", "workbench", "pipeline")
# What each room may not import (beyond the rule that nothing imports `commands`).
FORBIDDEN = {
    "core": ("flant5_lib.train", "flant5_lib.serve", "flant5_lib.vertex", "flant5_lib.workbench", "flant5_lib.pipeline"),
    "train": ("flant5_lib.serve", "flant5_lib.vertex", "flant5_lib.workbench", "flant5_lib.pipeline"),
    "serve": ("flant5_lib.train", "flant5_lib.vertex", "flant5_lib.workbench", "flant5_lib.pipeline"),
    "vertex": ("flant5_lib.train", "flant5_lib.serve", "flant5_lib.workbench", "flant5_lib.pipeline"),
    "workbench": ("flant5_lib.serve.", "flant5_lib.pipeline"),  # it may start the server as a process, never import its internals
    # the release pipeline drives train and vertex; the server only as Vertex deploys it, the workbench not at all
    "pipeline": ("flant5_lib.serve", "flant5_lib.workbench"),
}
# The CLI layer and the package's front door may reach every room.
ENTRY_POINTS = {"cli.py", "__main__.py", "__init__.py"}


def modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package is its __init__.py)."""
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _lazy_table(tree: ast.Module) -> dict[str, str]:
    """name -> module of a package face's `lazy_exports` table (a module-level dict of "flant5_lib.x[:attr]")."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            try:
                table = ast.literal_eval(node.value)
            except ValueError:
                continue
            if table and all(isinstance(v, str) and v.startswith(PKG.name + ".") for v in table.values()):
                return {k: v.partition(":")[0] for k, v in table.items()}
    return {}


def import_graph() -> dict[str, set[str]]:
    """Module -> the `flant5_lib` modules it imports, wherever the import statement stands (module level or inside
    a function). A name a package's face re-exports lazily counts as its module; a name the tree lacks is kept."""
    files = modules()
    trees = {name: ast.parse(path.read_text(encoding="utf-8")) for name, path in files.items()}
    lazy = {name: _lazy_table(tree) for name, tree in trees.items() if files[name].name == "__init__.py"}
    graph: dict[str, set[str]] = {}
    for name, tree in trees.items():
        package = name if files[name].name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # from . import x / from ..y import z
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, *([node.module] if node.module else [])])
                for a in node.names:
                    full = f"{base}.{a.name}"
                    targets.add(full if full in files else lazy.get(base, {}).get(a.name, base))
        graph[name] = {t for t in targets if t != name and (t == PKG.name or t.startswith(PKG.name + "."))}
    return graph


def import_cycles(graph: dict[str, set[str]] | None = None) -> list[str]:
    """Each circle of modules that import one another, directly or through others: 'a <-> b <-> c'."""
    graph = import_graph() if graph is None else graph

    def reachable(start: str) -> set[str]:
        seen: set[str] = set()
        todo = [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    reach = {name: reachable(name) for name in graph}
    circles = {tuple(sorted(m for m in reach[name] if name in reach.get(m, ()))) for name in graph if name in reach[name]}
    return sorted(" <-> ".join(c) for c in circles)


def room(path: Path) -> str:
    rel = path.relative_to(PKG).parts
    return rel[0] if len(rel) > 1 else "core"


def violations() -> list[str]:
    bad = []
    files = modules()
    for name, imported in sorted(import_graph().items()):
        path = files[name]
        r = room(path)
        if r == "commands" or (r == "core" and path.name in ENTRY_POINTS):
            continue
        for mod in sorted(imported):
            if mod.startswith("flant5_lib.commands"):
                bad.append(f"{path.relative_to(REPO)} imports {mod} (nothing imports the CLI layer)")
            if any(mod == f.rstrip(".") or mod.startswith(f if f.endswith(".") else f + ".") for f in FORBIDDEN[r]):
                bad.append(f"{path.relative_to(REPO)} ({r}) imports {mod}")
    return bad


def test_imports_point_one_way() -> None:
    assert violations() == []


def test_no_import_circle_not_even_inside_functions() -> None:
    """A circle hidden behind an import inside a function still ties two modules into one: move the shared rule."""
    assert import_cycles() == []


def test_the_checker_catches_a_wrong_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rule above must be able to fail: a core module importing `train` is reported, inside a function too."""
    fake = tmp_path / "flant5_lib"
    (fake / "serve").mkdir(parents=True)
    (fake / "metrics.py").write_text("from flant5_lib.train.loop import train\n")
    (fake / "plots.py").write_text("def draw():\n    from flant5_lib.workbench import report\n")
    (fake / "serve" / "app.py").write_text("import flant5_lib.vertex.jobs\nfrom flant5_lib.commands import run\n")
    monkeypatch.setattr(sys.modules[__name__], "PKG", fake)
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    found = violations()
    assert any("metrics.py (core) imports flant5_lib.train.loop" in v for v in found)
    assert any("plots.py (core) imports flant5_lib.workbench" in v for v in found)
    assert any("serve/app.py (serve) imports flant5_lib.vertex.jobs" in v for v in found)
    assert any("nothing imports the CLI layer" in v for v in found)


def test_the_cycle_finder_sees_function_level_imports_and_lazy_names(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Two circles the interpreter never trips over (the back edge runs only when the function is called)."""
    room_dir = tmp_path / "flant5_lib" / "vertex"
    room_dir.mkdir(parents=True)
    (room_dir.parent / "__init__.py").write_text("")
    (room_dir / "__init__.py").write_text('_NAMES = {"thing": "flant5_lib.vertex.c", "other": "flant5_lib.vertex.e"}\n')
    (room_dir / "a.py").write_text("from flant5_lib.vertex import b\n")
    (room_dir / "b.py").write_text("def late():\n    from flant5_lib.vertex.a import X\n")
    (room_dir / "c.py").write_text("import flant5_lib.vertex.d\n")
    (room_dir / "d.py").write_text("def late():\n    from flant5_lib.vertex import thing\n")
    (room_dir / "e.py").write_text("from flant5_lib.vertex import a\n")  # imports into a circle: not part of it
    monkeypatch.setattr(sys.modules[__name__], "PKG", tmp_path / "flant5_lib")
    assert import_cycles() == ["flant5_lib.vertex.a <-> flant5_lib.vertex.b",
                               "flant5_lib.vertex.c <-> flant5_lib.vertex.d"]


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

    faces = {"flant5_lib", "flant5_lib.train", "flant5_lib.vertex", "flant5_lib.workbench", "flant5_lib.pipeline"}
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
