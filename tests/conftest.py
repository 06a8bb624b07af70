"""Shared test helpers: the real DOTA samples beside the project (../shared), seeded weights for the Runner-based
tools, data loaders over DOTA-format dirs, and random rotated boxes."""
import importlib.util
import math
import os
import sys
import warnings
from pathlib import Path

import pytest
import torch

from rotplugin.apis.demo import SAMPLE_IMAGE

warnings.filterwarnings("ignore", message=".*py3nj.*")

ROOT = Path(__file__).resolve().parents[1]
DEMO_JPG = (ROOT / SAMPLE_IMAGE).resolve()          # the real DOTA samples beside the project (../shared)
DOTA_SAMPLES = DEMO_JPG.parents[1]


@pytest.fixture
def device() -> torch.device:
    """Where a test marked ``cuda`` runs: the GPU when there is one. Without one it skips, unless
    ``ROTPLUGIN_CUDA_TESTS=cpu`` (``tools/gpu_check.sh --cpu``, the dry run of the GPU check) runs it on the CPU;
    comparisons with a CUDA-only kernel skip there."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if os.environ.get("ROTPLUGIN_CUDA_TESTS") == "cpu":
        return torch.device("cpu")
    pytest.skip("needs a CUDA device (ROTPLUGIN_CUDA_TESTS=cpu runs it on the CPU)")


def load_tool(name: str):
    """``tools/<name>.py`` as a module (the tools are plain scripts, not a package): loaded by path once, under
    the module name ``tool_<name>``."""
    key = f"tool_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, ROOT / "tools" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


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


# random rotated boxes (mmrotate rbox: cx, cy, w, h, angle in radians, le90) for the NMS / IoU tests
def random_boxes(g, n, spread=200.0, size=(2.0, 40.0), ncls=3):
    ctr = torch.rand(n, 2, generator=g) * spread
    wh = size[0] + torch.rand(n, 2, generator=g) * (size[1] - size[0])
    a = (torch.rand(n, 1, generator=g) - 0.5) * math.pi
    return torch.cat([ctr, wh, a], 1), torch.rand(n, generator=g), torch.randint(0, ncls, (n,), generator=g)


def clustered(g, n_obj, copies, ncls=4, spread=300.0):
    """Views of the same objects: jittered centre/size/angle, like the TTA merge's input."""
    base, scores, labels = random_boxes(g, n_obj, spread, (4.0, 60.0), ncls)
    boxes, sc, lab = [], [], []
    for _ in range(copies):
        j = base.clone()
        j[:, :2] += torch.randn(n_obj, 2, generator=g) * 1.5
        j[:, 2:4] *= 1 + 0.05 * torch.randn(n_obj, 2, generator=g)
        j[:, 4] += 0.05 * torch.randn(n_obj, generator=g)
        boxes.append(j)
        sc.append((scores + 0.05 * torch.randn(n_obj, generator=g)).clamp(0, 1))
        lab.append(labels)
    return torch.cat(boxes), torch.cat(sc), torch.cat(lab)
