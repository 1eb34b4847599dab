import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow" / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))


import os  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def bfcl_wheel():
    """The pinned bfcl-eval wheel (BFCL's data and AST checker), downloaded with ``pip download --no-deps``
    into a cache directory when absent (SNAKETUNE_WHEEL_CACHE, default ~/.cache/snaketune/wheels) and
    checked against its sha256. Never installed."""
    from snaketune.bfcl import BFCL_VERSION, fetch_wheel

    cache = Path(os.environ.get("SNAKETUNE_WHEEL_CACHE") or Path.home() / ".cache" / "snaketune" / "wheels")
    return fetch_wheel(cache / f"bfcl_eval-{BFCL_VERSION}-py3-none-any.whl")
