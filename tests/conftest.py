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


def save_config_and_random_weights(cfg, config_path: Path, ckpt_path: Path, seed: int = 0):
    """Dump ``cfg`` to ``config_path`` and save the seeded, initialised weights of its model to ``ckpt_path`` (what
    the Runner-based tools take as CONFIG CHECKPOINT). Returns ``(config_path, ckpt_path)``."""
    import torch
    from mmrotate.registry import MODELS

    cfg.dump(str(config_path))
    torch.manual_seed(seed)
    model = MODELS.build(cfg.model)
    model.init_weights()
    torch.save({"state_dict": model.state_dict(), "meta": {}}, str(ckpt_path))
    return config_path, ckpt_path
