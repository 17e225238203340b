"""The prediction server on Vertex AI's custom-container contract: the FastAPI app, backends, CTranslate2, batching.

May import the core modules of `flant5_lib` only; never `train`, `vertex`, `workbench` or `commands`, so the serving
image installs just the `[serve]` extra.
"""

from flant5_lib._lazy import lazy_exports

__all__ = ["ServeSettings", "create_app", "run"]
__getattr__, __dir__ = lazy_exports(__name__, {name: "flant5_lib.serve.app" for name in __all__})
