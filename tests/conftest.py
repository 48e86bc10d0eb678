"""Shared fixtures: the shared sample data folder and the generated bad-input suite (tests/bad_inputs.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Models download on first use by default; tests never download (subprocesses inherit this). A test of the
# download path unsets it and points HF_ENDPOINT at a server of its own on 127.0.0.1.
os.environ["HF_HUB_OFFLINE"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import bad_inputs` from any test folder

from bad_inputs import make_bad_inputs

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``<repo>/../shared/data`` (real sample images), or skip where this checkout has none."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared sample data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def bad_inputs(tmp_path_factory) -> dict:
    """``{name: source}`` of the bad-input suite, written once per session; see ``bad_inputs.EXPECTED_REASON``."""
    return make_bad_inputs(tmp_path_factory.mktemp("media"))
