"""The generated page of the docs site: docs/parameters.md, every `Params` field in one table.

It is generated, not written, so the reference can never disagree with `config.py`; `flant5 params docs` rewrites it
and tests/test_docs.py fails when the committed page is stale.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

from flant5_lib.config import describe_fields
from flant5_lib.fileio import write_text

PARAMETERS_PAGE = "docs/parameters.md"

_HEADER = """# Parameter reference

<!-- Generated from flant5_lib/config.py:Params by `flant5 params docs`; edit the field's description there. -->

Every field of the one typed parameter model, `flant5_lib/config.py:Params`, with its type, default and what it does.
The CLI, the notebooks, the Vertex job and the server all read it. `params/*.yaml` hold only what differs from these
defaults; `--set KEY=VALUE` overrides a field for one run, and `flant5 params list` prints the same table in a
terminal. `flant5 params check FILE` validates a file against it before any job starts.
"""


def params_reference_markdown() -> str:
    """Every Params field as a Markdown table row: name, type, default, help (`flant5 params list` in a table)."""

    def cell(x: Any) -> str:
        # `<run_dir>` outside a code span would be read as an HTML tag and vanish: escape it there only.
        parts = str(x).replace("\n", " ").split("`")
        parts[::2] = [html.escape(p, quote=False) for p in parts[::2]]
        return "`".join(parts).replace("|", "\\|")

    def code(x: Any) -> str:
        # `\|` inside backticks shows the backslash on the site; an HTML code element with &#124; renders as `|`
        # both there and on GitHub without splitting the cell.
        return f"<code>{html.escape(repr(x), quote=False).replace('|', '&#124;')}</code>"

    rows = ["| field | type | default | what it does |", "|---|---|---|---|"]
    for name, ann, default, help_ in describe_fields():
        rows.append(f"| `{name}` | {cell(ann)} | {code(default)} | {cell(help_)} |")
    return "\n".join(rows)


def parameters_page() -> str:
    """The whole text of docs/parameters.md."""
    return f"{_HEADER}\n{params_reference_markdown()}\n"


def write_parameters_page(path: str | os.PathLike[str] = PARAMETERS_PAGE) -> bool:
    """Regenerate the page (atomically); True when its text changed."""
    p = Path(path)
    new = parameters_page()
    old = p.read_text(encoding="utf-8") if p.is_file() else None
    if new != old:
        write_text(p, new)
    return new != old
