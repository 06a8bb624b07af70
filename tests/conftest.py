"""Shared test helpers: the real DOTA samples beside the project (../shared), seeded weights for the Runner-based
tools, and data loaders over DOTA-format dirs."""
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


def dota_test_dataloader(data_root, size: int = 129) -> dict:
    """A ``test_dataloader`` over a DOTA-format dir (``images/``, ``labelTxt/``): images resized to ``size`` (keeping
    ``scale_factor`` for the rescale of the predictions), labels loaded as rboxes, one image per batch, in order."""
    pipeline = [
        dict(type="mmdet.LoadImageFromFile"),
        dict(type="mmdet.Resize", scale=(size, size), keep_ratio=True),
        dict(type="mmdet.LoadAnnotations", with_bbox=True, box_type="qbox"),
        dict(type="ConvertBoxType", box_type_mapping=dict(gt_bboxes="rbox")),
        dict(type="mmdet.PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
    ]
    return dict(batch_size=1, num_workers=0, persistent_workers=False, drop_last=False,
                sampler=dict(type="DefaultSampler", shuffle=False),
                dataset=dict(type="DOTADataset", data_root=str(data_root), ann_file="labelTxt/",
                             data_prefix=dict(img_path="images/"), test_mode=True, pipeline=pipeline))


def dota_train_dataloader(data_root, batch_size: int, sampler: str = "DefaultSampler", size: int = 129) -> dict:
    """A ``train_dataloader`` over a DOTA-format dir: labels as rboxes, images resized to ``size``, scenes without
    objects left out, no shuffling (``sampler``: ``DefaultSampler`` or ``InfiniteSampler``)."""
    pipeline = [
        dict(type="mmdet.LoadImageFromFile"),
        dict(type="mmdet.LoadAnnotations", with_bbox=True, box_type="qbox"),
        dict(type="ConvertBoxType", box_type_mapping=dict(gt_bboxes="rbox")),
        dict(type="mmdet.Resize", scale=(size, size), keep_ratio=True),
        dict(type="mmdet.PackDetInputs"),
    ]
    return dict(batch_size=batch_size, num_workers=0, persistent_workers=False,
                sampler=dict(type=sampler, shuffle=False),
                dataset=dict(type="DOTADataset", data_root=str(data_root), ann_file="labelTxt/",
                             data_prefix=dict(img_path="images/"), filter_cfg=dict(filter_empty_gt=True),
                             pipeline=pipeline))
