"""Shared test helpers, imported one way everywhere: `from tests.helpers import REPO` / `from tests.helpers.serve import ...`.

Paths of the checkout and of ../shared (real SAMSum splits and the T5 vocabulary, read at run time, never copied).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("FLANT5_SHARED", REPO.parent / "shared"))
SAMSUM_DIR = SHARED / "data" / "samsum"
T5_TOKENIZER_DIR = SHARED / "tokenizers" / "t5"
