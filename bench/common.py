"""What every bench script shares: the repository root and the shared data folder.

Bench scripts run as `python bench/NAME.py`, so this folder is on sys.path and they import it as
`from common import SHARED`. The standard library only: some workers run in a virtualenv
without qexport.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# tokenizers (qwen3-embedding/0.6B, ...) and eval sets (data/scifact, data/stsb); as tests/
SHARED = Path(os.environ.get("QEXPORT_SHARED", REPO.parent / "shared"))
DATA = SHARED / "data"
