"""Shared test helpers: the real DOTA samples beside the project (../shared), seeded randomness."""
import os
import warnings
from pathlib import Path

import pytest

warnings.filterwarnings("ignore", message=".*py3nj.*")

ROOT = Path(__file__).resolve().parents[1]
DOTA_SAMPLES = ROOT.parent / "shared" / "data" / "dota_samples"
DEMO_JPG = DOTA_SAMPLES / "images" / "demo.jpg"


def require_file(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real-image sample {path} is not present")
    return path
