"""Lazy re-exports for package faces: `flant5_lib.train` is importable without pulling torch into a server."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, names: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """(__getattr__, __dir__) for a package whose public names live in submodules: name -> "module" (same name
    there) or "module:attr" (a public alias, for a function named like a submodule, which the import system would
    otherwise shadow with the module once it is imported)."""

    def __getattr__(name: str) -> Any:
        target = names.get(name)
        if target is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr or name)

    def __dir__() -> list[str]:
        return sorted(names)

    return __getattr__, __dir__
